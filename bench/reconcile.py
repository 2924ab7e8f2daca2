"""Reconcile benchmark: the cost of one self-healing pass over many apps when nothing differs.

Run from the repository root: `uv run python -m bench.reconcile [--apps N] [--passes N] [--hosts H]`
(or `make bench-reconcile`). Needs no services: it configures Django against a throwaway SQLite DB in a
temp dir (migrated on the spot), inserts N apps across a few tenants in bulk (each with a live
deployment and 1-2 Replica rows in state running, with addresses; the pipeline is not run), and
puts fakes at the platform's two seams:

- podman: `drivers.podman.run`, the function every podman call goes through, is replaced by an
  in-memory podman that answers `ps --all --format json` and `network ls --format json` with JSON in
  podman 4.3's shape built from the rows (the `ps` answer is encoded once per change, as podman's own
  time is not the platform's) (plus `container inspect`, `logs`, `rm` and `run --detach` for
  the repair pass). So the measured pass includes the driver's parsing of podman's output, not only
  the planner.
- Caddy: respx on the Caddy admin URL, holding the edge routes in memory: GET of the routes answers
  what the pipeline would have written for each app (`pipeline.app_route_for`), so nothing differs;
  PATCH `/id/<route>` replaces one. Like Caddy 2.6 it sends no `ETag` header, so the client computes
  the ETag from the body as it does in production. Any other request fails the benchmark.

Every podman call and every Caddy request is counted; DB queries are counted per pass. After one
warm-up pass, `--passes` passes (at least 5) are timed with `time.perf_counter()`. Then 1 % of the
replicas die (their containers exit with code 1) and one repair pass is timed, with the restart
backoff base at 0 s (so the pass restarts them at once instead of scheduling it), a 1 s start
deadline and `provisioning.pipeline.answers_http` answering True for the restarted replicas; a
last pass checks that everything settled (no actions). DB queries are counted through
`connection.execute_wrapper` (no cap), without transaction control statements (BEGIN, SAVEPOINT...).

With `--hosts H` (H > 1; the default 1 gives the output above and nothing else, the rows naming no
host), H `Host` rows host-1..host-H are inserted too (each with room for every replica, heartbeats
fresh), app i's live deployment and its replicas are placed on host-(i mod H + 1) (`Deployment.host`,
`Replica.host`) and its containers carry `coltsfoot.host=<that host>`, as `pipeline.labels_for` labels
them. The benchmark runs as host-1's worker (`COLTSFOOT_HOST_NAME=host-1`, `HOST_DEAD_SECONDS` 30).
The figures above are then still those of the whole installation's pass (`reconcile_pass()`, host
"", as one host runs it), for comparison; the JSON gains a `hosts` object with:

- `host_pass`: `reconcile_pass(host="host-1", redis=False)` with everything converged, as each host's
  worker runs it every period: one warm-up, then `--passes` timed passes (`seconds`: min, median, max,
  runs, warmup), its podman and Caddy calls, DB queries (`db_queries_by_table`: by the first table a
  statement names), `actions` (none expected), and `planned_actions`: what the planner proposed, which
  the runner re-checks against the DB before acting (and may drop);
- `control`: the control part with every heartbeat fresh, each timed like the pass: `fail_over`
  (`hosts.fail_over()`; nothing to do expected) and `requeue_work` (`tasks.requeue_work()`), with their
  queries and results;
- `failover`: host-H's heartbeat goes stale; `hosts.fail_over()` is timed `--passes` times inside a
  transaction rolled back, then run once for good (`result`: hosts marked down, deployments placed
  again); `left_on_down_host` must be zero; `replicas_moved_to` / `deployments_moved_to` say where
  they went. The dead machine's containers vanish from the fake podman; `receiver_pass` is one pass of
  the host that received most (settings as the repair pass above), which must start all the replicas
  moved to it (`replica_started`), then its `next_pass` (no actions); `other_receivers` runs the other
  receiving hosts' passes and `receivers_settled_after` one more pass of each (no actions);
- `checks` (each must hold for `met`, and so for exit status 0), and `host_pass_goal`: the one-host
  goal (`goal_seconds`) applied to one host's pass, reported apart (it does not change `met`).

One JSON document goes to stdout; logs (the platform's JSON logging, at WARNING) go to stderr. The
benchmark carries its own fakes: nothing under bench/ imports from tests/.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import json
import logging
import os
import platform as host_platform
import pstats
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from datetime import timedelta
from typing import TYPE_CHECKING
from typing import Any
from unittest import mock

import httpx

if TYPE_CHECKING:
    import respx

    from provisioning.reconciler.runner import PassReport

logger = logging.getLogger("bench.reconcile")

GOAL_SECONDS = 2.0
MIN_PASSES = 5
TENANTS = 10
DEAD_FRACTION = 0.01
# When the rows say the replicas started; long enough ago that no crash-loop bookkeeping applies.
STARTED_AGO = timedelta(hours=2)
# Each live deployment's log (its build output): the pass must not pay for reading it.
DEPLOYMENT_LOG_KB = 16
# --hosts > 1: every pass runs as host-1's worker (settings.HOST_NAME); the host that dies is the last one.
THIS_HOST = "host-1"
HOST_MEMORY_MB = 65536
HOST_DEAD_SECONDS = 30


# --- Django --------------------------------------------------------------------------------------


def configure_django(data_dir: str) -> None:
    """The platform's own settings, on a fresh SQLite DB in `data_dir` (never a real database)."""
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-reconcile-not-a-secret")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.pop("DATABASE_URL", None)
    os.environ["COLTSFOOT_DATA_DIR"] = data_dir
    os.environ["COLTSFOOT_DB_PATH"] = os.path.join(data_dir, "bench.sqlite3")
    os.environ["COLTSFOOT_INSTANCE_ID"] = "bench-reconcile"
    os.environ["COLTSFOOT_HOST_NAME"] = THIS_HOST
    os.environ["COLTSFOOT_HOST_DEAD_SECONDS"] = str(HOST_DEAD_SECONDS)
    os.environ.setdefault("COLTSFOOT_LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


# --- The podman fake -----------------------------------------------------------------------------


@dataclass
class FakeContainer:
    name: str
    labels: dict[str, str]
    network: str
    address: str
    image: str
    created: float
    running: bool = True
    exit_code: int = 0
    id: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex)


