"""Deploy benchmark: how much the platform adds on top of plain podman + gVisor.

Run from the repository root: `uv run python -m bench.deploy [--runs N]` (or `make bench`). It starts a
private stack (Redis, Caddy, PostgreSQL, PgBouncer, the API, a Celery worker) on free ports in a temp dir
with the project's supervisor (`devstack`, the same code `make up` and the integration tests use), creates
a tenant and a 1-replica app, and measures in one run, on one image:

(a) a redeploy whose dependency image is cached: POST of the archive -> first 200 through the Caddy edge
    whose body carries the new deployment id (after one unmeasured warm-up deploy that builds the
    dependency image);
(b) a raw `podman run` of the same app image under runsc with the platform's hardening flags
    (`drivers.podman.run_detached_argv`) on an isolated test network -> first 200 on the container;
(c) the ratio of the medians, a/b;
(d) a rebuild with unchanged dependencies: the pipeline's build phase (from the worker log) and a bare
    `podman build` of the Containerfile the pipeline generates, against a conventional Containerfile
    (`RUN python3 -m venv ... && pip install -r requirements.txt`) built with `--layers` and a warm cache;
(e) rollbacks: POST /apps/{id}/rollback to the previous deployment -> first 200 with the rollback's id, against
    the raw `podman run` of (b);
(f) first deploys: a new tenant's first deploy of examples/hello (cold dependency install, cold uv cache) ->
    first 200, against the conventional way: a cold host `podman build` with pip, then a raw `podman run` of
    it until it answers; then the memory of that idle replica's sandbox (RSS and PSS of the processes in its
    memory cgroup, and the cgroup's usage).
The document's `goals` list compares each figure with its reference (the issue's table); `python -m bench`
collects it with the other benchmarks' goals.

Progress goes to stderr through `logging`; the result is one JSON document on stdout. Everything the run
creates in podman carries its own `coltsfoot.instance` label and is removed at the end (never the base image).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform as host_platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from devstack.services import INSTANCE_LABEL
from devstack.services import REPO_ROOT
from devstack.services import Platform
from devstack.stack import isolated_stack
from drivers import buildpack
from drivers import podman

logger = logging.getLogger("bench.deploy")

HELLO = REPO_ROOT / "examples" / "hello"

APP_PORT = 8000
POLL_INTERVAL = 0.05
DEPLOY_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0
# How long a first-deployed replica idles before its memory is read, and the goal for it.
IDLE_SECONDS = 10
IDLE_MEMORY_GOAL_MB = 60
CONTAINER_PATH = "/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Worker-log events (their message text) that mark the pipeline's phases, in order.
PHASE_EVENTS = (
    ("building", re.compile(r"deployment queued -> building")),
    ("built", re.compile(r"deployment building -> starting")),
    ("release", re.compile(r"Running release: ")),
    ("starting", re.compile(r"Starting \d+ replica\(s\) under gVisor")),
    ("answering", re.compile(r"All replicas answer HTTP")),
    ("routing", re.compile(r"Switching the route")),
    ("live", re.compile(r"deployment starting -> live")),
)
TASK_SUCCEEDED_RE = re.compile(r"Task coltsfoot\.deployment_run\[[^\]]+\] succeeded")
CELERY_LINE_RE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]*\] (.*)$")


# --- small helpers ------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, Any]:
    rounded = [round(v, 3) for v in values]
    if not values:
        return {"runs": [], "median": None}
    return {
        "runs": rounded,
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def median_or_none(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def command_output(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (result.stdout or result.stderr).strip()


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_mb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total_mb = int(line.split()[1]) // 1024
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": mem_total_mb,
        "kernel": host_platform.release(),
        "podman": command_output(["podman", "--version"]),
        "runsc": command_output(["runsc", "--version"]).splitlines()[0],
        "caddy": command_output(["caddy", "version"]).split(" ")[0],
        "python": host_platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def write_context(dest: Path, files: dict[str, bytes]) -> None:
    """A fresh build context like the archive unpacker leaves it: new files (fresh mtimes), 0644 in a 0755 dir."""
    dest.mkdir(parents=True)
    dest.chmod(0o755)
    for name, content in files.items():
        path = dest / name
        path.write_bytes(content)
        path.chmod(0o644)


def bench_source(token: str) -> dict[str, bytes]:
    """examples/hello with a comment naming this run appended to requirements.txt: pip ignores it, but it gives
    the run its own dependency key, so its dependency image (and the conventional build's layer cache) is its
    own, built by the warm-up, labelled with this instance and never shared with another stack on the machine."""
    files = {p.name: p.read_bytes() for p in sorted(HELLO.iterdir()) if p.is_file()}
    files["requirements.txt"] += f"# coltsfoot deploy benchmark {token}\n".encode()
    return files


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def configure_django(env: dict[str, str]) -> None:
    """Load the platform's own settings (podman binary, runsc flags, base image, CA bundle) in this process, so
    the raw runs and builds use exactly the flags the platform uses. Django's LOGGING replaces the root handler,
    so the bench's plain stderr logging is installed again afterwards."""
    for key, value in env.items():
        if key.startswith(("COLTSFOOT_", "DJANGO_")):
            os.environ[key] = value
    import django

    django.setup()
    setup_logging()


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("drivers.podman").setLevel(logging.WARNING)


def sandbox_memory(container: str) -> dict[str, float]:
    """What one replica's sandbox holds in memory: the processes of its memory cgroup (runsc's sandbox, gofer
    and their helpers; the app itself runs inside the sandbox), summed as RSS and as PSS (shared pages split
    between the processes sharing them), and the cgroup's own usage (page cache included)."""
    pid = podman.run(podman.container_inspect_argv(container, "{{.State.Pid}}")).strip()
    cgroup = ""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") or (hierarchy == "0" and not cgroup):
            cgroup = path
    v1 = Path("/sys/fs/cgroup/memory") / cgroup.lstrip("/")
    root = v1 if v1.is_dir() else Path("/sys/fs/cgroup") / cgroup.lstrip("/")
    pids = [int(line) for line in (root / "cgroup.procs").read_text().split()]
    rss_kb = pss_kb = 0
    for member in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb += int(line.split()[1])
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss_kb += int(line.split()[1])
    usage = root / ("memory.usage_in_bytes" if v1.is_dir() else "memory.current")
    usage_bytes = int(usage.read_text()) if usage.is_file() else 0
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "pss_mb": round(pss_kb / 1024, 1),
        "cgroup_usage_mb": round(usage_bytes / 1024 / 1024, 1),
        "processes": float(len(pids)),
    }


