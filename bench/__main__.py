"""`make bench`: every benchmark of the platform in one run, as one JSON document.

Run from the repository root: `uv run python -m bench [--runs N] [--only deploy,routes,api]`. Each benchmark
runs as a process of its own, one after the other (each starts its own private stack on free ports, and two
at once would measure each other), and prints its own JSON document; this collects them under their names and
puts every goal of every benchmark, each measured side by side with its reference in the same run, into one
top-level `goals` list: `{"bench", "figure", "value", "reference", "ratio", "goal", "met"}`.

Progress goes to stderr: each benchmark's log is captured, and its last lines are logged when it ends (its
last 200 when it fails).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

logger = logging.getLogger("bench")

# Name, module, arguments (with {runs}), time limit in seconds.
BENCHES: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("deploy", "bench.deploy", ("--runs", "{runs}"), 3600.0),
    ("routes", "bench.routes", (), 1800.0),
    ("api", "bench.api", (), 1800.0),
)


def run_one(module: str, args: list[str], timeout: float) -> tuple[dict[str, Any] | None, str, str]:
    """Run `python -m module args` -> (its JSON document or None, its stderr, an error or "")."""
    argv = [sys.executable, "-m", module, *args]
    try:
        result = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, error = result.stdout, result.stderr, ""
    except subprocess.CalledProcessError as exc:
        # A benchmark that failed part-way still prints what it measured, with the failure in its notes.
        stdout, stderr, error = exc.stdout or "", exc.stderr or "", f"exit status {exc.returncode}"
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        error = f"timed out after {timeout:.0f} s"
    try:
        document = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        document, error = None, error or "its output was not one JSON document"
    return document, stderr, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="measured runs per deploy series (default 5)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.runs < 5:
        logger.warning("fewer than 5 runs per series: the medians are not the ones the README's table records")
    wanted = {name for name in args.only.split(",") if name} or {name for name, *_ in BENCHES}
    unknown = wanted - {name for name, *_ in BENCHES}
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")

    report: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "goals": []}
    report["machine"] = {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    failed = False
    for name, module, template, timeout in BENCHES:
        if name not in wanted:
            continue
        bench_args = [part.format(runs=args.runs) for part in template]
        logger.info("running %s (python -m %s %s)", name, module, " ".join(bench_args))
        started = time.monotonic()
        document, stderr, error = run_one(module, bench_args, timeout)
        elapsed = round(time.monotonic() - started, 1)
        tail = "\n".join(stderr.splitlines()[-(200 if error else 5) :])
        if error:
            failed = True
            logger.error("%s failed (%s) after %.0f s; its log ends:\n%s", name, error, elapsed, tail)
        else:
            logger.info("%s done in %.0f s; its log ends:\n%s", name, elapsed, tail)
        report[name] = {"seconds": elapsed, "error": error or None, "result": document}
        for goal in (document or {}).get("goals", []):
            report["goals"].append({"bench": name, **goal})
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["all_goals_met"] = bool(report["goals"]) and all(goal["met"] for goal in report["goals"])
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