class FakePodman:
    """An in-memory podman behind `drivers.podman.run`: same signature, answers with podman 4.3's output."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[str, dict[str, str]] = {}
        self.calls: Counter[str] = Counter()
        self._addresses = itertools.count(1)
        # podman's own time is not the platform's: the `ps` answer is encoded once per change.
        self._ps_cache: dict[tuple[str, str], str] = {}

    def changed(self) -> None:
        self._ps_cache.clear()

    def next_address(self) -> str:
        n = next(self._addresses)
        return f"10.{89 + n // 62500}.{n // 250 % 250}.{n % 250 + 2}"

    def run(self, args: list[str], *, timeout: float | None = None, stdin: str | None = None) -> str:
        from drivers import podman

        command = " ".join(args[:2]) if args[0] in ("container", "network", "image", "secret") else args[0]
        self.calls[command] += 1
        if args[0] == "ps" and args[-2:] == ["--format", "json"]:
            label = _label_filter(args)
            if label not in self._ps_cache:
                self._ps_cache[label] = self._ps_json(label)
            return self._ps_cache[label]
        if args[:2] == ["network", "ls"] and args[-2:] == ["--format", "json"]:
            return self._network_ls_json(_label_filter(args))
        if args[:2] == ["network", "exists"]:
            if args[2] in self.networks:
                return ""
            raise podman.PodmanError("exit status 1", argv=args, returncode=1, stderr="", transient=False)
        if args[:2] == ["network", "create"]:
            self.networks[args[-1]] = dict(_labels_of(args))
            return args[-1] + "\n"
        if args[:3] == ["container", "inspect", "--format"]:
            return self._inspect(args[3], args[4])
        if args[0] == "logs":
            self._get(args[-1])
            return "".join(f"line {i} of the app's output\n" for i in range(40))
        if args[0] == "rm":
            self.containers.pop(args[-1], None)
            self.changed()
            return args[-1] + "\n"
        if args[:2] == ["run", "--detach"]:
            return self._run_detached(args)
        raise AssertionError(f"the benchmark's podman fake does not know `podman {' '.join(args[:3])}`")

    def _get(self, name: str) -> FakeContainer:
        from drivers import podman

        container = self.containers.get(name)
        if container is None:
            stderr = f"Error: no such container {name}\n"
            raise podman.PodmanNotFound(stderr.strip(), argv=[], returncode=125, stderr=stderr, transient=False)
        return container

    def _inspect(self, template: str, name: str) -> str:
        container = self._get(name)
        if template == "{{json .State}}":
            return json.dumps(
                {
                    "OciVersion": "1.0.2-dev",
                    "Status": "running" if container.running else "exited",
                    "Running": container.running,
                    "Paused": False,
                    "OOMKilled": False,
                    "Dead": False,
                    "Pid": 4242 if container.running else 0,
                    "ExitCode": container.exit_code,
                    "Error": "",
                }
            )
        if template == "{{json .NetworkSettings.Networks}}":
            return json.dumps({container.network: {"IPAddress": container.address, "IPPrefixLen": 24}})
        if template == "{{.State.Running}}":
            return "true\n" if container.running else "false\n"
        raise AssertionError(f"the benchmark's podman fake does not know the template {template}")

    def _run_detached(self, args: list[str]) -> str:
        name = next(arg.removeprefix("--name=") for arg in args if arg.startswith("--name="))
        if name in self.containers:
            raise AssertionError(f"podman run: the name {name} is in use")
        network = args[args.index("--network") + 1]
        workdir = args.index("--workdir")
        container = FakeContainer(
            name=name,
            labels=dict(_labels_of(args)),
            network=network,
            address=self.next_address(),
            image=args[workdir + 2],
            created=time.time(),
        )
        self.containers[name] = container
        self.changed()
        return container.id + "\n"

    def _ps_json(self, label: tuple[str, str]) -> str:
        key, value = label
        entries = []
        for c in self.containers.values():
            if c.labels.get(key) != value:
                continue
            entries.append(
                {
                    "AutoRemove": False,
                    "Command": ["/bin/bash", "-c", "exec 2>&1\ngunicorn app:app"],
                    "CreatedAt": "2 hours ago",
                    "Exited": not c.running,
                    "ExitedAt": -62135596800 if c.running else int(c.created) + 60,
                    "ExitCode": c.exit_code,
                    "Id": c.id,
                    "Image": c.image,
                    "ImageID": c.id,
                    "IsInfra": False,
                    "Labels": c.labels,
                    "Mounts": [],
                    "Names": [c.name],
                    "Namespaces": {},
                    "Networks": [c.network],
                    "Pid": 4242 if c.running else 0,
                    "Pod": "",
                    "PodName": "",
                    "Ports": None,
                    "Size": None,
                    "StartedAt": int(c.created),
                    "State": "running" if c.running else "exited",
                    "Status": "Up 2 hours" if c.running else f"Exited ({c.exit_code}) 1 second ago",
                    "Created": int(c.created),
                }
            )
        return json.dumps(entries, indent=4)

    def _network_ls_json(self, label: tuple[str, str]) -> str:
        key, value = label
        entries = [
            {
                "name": name,
                "id": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex * 2,
                "driver": "bridge",
                "network_interface": f"podman{i + 1}",
                "created": "2026-01-01T00:00:00Z",
                "subnets": [{"subnet": f"10.{89 + i}.0.0/24", "gateway": f"10.{89 + i}.0.1"}],
                "ipv6_enabled": False,
                "internal": False,
                "dns_enabled": True,
                "labels": labels,
                "options": {"isolate": "true"},
                "ipam_options": {"driver": "host-local"},
            }
            for i, (name, labels) in enumerate(self.networks.items())
            if labels.get(key) == value
        ]
        return json.dumps(entries, indent=4)


def _label_filter(args: list[str]) -> tuple[str, str]:
    spec = args[args.index("--filter") + 1].removeprefix("label=")
    key, _, value = spec.partition("=")
    return key, value


def _labels_of(args: list[str]) -> Iterator[tuple[str, str]]:
    for i, arg in enumerate(args[:-1]):
        if arg == "--label":
            key, _, value = args[i + 1].partition("=")
            yield key, value


# --- The Caddy fake ------------------------------------------------------------------------------


class FakeCaddy:
    """The edge server's routes, behind respx on the admin URL."""

    def __init__(self, routes: list[dict[str, Any]]) -> None:
        from caddy.routes import catchall_route

        self.routes: dict[str, dict[str, Any]] = {str(r["@id"]): r for r in routes}
        self.catchall = catchall_route()
        self.calls: Counter[str] = Counter()
        self._body: bytes | None = None

    def install(self, router: respx.MockRouter) -> None:
        from caddy.client import ROUTES_PATH

        router.get(ROUTES_PATH).mock(side_effect=self.get_routes)
        router.patch(path__regex=r"^/id/(?P<rid>[^/]+)$").mock(side_effect=self.patch_id)

    def get_routes(self, request: httpx.Request) -> httpx.Response:
        self.calls["GET routes"] += 1
        if self._body is None:
            # Caddy's own encoding of the routes array; kept until the next write.
            self._body = json.dumps([*self.routes.values(), self.catchall]).encode()
        return httpx.Response(200, content=self._body, headers={"Content-Type": "application/json"})

    def patch_id(self, request: httpx.Request, rid: str) -> httpx.Response:
        self.calls["PATCH /id"] += 1
        if rid not in self.routes:
            return httpx.Response(404, json={"error": f"unknown object ID '{rid}'"})
        self.routes[rid] = json.loads(request.content)
        self._body = None
        return httpx.Response(200)