# --- worker log --------------------------------------------------------------------------------------


def worker_events(log_text: str) -> list[tuple[float, str]]:
    """(epoch seconds, message) for every line of the worker log: JSON lines from the platform's structured
    formatter, or Celery's own `[date time,ms: LEVEL/process] message` lines (local time)."""
    events: list[tuple[float, str]] = []
    for line in log_text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                payload = json.loads(line)
                events.append((datetime.fromisoformat(payload["ts"]).timestamp(), str(payload["event"])))
            continue
        match = CELERY_LINE_RE.match(line)
        if match is not None:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp, match.group(2)))
    return events


def phase_marks(log_text: str, since: float, until: float) -> dict[str, float]:
    """The first time each phase event occurs in [since, until] (deployments run one at a time here)."""
    marks: dict[str, float] = {}
    for stamp, message in worker_events(log_text):
        if not since <= stamp <= until:
            continue
        for name, pattern in PHASE_EVENTS:
            if name not in marks and pattern.search(message):
                marks[name] = stamp
    return marks


def phase_durations(marks: dict[str, float], posted: float) -> dict[str, float]:
    def span(start: str | None, end: str) -> float | None:
        begin = posted if start is None else marks.get(start)
        finish = marks.get(end)
        return None if begin is None or finish is None else finish - begin

    spans = {
        "post_to_worker_pickup": span(None, "building"),
        "build": span("building", "built"),
        # The replicas are launched first, then boot while the release one-off runs (pipeline overlap).
        "network_env_secrets": span("built", "starting"),
        "launch_replicas": span("starting", "release"),
        "release_and_boot_until_http": span("release", "answering"),
        "route_switch_and_live": span("routing", "live"),
    }
    return {name: round(value, 3) for name, value in spans.items() if value is not None}


# --- the benchmark ------------------------------------------------------------------------------------


