"""Route-switch benchmark: what one app's route switch costs as the edge holds more apps, and what the visitors
of another app notice meanwhile.

Run from the repository root: `uv run python -m bench.routes [--counts 50,5000] [--switches 30]`. It starts a
private Caddy (devstack's, on free ports in a temp dir: the binary the platform runs), the platform's DNS server
for upstream names (devstack's dnsmasq over a hosts dir of its own), the platform's settings on a throwaway
SQLite DB with one tenant and one app (the one that switches), and two tiny HTTP upstreams on two loopback
addresses and the same port (127.0.0.2 and 127.0.0.3: Linux routes all of 127/8 to lo, and every replica is
dialled on the same port, pipeline.APP_PORT), each answering with its own address. Then for each route count N:
(a) writes N upstream hosts files and loads the edge with N app routes (`CaddyClient.edge_load`, as the
    reconciler does after a Caddy restart), each looking its replicas up by name (`a` dynamic upstreams);
(b) switches the app between the two upstreams `--switches` times with the platform's own call
    (`pipeline.edge_apply`, what a deploy's `route_switch` does: the hosts file rewritten, the route read and
    left alone since its shape did not change), timing from the call until the app's requests through the
    edge reach the new upstream (so a switch costs up to Caddy's lookup refresh, COLTSFOOT_UPSTREAM_REFRESH_MS);
(c) meanwhile a visitor of another app sends requests through the edge back to back; its latencies during the
    switches are compared with the same visitor's for 10 s when nothing switches, while the benchmark probes the
    switching app just as often as during the switches (so the probes' own load is in both figures).
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
import random
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
from caddy.routes import UpstreamLookup
from caddy.routes import app_route
from devstack.services import CaddyServer
from devstack.services import UpstreamDnsServer
from drivers.upstream_hosts import UpstreamHosts
from drivers.upstream_hosts import upstream_name

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
    protocol_version = "HTTP/1.1"  # keep-alive, as a replica behind the edge
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between them

    def do_GET(self) -> None:
        address: str = self.connection.getsockname()[0]
        body = f"{address}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


UPSTREAM_ADDRESSES = ("127.0.0.2", "127.0.0.3")
# How often the switching app is asked which upstream answers (the switch's timing resolution), and how long
# the other app's visitor is measured with no switch.
PROBE_SECONDS = 0.01
REST_SECONDS = 10.0


def upstreams(port: int) -> list[http.server.ThreadingHTTPServer]:
    """One HTTP server on each of UPSTREAM_ADDRESSES, all on `port` (the port the platform dials replicas on)."""
    servers = []
    for address in UPSTREAM_ADDRESSES:
        server = http.server.ThreadingHTTPServer((address, port), _Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def configure_django(data_dir: Path, caddy: CaddyServer, dns: UpstreamDnsServer) -> None:
    """The platform's own settings, on a fresh SQLite DB in `data_dir` (never a real database), pointed at
    this benchmark's Caddy and DNS server."""
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-routes-not-a-secret")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(
        {
            "COLTSFOOT_DATA_DIR": str(data_dir),
            "COLTSFOOT_DB_PATH": str(data_dir / "bench.sqlite3"),
            "COLTSFOOT_INSTANCE_ID": "bench-routes",
            "COLTSFOOT_CADDY_ADMIN_URL": caddy.admin_url,
            "COLTSFOOT_EDGE_LISTEN": caddy.edge_listen,
            "COLTSFOOT_EDGE_TLS_LISTEN": "",
            "COLTSFOOT_UPSTREAM_DNS": dns.listen,
            "COLTSFOOT_UPSTREAM_HOSTS_DIR": str(dns.hosts_dir),
        }
    )
    os.environ.setdefault("COLTSFOOT_LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


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


def measure(caddy: CaddyServer, count: int, switches: int) -> dict[str, Any]:
    from django.conf import settings

    from platform_apps.apps.services import app_create
    from platform_apps.models import App
    from provisioning import pipeline
    from tenants.models import Tenant
    from tenants.services import tenant_create

    tenant = Tenant.objects.filter(slug="bench").first() or tenant_create(slug="bench")
    app = App.objects.filter(tenant=tenant, name="switching").first() or app_create(
        tenant=tenant, name="switching", replicas=1, memory_mb=256, cpus=1.0, deploy_branch="main"
    )
    app = App.objects.select_related("tenant").get(pk=app.pk)
    client = CaddyClient(caddy.admin_url, timeout=120, edge_listen=caddy.edge_listen)
    hosts = UpstreamHosts.from_settings()
    for stale in hosts.observe():
        hosts.remove(stale)
    first, _second = UPSTREAM_ADDRESSES
    others = [uuid.uuid4() for _ in range(count - 1)]
    routes = [pipeline.app_route_for(app, [first])]
    for i, other in enumerate(others, start=1):
        lookup = UpstreamLookup(
            name=upstream_name(other),
            port=pipeline.APP_PORT,
            resolver=str(settings.UPSTREAM_DNS),
            refresh=pipeline.upstream_refresh(),
        )
        routes.append(app_route(other, [f"a{i}.bench.localhost"], lookup))
        hosts.write(other, [first])
    hosts.write(app.public_id, [first])
    started = time.perf_counter()
    client.edge_load(routes)
    load_seconds = time.perf_counter() - started
    logger.info("%d routes loaded in %.2f s", count, load_seconds)
    visited_host = f"a{count - 1}.bench.localhost"
    switch_ms: list[float] = []
    call_ms: list[float] = []
    refresh = int(settings.UPSTREAM_REFRESH_MS) / 1000
    phases = random.Random(20261201)  # noqa: S311 - the same phases at every route count
    context = {"tenant_id": str(tenant.public_id), "app_id": str(app.public_id), "deployment_id": ""}
    prober = httpx.Client(base_url=caddy.edge_url, headers={"Host": app.hostname}, timeout=30, trust_env=False)
    # At rest, the same probing of the switching app as during the switches (every PROBE_SECONDS), only no
    # switch: the probes are the benchmark's own load on the edge, in both figures, not part of a switch's cost.
    with Visitor(caddy.edge_url, visited_host) as rest:
        until = time.perf_counter() + REST_SECONDS
        while time.perf_counter() < until:
            prober.get("/")
            time.sleep(PROBE_SECONDS)
    with Visitor(caddy.edge_url, visited_host) as during:
        for index in range(switches):
            target = UPSTREAM_ADDRESSES[(index + 1) % 2]
            # A deploy switches at any moment of Caddy's refresh cycle, not right after a lookup (which is
            # when the previous switch was seen): start each one at a random phase.
            time.sleep(phases.uniform(0, refresh))
            started = time.perf_counter()
            pipeline.edge_apply(client, app, [target], context=context)
            call_ms.append((time.perf_counter() - started) * 1000)
            # Until the app's requests reach the new upstream: the switch as a visitor sees it.
            while prober.get("/").text.strip() != target:
                time.sleep(PROBE_SECONDS)
            switch_ms.append((time.perf_counter() - started) * 1000)
    prober.close()
    client.close()
    result = {
        "routes": count,
        "load_seconds": round(load_seconds, 3),
        "switch": summary(switch_ms),
        "switch_call": summary(call_ms),
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
    servers: list[http.server.ThreadingHTTPServer] = []
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": host_platform.python_version(), "load": os.getloadavg()},
    }
    code = 0
    try:
        dns = UpstreamDnsServer(tmp / "dns", tmp / "data" / "upstreams")
        with CaddyServer(tmp / "caddy") as caddy, dns:
            configure_django(tmp / "data", caddy, dns)
            from django.conf import settings

            from provisioning.pipeline import APP_PORT

            servers = upstreams(APP_PORT)
            result["caddy"] = shutil.which("caddy")
            result["dns"] = shutil.which("dnsmasq")
            result["upstream_refresh_ms"] = settings.UPSTREAM_REFRESH_MS
            runs = [measure(caddy, count, args.switches) for count in counts]
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
        for server in servers:
            server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