# --- Rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    podman: FakePodman
    caddy: FakeCaddy
    apps: int
    replicas: int
    replica_names: list[str]
    # Host names (host-1..host-H) when --hosts > 1; empty for one host (rows name no host, as before).
    hosts: tuple[str, ...] = ()


def build_log(kb: int) -> str:
    """A deployment log of about `kb` KiB, like the build output a finished deploy leaves."""
    line = "-----> Installing dependencies: Collecting gunicorn>=23 (from -r requirements.txt (line 1))\n"
    return line * (kb * 1024 // len(line))


def build_world(n_apps: int, log_kb: int, n_hosts: int = 1) -> World:
    """Tenants, apps, live deployments and running replicas in the DB (bulk inserts), and the
    containers, networks and routes the fakes hold for them, as a finished deploy leaves them.
    With `n_hosts` > 1, that many `Host` rows too, app i's live deployment and replicas placed on
    host-(i mod n + 1) and its containers labelled with that host."""
    from django.conf import settings
    from django.utils import timezone

    from drivers.upstream_hosts import UpstreamHosts
    from platform_apps.models import App
    from platform_apps.models import Deployment
    from platform_apps.models import Host
    from platform_apps.models import Replica
    from provisioning import pipeline
    from provisioning import runtime
    from tenants.models import Tenant

    fake = FakePodman()
    log = build_log(log_kb)
    now = timezone.now()
    started = now - STARTED_AGO
    tenants = Tenant.objects.bulk_create(
        [Tenant(slug=f"tenant{t:02d}", max_apps=n_apps) for t in range(min(TENANTS, n_apps))]
    )
    apps = App.objects.bulk_create(
        [
            App(
                tenant=tenants[i % len(tenants)],
                name=f"app{i:05d}",
                hostname=App.hostname_for(f"app{i:05d}", tenants[i % len(tenants)].slug),
                replicas=1 + i % 2,
            )
            for i in range(n_apps)
        ],
        batch_size=500,
    )
    hosts_rows: list[Host | None] = [None]
    if n_hosts > 1:
        # Generous: any one host could take every replica, so a failover always finds room.
        memory_mb = max(HOST_MEMORY_MB, sum(app.replicas * app.memory_mb for app in apps))
        hosts_rows = list(
            Host.objects.bulk_create(
                [
                    Host(
                        name=f"host-{h + 1}",
                        address=f"10.0.0.{h + 1}",
                        memory_mb=memory_mb,
                        cpus=32,
                        state=Host.State.ACTIVE,
                        last_heartbeat=now,
                    )
                    for h in range(n_hosts)
                ]
            )
        )
    deployments = Deployment.objects.bulk_create(
        [
            Deployment(
                app=app,
                host=hosts_rows[i % len(hosts_rows)],
                number=1,
                state=Deployment.State.LIVE,
                source_kind=Deployment.SourceKind.IMAGE,
                source_url="docker.io/library/python:3.13",
                image_ref="localhost/coltsfoot-app:bench",
                image_id="sha256:" + "ab" * 32,
                web_command="gunicorn app:app",
                log=log,
                attempts=1,
                started_at=started,
                finished_at=started,
            )
            for i, app in enumerate(apps)
        ],
        batch_size=500,
    )
    for app, deployment in zip(apps, deployments, strict=True):
        app.live_deployment = deployment
    App.objects.bulk_update(apps, ["live_deployment"], batch_size=500)

    instance = str(settings.INSTANCE_ID)
    for tenant in tenants:
        fake.networks[runtime.tenant_network(tenant.public_id)] = {
            "coltsfoot.instance": instance,
            "coltsfoot.tenant": str(tenant.public_id),
        }
    replicas: list[Replica] = []
    routes: list[dict[str, Any]] = []
    hosts = UpstreamHosts.from_settings()
    for i, (app, deployment) in enumerate(zip(apps, deployments, strict=True)):
        host = hosts_rows[i % len(hosts_rows)]
        # As `pipeline.labels_for` labels it: the host it is placed on, or this host when it names none.
        host_name = host.name if host is not None else str(settings.HOST_NAME)
        network = runtime.tenant_network(app.tenant.public_id)
        addresses = []
        for index in range(app.replicas):
            name = pipeline.replica_name(deployment.public_id, index)
            address = fake.next_address()
            replicas.append(
                Replica(
                    deployment=deployment,
                    index=index,
                    name=name,
                    address=address,
                    state=Replica.State.RUNNING,
                    started_at=started,
                    host=host,
                )
            )
            fake.containers[name] = FakeContainer(
                name=name,
                labels={
                    "coltsfoot.instance": instance,
                    "coltsfoot.tenant": str(app.tenant.public_id),
                    "coltsfoot.app": str(app.public_id),
                    "coltsfoot.deployment": str(deployment.public_id),
                    "coltsfoot.role": "web",
                    pipeline.HOST_LABEL: host_name,
                },
                network=network,
                address=address,
                image=deployment.image_ref,
                created=started.timestamp(),
            )
            addresses.append(address)
        routes.append(pipeline.app_route_for(app, addresses))
        hosts.write(app.public_id, addresses)
    Replica.objects.bulk_create(replicas, batch_size=500)
    return World(
        podman=fake,
        caddy=FakeCaddy(routes),
        apps=len(apps),
        replicas=len(replicas),
        replica_names=[r.name for r in replicas],
        hosts=tuple(h.name for h in hosts_rows if h is not None),
    )


# --- Measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    seconds: float
    podman: Counter[str]
    caddy: Counter[str]
    db_queries: int
    actions: dict[str, int]
    errors: int
    apps: int = 0
    # The DB queries by the table they read or write first, and the actions the planner proposed (the
    # runner re-checks some against the DB before acting, and may drop them).
    db_queries_by_table: Counter[str] = field(default_factory=Counter)
    planned: Counter[str] = field(default_factory=Counter)


_TRANSACTION_CONTROL = frozenset({"BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT"})
_TABLE = re.compile(r'\b(?:FROM|UPDATE|INTO)\s+"?(\w+)"?', re.IGNORECASE)


def query_table(sql: str) -> str:
    match = _TABLE.search(sql)
    return match.group(1) if match else sql.split(" ", 1)[0]


@contextlib.contextmanager
def counted_queries() -> Iterator[Counter[str]]:
    """Count the DB queries run in the block, by table (every one: no cap like the debug cursor's log), leaving
    out transaction control (BEGIN, SAVEPOINT, RELEASE, ROLLBACK), which differs inside and outside an atomic
    block for the same work."""
    from django.db import connection

    tables: Counter[str] = Counter()

    def count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if sql.split(" ", 1)[0].upper() not in _TRANSACTION_CONTROL:
            tables[query_table(sql)] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        yield tables


@contextlib.contextmanager
def planned_actions() -> Iterator[Counter[str]]:
    """Count the actions the planner returns (both phases), by kind, while the block runs."""
    from provisioning.reconciler import planner

    counts: Counter[str] = Counter()
    replicas, routes = planner.plan_replicas, planner.plan_routes

    def plan_replicas(*args: Any, **kwargs: Any) -> list[Any]:
        actions = replicas(*args, **kwargs)
        counts.update(type(action).__name__ for action in actions)
        return actions

    def plan_routes(*args: Any, **kwargs: Any) -> list[Any]:
        actions = routes(*args, **kwargs)
        counts.update(type(action).__name__ for action in actions)
        return actions

    with (
        mock.patch.object(planner, "plan_replicas", plan_replicas),
        mock.patch.object(planner, "plan_routes", plan_routes),
    ):
        yield counts


def one_pass(world: World, profiler: cProfile.Profile | None = None, *, host: str = "", redis: bool = True) -> Pass:
    from provisioning.reconciler.runner import reconcile_pass

    world.podman.calls.clear()
    world.caddy.calls.clear()
    with counted_queries() as queries, planned_actions() as planned:
        if profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        report: PassReport = reconcile_pass(host=host, redis=redis) if host else reconcile_pass()
        seconds = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
    return Pass(
        seconds=seconds,
        podman=Counter(world.podman.calls),
        caddy=Counter(world.caddy.calls),
        db_queries=sum(queries.values()),
        actions=dict(report.actions),
        errors=report.errors,
        apps=report.apps,
        db_queries_by_table=Counter(queries),
        planned=Counter(planned),
    )


def pass_document(result: Pass) -> dict[str, Any]:
    return {
        "seconds": round(result.seconds, 4),
        "podman_calls": sum(result.podman.values()),
        "podman_calls_by_command": dict(sorted(result.podman.items())),
        "caddy_requests": sum(result.caddy.values()),
        "caddy_requests_by_kind": dict(sorted(result.caddy.items())),
        "db_queries": result.db_queries,
        "actions": result.actions,
        "errors": result.errors,
    }


def kill_some(world: World, fraction: float) -> list[str]:
    """Every 1/fraction-th replica's container exits with code 1 (it stays there, as podman keeps it)."""
    step = max(1, round(1 / fraction))
    dead = world.replica_names[step // 2 :: step]
    for name in dead:
        container = world.podman.containers[name]
        container.running = False
        container.exit_code = 1
    world.podman.changed()
    return dead


@contextlib.contextmanager
def seams(world: World) -> Iterator[None]:
    import respx
    from django.conf import settings

    with (
        mock.patch("drivers.podman.run", world.podman.run),
        respx.mock(base_url=settings.CADDY_ADMIN_URL, assert_all_called=False, assert_all_mocked=True) as router,
    ):
        world.caddy.install(router)
        yield


def profile_text(profiler: cProfile.Profile, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


# --- Several hosts (--hosts > 1) -----------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, int, Counter[str], Any]:
    """Run `fn` once: seconds, DB queries, the queries by table, and its result."""
    with counted_queries() as queries:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return (
        seconds,
        sum(queries.values()),
        Counter(queries),
        result,
    )


def seconds_document(seconds: list[float], warmup: float | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "min": round(min(seconds), 4),
        "median": round(statistics.median(seconds), 4),
        "max": round(max(seconds), 4),
        "runs": [round(s, 4) for s in seconds],
    }
    if warmup is not None:
        document["warmup"] = round(warmup, 4)
    return document


def host_pass_document(result: Pass) -> dict[str, Any]:
    return {
        **pass_document(result),
        "apps": result.apps,
        "db_queries_by_table": dict(result.db_queries_by_table.most_common()),
        "planned_actions": dict(sorted(result.planned.items())),
    }


def fresh_heartbeats() -> None:
    from django.utils import timezone

    from platform_apps.models import Host

    Host.objects.update(last_heartbeat=timezone.now(), state=Host.State.ACTIVE)


def live_on(host: str) -> tuple[int, int]:
    """The live deployments placed on `host`, and their replica rows placed there."""
    from django.db.models import F

    from platform_apps.models import Deployment
    from platform_apps.models import Replica

    deployments = Deployment.objects.filter(host__name=host, app__live_deployment=F("pk")).count()
    replicas = Replica.objects.filter(host__name=host, deployment__app__live_deployment=F("deployment")).count()
    return deployments, replicas


def run_hosts(world: World, passes: int, *, profile: bool = False) -> dict[str, Any]:
    """The figures of several hosts: one host's idle pass, the control part, and one host's failover."""
    from django.conf import settings
    from django.db import transaction
    from django.db.models import Count
    from django.test.utils import override_settings
    from django.utils import timezone

    from platform_apps.models import Host
    from platform_apps.models import Replica
    from provisioning import hosts
    from provisioning import pipeline
    from provisioning.tasks import requeue_work

    placed = dict(Host.objects.annotate(n=Count("deployments")).values_list("name", "n").order_by("name"))
    fresh_heartbeats()
    # Converged: the replicas the repair pass above restarted count as steady already (else their crash streak
    # is reset by whichever pass comes after RESTART_RESET_SECONDS, in the middle of what is measured here).
    Replica.objects.update(crash_streak=0)

    # (a) One host's pass, everything converged: what each host's worker pays every period.
    host_warmup = one_pass(world, host=THIS_HOST, redis=False)
    host_timed = [one_pass(world, host=THIS_HOST, redis=False) for _ in range(passes)]
    host_idle = [host_warmup, *host_timed]
    host_ok = all(not p.actions and p.errors == 0 for p in host_idle)
    host_calls = {(sum(p.podman.values()), sum(p.caddy.values()), p.db_queries) for p in host_idle}
    host_document = {
        "host": THIS_HOST,
        "call": f'reconcile_pass(host="{THIS_HOST}", redis=False)',
        "seconds": seconds_document([p.seconds for p in host_timed], host_warmup.seconds),
        **{k: v for k, v in host_pass_document(host_warmup).items() if k != "seconds"},
        "calls_constant_across_passes": len(host_calls) == 1,
    }
    if profile:
        profiler = cProfile.Profile()
        one_pass(world, profiler, host=THIS_HOST, redis=False)
        sys.stderr.write(f"--- one pass of {THIS_HOST} ---\n" + profile_text(profiler))

    # (b) The control part with every host fresh: nothing to fail over.
    control_fail_over = []
    for _ in range(passes + 1):
        fresh_heartbeats()
        control_fail_over.append(timed(hosts.fail_over))
    control_requeue = [timed(requeue_work) for _ in range(passes + 1)]
    fail_over_fresh = control_fail_over[0][3]
    control_ok = all(run[3] == {"hosts_down": 0, "replaced": 0, "drained": 0} for run in control_fail_over)
    control_document = {
        "fail_over": {
            "call": "hosts.fail_over()",
            "seconds": seconds_document([run[0] for run in control_fail_over[1:]], control_fail_over[0][0]),
            "db_queries": _single({run[1] for run in control_fail_over}),
            "db_queries_by_table": dict(control_fail_over[0][2].most_common()),
            "result": fail_over_fresh,
        },
        "requeue_work": {
            "call": "tasks.requeue_work()",
            "seconds": seconds_document([run[0] for run in control_requeue[1:]], control_requeue[0][0]),
            "db_queries": _single({run[1] for run in control_requeue}),
            "db_queries_by_table": dict(control_requeue[0][2].most_common()),
            "result": control_requeue[0][3],
        },
    }

    # (c) A host dies: its heartbeat goes stale, the control part places its live deployments again (timed
    # `passes` times inside a transaction rolled back, then once for good), and the host that received most
    # of them starts the moved replicas in its next pass.
    down = world.hosts[-1]
    stale = timezone.now() - timedelta(seconds=int(settings.HOST_DEAD_SECONDS) + 60)

    def go_stale() -> None:
        fresh_heartbeats()
        Host.objects.filter(name=down).update(last_heartbeat=stale)

    stranded_deployments, stranded_replicas = live_on(down)
    before = dict(Replica.objects.filter(host__name=down).values_list("pk", "deployment_id"))
    rehearsals = []
    for _ in range(passes):
        with transaction.atomic():
            go_stale()
            rehearsals.append(timed(hosts.fail_over))
            transaction.set_rollback(True)
    go_stale()
    final_seconds, final_queries, final_tables, final_counts = timed(hosts.fail_over)
    left_deployments, left_replicas = live_on(down)
    moved = Counter(Replica.objects.filter(pk__in=before).values_list("host__name", flat=True))
    moved_deployments = Counter(
        dict(
            Replica.objects.filter(pk__in=before)
            .values("host__name")
            .annotate(n=Count("deployment", distinct=True))
            .values_list("host__name", "n")
        )
    )
    # The dead machine's containers are gone with it (each host's podman holds only its own).
    for name in [n for n, c in world.podman.containers.items() if c.labels.get(pipeline.HOST_LABEL) == down]:
        del world.podman.containers[name]
    world.podman.changed()
    receiver = max(sorted(moved), key=lambda name: moved[name]) if moved else THIS_HOST
    with (
        override_settings(RESTART_BACKOFF_BASE_SECONDS=0, START_DEADLINE_SECONDS=1),
        mock.patch("provisioning.pipeline.answers_http", return_value=True),
    ):
        receiver_pass = one_pass(world, host=receiver, redis=False)
        others = [one_pass(world, host=name, redis=False) for name in sorted(moved) if name != receiver]
    receiver_next = one_pass(world, host=receiver, redis=False)
    started_elsewhere = sum(p.actions.get("replica_started", 0) for p in others)
    fleet_after = [one_pass(world, host=name, redis=False) for name in sorted(moved)]
    labels_ok = all(c.labels.get(pipeline.HOST_LABEL) != down for c in world.podman.containers.values()) and all(
        world.podman.containers[name].labels.get(pipeline.HOST_LABEL) == host_name
        for name, host_name in Replica.objects.filter(pk__in=before).values_list("name", "host__name")
    )
    failover_ok = (
        final_counts["hosts_down"] == 1
        and final_counts["replaced"] == stranded_deployments
        and all(run[3] == final_counts for run in rehearsals)
        and left_deployments == 0
        and left_replicas == 0
        and down not in moved
        and receiver_pass.actions.get("replica_started", 0) == moved[receiver]
        and receiver_pass.errors == 0
        and started_elsewhere == stranded_replicas - moved[receiver]
        and all(not p.actions and p.errors == 0 for p in [receiver_next, *fleet_after])
        and labels_ok
    )
    failover_document = {
        "down_host": down,
        "live_deployments_on_down_host": stranded_deployments,
        "replicas_on_down_host": stranded_replicas,
        "fail_over": {
            "call": "hosts.fail_over()",
            "seconds": seconds_document([run[0] for run in rehearsals]),
            "seconds_kept_run": round(final_seconds, 4),
            "rehearsals": f"{passes} runs in a transaction rolled back, then one kept",
            "db_queries": _single({run[1] for run in rehearsals} | {final_queries}),
            "db_queries_by_table": dict(final_tables.most_common()),
            "result": final_counts,
        },
        "left_on_down_host": {"live_deployments": left_deployments, "replicas": left_replicas},
        "replicas_moved_to": dict(sorted(moved.items())),
        "deployments_moved_to": dict(sorted(moved_deployments.items())),
        "receiver_pass": {
            "host": receiver,
            "settings": {"RESTART_BACKOFF_BASE_SECONDS": 0, "START_DEADLINE_SECONDS": 1, "answers_http": True},
            **host_pass_document(receiver_pass),
            "replicas_moved_here": moved[receiver],
            "next_pass": pass_document(receiver_next),
        },
        "other_receivers": {
            "passes": len(others),
            "seconds": round(sum(p.seconds for p in others), 4),
            "replica_started": started_elsewhere,
            "errors": sum(p.errors for p in others),
        },
        "receivers_settled_after": {
            "hosts": len(fleet_after),
            "actions": sum(sum(p.actions.values()) for p in fleet_after),
            "errors": sum(p.errors for p in fleet_after),
        },
        "container_labels_follow_hosts": labels_ok,
    }
    slowest = max(p.seconds for p in host_timed)
    return {
        "count": len(world.hosts),
        "this_host": THIS_HOST,
        "host_memory_mb": Host.objects.values_list("memory_mb", flat=True).first(),
        "host_dead_seconds": int(settings.HOST_DEAD_SECONDS),
        "live_deployments_per_host": placed,
        "host_pass": host_document,
        "control": control_document,
        "failover": failover_document,
        "checks": {"host_pass_idle": host_ok, "control_nothing_to_do": control_ok, "failover": failover_ok},
        # The one-host goal, applied to one host's pass; reported, not part of `checks` (see the module doc).
        "host_pass_goal": {
            "goal_seconds": GOAL_SECONDS,
            "max_seconds": round(slowest, 4),
            "met": slowest < GOAL_SECONDS,
        },
        "met": host_ok and control_ok and failover_ok,
    }


def run(n_apps: int, passes: int, *, log_kb: int, profile: bool, n_hosts: int = 1) -> dict[str, Any]:
    from django.test.utils import override_settings

    setup_start = time.perf_counter()
    world = build_world(n_apps, log_kb, n_hosts)
    setup_seconds = time.perf_counter() - setup_start
    logger.warning("bench: %d apps, %d replicas inserted in %.1f s", world.apps, world.replicas, setup_seconds)

    with seams(world):
        warmup = one_pass(world)
        timed = [one_pass(world) for _ in range(passes)]
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            one_pass(world, profiler)
            sys.stderr.write(profile_text(profiler))

        dead = kill_some(world, DEAD_FRACTION)
        with (
            override_settings(RESTART_BACKOFF_BASE_SECONDS=0, START_DEADLINE_SECONDS=1),
            mock.patch("provisioning.pipeline.answers_http", return_value=True),
        ):
            repair = one_pass(world)
        settled = one_pass(world)
        several = run_hosts(world, passes, profile=profile) if world.hosts else None

    idle = [warmup, *timed]
    seconds = [p.seconds for p in timed]
    podman_calls = {sum(p.podman.values()) for p in idle}
    caddy_requests = {sum(p.caddy.values()) for p in idle}
    db_queries = {p.db_queries for p in idle}
    actions = [p.actions for p in idle]
    idle_ok = all(not a for a in actions) and all(p.errors == 0 for p in idle)
    constant = len(podman_calls) == 1 and len(caddy_requests) == 1 and len(db_queries) == 1
    met = max(seconds) < GOAL_SECONDS and idle_ok and podman_calls == {2} and caddy_requests == {1}
    document: dict[str, Any] = {
        "benchmark": "reconcile",
        "apps": world.apps,
        "tenants": min(TENANTS, n_apps),
        "replicas": world.replicas,
        "passes": passes,
        "deployment_log_kb": log_kb,
        "seams": {
            "podman": "drivers.podman.run faked: ps/network ls JSON in podman 4.3's shape, parsed by the driver",
            "caddy": "respx on the admin URL: GET of the edge routes (no ETag header, as Caddy 2.6), PATCH /id/...",
        },
        "idle_pass_seconds": {
            "min": round(min(seconds), 4),
            "median": round(statistics.median(seconds), 4),
            "max": round(max(seconds), 4),
            "runs": [round(s, 4) for s in seconds],
            "warmup": round(warmup.seconds, 4),
        },
        "podman_calls_per_pass": _single(podman_calls),
        "podman_calls_by_command": dict(sorted(warmup.podman.items())),
        "caddy_requests_per_pass": _single(caddy_requests),
        "caddy_requests_by_kind": dict(sorted(warmup.caddy.items())),
        "db_queries_per_pass": _single(db_queries),
        "calls_constant_across_passes": constant,
        "idle_actions": actions[0] if all(a == actions[0] for a in actions) else actions,
        "goal_seconds": GOAL_SECONDS,
        "met": met,
        "repair_pass": {
            "dead_replicas": len(dead),
            "dead_fraction": DEAD_FRACTION,
            "settings": {"RESTART_BACKOFF_BASE_SECONDS": 0, "START_DEADLINE_SECONDS": 1, "answers_http": True},
            **pass_document(repair),
            "next_pass": pass_document(settled),
        },
        "setup_seconds": round(setup_seconds, 2),
        "machine": {
            "nproc": os.cpu_count(),
            "python": host_platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        },
    }
    if several is not None:
        document["hosts"] = several
        document["met"] = met and bool(several["met"])
    return document


def _single(values: set[int]) -> int | list[int]:
    return next(iter(values)) if len(values) == 1 else sorted(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--apps", type=int, default=1000, help="apps to create (default 1000)")
    parser.add_argument("--passes", type=int, default=MIN_PASSES, help=f"timed idle passes (at least {MIN_PASSES})")
    parser.add_argument(
        "--log-kb",
        type=int,
        default=DEPLOYMENT_LOG_KB,
        help=f"size of each deployment's log (default {DEPLOYMENT_LOG_KB})",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        default=1,
        help="hosts to spread the apps over (default 1: one host, rows name none, as before)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one more idle pass (and one of host-1 with --hosts); cProfile stats to stderr",
    )
    args = parser.parse_args(argv)
    if args.apps < 1:
        parser.error("--apps must be at least 1")
    if not 1 <= args.hosts <= args.apps:
        parser.error("--hosts must be between 1 and --apps")
    passes = max(MIN_PASSES, args.passes)
    with tempfile.TemporaryDirectory(prefix="coltsfoot-bench-reconcile-") as data_dir:
        configure_django(data_dir)
        document = run(args.apps, passes, log_kb=max(0, args.log_kb), profile=args.profile, n_hosts=args.hosts)
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    return 0 if document["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