@dataclass
class Results:
    machine: dict[str, Any]
    deploy_s: list[float] = field(default_factory=list)
    deploy_phases: list[dict[str, float]] = field(default_factory=list)
    raw_run_s: list[float] = field(default_factory=list)
    raw_run_returned_s: list[float] = field(default_factory=list)
    platform_build_phase_s: list[float] = field(default_factory=list)
    platform_podman_build_s: list[float] = field(default_factory=list)
    raw_build_s: list[float] = field(default_factory=list)
    platform_podman_build_changed_src_s: list[float] = field(default_factory=list)
    raw_build_changed_src_s: list[float] = field(default_factory=list)
    rollback_s: list[float] = field(default_factory=list)
    first_deploy_s: list[float] = field(default_factory=list)
    conventional_first_s: list[float] = field(default_factory=list)
    idle_memory: list[dict[str, float]] = field(default_factory=list)
    warmup: dict[str, Any] = field(default_factory=dict)
    uncached_steps: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        deploy_median = median_or_none(self.deploy_s)
        raw_median = median_or_none(self.raw_run_s)
        phase_medians: dict[str, float | None] = {}
        for name in sorted({key for phases in self.deploy_phases for key in phases}):
            phase_medians[name] = median_or_none([p[name] for p in self.deploy_phases if name in p])
        return {
            "machine": {**self.machine, "loadavg_at_end": os.getloadavg()},
            "goals": self.goals(),
            "first_deploy_to_edge_200_s": summary(self.first_deploy_s),
            "conventional_first_build_and_run_to_200_s": summary(self.conventional_first_s),
            "rollback_to_edge_200_s": summary(self.rollback_s),
            "idle_replica_memory_mb": {
                key: summary([sample[key] for sample in self.idle_memory])
                for key in ("rss_mb", "pss_mb", "cgroup_usage_mb", "processes")
                if self.idle_memory
            },
            "deploy_cached_image_to_edge_200_s": summary(self.deploy_s),
            "raw_podman_run_to_200_s": summary(self.raw_run_s),
            "ratio_median": round(deploy_median / raw_median, 2) if deploy_median and raw_median else None,
            "rebuild_unchanged_deps_platform_s": summary(self.platform_build_phase_s),
            "raw_podman_build_unchanged_deps_s": summary(self.raw_build_s),
            "details": {
                "deploy_phase_medians_s": phase_medians,
                "deploy_phases_per_run_s": self.deploy_phases,
                "raw_podman_run_command_returned_s": summary(self.raw_run_returned_s),
                "rebuild_unchanged_deps_platform_podman_build_only_s": summary(self.platform_podman_build_s),
                "rebuild_changed_source_platform_podman_build_only_s": summary(
                    self.platform_podman_build_changed_src_s
                ),
                "raw_podman_build_changed_source_s": summary(self.raw_build_changed_src_s),
                "warmup": self.warmup,
                "build_steps_not_from_cache": self.uncached_steps,
            },
            "notes": self.notes,
        }

    def goals(self) -> list[dict[str, Any]]:
        def ratio_goal(figure: str, value: list[float], reference: list[float], limit: float) -> dict[str, Any]:
            mine, theirs = median_or_none(value), median_or_none(reference)
            ratio = round(mine / theirs, 2) if mine and theirs else None
            return {
                "figure": figure,
                "value": mine,
                "reference": theirs,
                "ratio": ratio,
                "goal": f"<= {limit:.2f}x",
                "met": ratio is not None and ratio <= limit,
            }

        rss = median_or_none([sample["rss_mb"] for sample in self.idle_memory])
        return [
            ratio_goal(
                "first deploy of examples/hello, POST -> first 200 (s), against a conventional host build with pip "
                "+ run",
                self.first_deploy_s,
                self.conventional_first_s,
                1.0,
            ),
            ratio_goal(
                "code-only redeploy, POST -> first 200 with the new id (s), against a raw podman run",
                self.deploy_s,
                self.raw_run_s,
                1.15,
            ),
            ratio_goal(
                "rollback, POST -> first 200 (s), against a raw podman run", self.rollback_s, self.raw_run_s, 1.10
            ),
            {
                "figure": "memory of one idle examples/hello replica, sandbox RSS (MB)",
                "value": rss,
                "reference": None,
                "ratio": None,
                "goal": f"<= {IDLE_MEMORY_GOAL_MB} MB",
                "met": rss is not None and rss <= IDLE_MEMORY_GOAL_MB,
            },
        ]


