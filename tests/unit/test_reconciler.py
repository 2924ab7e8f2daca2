"""The reconciler: the planner's decisions as a table, and whole passes against the podman and
Caddy fakes (tests/unit/fakes.py), looking at what results: containers, rows, routes."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from caddy import routes as caddy_routes
from drivers import firewall
from drivers import podman
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Replica
from provisioning import leases as lease
from provisioning import runtime
from provisioning import tasks
from provisioning.reconciler import planner
from provisioning.reconciler.runner import reconcile_pass
from provisioning.reconciler.state import Desired
from provisioning.reconciler.state import EdgeLoad
from provisioning.reconciler.state import HostsRemove
from provisioning.reconciler.state import HostsSet
from provisioning.reconciler.state import KnownDeployment
from provisioning.reconciler.state import LiveApp
from provisioning.reconciler.state import NetworkCreate
from provisioning.reconciler.state import Observed
from provisioning.reconciler.state import OrphanRemove
from provisioning.reconciler.state import ReplicaCheck
from provisioning.reconciler.state import ReplicaExited
from provisioning.reconciler.state import ReplicaRow
from provisioning.reconciler.state import ReplicaStart
from provisioning.reconciler.state import ReplicaSteady
from provisioning.reconciler.state import RouteRemove
from provisioning.reconciler.state import RouteSet
from tests.unit.fakes import FakePodman
from tests.unit.fakes import FakeRoutes
from tests.unit.fakes import archive_deployment
from tests.unit.fakes import make_app

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.get_current_timezone())
APP_ID = uuid.UUID("11111111-1111-4111-8111-111111111111")
TENANT_ID = uuid.UUID("22222222-2222-4222-8222-222222222222")
DEPLOYMENT_ID = uuid.UUID("33333333-3333-4333-8333-333333333333")
NETWORK = "cf-t-tenant"
STEADY = timedelta(seconds=60)
GRACE = timedelta(seconds=60)


# === The planner (pure) ========================================================================


def row(index: int = 0, state: str = "running", **fields: Any) -> ReplicaRow:
    values: dict[str, Any] = {
        "pk": index + 1,
        "index": index,
        "name": f"tsl-{DEPLOYMENT_ID}-{index}",
        "state": state,
        "address": f"10.89.0.{index + 2}",
        "crash_streak": 0,
        "started_at": NOW - timedelta(minutes=5),
        "next_restart_at": None,
        **fields,
    }
    return ReplicaRow(**values)


def live(
    *replicas: ReplicaRow, switching: bool = False, suspended: bool = False, app_id: uuid.UUID = APP_ID
) -> LiveApp:
    return LiveApp(
        app_id=app_id,
        tenant_id=TENANT_ID,
        deployment_id=DEPLOYMENT_ID,
        network=NETWORK,
        hostnames=("shop-acme.localhost",),
        replicas=replicas,
        switching=switching,
        suspended=suspended,
    )


def container(
    name: str,
    *,
    running: bool = True,
    exit_code: int = 0,
    age: float = 3600.0,
    deployment: uuid.UUID = DEPLOYMENT_ID,
    role: str = "web",
) -> podman.ObservedContainer:
    return podman.ObservedContainer(
        name=name,
        labels={"coltsfoot.deployment": str(deployment), "coltsfoot.role": role},
        state="running" if running else "exited",
        exit_code=exit_code,
        started_at=NOW.timestamp() - age,
        exited_at=0.0,
        created_at=NOW.timestamp() - age,
    )


def observed(
    *containers: podman.ObservedContainer,
    networks: tuple[str, ...] = (NETWORK,),
    routes: dict[str, Any] | None = None,
    network_age: float = 7200.0,
) -> Observed:
    return Observed(
        containers={c.name: c for c in containers},
        routes={} if routes is None else routes,
        networks=frozenset(networks),
        network_created={network: NOW.timestamp() - network_age for network in networks},
    )


def plan(desired: Desired, seen: Observed) -> list[Any]:
    return planner.plan_replicas(desired, seen, NOW, steady_after=STEADY, orphan_grace=GRACE)


R0 = row(0)
NAME0 = R0.name


@pytest.mark.parametrize(
    ("replica", "seen", "expected"),
    [
        pytest.param(R0, observed(container(NAME0)), [], id="running as it should: nothing"),
        pytest.param(
            R0,
            observed(container(NAME0, running=False, exit_code=1)),
            [ReplicaExited(live(R0), R0, 1, "exited", container_present=True)],
            id="exited with an error",
        ),
        pytest.param(
            R0,
            observed(container(NAME0, running=False, exit_code=137)),
            [ReplicaExited(live(R0), R0, 137, "killed", container_present=True)],
            id="killed",
        ),
        pytest.param(
            R0, observed(), [ReplicaExited(live(R0), R0, None, "vanished", container_present=False)], id="vanished"
        ),
        pytest.param(
            row(0, "crashed", next_restart_at=NOW + timedelta(seconds=5)),
            observed(container(NAME0, running=False, exit_code=1)),
            [],
            id="crashed, backing off: wait",
        ),
        pytest.param(
            row(0, "crashed", next_restart_at=NOW - timedelta(seconds=1)),
            observed(container(NAME0, running=False, exit_code=1)),
            [
                ReplicaStart(
                    live(row(0, "crashed", next_restart_at=NOW - timedelta(seconds=1))),
                    row(0, "crashed", next_restart_at=NOW - timedelta(seconds=1)),
                )
            ],
            id="crashed, backoff over: restart",
        ),
        pytest.param(
            row(0, "restarting"),
            observed(container(NAME0)),
            [ReplicaCheck(live(row(0, "restarting")), row(0, "restarting"))],
            id="restarted, not yet serving: health check",
        ),
        pytest.param(
            row(0, crash_streak=3, started_at=NOW - timedelta(minutes=2)),
            observed(container(NAME0)),
            [ReplicaSteady(row(0, crash_streak=3, started_at=NOW - timedelta(minutes=2)))],
            id="ran healthily long enough: backoff starts over",
        ),
        pytest.param(
            row(0, crash_streak=3, started_at=NOW - timedelta(seconds=10)),
            observed(container(NAME0)),
            [],
            id="running again, not long enough to forget the crashes",
        ),
    ],
)
def test_replica_decisions(replica: ReplicaRow, seen: Observed, expected: list[Any]):
    assert plan(Desired(apps=(live(replica),)), seen) == expected


@pytest.mark.parametrize(
    ("container_age", "network_age", "replaced"),
    [
        pytest.param(3600, 7200, False, id="network older than the container: on it"),
        pytest.param(3600, 60, True, id="network created again after the container: cut off"),
        pytest.param(60.5, 60, False, id="the same second (podman's precision): given the benefit of the doubt"),
    ],
)
def test_a_running_replica_older_than_its_network_is_replaced(container_age: float, network_age: float, replaced: bool):
    actions = plan(Desired(apps=(live(R0),)), observed(container(NAME0, age=container_age), network_age=network_age))
    assert actions == ([ReplicaExited(live(R0), R0, None, "detached", container_present=True)] if replaced else [])


def test_a_missing_tenant_network_is_created_before_anything_else():
    actions = plan(Desired(apps=(live(R0),)), observed(container(NAME0), networks=()))
    assert actions == [NetworkCreate(NETWORK, TENANT_ID)]


OLD = uuid.UUID("44444444-4444-4444-8444-444444444444")


@pytest.mark.parametrize(
    ("known", "age", "role", "expected_reason"),
    [
        pytest.param(None, 3600, "web", "unknown deployment", id="unknown to the DB, old: removed"),
        pytest.param(None, 5, "web", "", id="unknown but brand new: grace"),
        pytest.param(KnownDeployment("building", None), 3600, "deps", "", id="its deployment is in flight"),
        pytest.param(KnownDeployment("starting", None), 3600, "web", "", id="a deploy is starting it"),
        pytest.param(
            KnownDeployment("superseded", NOW - timedelta(hours=1)), 3600, "web", "deployment superseded", id="retired"
        ),
        pytest.param(KnownDeployment("superseded", NOW - timedelta(seconds=5)), 3600, "web", "", id="draining"),
        pytest.param(
            KnownDeployment("failed", NOW - timedelta(hours=1)), 3600, "web", "deployment failed", id="failed"
        ),
        pytest.param(KnownDeployment("live", None), 3600, "web", "", id="went live after the pass read the DB"),
        pytest.param(KnownDeployment("live", None), 3600, "release", "", id="live deployment's one-off"),
    ],
)
def test_orphans(known: KnownDeployment | None, age: float, role: str, expected_reason: str):
    name = f"tsl-{OLD}-7"
    deployments = {OLD: known} if known else {}
    desired = Desired(apps=(live(R0),), deployments=deployments)
    actions = plan(desired, observed(container(NAME0), container(name, age=age, deployment=OLD, role=role)))
    assert actions == ([OrphanRemove(name, expected_reason)] if expected_reason else [])


def test_a_web_container_of_the_live_deployment_that_no_replica_row_names_is_an_orphan():
    name = f"tsl-{DEPLOYMENT_ID}-5"
    desired = Desired(apps=(live(R0),), deployments={DEPLOYMENT_ID: KnownDeployment("live", None)})
    actions = plan(desired, observed(container(NAME0), container(name)))
    assert actions == [OrphanRemove(name, "not a replica of the live deployment")]


def test_an_orphan_is_left_alone_if_the_db_says_otherwise_by_the_time_it_would_be_removed(
    app: App, fake_podman: FakePodman, settings: Any
):
    """The pass read the DB before a deploy went live and the podman state after: the DB is asked
    again right before a container is removed, and a replica row wins."""
    live_deployment = go_live(app)
    name = replicas_of(live_deployment)[0].name
    fake_podman.containers[name].created_at -= settings.ORPHAN_GRACE_SECONDS + 1
    real_plan = planner.plan_replicas

    def stale_plan(*args: Any, **kwargs: Any) -> list[Any]:
        return [*real_plan(*args, **kwargs), OrphanRemove(name, "unknown deployment")]

    from unittest import mock

    with mock.patch.object(planner, "plan_replicas", side_effect=stale_plan):
        reconcile_pass()
    assert fake_podman.containers[name].running


def test_containers_without_a_deployment_label_are_orphans_after_the_grace():
    stray = podman.ObservedContainer("stray", {}, "running", 0, 0.0, 0.0, NOW.timestamp() - 3600)
    assert plan(Desired(apps=()), Observed({"stray": stray}, {}, frozenset())) == [
        OrphanRemove("stray", "no deployment label")
    ]


def test_restart_backoff_doubles_from_the_base_up_to_the_cap():
    delays = [planner.restart_delay(streak, base=1, cap=300) for streak in range(12)]
    assert delays == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def routes_of(app: LiveApp, serving: set[str]) -> dict[str, Any]:
    route = planner.desired_route(app, frozenset(serving), 8000)
    return {route["@id"]: route}


LOOKUP = caddy_routes.UpstreamLookup(
    name=f"{APP_ID}.apps.coltsfoot.internal", port=8000, resolver="127.0.0.1:5354", refresh="1000ms"
)
TO_REPLICAS = caddy_routes.app_route(APP_ID, ["shop-acme.localhost"], LOOKUP)
BOTH = ("10.89.0.2", "10.89.0.3")


@pytest.mark.parametrize(
    ("app", "serving", "seen_routes", "seen_hosts", "expected"),
    [
        pytest.param(live(R0, row(1)), {R0.name, row(1).name}, "same", BOTH, [], id="route and hosts right: nothing"),
        pytest.param(
            live(R0, row(1)),
            {R0.name, row(1).name},
            {},
            None,
            [HostsSet(APP_ID, BOTH), RouteSet(APP_ID, TO_REPLICAS)],
            id="both missing: the addresses first, then the route that looks them up",
        ),
        pytest.param(
            live(R0, row(1)),
            {R0.name, row(1).name},
            "same",
            None,
            [HostsSet(APP_ID, BOTH)],
            id="the hosts file is missing: written, the route left alone",
        ),
        pytest.param(
            live(R0, row(1)),
            {R0.name, row(1).name},
            "same",
            ("10.89.0.9",),
            [HostsSet(APP_ID, BOTH)],
            id="the hosts file is wrong: rewritten, the route left alone",
        ),
        pytest.param(
            live(R0, row(1)),
            {row(1).name},
            routes_of(live(R0, row(1)), {R0.name, row(1).name}),
            BOTH,
            [HostsSet(APP_ID, ("10.89.0.3",))],
            id="a dead replica's address is dropped: no route change (no config load)",
        ),
        pytest.param(
            live(R0, row(1)),
            {R0.name, row(1).name},
            {TO_REPLICAS["@id"]: caddy_routes.app_route(APP_ID, ["old-acme.localhost"], LOOKUP)},
            BOTH,
            [RouteSet(APP_ID, TO_REPLICAS)],
            id="the route's shape is wrong: pushed, the hosts file left alone",
        ),
        pytest.param(
            live(R0),
            set(),
            routes_of(live(R0), {R0.name}),
            ("10.89.0.2",),
            [RouteSet(APP_ID, caddy_routes.unavailable_route(APP_ID, ["shop-acme.localhost"])), HostsSet(APP_ID, ())],
            id="none serves: the 503 page first, then the addresses go",
        ),
        pytest.param(live(R0, switching=True), set(), {}, None, [], id="a deploy is switching it: hands off"),
        pytest.param(
            live(R0, row(1), suspended=True),
            {R0.name, row(1).name},
            routes_of(live(R0, row(1)), {R0.name, row(1).name}),
            BOTH,
            [RouteSet(APP_ID, caddy_routes.suspended_route(APP_ID, ["shop-acme.localhost"]))],
            id="its tenant is suspended: the suspended page, though replicas serve",
        ),
        pytest.param(
            live(R0, suspended=True),
            set(),
            routes_of(live(R0), set()),
            (),
            [RouteSet(APP_ID, caddy_routes.suspended_route(APP_ID, ["shop-acme.localhost"]))],
            id="suspended and none serves: the suspended page, not the 503 one",
        ),
        pytest.param(live(R0, suspended=True), {R0.name}, "same", ("10.89.0.2",), [], id="suspended page in place"),
        pytest.param(
            live(R0, row(1)),
            {R0.name, row(1).name},
            routes_of(live(R0, row(1), suspended=True), set()),
            BOTH,
            [RouteSet(APP_ID, TO_REPLICAS)],
            id="reactivated: back to its replicas",
        ),
    ],
)
def test_route_decisions(
    app: LiveApp, serving: set[str], seen_routes: Any, seen_hosts: tuple[str, ...] | None, expected: list[Any]
):
    desired = Desired(apps=(app,))
    routes = routes_of(app, serving) if seen_routes == "same" else seen_routes
    hosts = {} if seen_hosts is None else {APP_ID: seen_hosts}
    seen = Observed({}, routes, frozenset([NETWORK]), hosts=hosts)
    assert planner.plan_routes(desired, seen, frozenset(serving), port=8000) == expected


def test_a_dead_replica_leaves_the_hosts_file_at_once_while_another_serves():
    # No hold any more: the switch away from it is a hosts file write, not a Caddy config load that would
    # turn a request retrying off the dead replica into a 502.
    app = live(R0, row(1))
    serving = frozenset({row(1).name})
    died_at = NOW.timestamp() - 0.2
    dead = podman.ObservedContainer(NAME0, {}, "exited", 137, died_at - 60, died_at, died_at - 60)
    seen = Observed(
        {NAME0: dead, row(1).name: container(row(1).name)},
        routes_of(app, {R0.name, row(1).name}),
        frozenset([NETWORK]),
        hosts={APP_ID: BOTH},
    )
    assert planner.plan_routes(Desired(apps=(app,)), seen, serving, port=8000) == [HostsSet(APP_ID, ("10.89.0.3",))]


def test_a_caddy_without_its_config_gets_every_route_back_in_one_load():
    other = uuid.UUID("55555555-5555-4555-8555-555555555555")
    apps = (live(R0), live(row(1), app_id=other))
    desired = Desired(apps=apps)
    seen = Observed({}, None, frozenset([NETWORK]), catchall=False)
    actions = planner.plan_routes(desired, seen, frozenset({R0.name, row(1).name}), port=8000)
    assert actions == [
        HostsSet(APP_ID, ("10.89.0.2",)),
        HostsSet(other, ("10.89.0.3",)),
        EdgeLoad(tuple(planner.desired_route(a, frozenset({R0.name, row(1).name}), 8000) for a in apps)),
    ]


def test_routes_of_apps_the_platform_does_not_serve_are_removed_but_not_those_about_to_go_live():
    stale, soon = uuid.uuid4(), uuid.uuid4()
    routes: dict[str, Any] = {
        caddy_routes.route_id(stale): {},
        caddy_routes.route_id(soon): {},
        caddy_routes.CATCHALL_ROUTE_ID: {},
        "someone-elses": {},
    }
    desired = Desired(apps=(), apps_routing_soon=frozenset({soon}))
    hosts = {stale: ("10.89.0.2",), soon: ("10.89.0.3",)}
    actions = planner.plan_routes(desired, Observed({}, routes, frozenset(), hosts=hosts), frozenset(), port=8000)
    assert actions == [RouteRemove(caddy_routes.route_id(stale)), HostsRemove(stale)]


# === Whole passes against the fakes ==============================================================


@pytest.fixture
def _seams(db: None, pipeline_settings: None, fake_podman: FakePodman, routes: FakeRoutes, http: Any) -> None:
    pass


@pytest.fixture
def app(_seams: None) -> App:
    return make_app(replicas=2)


def go_live(app: App) -> Deployment:
    deployment = archive_deployment(app)
    tasks.drive(deployment.public_id)
    fresh: Deployment = Deployment.objects.select_related("app", "app__tenant").get(pk=deployment.pk)
    assert fresh.state == Deployment.State.LIVE, fresh.log
    return fresh


def podman_calls() -> dict[str, int]:
    """How often each (patched) podman operation was called."""
    return {
        name: getattr(podman, name).call_count
        for name in vars(FakePodman)
        if not name.startswith("_")
        and hasattr(getattr(podman, name, None), "call_count")
        and getattr(podman, name).call_count
    }


def reset_calls() -> None:
    for name in vars(FakePodman):
        operation: Any = getattr(podman, name, None)
        if hasattr(operation, "reset_mock"):
            operation.reset_mock()


def replicas_of(deployment: Deployment) -> list[Replica]:
    return list(Replica.objects.filter(deployment=deployment).order_by("index"))


def test_a_pass_with_nothing_to_do_observes_once_and_changes_nothing(
    app: App, fake_podman: FakePodman, routes: FakeRoutes
):
    go_live(app)
    go_live(make_app(name="blog", replicas=1))
    go_live(make_app(slug="other", name="shop", replicas=3))
    writes, started = routes.writes, list(fake_podman.started)
    reset_calls()
    routes.reads = 0

    report = reconcile_pass()

    assert report.actions == {}
    assert report.errors == 0
    assert podman_calls() == {"containers_observe": 1, "networks_observe": 1}
    assert routes.reads == 1
    assert routes.writes == writes
    assert routes.loads == 0
    assert fake_podman.started == started


def test_a_killed_replica_is_replaced_and_the_route_follows(app: App, fake_podman: FakePodman, routes: FakeRoutes):
    live_deployment = go_live(app)
    first, second = (r.name for r in replicas_of(live_deployment))
    fake_podman.kill(first)

    route_before, writes = routes.raw[caddy_routes.route_id(app.public_id)], routes.writes
    report = reconcile_pass()  # records the crash; backoff starts at 1 s
    assert report.wake_in == 1.0
    crashed = replicas_of(live_deployment)[0]
    assert (crashed.state, crashed.last_exit_code, crashed.last_exit_reason) == ("crashed", 137, "killed")
    # Its address leaves the app's hosts file at once; the route itself is not touched (no config load).
    assert routes.table[app.public_id] == [f"{fake_podman.containers[second].address}:8000"]
    assert report.actions["hosts_set"] == 1
    assert (routes.raw[caddy_routes.route_id(app.public_id)], routes.writes) == (route_before, writes)

    reconcile_pass(now=timezone.now() + timedelta(seconds=2))

    restarted = replicas_of(live_deployment)[0]
    assert (restarted.state, restarted.restarts) == ("running", 1)
    assert fake_podman.containers[first].running
    assert sorted(routes.table[app.public_id]) == sorted(
        f"{fake_podman.containers[name].address}:8000" for name in (first, second)
    )
    log = Deployment.objects.get(pk=live_deployment.pk).log
    assert "web.1 was killed with exit code 137; restarting it in 1 s" in log
    assert "web.1 answers HTTP again" in log


@pytest.mark.parametrize("damage", ["missing", "wrong", "empty"])
def test_a_missing_or_wrong_hosts_file_is_repaired_without_touching_the_route(
    app: App, fake_podman: FakePodman, routes: FakeRoutes, damage: str
):
    live_deployment = go_live(app)
    expected = sorted(f"{fake_podman.containers[name].address}:8000" for name in fake_podman.names_of(live_deployment))
    hosts = routes.hosts
    if damage == "missing":
        hosts.remove(app.public_id)
    else:
        hosts.write(app.public_id, ["10.89.9.9"] if damage == "wrong" else [])
    assert sorted(routes.table[app.public_id]) != expected  # the edge would send visitors nowhere, or elsewhere
    route_before, writes = routes.raw[caddy_routes.route_id(app.public_id)], routes.writes

    report = reconcile_pass()

    assert report.actions == {"hosts_set": 1}
    assert sorted(routes.table[app.public_id]) == expected
    assert (routes.raw[caddy_routes.route_id(app.public_id)], routes.writes) == (route_before, writes)
    assert reconcile_pass().actions == {}  # and stays repaired


def test_a_deleted_apps_hosts_file_is_removed(app: App, fake_podman: FakePodman, routes: FakeRoutes):
    go_live(app)
    stray = uuid.uuid4()  # an app the platform does not know (deleted while the worker was down)
    routes.hosts.write(stray, ["10.89.9.9"])

    report = reconcile_pass()

    assert report.actions == {"hosts_removed": 1}
    assert routes.hosts.read(stray) is None
    assert routes.hosts.read(app.public_id)  # its own stays


def test_a_vanished_replica_is_started_again_in_the_same_pass(app: App, fake_podman: FakePodman, routes: FakeRoutes):
    live_deployment = go_live(app)
    for name in list(fake_podman.containers):
        fake_podman.container_remove(name)  # a host reboot, or make down

    reconcile_pass()

    assert [r.state for r in replicas_of(live_deployment)] == ["running", "running"]
    assert [r.crash_streak for r in replicas_of(live_deployment)] == [0, 0]  # not the app's fault
    assert len(routes.table[app.public_id]) == 2


def test_a_crash_looping_replica_backs_off_and_says_why(app: App, fake_podman: FakePodman, routes: FakeRoutes):
    live_deployment = go_live(app)
    name = replicas_of(live_deployment)[0].name
    fake_podman.broken_images.add(live_deployment.image_ref)  # every new container dies at once
    fake_podman.output[live_deployment.image_ref] = "Traceback: ImportError: no module named flask\n"
    fake_podman.kill(name, exit_code=1)

    now = timezone.now()
    delays = []
    for _ in range(4):
        report = reconcile_pass(now=now)
        replica = replicas_of(live_deployment)[0]
        assert replica.state == "crashed"
        assert replica.next_restart_at is not None
        delays.append((replica.next_restart_at - now).total_seconds())
        now = replica.next_restart_at + timedelta(milliseconds=1)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert report.errors == 0
    assert "ImportError: no module named flask" in Deployment.objects.get(pk=live_deployment.pk).log


def test_an_out_of_memory_kill_is_named_as_such(app: App, fake_podman: FakePodman):
    live_deployment = go_live(app)
    fake_podman.kill(replicas_of(live_deployment)[1].name, oom=True)
    reconcile_pass()
    assert replicas_of(live_deployment)[1].last_exit_reason == "oom_killed"


@pytest.mark.usefixtures("_seams")
def test_the_only_replica_dead_answers_the_503_page_until_it_is_back(fake_podman: FakePodman, routes: FakeRoutes):
    app = make_app(replicas=1)
    live_deployment = go_live(app)
    fake_podman.kill(replicas_of(live_deployment)[0].name)

    reconcile_pass()

    assert routes.raw[caddy_routes.route_id(app.public_id)] == caddy_routes.unavailable_route(
        app.public_id, [app.hostname]
    )
    reconcile_pass(now=timezone.now() + timedelta(seconds=2))
    assert len(routes.table[app.public_id]) == 1


def test_a_suspended_tenants_app_answers_the_suspended_page_and_keeps_its_replicas(
    app: App, fake_podman: FakePodman, routes: FakeRoutes
):
    live_deployment = go_live(app)
    addresses = sorted(routes.table[app.public_id])
    app.tenant.status = "suspended"
    app.tenant.save(update_fields=["status"])

    reconcile_pass()

    assert routes.raw[caddy_routes.route_id(app.public_id)] == caddy_routes.suspended_route(
        app.public_id, [app.hostname]
    )
    assert all(fake_podman.containers[r.name].running for r in replicas_of(live_deployment))

    app.tenant.status = "active"
    app.tenant.save(update_fields=["status"])
    reconcile_pass()
    assert sorted(routes.table[app.public_id]) == addresses


def test_a_caddy_that_lost_its_config_gets_every_route_back(app: App, fake_podman: FakePodman, routes: FakeRoutes):
    go_live(app)
    other = make_app(name="blog", replicas=1)
    go_live(other)
    before = dict(routes.raw)
    routes.restart_empty()

    reconcile_pass()

    assert routes.loads == 1
    assert routes.raw == before


def test_a_removed_network_is_recreated_and_an_orphan_removed(app: App, fake_podman: FakePodman, settings: Any):
    live_deployment = go_live(app)
    network = runtime.tenant_network(app.tenant.public_id)
    fake_podman.networks.pop(network)
    for name in [r.name for r in replicas_of(live_deployment)]:
        fake_podman.container_remove(name)  # `podman network rm -f` takes its containers along
    orphan = podman.ContainerSpec(
        name="tsl-stray",
        image=live_deployment.image_ref,
        network=network,
        uid=1,
        gid=1,
        memory_mb=64,
        cpus=1,
        pids_limit=10,
        env={},
        secret_env={},
        command="sleep 1000",
        labels={"coltsfoot.instance": str(settings.INSTANCE_ID), "coltsfoot.deployment": str(uuid.uuid4())},
    )
    fake_podman.container_run_detached(orphan)
    fake_podman.containers["tsl-stray"].created_at -= settings.ORPHAN_GRACE_SECONDS + 1

    report = reconcile_pass()

    assert network in fake_podman.networks
    assert report.actions["network_created"] == 1
    assert "tsl-stray" not in fake_podman.containers
    assert [r.state for r in replicas_of(live_deployment)] == ["running", "running"]


def test_a_recreated_network_whose_bridge_cannot_be_filtered_gets_no_replica(
    app: App, fake_podman: FakePodman, routes: FakeRoutes
):
    live_deployment = go_live(app)
    network = runtime.tenant_network(app.tenant.public_id)
    fake_podman.network_remove(network)
    started = list(fake_podman.started)
    with mock.patch(
        "provisioning.reconciler.runner.firewall_ensure_for_network",
        autospec=True,
        side_effect=firewall.FirewallError("nft: Operation not permitted"),
    ) as ensure:
        report = reconcile_pass()
    ensure.assert_called_once_with()
    assert network in fake_podman.networks
    assert fake_podman.started == started  # nothing ran unfiltered
    assert report.errors == 3  # the firewall, then each of the two replicas left for the next pass
    assert routes.table[app.public_id] == []  # the 503 page meanwhile

    report = reconcile_pass()  # the firewall applies now

    assert report.actions["replica_started"] == 2
    assert [r.state for r in replicas_of(live_deployment)] == ["running", "running"]


def test_replicas_started_on_a_network_that_was_then_removed_are_replaced_on_the_new_one(
    app: App, fake_podman: FakePodman, routes: FakeRoutes
):
    """`podman network rm --force` racing a pass: the pass restarted the replicas on the network about to
    go, so they run, unreachable. The next pass, seeing the network newer than them, replaces them."""
    live_deployment = go_live(app)
    network = runtime.tenant_network(app.tenant.public_id)
    names = [r.name for r in replicas_of(live_deployment)]
    for name in names:
        fake_podman.containers[name].created_at -= 60
    first_ids = {name: id(fake_podman.containers[name]) for name in names}
    labels = fake_podman.networks[network]
    fake_podman.network_remove(network)
    fake_podman.network_ensure(network, labels)
    # The replicas outlived their network (they were started on it just before it went).
    for name in names:
        fake_podman.containers[name] = fake_podman.removed.pop()
        fake_podman.containers[name].running = True
        fake_podman.containers[name].created_at = fake_podman.network_created[network] - 30

    report = reconcile_pass()

    assert report.actions["replica_detached"] == 2
    assert all(id(fake_podman.containers[name]) != first_ids[name] for name in names)
    assert [r.state for r in replicas_of(live_deployment)] == ["running", "running"]
    assert [r.last_exit_reason for r in replicas_of(live_deployment)] == ["detached", "detached"]
    assert [r.crash_streak for r in replicas_of(live_deployment)] == [0, 0]  # not the app's fault
    assert sorted(routes.table[app.public_id]) == sorted(
        f"{fake_podman.containers[name].address}:8000" for name in names
    )
    assert reconcile_pass().actions == {}


def test_containers_of_another_installation_are_never_touched(app: App, fake_podman: FakePodman):
    live_deployment = go_live(app)
    theirs = podman.ContainerSpec(
        name="tsl-theirs",
        image=live_deployment.image_ref,
        network="their-net",
        uid=1,
        gid=1,
        memory_mb=64,
        cpus=1,
        pids_limit=10,
        env={},
        secret_env={},
        command="sleep 1000",
        labels={"coltsfoot.instance": "another-installation", "coltsfoot.deployment": str(uuid.uuid4())},
    )
    fake_podman.container_run_detached(theirs)
    fake_podman.containers["tsl-theirs"].created_at = 0.0
    reconcile_pass()
    assert fake_podman.containers["tsl-theirs"].running


def test_passes_never_overlap_and_a_dead_holders_lease_expires(db: None):
    assert lease.lease_acquire("reconcile", "worker-a", 60)
    assert not lease.lease_acquire("reconcile", "worker-b", 60)
    assert lease.lease_acquire("reconcile", "worker-a", 60)  # renewing is fine
    from provisioning.models import Lease

    Lease.objects.filter(name="reconcile").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert lease.lease_acquire("reconcile", "worker-b", 60)  # worker-a died
    lease.lease_release("reconcile", "worker-b")
    assert lease.lease_acquire("reconcile", "worker-c", 60)


def test_the_reconcile_task_skips_while_another_pass_holds_the_lease(app: App, fake_podman: FakePodman):
    go_live(app)
    assert lease.lease_acquire(tasks.RECONCILE_LEASE, "someone-else", 60)
    assert lease.lease_acquire(f"{tasks.RECONCILE_LEASE}-host-1", "someone-else", 60)
    reset_calls()
    assert tasks.reconcile() == {"skipped": True}
    assert podman_calls() == {}


def test_an_orphan_that_names_no_host_is_removed_by_a_host_pass(app: App, fake_podman: FakePodman, settings: Any):
    from provisioning.reconciler.runner import reconcile_pass

    live_deployment = go_live(app)
    labels = {"coltsfoot.instance": str(settings.INSTANCE_ID), "coltsfoot.deployment": str(uuid.uuid4())}
    stray = podman.ContainerSpec(
        name="tsl-stray-0",
        image=live_deployment.image_ref,
        network=runtime.tenant_network(app.tenant.public_id),
        uid=1,
        gid=1,
        memory_mb=64,
        cpus=1,
        pids_limit=10,
        env={},
        secret_env={},
        command="sleep 1000",
        labels=labels,
    )
    fake_podman.container_run_detached(stray)
    fake_podman.containers["tsl-stray-0"].created_at -= settings.ORPHAN_GRACE_SECONDS + 1
    report = reconcile_pass(host="host-1")
    assert report.actions.get("orphan_removed") == 1
    assert "tsl-stray-0" not in fake_podman.containers


def test_while_another_worker_holds_the_control_part_a_host_still_repairs_its_own(app: App, fake_podman: FakePodman):
    live = go_live(app)
    fake_podman.kill(replicas_of(live)[0].name)
    assert lease.lease_acquire(tasks.RECONCILE_LEASE, "a-worker-on-another-host", 60)
    with mock.patch.object(tasks, "requeue_work", autospec=True) as requeue:
        counts = tasks.reconcile()
    requeue.assert_not_called()  # the control part is the other worker's
    assert "requeued" not in counts
    assert replicas_of(live)[0].state == Replica.State.CRASHED  # but this host's own pass ran


def test_a_host_pass_sees_only_the_containers_labelled_with_its_host(app: App, fake_podman: FakePodman):
    from provisioning.reconciler.runner import reconcile_pass

    live = go_live(app)
    replica = replicas_of(live)[0]
    fake_podman.kill(replica.name)
    # Another host's pass does not see this host's containers nor repair this host's replicas.
    report = reconcile_pass(host="host-2")
    assert report.apps == 0
    assert replicas_of(live)[0].state == Replica.State.RUNNING
    assert fake_podman.containers[replica.name].labels["coltsfoot.host"] == "host-1"
    reconcile_pass(host="host-1")
    assert replicas_of(live)[0].state == Replica.State.CRASHED


def test_a_deployment_whose_message_was_lost_is_queued_again_after_a_few_seconds(app: App, settings: Any):
    deployment = archive_deployment(app)  # queued; its message never reached a worker
    Deployment.objects.filter(pk=deployment.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.OUTBOX_SECONDS + 1)
    )
    from unittest import mock

    with mock.patch.object(tasks.deployment_run, "delay", autospec=True) as delay:
        tasks.requeue_work()
        tasks.requeue_work()
    delay.assert_called_once_with(str(deployment.public_id))


def test_a_task_binds_the_ids_it_works_on_to_its_log_lines_and_forgets_them_after(app: App):
    from core import logging as log_context

    deployment = archive_deployment(app)
    tasks.deployment_run.before_start("task-1", (str(deployment.public_id),), {})
    tasks._load(deployment.public_id)
    record: Any = logging.LogRecord("provisioning.x", logging.INFO, __file__, 1, "a line without extra", None, None)
    log_context.ContextFilter().filter(record)
    assert (record.tenant_id, record.app_id, record.deployment_id) == (
        str(app.tenant.public_id),
        str(app.public_id),
        str(deployment.public_id),
    )
    assert record.request_id == "task-task-1"
    tasks.deployment_run.after_return()
    assert log_context.deployment_id_var.get() is None
