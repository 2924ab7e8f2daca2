"""Log benchmark: how fast the collector copies a replica's output into the log store, and what 100 open follow
streams cost the rest of the API.

Run from the repository root: `uv run python -m bench.logs [--lines N] [--streams N]`. It starts a private stack
(devstack, free ports, a temp dir: Redis, Caddy, PostgreSQL, PgBouncer, the worker, the collector and the API
under granian), deploys a one-replica app that prints on request, and measures:
(a) throughput: the app prints N lines of 100 bytes in one request; lines/s from the request to the last line
    being in the app's Redis stream (and the app's own printing time, for comparison);
(b) latency: p50/p99 of `GET /apps` (sequential, 300 requests) with no follow stream open, then with `--streams`
    follow streams (`GET /apps/{id}/logs` with Accept: text/event-stream) open and receiving a line every 0.1 s.
Progress goes to stderr; the result is one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import platform as host_platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import redis

from devstack.process import group_members
from devstack.services import Platform
from devstack.stack import isolated_stack
from drivers import logstore
from tests.integration.helpers import hello_archive

logger = logging.getLogger("bench.logs")

APP_PY = """
import sys
from flask import Flask, request
app = Flask(__name__)

@app.get("/")
def index():
    return "ok\\n"

@app.get("/print")
def say():
    n = int(request.args.get("n", "1"))
    line = "x" * 93
    for i in range(n):
        sys.stdout.write(f"{i:06d} {line}\\n")
    sys.stdout.flush()
    return "ok\\n"
"""
PROCFILE = "web: gunicorn --bind 0.0.0.0:$PORT --workers 1 --threads 8 app:app\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(client: httpx.Client, runs: int = 300) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get("/apps")
        samples.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "max_ms": round(max(samples), 2),
    }


def follow_streams(conn: Connection, base_url: str, path: str, headers: dict[str, str], streams: int) -> None:
    """In a child process: open `streams` follow streams, say "open", count the events each receives until told
    to stop, then send the counts."""
    received = [0] * streams

    async def one(client: httpx.AsyncClient, index: int, opened: asyncio.Event, ready: list[int]) -> None:
        async with client.stream("GET", path, params={"lines": 1}, headers=headers) as response:
            ready[0] += 1
            if ready[0] == streams:
                opened.set()
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    received[index] += 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=streams + 10)
        timeout = httpx.Timeout(30, read=60)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits, trust_env=False) as client:
            opened = asyncio.Event()
            ready = [0]
            tasks = [asyncio.create_task(one(client, i, opened, ready)) for i in range(streams)]
            await asyncio.wait_for(opened.wait(), timeout=120)
            conn.send("open")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, conn.recv)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    conn.send(received)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far (those that exited meanwhile count as 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / ticks, sum(values) / ticks


def wait_live(client: httpx.Client, deployment_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/deployments/{deployment_id}").json()["state"]
        if state == "live":
            return
        if state in ("failed", "superseded"):
            raise RuntimeError(f"deployment {state}: {client.get(f'/deployments/{deployment_id}/log').text[-2000:]}")
        time.sleep(1)
    raise RuntimeError("deployment did not go live")


def run(platform: Platform, lines: int, streams: int) -> dict[str, Any]:
    tenant = platform.create_tenant(f"b{uuid.uuid4().hex[:8]}")
    client = platform.client(tenant["token"], timeout=120)
    app = client.post("/apps", json={"name": "logbench"}).json()
    files = {"source": ("s.tar.gz", hello_archive(**{"app.py": APP_PY, "Procfile": PROCFILE}), "application/gzip")}
    deployment = client.post(f"/apps/{app['id']}/deployments", files=files).json()
    logger.info("deploying the bench app")
    wait_live(client, deployment["id"])
    store = logstore.LogStore(
        redis.Redis.from_url(platform.redis.url, decode_responses=True),
        prefix=f"coltsfoot:{platform.instance_id}:logs",
        max_lines=0,
        max_bytes=0,
    )
    last = f"{lines - 1:06d} "

    # (a) throughput
    started = time.perf_counter()
    printed = platform.edge_get(f"{app['url']}print?n={lines}", timeout=300)
    printed.raise_for_status()
    printed_at = time.perf_counter()
    while True:
        newest = store.read(app["id"], lines=1).items
        if newest and newest[0].line.startswith(last):
            break
        if time.perf_counter() - started > 300:
            raise RuntimeError("the flood was not collected within 300 s")
        time.sleep(0.02)
    collected_at = time.perf_counter()
    throughput = {
        "lines": lines,
        "line_bytes": 100,
        "app_print_seconds": round(printed_at - started, 3),
        "collected_seconds": round(collected_at - started, 3),
        "lines_per_second": round(lines / (collected_at - started)),
    }
    logger.info("throughput %s", throughput)

    # (b) latency without and with open follow streams
    without = latency(client)
    logger.info("GET /apps without streams: %s", without)
    # The followers live in a process of their own (one asyncio loop, like remote clients would): 100 client
    # threads in this process would fight the latency probe for the GIL and measure the bench, not the API.
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    headers = {"Authorization": f"Bearer {tenant['token']}", "Accept": "text/event-stream"}
    followers = context.Process(
        target=follow_streams, args=(child, platform.api_url, f"/apps/{app['id']}/logs", headers, streams)
    )
    followers.start()
    if not parent.poll(120) or parent.recv() != "open":
        raise RuntimeError("the follow streams did not open")
    logger.info("%d follow streams open", streams)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            platform.edge_get(f"{app['url']}print?n=1")
            time.sleep(0.1)

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    time.sleep(2)
    api_pids = group_members(platform.api.process.pid or 0)
    watched = {"api_server": api_pids, "follow_clients": [followers.pid or 0]}
    cpu_before = {name: cpu_seconds(pids) for name, pids in watched.items()}
    machine_before, started = machine_cpu_seconds(), time.perf_counter()
    with_streams = latency(client)
    elapsed = time.perf_counter() - started
    machine_after = machine_cpu_seconds()
    # Who used the two cores while GET /apps was measured with the streams open, in cores (1.0 = one core).
    cores_used = {name: round((cpu_seconds(pids) - cpu_before[name]) / elapsed, 2) for name, pids in watched.items()}
    cores_used["whole_machine"] = round((machine_after[0] - machine_before[0]) / elapsed, 2)
    logger.info("cores used with the streams open: %s", cores_used)
    stop.set()
    feeder.join(timeout=10)
    parent.send("stop")
    received: list[int] = parent.recv() if parent.poll(60) else []
    followers.join(timeout=30)
    logger.info("GET /apps with %d streams: %s", streams, with_streams)
    return {
        "throughput": throughput,
        "get_apps_latency": {
            "without_streams": without,
            f"with_{streams}_streams": with_streams,
            "streams": streams,
            "lines_received_per_stream_median": statistics.median(received) if received else 0,
            "cores_used_with_streams": cores_used,
            "goal_p99_ms": 50,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="coltsfoot-bench-logs-"))
    stack = isolated_stack(
        tmp,
        instance_id=f"bench-{os.getpid()}-{secrets.token_hex(4)}",
        extra_env={"COLTSFOOT_START_DEADLINE": "60"},
        with_beat=False,
    )
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": host_platform.python_version(), "load": os.getloadavg()},
    }
    code = 0
    try:
        with stack:
            result.update(run(stack.require_platform(), args.lines, args.streams))
    except Exception as exc:
        logger.exception("benchmark failed")
        result["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