class Bench:
    def __init__(self, platform: Platform, workdir: Path, runs: int, results: Results) -> None:
        self.platform = platform
        self.workdir = workdir
        self.runs = runs
        self.results = results
        self.instance_id = platform.instance_id
        self.token = secrets.token_hex(4)
        self.client = platform.client()
        self.app: dict[str, Any] = {}
        self.tenant_id = ""
        self.deployments_done = 0
        self.last_deployment: dict[str, Any] = {}
        self.images_to_remove: list[str] = []
        self.source = bench_source(self.token)
        self.contexts = 0

    # -- (a) deploy through the platform ------------------------------------------------------------

    def setup_tenant_and_app(self) -> None:
        tenant = self.platform.create_tenant(f"bench{self.token}")
        self.tenant_id = tenant["tenant_id"]
        self.client = self.platform.client(tenant["token"])
        response = self.client.post("/apps", json={"name": "hello", "replicas": 1})
        response.raise_for_status()
        self.app = response.json()
        logger.info("app %s at %s (%s MiB, %s cpus)", self.app["id"], self.app["url"], *self._limits())

    def _limits(self) -> tuple[int, float]:
        return int(self.app["memory_mb"]), float(self.app["cpus"])

    def deploy(
        self, archive: bytes, *, app: dict[str, Any] | None = None, client: httpx.Client | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """POST the archive and poll the edge until it answers 200 with the new deployment's id.
        Returns (seconds to that 200, wall-clock time of the POST, the final deployment)."""
        app = app or self.app
        client = client or self.client
        posted_wall = time.time()
        started = time.monotonic()
        response = client.post(
            f"/apps/{app['id']}/deployments", files={"source": ("source.tar.gz", archive, "application/gzip")}
        )
        return self._until_served(response, started, posted_wall, app, client)

    def rollback(self, target_id: str) -> tuple[float, float, dict[str, Any]]:
        """POST a rollback to `target_id` and poll the edge until the new (rollback) deployment answers."""
        posted_wall = time.time()
        started = time.monotonic()
        response = self.client.post(f"/apps/{self.app['id']}/rollback", json={"deployment_id": target_id})
        return self._until_served(response, started, posted_wall, self.app, self.client)

    def _until_served(
        self, response: httpx.Response, started: float, posted_wall: float, app: dict[str, Any], client: httpx.Client
    ) -> tuple[float, float, dict[str, Any]]:
        if response.status_code != 202:
            raise RuntimeError(f"POST answered {response.status_code}: {response.text[:500]}")
        deployment_id = response.json()["id"]
        next_state_check = started + 1.0
        while True:
            now = time.monotonic()
            if now - started > DEPLOY_TIMEOUT:
                raise TimeoutError(f"deployment {deployment_id} not served within {DEPLOY_TIMEOUT:.0f}s")
            with contextlib.suppress(httpx.HTTPError):
                page = self.platform.edge_get(app["url"], timeout=2.0)
                if page.status_code == 200 and deployment_id in page.text:
                    break
            if now >= next_state_check:
                next_state_check = now + 1.0
                state = client.get(f"/deployments/{deployment_id}").json()
                if state["state"] in {"failed", "superseded"}:
                    log = client.get(f"/deployments/{deployment_id}/log").text
                    raise RuntimeError(f"deployment {deployment_id} ended {state['state']}: {state}\n{log[-3000:]}")
            time.sleep(POLL_INTERVAL)
        elapsed = time.monotonic() - started
        self.deployments_done += 1
        final = self._settle(deployment_id, app, client)
        return elapsed, posted_wall, final

    def _settle(self, deployment_id: str, app: dict[str, Any], client: httpx.Client) -> dict[str, Any]:
        """Wait until the worker has finished the deployment entirely (live, previous replicas retired, task
        done), so the next measurement starts from a quiet platform."""

        def live() -> bool:
            return bool(client.get(f"/deployments/{deployment_id}").json()["state"] == "live")

        def task_done() -> bool:
            log = self.platform.worker.read_log()
            return len(TASK_SUCCEEDED_RE.findall(log)) >= self.deployments_done

        def one_replica() -> bool:
            return len(podman.containers_with_label("coltsfoot.app", app["id"])) == int(app["replicas"])

        wait_for(live, timeout=DEPLOY_TIMEOUT, interval=0.2, what=f"deployment {deployment_id} to be live")
        wait_for(task_done, timeout=120, interval=0.2, what="the deployment task to finish")
        wait_for(one_replica, timeout=120, interval=0.2, what="the previous replicas to be retired")
        deployment: dict[str, Any] = client.get(f"/deployments/{deployment_id}").json()
        if app is self.app:
            self.last_deployment = deployment
        return deployment

    def measure_deploys(self) -> None:
        archive = tar_gz(self.source)
        logger.info("warm-up deployment (builds the dependency image)")
        elapsed, posted, first = self.deploy(archive)
        self.results.warmup["first_deploy_with_dependency_install_to_edge_200_s"] = round(elapsed, 3)
        log = self.client.get(f"/deployments/{first['id']}/log").text
        if "Installing dependencies" not in log:
            self.results.notes.append("warm-up deploy did not install dependencies: a deps image already existed")
        attempts = 0
        while len(self.results.deploy_s) < self.runs:
            attempts += 1
            if attempts > 2 * self.runs:
                raise RuntimeError("too many redeploys did not reuse the cached dependency image")
            index = len(self.results.deploy_s)
            # An edit of app.py each time: an unchanged source would reuse the previous image outright
            # (no `podman build` at all), and this measures a redeploy that builds on the cached layer.
            edit = f"\n# bench redeploy {self.token} {attempts}\n".encode()
            elapsed, posted, deployment = self.deploy(tar_gz({**self.source, "app.py": self.source["app.py"] + edit}))
            log = self.client.get(f"/deployments/{deployment['id']}/log").text
            if "reusing the cached dependency layer" not in log:
                self.results.notes.append(
                    f"redeploy attempt {attempts} did not reuse the cached dependency image; not counted"
                )
                continue
            worker_log = self.platform.worker.read_log()
            marks = phase_marks(worker_log, posted, posted + elapsed + 30)
            phases = phase_durations(marks, posted)
            phases["edge_200_after_post"] = round(elapsed, 3)
            self.results.deploy_s.append(elapsed)
            self.results.deploy_phases.append(phases)
            if "build" in phases:
                self.results.platform_build_phase_s.append(phases["build"])
            logger.info("redeploy %d/%d: POST -> edge 200 in %.2fs %s", index + 1, self.runs, elapsed, phases)

    # -- (b) raw podman run of the same image ------------------------------------------------------

    def replica_user(self, deployment_id: str) -> tuple[int, int]:
        """The uid:gid the platform runs this deployment's replica as (the tenant's)."""
        replica = podman.containers_with_label("coltsfoot.deployment", deployment_id)[0]
        user = podman.run(podman.container_inspect_argv(replica, "{{.Config.User}}")).strip()
        uid, _, gid = user.partition(":")
        return int(uid), int(gid or uid)

    def raw_run(self, image: str, name: str, user: tuple[int, int]) -> tuple[float, float]:
        """`podman run --detach` of `image` with the platform's runsc and hardening flags, as a replica of the
        bench app would run -> (seconds until it answers 200, seconds until `podman run` returned)."""
        from provisioning import pipeline  # needs the app registry, which configure_django has set up

        network = f"cf-bench-{self.token}"
        podman.network_ensure(network, {INSTANCE_LABEL: self.instance_id})
        memory_mb, cpus = self._limits()
        spec = podman.ContainerSpec(
            name=name,
            image=image,
            network=network,
            uid=user[0],
            gid=user[1],
            memory_mb=memory_mb,
            cpus=cpus,
            pids_limit=pipeline.PIDS_LIMIT,
            env={
                "PORT": str(APP_PORT),
                "HOME": "/tmp",  # noqa: S108 - the sandbox's own tmpfs
                "COLTSFOOT_APP_NAME": str(self.app["name"]),
                "COLTSFOOT_DEPLOYMENT_ID": str(self.last_deployment["id"]),
            },
            secret_env={},
            command=buildpack.parse_procfile(self.source["Procfile"].decode())["web"],
            labels={INSTANCE_LABEL: self.instance_id, "coltsfoot.role": "bench"},
            workdir="/app/src",
            shell_path="/bin/bash",
        )
        try:
            started = time.monotonic()
            podman.run(podman.run_detached_argv(spec))
            returned = time.monotonic() - started
            address = podman.container_address(name, network)
            if not address:
                raise RuntimeError(f"container {name} has no address on {network}")
            elapsed = self._poll_http(f"http://{address}:{APP_PORT}/", started, name)
        finally:
            podman.container_remove(name)
        return elapsed, returned

    def measure_raw_runs(self) -> None:
        image = str(self.last_deployment["image"])
        user = self.replica_user(str(self.last_deployment["id"]))
        logger.info("raw podman run of %s as %s (one unmeasured warm-up run first)", image, user)
        for index in range(self.runs + 1):
            elapsed, returned = self.raw_run(image, f"cf-bench-{self.token}-run-{index}", user)
            if index == 0:
                self.results.warmup["raw_podman_run_first_on_new_network_s"] = round(elapsed, 3)
                continue
            self.results.raw_run_s.append(elapsed)
            self.results.raw_run_returned_s.append(returned)
            logger.info("raw run %d/%d: podman run -> 200 in %.2fs", index, self.runs, elapsed)

    # -- (e) rollbacks ------------------------------------------------------------------------------

    def measure_rollbacks(self) -> None:
        """Roll back to the previous deployment and forward again, alternately: each rollback reuses an image
        that exists, so it starts replicas and switches the route without building."""
        for index in range(self.runs):
            recent = self.client.get(f"/apps/{self.app['id']}/deployments?limit=5").json()["items"]
            live = str(self.last_deployment["id"])
            target = next(d["id"] for d in recent if d["id"] != live and d["state"] == "superseded")
            elapsed, _posted, _deployment = self.rollback(target)
            self.results.rollback_s.append(elapsed)
            logger.info("rollback %d/%d to %s: POST -> edge 200 in %.2fs", index + 1, self.runs, target, elapsed)

    def _poll_http(self, url: str, started: float, name: str) -> float:
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(url).status_code == 200:
                        return time.monotonic() - started
                if time.monotonic() - started > RUN_TIMEOUT:
                    raise TimeoutError(f"{name} did not answer 200 on {url} within {RUN_TIMEOUT:.0f}s")
                time.sleep(POLL_INTERVAL)

    # -- (d) builds with unchanged dependencies ------------------------------------------------------

    def measure_builds(self) -> None:
        from django.conf import settings

        from provisioning import pipeline  # needs the models, so Django set up first

        source = self.source
        base_image = str(settings.BASE_IMAGE)
        probe = self.new_context(source)
        spec = buildpack.detect(probe)
        files = buildpack.dependency_files(probe, spec)
        deps_image = pipeline.deps_image_ref(uuid.UUID(self.tenant_id), podman.image_id(base_image), files)
        if not podman.image_exists(deps_image):
            raise RuntimeError(f"the platform's dependency image {deps_image} is missing")
        platform_cf = self.workdir / "Containerfile.platform"

        def platform_build(tag: str, files: dict[str, bytes], series: str) -> float:
            context = self.new_context(files)
            # As the pipeline builds (provisioning.pipeline.build): its labels (labels_for, one of them new per
            # deployment, and the dependency image's) in one LABEL line, and no intermediate layers.
            labels = {
                INSTANCE_LABEL: self.instance_id,
                "coltsfoot.tenant": self.tenant_id,
                "coltsfoot.app": str(self.app["id"]),
                "coltsfoot.deployment": str(uuid.uuid4()),
                "coltsfoot.role": "image",
                pipeline.DEPS_LABEL: deps_image,
            }
            label_line = "LABEL " + " ".join(f"{key}={value}" for key, value in sorted(labels.items()))
            platform_cf.write_text(buildpack.containerfile(deps_image) + label_line + "\n")
            started = time.monotonic()
            output = podman.run(podman.build_argv(str(context), str(platform_cf), tag, layers=False), timeout=900)
            elapsed = time.monotonic() - started
            self.images_to_remove.append(tag)
            self.results.uncached_steps.setdefault(series, []).append(uncached_steps(output))
            return elapsed

        raw_build = self.conventional_build

        logger.info("conventional build, cold (pip install under --isolation=chroot): warm-up, not measured")
        cold = raw_build(f"localhost/coltsfoot-bench-raw:{self.token}-cold", source, "raw_cold")
        self.results.warmup["raw_podman_build_cold_deps_install_s"] = round(cold, 3)
        logger.info("conventional cold build took %.2fs", cold)
        warm = platform_build(f"localhost/coltsfoot-bench-app:{self.token}-warm", source, "platform_first")
        self.results.warmup["platform_podman_build_first_s"] = round(warm, 3)
        for index in range(1, self.runs + 1):
            # Alternate, so that background load on the machine hits both series alike.
            elapsed = platform_build(
                f"localhost/coltsfoot-bench-app:{self.token}-same-{index}", source, "platform_same"
            )
            self.results.platform_podman_build_s.append(elapsed)
            raw = raw_build(f"localhost/coltsfoot-bench-raw:{self.token}-same-{index}", source, "raw_same")
            self.results.raw_build_s.append(raw)
            logger.info("build %d/%d, same source: platform %.2fs, conventional %.2fs", index, self.runs, elapsed, raw)
        for index in range(1, self.runs + 1):
            changed = {**source, "app.py": source["app.py"] + f"\n# bench edit {self.token} {index}\n".encode()}
            elapsed = platform_build(
                f"localhost/coltsfoot-bench-app:{self.token}-edit-{index}", changed, "platform_edit"
            )
            self.results.platform_podman_build_changed_src_s.append(elapsed)
            raw = raw_build(f"localhost/coltsfoot-bench-raw:{self.token}-edit-{index}", changed, "raw_edit")
            self.results.raw_build_changed_src_s.append(raw)
            logger.info("build %d/%d, edited app.py: platform %.2fs, raw %.2fs", index, self.runs, elapsed, raw)

    def conventional_build(self, tag: str, files: dict[str, bytes], series: str) -> float:
        """`podman build` on the host (chroot isolation, pip, the layer cache) of the conventional Containerfile."""
        from django.conf import settings

        raw_cf = self.workdir / "Containerfile.conventional"
        if not raw_cf.exists():
            raw_cf.write_text(conventional_containerfile(str(settings.BASE_IMAGE)))
        ca_bundle = str(settings.BUILD_CA_BUNDLE)
        context = self.new_context(files)
        argv = ["build", "--isolation=chroot", "--layers", "--pull=never", "--network=host"]
        if ca_bundle and Path(ca_bundle).is_file():
            argv += ["--volume", f"{ca_bundle}:/etc/ssl/certs/ca-certificates.crt:ro"]
        argv += ["--label", f"{INSTANCE_LABEL}={self.instance_id}", "--file", str(raw_cf), "--tag", tag]
        argv.append(str(context))
        started = time.monotonic()
        output = podman.run(argv, timeout=900)
        elapsed = time.monotonic() - started
        self.images_to_remove.append(tag)
        self.results.uncached_steps.setdefault(series, []).append(uncached_steps(output))
        return elapsed

    # -- (f) first deploys, and the memory of an idle replica ------------------------------------------

    def measure_first_deploys(self) -> None:
        """Each run is a tenant's first deploy of examples/hello (a new tenant, so its uv cache is cold, and a
        requirements.txt of its own, so no dependency image exists), interleaved with the conventional way: a
        cold `podman build` on the host with pip (no cached layer either), then a raw `podman run` of that image
        under gVisor until it answers. After each first deploy its replica idles, and its memory is read."""
        for index in range(1, self.runs + 1):
            token = f"{self.token}-first-{index}"
            source = bench_source(token)
            tenant = self.platform.create_tenant(f"bench{secrets.token_hex(4)}")
            client = self.platform.client(tenant["token"])
            response = client.post("/apps", json={"name": "hello", "replicas": 1})
            response.raise_for_status()
            app = response.json()
            elapsed, _posted, deployment = self.deploy(tar_gz(source), app=app, client=client)
            log = client.get(f"/deployments/{deployment['id']}/log").text
            if "Installing dependencies" not in log:
                self.results.notes.append(f"first deploy {index} did not install dependencies; not counted")
            else:
                self.results.first_deploy_s.append(elapsed)
            user = self.replica_user(str(deployment["id"]))
            tag = f"localhost/coltsfoot-bench-raw:{token}"
            build = self.conventional_build(tag, source, "raw_first")
            run, _returned = self.raw_run(tag, f"cf-bench-{token}", user)
            self.results.conventional_first_s.append(build + run)
            logger.info(
                "first deploy %d/%d: platform %.2fs, conventional build %.2fs + run %.2fs",
                index,
                self.runs,
                elapsed,
                build,
                run,
            )
            time.sleep(IDLE_SECONDS)
            (replica,) = podman.containers_with_label("coltsfoot.deployment", str(deployment["id"]))
            memory = sandbox_memory(replica)
            self.results.idle_memory.append(memory)
            logger.info("idle replica after %ds: %s", IDLE_SECONDS, memory)
            client.delete(f"/apps/{app['id']}").raise_for_status()

    def new_context(self, files: dict[str, bytes]) -> Path:
        self.contexts += 1
        context = self.workdir / f"context-{self.contexts}"
        write_context(context, files)
        return context

    def remove_bench_images(self) -> None:
        for tag in reversed(self.images_to_remove):
            try:
                podman.image_remove(tag)
            except podman.PodmanError:
                logger.warning("could not remove %s", tag, exc_info=True)
        self.images_to_remove.clear()


def uncached_steps(build_output: str) -> str:
    """Which build steps podman ran rather than took from its layer cache, e.g. "7,8,9,10/10" ("" = all cached;
    the FROM step never counts)."""
    steps = re.split(r"^STEP ", build_output, flags=re.MULTILINE)[1:]
    ran: list[str] = []
    total = ""
    for text in steps:
        match = re.match(r"(\d+)/(\d+): (\S+)", text)
        if match is None:
            continue
        total = match.group(2)
        if match.group(3) != "FROM" and "--> Using cache" not in text:
            ran.append(match.group(1))
    return f"{','.join(ran)}/{total}" if ran else f"none/{total}"


def conventional_containerfile(base_image: str) -> str:
    """What one would usually write: dependencies in their own cached layer, then the source."""
    lines = [
        f"FROM {base_image}",
        "WORKDIR /app",
        "COPY requirements.txt /app/requirements.txt",
        "RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install --no-cache-dir --no-input "
        "--disable-pip-version-check -r /app/requirements.txt",
        "COPY . /app/src",
        "WORKDIR /app/src",
        f"ENV PATH={CONTAINER_PATH} VIRTUAL_ENV=/app/.venv PYTHONUNBUFFERED=1 HOME=/tmp",
        'CMD ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"]',
    ]
    return "\n".join(lines) + "\n"


def static_notes(runs: int) -> list[str]:
    return [
        f"N={runs} measured runs per series; medians. The (a) series follows one unmeasured warm-up deploy that "
        "installs the dependencies; every measured redeploy POSTs examples/hello with one comment line naming "
        "the run appended to requirements.txt, so the run has a dependency image of its own (other stacks on the "
        "machine reuse and delete theirs by content key), and one naming the redeploy appended to app.py, so each "
        "redeploy builds its app image (an unchanged source would reuse the previous one without a build); a "
        "redeploy whose log does not say the dependency image was reused is not counted.",
        "(a) clock: from just before the multipart POST until the Caddy edge (Host header of the app) first "
        "answers 200 with the new deployment id in the body; the edge is polled every 50 ms. The deploy "
        "includes the hello Procfile's `release:` one-off container, which runs under gVisor on every deploy.",
        "(b) clock: from launching `podman run --detach` (drivers.podman.run_detached_argv, the platform's "
        "runsc + hardening flags, the app image the platform built, the replica's uid, memory and cpus) until "
        "http://<container ip>:8000/ first answers 200, polled every 50 ms; one unmeasured warm-up run first "
        "(it also brings the test network's bridge up); each container is removed before the next run.",
        "rebuild_unchanged_deps_platform_s is the pipeline's build phase from the worker log (state building "
        "-> starting: detect, image checks, the dependency key, `podman build` of the generated RUN-less "
        "Containerfile, image inspect). details.rebuild_unchanged_deps_platform_podman_build_only_s is that "
        "`podman build` alone (drivers.podman.build_argv with layers=False, as the pipeline runs it, with a "
        "per-deployment label and a fresh context).",
        "raw_podman_build_unchanged_deps_s: `podman build --isolation=chroot --layers --network=host` with the CA "
        "bundle mounted, of a conventional Containerfile (FROM base, COPY requirements.txt, RUN venv + pip "
        "install, COPY . .) after one unmeasured cold build, so the dependency layer is cached. Each build gets "
        "a freshly written context with the same bytes, as an unpacked upload or a new checkout would; the "
        "`*_changed_source_*` series edit app.py each run, so the source COPY layer cannot be reused.",
        "details.build_steps_not_from_cache lists, per build, the steps podman executed instead of taking them "
        "from its layer cache (podman 4.3 turns every `--label` flag into a LABEL step of its own). The platform's "
        "generated Containerfile has 6 steps, its labels in one LABEL line, built with --layers=false (one commit "
        "at the end: nothing after the source COPY could come from a cache); the conventional one has 8 steps plus "
        "1 label, built with --layers.",
        "rollback_to_edge_200_s: POST /apps/{id}/rollback to the newest superseded deployment (its image exists, "
        "so nothing builds) until the edge answers 200 with the rollback's id; each rollback also runs the "
        "Procfile's `release:`. Its reference is raw_podman_run_to_200_s.",
        "first_deploy_to_edge_200_s: each run creates a tenant (so its uv cache is cold) and an app, and POSTs "
        "examples/hello with a requirements.txt of its own (so no dependency image exists): dependencies are "
        "installed with uv inside the gVisor build sandbox. conventional_first_build_and_run_to_200_s is, in the "
        "same run, a cold `podman build --isolation=chroot` of the conventional Containerfile (pip, no cached "
        "layer) plus a raw `podman run` of the result until it answers 200.",
        f"idle_replica_memory_mb: {IDLE_SECONDS} s after each first deploy went live, the processes of its "
        "replica's memory cgroup (runsc's sandbox and gofer; the app runs inside the sandbox): RSS summed (shared "
        "pages counted in each process), PSS summed (shared pages split), and the cgroup's usage (page cache "
        "included). The goal reads the RSS sum.",
        "Builds of the two kinds are interleaved so background load hits both alike. Other jobs may share this "
        "machine: see loadavg_at_start/loadavg_at_end.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="measured runs per series (default 5)")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (service logs) at the end")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    setup_logging()

    results = Results(machine=machine_info())
    results.notes.extend(static_notes(args.runs))
    tmp = Path(tempfile.mkdtemp(prefix="coltsfoot-bench-"))
    instance_id = f"bench-{os.getpid()}-{secrets.token_hex(4)}"
    logger.info("instance %s, temp dir %s", instance_id, tmp)
    failure: BaseException | None = None
    try:
        # No beat: nothing periodic runs during the measurements.
        stack = isolated_stack(
            tmp,
            instance_id=instance_id,
            extra_env={"COLTSFOOT_START_DEADLINE": "60", "COLTSFOOT_LOG_LEVEL": "INFO"},
            with_beat=False,
        )
        platform = stack.require_platform()
        configure_django(platform.env)
        with stack:
            workdir = tmp / "builds"
            workdir.mkdir()
            bench = Bench(platform, workdir, args.runs, results)
            try:
                bench.setup_tenant_and_app()
                bench.measure_deploys()
                bench.measure_raw_runs()
                bench.measure_rollbacks()
                bench.measure_first_deploys()
                bench.measure_builds()
            except BaseException as exc:
                failure = exc
                logger.exception("benchmark failed; worker log tail:\n%s", platform.worker.tail(80))
            finally:
                bench.remove_bench_images()
    finally:
        if args.keep_temp:
            logger.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failure is not None:
        results.notes.append(f"FAILED: {type(failure).__name__}: {str(failure)[:2000]}")
    sys.stdout.write(json.dumps(results.document(), indent=2) + "\n")
    return 1 if failure is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
