"""CPU fairness benchmark: does one tenant burning its whole CPU quota slow a neighbour and the platform API?

Run from the repository root: `uv run python -m bench.fairness [--seconds N]`. It starts a private stack (with
`devstack`, on free ports in a temp dir, no beat), deploys two tenants' apps and measures, in one run:

- baseline: for `--seconds`, a neighbour tenant's app (examples/hello, 1 replica) is requested through the edge
  and the platform API (`GET /api/v1/apps` with the neighbour's token: auth, a DB read) is called, from two
  threads, one request after another;
- burn: the same while a burner tenant whose `max_cpus` is the host's cores runs that many replicas x 1 CPU,
  each burning with more busy processes than it has CPUs (so every replica's CFS quota is saturated).

Goals (issue 11): neighbour p95 within 2x its baseline, API p99 under 100 ms; `met` says whether each holds.
`--tenant-cgroup-parent none` runs the same without the tenants' low-weight cgroup, for comparison.

Progress goes to stderr; the result is one JSON document on stdout. The podman objects the run creates carry
its own `coltsfoot.instance` label and are removed at the end. On a shared machine, other load shows up in both
phases: see `loadavg` in the output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from devstack.services import REPO_ROOT
from devstack.services import Platform
from devstack.stack import isolated_stack

logger = logging.getLogger("bench.fairness")

HELLO = REPO_ROOT / "examples" / "hello"
GOAL_NEIGHBOUR_P95_RATIO = 2.0
GOAL_API_P99_MS = 100.0

# The burner's web process: serves HTTP and, on GET /burn?seconds=N, runs busy processes for N seconds.
BURNER = r"""
import http.server
import multiprocessing
import os
import time
import urllib.parse


