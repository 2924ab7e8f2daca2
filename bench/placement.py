"""Placement benchmark: what placing a new app's replicas and re-placing a dead host's replicas cost at fleet size.

Run from the repository root: `uv run --frozen python -m bench.placement [--hosts N] [--apps N] [--runs N]`.
Needs no services: like `bench.reconcile` it configures Django against a throwaway SQLite DB in a temp dir
(migrated on the spot) and inserts the rows in bulk: `--hosts` hosts (default 10) of 64 GiB each, and `--apps`
apps (default 1,000) across ten tenants, each with a live deployment of 1 or 2 replicas (128, 256 or 512 MiB),
placed on the hosts by `provisioning.placement.place_replicas` itself as the apps are inserted one by one. No
podman or Caddy is involved: placement reads only the platform DB.

Measured, each `--runs` times (at least 5) after one warm-up, with `time.perf_counter()` and every DB query
captured:
- `new_app`: `host_rooms(app)` + `place_replicas(2, 512, rooms)` for a new 2-replica app (and, apart, the
  `place_deployment_replicas` wrapper for its first deployment);
- `failover`: one host goes down and `replace_host_replicas` plans where all its replicas go on the other
  hosts (about 1/N of all replicas); then the plan is written (one bulk UPDATE of `Replica.host`, inside a
  transaction rolled back after each run, so every run moves the same replicas). The plan is checked: no
  replica on the dead host, no host over its capacity, and how many apps end up with both replicas on one host.

One JSON document goes to stdout; logs go to stderr. Nothing under bench/ imports from tests/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform as host_platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("bench.placement")

MIN_RUNS = 5
TENANTS = 10
HOST_MEMORY_MB = 65536
APP_MEMORY_MB = (128, 256, 512)
NEW_APP_MEMORY_MB = 512
# Goals: a deploy's placement must be negligible next to a build; a failover plan well inside one reconcile pass.
NEW_APP_GOAL_SECONDS = 0.1
FAILOVER_GOAL_SECONDS = 1.0
# Queries per call, whatever the fleet: hosts + one aggregate (rooms); + this deployment's placed replicas
# (the wrapper); hosts + rooms + the dead host's replicas + one count per (host, app) (failover plan).
ROOMS_QUERIES = 2
WRAPPER_QUERIES = 3
FAILOVER_QUERIES = 4


def configure_django(data_dir: str) -> None:
    """The platform's own settings, on a fresh SQLite DB in `data_dir` (never a real database)."""
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-placement-not-a-secret")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.pop("DATABASE_URL", None)
    os.environ["COLTSFOOT_DATA_DIR"] = data_dir
    os.environ["COLTSFOOT_DB_PATH"] = os.path.join(data_dir, "bench.sqlite3")
    os.environ["COLTSFOOT_INSTANCE_ID"] = "bench-placement"
    os.environ.setdefault("COLTSFOOT_LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


@dataclass(frozen=True)
class World:
    hosts: int
    apps: int
    replicas: int
    placed_per_host: dict[str, int]


def build_world(n_hosts: int, n_apps: int) -> World:
    """Hosts, tenants, apps, live deployments and their replicas, placed as the platform would place them."""
    from platform_apps.models import App
    from platform_apps.models import Deployment
    from platform_apps.models import Host
    from platform_apps.models import Replica
    from provisioning import pipeline
    from provisioning.placement import HostRoom
    from provisioning.placement import place_replicas
    from tenants.models import Tenant

    hosts = Host.objects.bulk_create(
        [
            Host(name=f"host-{i + 1}", address=f"10.0.0.{i + 1}", memory_mb=HOST_MEMORY_MB, cpus=32)
            for i in range(n_hosts)
        ]
    )
    by_name = {host.name: host for host in hosts}
    tenants = Tenant.objects.bulk_create([Tenant(slug=f"tenant{t:02d}", max_apps=n_apps) for t in range(TENANTS)])
    apps = App.objects.bulk_create(
        [
            App(
                tenant=tenants[i % TENANTS],
                name=f"app{i:05d}",
                hostname=App.hostname_for(f"app{i:05d}", tenants[i % TENANTS].slug),
                replicas=1 + i % 2,
                memory_mb=APP_MEMORY_MB[i % len(APP_MEMORY_MB)],
            )
            for i in range(n_apps)
        ],
        batch_size=500,
    )
    deployments = Deployment.objects.bulk_create(
        [
            Deployment(app=app, number=1, state=Deployment.State.LIVE, source_kind=Deployment.SourceKind.IMAGE)
            for app in apps
        ],
        batch_size=500,
    )
    for app, deployment in zip(apps, deployments, strict=True):
        app.live_deployment = deployment
    App.objects.bulk_update(apps, ["live_deployment"], batch_size=500)

    placed: Counter[str] = Counter()
    replicas: list[Replica] = []
    for app, deployment in zip(apps, deployments, strict=True):
        rooms = [HostRoom(h.pk, h.name, h.state, h.memory_mb, placed[h.name], h.can_build) for h in hosts]
        for index, name in enumerate(place_replicas(app.replicas, app.memory_mb, rooms)):
            placed[name] += app.memory_mb
            replicas.append(
                Replica(
                    deployment=deployment,
                    index=index,
                    name=pipeline.replica_name(deployment.public_id, index),
                    host=by_name[name],
                    state=Replica.State.RUNNING,
                )
            )
    Replica.objects.bulk_create(replicas, batch_size=500)
    return World(hosts=len(hosts), apps=len(apps), replicas=len(replicas), placed_per_host=dict(sorted(placed.items())))


@dataclass(frozen=True)
class Timed:
    seconds: list[float]
    queries: set[int]
    warmup: float


def timed(runs: int, call: Callable[[], object]) -> Timed:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def once() -> tuple[float, int]:
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            call()
            seconds = time.perf_counter() - start
        return seconds, len(queries.captured_queries)

    warmup, _ = once()
    results = [once() for _ in range(runs)]
    return Timed(seconds=[s for s, _ in results], queries={q for _, q in results}, warmup=warmup)


def figures(result: Timed) -> dict[str, Any]:
    return {
        "min": round(min(result.seconds), 5),
        "median": round(statistics.median(result.seconds), 5),
        "max": round(max(result.seconds), 5),
        "runs": [round(s, 5) for s in result.seconds],
        "warmup": round(result.warmup, 5),
        "db_queries_per_call": _single(result.queries),
    }


def _single(values: set[int]) -> int | list[int]:
    return next(iter(values)) if len(values) == 1 else sorted(values)


def run(n_hosts: int, n_apps: int, runs: int) -> dict[str, Any]:
    from django.db import transaction

    from platform_apps.models import App
    from platform_apps.models import Deployment
    from platform_apps.models import Host
    from platform_apps.models import Replica
    from provisioning import placement
    from tenants.models import Tenant

    setup_start = time.perf_counter()
    world = build_world(n_hosts, n_apps)
    setup_seconds = time.perf_counter() - setup_start
    logger.warning(
        "bench: %d hosts, %d apps, %d replicas in %.1f s", world.hosts, world.apps, world.replicas, setup_seconds
    )

    # A new 2-replica app.
    tenant = Tenant.objects.order_by("pk")[0]
    app = App.objects.create(
        tenant=tenant,
        name="newcomer",
        hostname=App.hostname_for("newcomer", tenant.slug),
        replicas=2,
        memory_mb=NEW_APP_MEMORY_MB,
    )
    deployment = Deployment.objects.create(app=app, number=1, source_kind=Deployment.SourceKind.IMAGE)
    chosen: list[list[str]] = []
    new_app = timed(
        runs, lambda: chosen.append(placement.place_replicas(2, NEW_APP_MEMORY_MB, placement.host_rooms(app)))
    )
    rooms_only = timed(runs, lambda: placement.host_rooms(app))
    wrapper = timed(runs, lambda: placement.place_deployment_replicas(deployment))
    new_app_hosts = chosen[-1]

    # Failover: the host with the most replicas goes down.
    counts = Counter(Replica.objects.values_list("host__name", flat=True))
    dead_name = sorted(counts, key=lambda name: (-counts[name], name))[0]
    Host.objects.filter(name=dead_name).update(state=Host.State.DOWN)
    dead = Host.objects.get(name=dead_name)
    plans: list[placement.HostReplacement] = []
    plan = timed(runs, lambda: plans.append(placement.replace_host_replicas(dead)))
    result = plans[-1]

    def write() -> None:
        with transaction.atomic():
            moved = list(Replica.objects.filter(pk__in=list(result.placed)).only("pk", "host"))
            for replica in moved:
                replica.host = result.placed[replica.pk]
            Replica.objects.bulk_update(moved, ["host"], batch_size=500)
            transaction.set_rollback(True)

    written = timed(runs, write)

    # Check the plan as the DB would hold it after the write.
    rooms_before = {r.name: r for r in placement.host_rooms()}
    memory = dict(Replica.objects.filter(pk__in=list(result.placed)).values_list("pk", "deployment__app__memory_mb"))
    added: Counter[str] = Counter()
    for pk, host in result.placed.items():
        added[host.name] += int(memory[pk])
    over = [name for name, mb in added.items() if rooms_before[name].placed_mb + mb > rooms_before[name].memory_mb]
    apps_of: dict[int, list[str]] = {}
    for pk, app_id, host_name in Replica.objects.values_list("pk", "deployment__app_id", "host__name"):
        target = result.placed[pk].name if pk in result.placed else host_name
        apps_of.setdefault(app_id, []).append(target)
    doubled = sum(1 for names in apps_of.values() if len(names) == 2 and names[0] == names[1])
    on_dead = sum(1 for host in result.placed.values() if host.name == dead_name)

    new_app_doc = figures(new_app)
    failover_doc = figures(plan)
    met = (
        max(new_app.seconds) < NEW_APP_GOAL_SECONDS
        and max(plan.seconds) < FAILOVER_GOAL_SECONDS
        and new_app.queries == {ROOMS_QUERIES}
        and wrapper.queries == {WRAPPER_QUERIES}
        and plan.queries == {FAILOVER_QUERIES}
        and len(set(new_app_hosts)) == 2
        and not result.unplaced
        and not over
        and on_dead == 0
    )
    return {
        "benchmark": "placement",
        "hosts": world.hosts,
        "host_memory_mb": HOST_MEMORY_MB,
        "apps": world.apps,
        "replicas": world.replicas,
        "placed_memory_mb_per_host": world.placed_per_host,
        "runs": runs,
        "seams": {
            "db": "SQLite in a temp dir, rows inserted in bulk",
            "podman": "not involved",
            "caddy": "not involved",
        },
        "new_app": {
            "what": "host_rooms(app) + place_replicas(2, 512 MiB, rooms)",
            "seconds": new_app_doc,
            "host_rooms_only_seconds": figures(rooms_only),
            "place_deployment_replicas_seconds": figures(wrapper),
            "hosts_chosen": new_app_hosts,
            "goal_seconds": NEW_APP_GOAL_SECONDS,
        },
        "failover": {
            "what": "replace_host_replicas(dead host): plan every replica of one host onto the others",
            "dead_host": dead_name,
            "replicas_moved": len(result.placed),
            "replicas_unplaced": len(result.unplaced),
            "fraction_of_all_replicas": round((len(result.placed) + len(result.unplaced)) / world.replicas, 3),
            "plan_seconds": failover_doc,
            "write_seconds": {
                **figures(written),
                "what": "the moved rows read, then one bulk UPDATE of Replica.host, in a transaction rolled back",
            },
            "largest_free_mb_after": result.largest_free_mb,
            "hosts_over_capacity": over,
            "replicas_left_on_dead_host": on_dead,
            "two_replica_apps_on_one_host_after": doubled,
            "goal_seconds": FAILOVER_GOAL_SECONDS,
        },
        "expected_queries": {"rooms": ROOMS_QUERIES, "wrapper": WRAPPER_QUERIES, "failover_plan": FAILOVER_QUERIES},
        "met": met,
        "setup_seconds": round(setup_seconds, 2),
        "machine": {
            "nproc": os.cpu_count(),
            "python": host_platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=10, help="hosts (default 10)")
    parser.add_argument("--apps", type=int, default=1000, help="apps already placed (default 1000)")
    parser.add_argument("--runs", type=int, default=MIN_RUNS, help=f"timed runs of each figure (at least {MIN_RUNS})")
    args = parser.parse_args(argv)
    if args.hosts < 2:
        parser.error("--hosts must be at least 2 (one of them goes down)")
    if args.apps < 1:
        parser.error("--apps must be at least 1")
    runs = max(MIN_RUNS, args.runs)
    with tempfile.TemporaryDirectory(prefix="coltsfoot-bench-placement-") as data_dir:
        configure_django(data_dir)
        document = run(args.hosts, args.apps, runs)
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    return 0 if document["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
