"""Route-switch benchmark: what one app's route switch costs as the edge holds more apps, and what the visitors
of another app notice meanwhile.

Run from the repository root: `uv run python -m bench.routes [--counts 50,5000] [--switches 30]`. It starts a
private Caddy (devstack's, on free ports in a temp dir: the binary the platform runs) and two tiny HTTP
upstreams on loopback, then for each route count N:
(a) loads the edge with N app routes (`CaddyClient.edge_load`, as the reconciler does after a Caddy restart);
(b) switches one app's route between the two upstreams `--switches` times with the platform's own call
    (`CaddyClient.route_upsert`, one PATCH by `@id`), timing each call until Caddy answered;
(c) meanwhile a visitor of another app sends requests through the edge back to back; its latencies during the
    switches are compared with the same visitor's when nothing switches.
Progress goes to stderr; the result is one JSON document on stdout, with the issue's two goals: switch p50 at
the largest N within 2x of the smallest, and the other app's p99 during switches within 1.5x of its p99 at rest.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import platform as host_platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from caddy.client import CaddyClient
from caddy.routes import app_route
from devstack.services import CaddyServer

logger = logging.getLogger("bench.routes")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples_ms: list[float]) -> dict[str, float | int]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(statistics.median(samples_ms), 2),
        "p99_ms": round(percentile(samples_ms, 0.99), 2),
        "max_ms": round(max(samples_ms), 2),
    }


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def upstream() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_port}"


class Visitor:
    """Requests to one app through the edge, back to back, on a thread, recording each latency."""

    def __init__(self, edge_url: str, hostname: str) -> None:
        self.client = httpx.Client(base_url=edge_url, headers={"Host": hostname}, timeout=30, trust_env=False)
        self.samples: list[float] = []
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status = self.client.get("/").status_code
                error = "" if status == 200 else f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            self.samples.append((time.perf_counter() - started) * 1000)
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1

    def __enter__(self) -> Visitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.client.close()


def measure(caddy: CaddyServer, count: int, switches: int, upstreams: tuple[str, str]) -> dict[str, Any]:
    client = CaddyClient(caddy.admin_url, timeout=120, edge_listen=caddy.edge_listen)
    apps = [uuid.uuid4() for _ in range(count)]
    switching = apps[0]
    routes = [app_route(app, [f"a{i}.bench.localhost"], [upstreams[0]]) for i, app in enumerate(apps)]
    started = time.perf_counter()
    client.edge_load(routes)
    load_seconds = time.perf_counter() - started
    logger.info("%d routes loaded in %.2f s", count, load_seconds)
    visited_host = f"a{count - 1}.bench.localhost"
    with Visitor(caddy.edge_url, visited_host) as rest:
        time.sleep(3)
    switch_ms: list[float] = []
    with Visitor(caddy.edge_url, visited_host) as during:
        for index in range(switches):
            target = upstreams[(index + 1) % 2]
            started = time.perf_counter()
            client.route_upsert(switching, ["a0.bench.localhost"], [target])
            switch_ms.append((time.perf_counter() - started) * 1000)
    client.close()
    result = {
        "routes": count,
        "load_seconds": round(load_seconds, 3),
        "switch": summary(switch_ms),
        "other_app_at_rest": summary(rest.samples),
        "other_app_during_switches": summary(during.samples),
        # Failed requests by kind (an HTTP status, or the client's exception: a keep-alive connection the edge
        # closed under a reload shows as RemoteProtocolError/ReadError).
        "other_app_errors_at_rest": rest.errors,
        "other_app_errors_during_switches": during.errors,
    }
    logger.info("%s", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--counts", default="50,5000", help="route counts, comma-separated (the first is the base)")
    parser.add_argument("--switches", type=int, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("caddy.client").setLevel(logging.WARNING)
    counts = [int(part) for part in args.counts.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="coltsfoot-bench-routes-"))
    servers = [upstream(), upstream()]
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": host_platform.python_version(), "load": os.getloadavg()},
    }
    code = 0
    try:
        with CaddyServer(tmp / "caddy") as caddy:
            result["caddy"] = shutil.which("caddy")
            runs = [measure(caddy, count, args.switches, (servers[0][1], servers[1][1])) for count in counts]
        base, top = runs[0], runs[-1]
        switch_ratio = top["switch"]["p50_ms"] / base["switch"]["p50_ms"]
        stall_ratio = top["other_app_during_switches"]["p99_ms"] / top["other_app_at_rest"]["p99_ms"]
        result["runs"] = runs
        result["goals"] = [
            {
                "figure": f"route switch p50 with {top['routes']} routes",
                "value": top["switch"]["p50_ms"],
                "reference": base["switch"]["p50_ms"],
                "ratio": round(switch_ratio, 2),
                "goal": "<= 2x the switch p50 with the base route count",
                "met": switch_ratio <= 2,
            },
            {
                "figure": f"p99 of another app's requests during switches at {top['routes']} routes",
                "value": top["other_app_during_switches"]["p99_ms"],
                "reference": top["other_app_at_rest"]["p99_ms"],
                "ratio": round(stall_ratio, 2),
                "goal": "<= 1.5x the same app's p99 with no switch",
                "met": stall_ratio <= 1.5,
            },
        ]
    except Exception as exc:
        logger.exception("benchmark failed")
        result["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        for server, _ in servers:
            server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