def spin(deadline):
    while time.monotonic() < deadline:
        pass


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
        self.wfile.flush()
        if url.path == "/burn":  # after answering: a burning replica is slow to answer anything else
            query = urllib.parse.parse_qs(url.query)
            deadline = time.monotonic() + min(600.0, float(query.get("seconds", ["10"])[0]))
            for _ in range(int(query.get("procs", ["4"])[0])):
                multiprocessing.Process(target=spin, args=(deadline,), daemon=True).start()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(values: list[float], errors: int) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    if not ms:
        return {"requests": 0, "errors": errors}
    return {
        "requests": len(ms),
        "errors": errors,
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


def tar_gz(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Bench:
    def __init__(self, platform: Platform, seconds: float) -> None:
        self.platform = platform
        self.seconds = seconds
        self.cores = os.cpu_count() or 1
        self.neighbour: dict[str, Any] = {}
        self.burner: dict[str, Any] = {}
        self.neighbour_client = platform.client()
        self.burner_client = platform.client()
        self.tokens: dict[str, str] = {}

    def tenant(self, prefix: str, **quotas: int) -> httpx.Client:
        slug = f"{prefix}{secrets.token_hex(3)}"
        created = self.platform.create_tenant(slug)
        if quotas:
            assignments = ", ".join(f"{key}={value}" for key, value in quotas.items())
            self.platform.manage(
                "shell",
                "-c",
                f"from tenants.models import Tenant; Tenant.objects.filter(slug={slug!r}).update({assignments})",
            )
        self.tokens[prefix] = created["token"]
        return self.platform.client(created["token"], timeout=30.0)

    def deploy(self, client: httpx.Client, body: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
        response = client.post("/apps", json=body)
        response.raise_for_status()
        app: dict[str, Any] = response.json()
        archive = tar_gz(files)
        posted = client.post(
            f"/apps/{app['id']}/deployments", files={"source": ("source.tar.gz", archive, "application/gzip")}
        )
        posted.raise_for_status()
        deployment_id = posted.json()["id"]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            state = client.get(f"/deployments/{deployment_id}").json()["state"]
            if state == "live":
                logger.info("%s is live at %s", app["name"], app["url"])
                return app
            if state == "failed":
                raise RuntimeError(client.get(f"/deployments/{deployment_id}/log").text[-3000:])
            time.sleep(0.5)
        raise RuntimeError(f"{app['name']} did not go live")

    def setup(self) -> None:
        self.neighbour_client = self.tenant("nb")
        hello = {p.name: p.read_bytes() for p in HELLO.iterdir() if p.is_file()}
        self.neighbour = self.deploy(self.neighbour_client, {"name": "hello", "replicas": 1}, hello)
        # The burner may use the host's cores in all, one CPU per replica: its whole quota.
        self.burner_client = self.tenant("burn", max_cpus=self.cores, max_replicas=max(4, self.cores))
        body = {"name": "burn", "replicas": self.cores, "cpus": 1.0}
        self.burner = self.deploy(
            self.burner_client, body, {"Procfile": b"web: python3 burn.py\n", "burn.py": BURNER.encode()}
        )

    @property
    def neighbour_token(self) -> str:
        return self.tokens["nb"]

    def measure(self, label: str) -> dict[str, Any]:
        """Neighbour through the edge and the API, each from its own thread, for `seconds`."""
        results: dict[str, tuple[list[float], int]] = {}
        api = self.platform.client(self.neighbour_token, timeout=10.0)

        def loop(name: str, call: Callable[[], httpx.Response]) -> None:
            times: list[float] = []
            errors = 0
            stop = time.monotonic() + self.seconds
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    ok = call().status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                if ok:
                    times.append(elapsed)
                else:
                    errors += 1
                time.sleep(0.02)
            results[name] = (times, errors)

        threads = [
            threading.Thread(
                target=loop, args=("neighbour", lambda: self.platform.edge_get(self.neighbour["url"], timeout=10.0))
            ),
            threading.Thread(target=loop, args=("api", lambda: api.get("/apps"))),
        ]
        load_before = os.getloadavg()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        api.close()
        summary = {name: latency_summary(*results[name]) for name in ("neighbour", "api")}
        summary["loadavg"] = {
            "before": [round(v, 2) for v in load_before],
            "after": [round(v, 2) for v in os.getloadavg()],
        }
        logger.info("%s: %s", label, json.dumps(summary))
        return summary

    def burn(self) -> None:
        """Start the burn in every replica: the edge balances, so ask until each replica got it (at least
        as many asks as replicas, a few spare), each with more busy processes than the host has CPUs."""
        seconds = self.seconds + 10
        url = f"{self.burner['url'].rstrip('/')}/burn?seconds={seconds:g}&procs={self.cores * 2}"
        started = 0
        for _ in range(self.cores * 3):
            try:
                started += self.platform.edge_get(url, timeout=30.0).status_code == 200
            except httpx.HTTPError:
                logger.warning("a burn request went unanswered (its replica is busy burning already)")
        logger.info("burn started by %d requests", started)
        time.sleep(3)  # let the CFS quotas fill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measured phase (default 30)")
    parser.add_argument(
        "--tenant-cgroup-parent",
        default="",
        help="COLTSFOOT_TENANT_CGROUP_PARENT for this run ('none' to run without the low-weight cgroup)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="coltsfoot-bench-fairness-"))
    instance_id = f"bench-fair-{os.getpid()}-{secrets.token_hex(4)}"
    extra_env = {"COLTSFOOT_START_DEADLINE": "60", "COLTSFOOT_LOG_LEVEL": "INFO"}
    if args.tenant_cgroup_parent:
        extra_env["COLTSFOOT_TENANT_CGROUP_PARENT"] = args.tenant_cgroup_parent
    document: dict[str, Any] = {
        "benchmark": "fairness",
        "host_cpus": os.cpu_count(),
        "tenant_cgroup_parent": args.tenant_cgroup_parent or "(default /coltsfoot-tenants)",
        "seconds_per_phase": args.seconds,
    }
    failure: BaseException | None = None
    try:
        stack = isolated_stack(tmp, instance_id=instance_id, extra_env=extra_env, with_beat=False)
        platform = stack.require_platform()
        with stack:
            bench = Bench(platform, args.seconds)
            try:
                bench.setup()
                baseline = bench.measure("baseline")
                bench.burn()
                burning = bench.measure("burn")
                ratio = burning["neighbour"]["p95_ms"] / baseline["neighbour"]["p95_ms"]
                document.update(
                    {
                        "burner": {"replicas": bench.cores, "cpus_per_replica": 1.0, "max_cpus": bench.cores},
                        "baseline": baseline,
                        "burn": burning,
                        "neighbour_p95_ratio": round(ratio, 2),
                        "goals": {
                            "neighbour_p95_ratio_max": GOAL_NEIGHBOUR_P95_RATIO,
                            "api_p99_ms_max": GOAL_API_P99_MS,
                        },
                        "met": {
                            "neighbour_p95": ratio <= GOAL_NEIGHBOUR_P95_RATIO,
                            "api_p99": burning["api"]["p99_ms"] < GOAL_API_P99_MS,
                            "no_errors": burning["neighbour"]["errors"] == 0 and burning["api"]["errors"] == 0,
                        },
                    }
                )
            except BaseException as exc:
                failure = exc
                logger.exception("benchmark failed; worker log tail:\n%s", platform.worker.tail(60))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failure is not None:
        document["failed"] = f"{type(failure).__name__}: {str(failure)[:2000]}"
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    return 1 if failure is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
