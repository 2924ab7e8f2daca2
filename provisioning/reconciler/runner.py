"""One reconcile pass: read desired state from the DB, observe podman and Caddy once each, plan,
then act on the differences only.

Observation costs O(1) calls whatever the number of apps: one `podman ps --all`, one
`podman network ls` and one read of the edge routes (plus a read of the local directory of
upstream hosts files, one small file per app). Per-app calls happen only for an app that
differs (a dead replica, a route that is wrong), and every write re-checks the one row it is
about, since the pipeline may have moved on while the pass was planning.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db.models import F
from django.db.models import Q
from django.utils import timezone

from caddy.client import CaddyClient
from caddy.client import CaddyError
from caddy.routes import CATCHALL_ROUTE_ID
from core.faults import DeployError
from drivers import firewall
from drivers import podman
from drivers.upstream_hosts import UpstreamHosts
from platform_apps.deployments.services import release_current
from platform_apps.domains.selectors import route_hostnames
from platform_apps.domains.selectors import verified_hostnames
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Replica
from provisioning import leases
from provisioning import pipeline
from provisioning import runtime
from provisioning.firewall import firewall_ensure_for_network
from provisioning.reconciler import planner
from provisioning.reconciler import redis as redis_reconciler
from provisioning.reconciler.state import Desired
from provisioning.reconciler.state import EdgeLoad
from provisioning.reconciler.state import HostsRemove
from provisioning.reconciler.state import HostsSet
from provisioning.reconciler.state import KnownDeployment
from provisioning.reconciler.state import LiveApp
from provisioning.reconciler.state import NetworkCreate
from provisioning.reconciler.state import Observed
from provisioning.reconciler.state import OrphanRemove
from provisioning.reconciler.state import ReplicaAction
from provisioning.reconciler.state import ReplicaCheck
from provisioning.reconciler.state import ReplicaExited
from provisioning.reconciler.state import ReplicaRow
from provisioning.reconciler.state import ReplicaStart
from provisioning.reconciler.state import ReplicaSteady
from provisioning.reconciler.state import RouteAction
from provisioning.reconciler.state import RouteRemove
from provisioning.reconciler.state import RouteSet
from tenants.models import Tenant

logger = logging.getLogger(__name__)

INSTANCE_LABEL = "coltsfoot.instance"
HOST_LABEL = pipeline.HOST_LABEL
LAST_OUTPUT_LINES = 30
_REPAIR_ERRORS = (podman.PodmanError, CaddyError, DeployError, firewall.FirewallError, ValueError, OSError)


@dataclass
class PassReport:
    """What one pass did, for logs, the task result and the benchmark."""

    apps: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    # Seconds until the earliest pending restart, if sooner than the next periodic pass.
    wake_in: float | None = None

    def count(self, kind: str) -> None:
        self.actions[kind] = self.actions.get(kind, 0) + 1

    def wake(self, seconds: float) -> None:
        """Ask for another pass in `seconds` (the earliest of the requests wins)."""
        self.wake_in = seconds if self.wake_in is None else min(self.wake_in, seconds)

    def as_dict(self) -> dict[str, object]:
        return {"apps": self.apps, "actions": dict(self.actions), "errors": self.errors, "wake_in": self.wake_in}


# --- Desired state (the platform DB) --------------------------------------------------------


def _row(replica: Replica) -> ReplicaRow:
    return ReplicaRow(
        pk=replica.pk,
        index=replica.index,
        name=replica.name,
        state=replica.state,
        address=replica.address,
        crash_streak=replica.crash_streak,
        started_at=replica.started_at,
        next_restart_at=replica.next_restart_at,
    )


def load_desired(host: str = "") -> Desired:
    """Every live app with its live deployment's replicas (only the apps whose live deployment is placed on
    `host`, if given), in a fixed number of queries."""
    live_apps = App.objects.filter(state=App.State.ACTIVE, live_deployment__isnull=False)
    elsewhere: frozenset[uuid.UUID] = frozenset()
    if host:
        # One query for the apps live on the other hosts, so the pass never plans (and then checks, one query
        # each) the removal of their routes and hosts files.
        others = live_apps.exclude(live_deployment__host__name=host).values_list("public_id", flat=True)
        elsewhere = frozenset(others)
        live_apps = live_apps.filter(live_deployment__host__name=host)
    # Only the columns the pass uses: a deployment's log alone can be LOG_MAX_CHARS.
    apps = list(
        live_apps.select_related("tenant", "live_deployment").only(
            "public_id", "hostname", "force_https", "tenant__public_id", "tenant__status", "live_deployment__public_id"
        )
    )
    # The verified custom domains are part of each route: a repair must never drop them (one query).
    domains = verified_hostnames(app.pk for app in apps)
    https_port = pipeline.edge_https_port()
    refresh = pipeline.upstream_refresh()
    rows: dict[int, list[ReplicaRow]] = defaultdict(list)
    for replica in Replica.objects.filter(deployment_id__in=[app.live_deployment_id for app in apps]):
        rows[replica.deployment_id].append(_row(replica))
    in_flight = list(
        Deployment.objects.filter(state__in=Deployment.ACTIVE_STATES).values_list("app_id", "app__public_id", "state")
    )
    switching = {app_pk for app_pk, _app_id, state in in_flight if state == Deployment.State.STARTING}
    live = []
    for app in apps:
        deployment = app.live_deployment
        assert deployment is not None  # filtered on above  # noqa: S101
        live.append(
            LiveApp(
                app_id=app.public_id,
                tenant_id=app.tenant.public_id,
                deployment_id=deployment.public_id,
                network=runtime.tenant_network(app.tenant.public_id),
                hostnames=(app.hostname, *domains.get(app.pk, [])),
                replicas=tuple(sorted(rows.get(deployment.pk, []), key=lambda r: r.index)),
                switching=app.pk in switching,
                suspended=app.tenant.status == Tenant.Status.SUSPENDED,
                force_https=bool(app.force_https),
                https_port=https_port,
                upstream_resolver=str(settings.UPSTREAM_DNS),
                upstream_refresh=refresh,
            )
        )
    routing_soon = frozenset(app_id for _pk, app_id, _state in in_flight)
    return Desired(apps=tuple(live), apps_routing_soon=routing_soon, host=host, apps_elsewhere=elsewhere)


def with_known_deployments(desired: Desired, observed: Observed) -> Desired:
    """Add what the DB knows of every deployment an observed container names (one query)."""
    ids: set[uuid.UUID] = set()
    for container in observed.containers.values():
        try:
            ids.add(uuid.UUID(container.labels.get("coltsfoot.deployment", "")))
        except ValueError:
            continue
    known = {
        public_id: KnownDeployment(state=state, finished_at=finished_at, host=host or "")
        for public_id, state, finished_at, host in Deployment.objects.filter(public_id__in=ids).values_list(
            "public_id", "state", "finished_at", "host__name"
        )
    }
    return dataclasses.replace(desired, deployments=known)


def on_host(observed: Observed, host: str) -> Observed:
    """The observation narrowed to the containers labelled with `host` (or with no host): each host manages its
    own only."""
    if not host:
        return observed
    # A container of the installation that names no host (made before hosts, or by hand) is every host's to see:
    # left alone unless it is an orphan, which any host may remove.
    mine = {name: c for name, c in observed.containers.items() if c.labels.get(HOST_LABEL, host) == host}
    return dataclasses.replace(observed, containers=mine)


# --- Observed state (podman, Caddy) ---------------------------------------------------------


def observe(caddy: CaddyClient) -> tuple[Observed, bool]:
    """One podman ps, one network listing, one read of the edge routes and of the upstream hosts files.
    Returns the observation and whether Caddy could be read (routes are left alone when it could not)."""
    instance = str(settings.INSTANCE_ID)
    containers = {c.name: c for c in podman.containers_observe(INSTANCE_LABEL, instance)}
    created = podman.networks_observe(INSTANCE_LABEL, instance)
    hosts = {app_id: tuple(addresses) for app_id, addresses in UpstreamHosts.from_settings().observe().items()}
    seen = partial(Observed, containers=containers, networks=frozenset(created), network_created=created, hosts=hosts)
    try:
        routes = caddy.edge_routes()
    except CaddyError as exc:
        logger.warning("reconcile: the edge could not be read; routes are left as they are: %s", exc)
        return seen(routes={}), False
    if routes is None:
        return seen(routes=None, catchall=False), True
    by_id = {str(route.get("@id")): route for route in routes if route.get("@id")}
    return seen(routes=by_id, catchall=CATCHALL_ROUTE_ID in by_id), True


# --- Acting ---------------------------------------------------------------------------------


def _source(index: int) -> str:
    return f"web.{index + 1}"


class _Deployments:
    """The deployments (and their runtime environment) a pass needs, loaded once each."""

    def __init__(self) -> None:
        self._rows: dict[uuid.UUID, Deployment] = {}
        self._runtime: dict[uuid.UUID, pipeline.Runtime] = {}

    def get(self, deployment_id: uuid.UUID) -> Deployment:
        if deployment_id not in self._rows:
            self._rows[deployment_id] = Deployment.objects.select_related("app", "app__tenant", "host").get(
                public_id=deployment_id
            )
        return self._rows[deployment_id]

    def runtime(self, deployment_id: uuid.UUID) -> pipeline.Runtime:
        if deployment_id not in self._runtime:
            self._runtime[deployment_id] = pipeline.runtime_env(self.get(deployment_id))
        return self._runtime[deployment_id]

    def secrets(self, deployment_id: uuid.UUID) -> tuple[str, ...]:
        runtime = self._runtime.get(deployment_id)
        if runtime is not None:
            return runtime.secret_values
        return tuple(pipeline.resolve_secrets(self.get(deployment_id)))


def _context(app: LiveApp, replica: ReplicaRow | None = None) -> dict[str, object]:
    context: dict[str, object] = {
        "tenant_id": str(app.tenant_id),
        "app_id": str(app.app_id),
        "deployment_id": str(app.deployment_id),
    }
    if replica is not None:
        context["replica"] = _source(replica.index)
    return context


def _str_context(app: LiveApp) -> dict[str, str]:
    return {"tenant_id": str(app.tenant_id), "app_id": str(app.app_id), "deployment_id": str(app.deployment_id)}


def _record_exit(
    action: ReplicaExited, deployments: _Deployments, now: datetime, report: PassReport, *, reason: str = ""
) -> float:
    """Mark the replica crashed, say why in the app's log, and return the restart delay."""
    replica, app = action.replica, action.app
    reason = reason or action.reason
    code = action.exit_code
    output = ""
    if action.container_present:
        state = podman.container_exit_state(replica.name)
        if state is not None:
            code = state.exit_code if state.exit_code is not None else code
            if state.oom_killed:
                reason = "oom_killed"
        try:
            output = podman.container_logs(replica.name, tail=LAST_OUTPUT_LINES)
        except podman.PodmanNotFound:
            output = ""  # removed since the pass observed it
    crashed = reason not in {"vanished", "detached"}  # the platform lost it: not the app's crash
    streak = replica.crash_streak + 1 if crashed else replica.crash_streak
    delay = planner.restart_delay(
        streak if crashed else 0, base=settings.RESTART_BACKOFF_BASE_SECONDS, cap=settings.RESTART_BACKOFF_CAP_SECONDS
    )
    Replica.objects.filter(pk=replica.pk).update(
        state=Replica.State.CRASHED,
        crash_streak=streak,
        last_exit_code=code,
        last_exit_reason=reason,
        next_restart_at=now + timedelta(seconds=delay),
    )
    what = {
        "vanished": "is gone (its container no longer exists)",
        "detached": "lost its network (the tenant network was removed)",
        "killed": "was killed",
        "oom_killed": "was killed: out of memory",
        "unhealthy": "did not answer HTTP on $PORT in time",
        "start_failed": "could not be started",
    }.get(reason, "exited")
    exit_part = f" with exit code {code}" if code is not None and crashed else ""
    when = "now" if delay == 0 else f"in {delay:g} s"
    text = f"-----> {_source(replica.index)} {what}{exit_part}; restarting it {when}"
    pipeline.app_event(deployments.get(app.deployment_id), text.removeprefix("-----> "))
    if output.strip():
        text += f"\n-----> Its last output:\n{output}"
    deployment = deployments.get(app.deployment_id)
    pipeline.log_append(deployment, text, secrets=deployments.secrets(app.deployment_id), source=None)
    logger.warning("replica %s", reason, extra={**_context(app, replica), "exit_code": code, "restart_in": delay})
    report.count(f"replica_{reason}")
    return delay


def _start(app: LiveApp, replica: ReplicaRow, deployments: _Deployments, now: datetime) -> str:
    """Start a new container for the replica under its fixed name; returns its address."""
    deployment = deployments.get(app.deployment_id)
    spec = pipeline.replica_spec(deployment, replica.index, deployments.runtime(app.deployment_id))
    podman.container_remove(replica.name)
    podman.container_run_detached(spec)
    address = podman.container_address(replica.name, app.network)
    Replica.objects.filter(pk=replica.pk).update(
        state=Replica.State.RESTARTING,
        restarts=F("restarts") + 1,
        started_at=now,
        next_restart_at=None,
        address=address,
    )
    logger.info("replica restarted", extra={**_context(app, replica), "address": address})
    return address


@dataclass
class _Pending:
    app: LiveApp
    replica: ReplicaRow
    address: str
    restarted: bool


def _health_gate(
    pending: list[_Pending], deployments: _Deployments, now: datetime, report: PassReport, serving: dict[str, str]
) -> None:
    """Wait (together) until each started replica answers HTTP, then let it take traffic."""
    if not pending:
        return  # the usual pass: no health client (and its TLS context) to build
    deadline = time.monotonic() + float(settings.START_DEADLINE_SECONDS)
    for item in pending:
        if not item.address:
            item.address = podman.container_address(item.replica.name, item.app.network)
            Replica.objects.filter(pk=item.replica.pk).update(address=item.address)
    waiting = {item.replica.name: item for item in pending if item.address}
    with pipeline.health_client() as client:
        while waiting:
            for name, item in list(waiting.items()):
                if pipeline.answers_http(client, item.address):
                    Replica.objects.filter(pk=item.replica.pk).update(state=Replica.State.RUNNING)
                    serving[name] = item.address
                    if item.restarted:
                        pipeline.log_append(
                            deployments.get(item.app.deployment_id),
                            f"-----> {_source(item.replica.index)} answers HTTP again",
                            source=None,
                        )
                        pipeline.app_event(
                            deployments.get(item.app.deployment_id), f"{_source(item.replica.index)} restarted"
                        )
                    logger.info("replica serving", extra=_context(item.app, item.replica))
                    report.count("replica_serving")
                    del waiting[name]
                elif time.monotonic() > deadline or not podman.container_is_running(name):
                    del waiting[name]
                    exited = ReplicaExited(item.app, item.replica, None, "exited", container_present=True)
                    state = podman.container_exit_state(name)
                    reason = "unhealthy" if state is not None and state.running else ""
                    _record_exit(exited, deployments, now, report, reason=reason)
                    podman.container_remove(name)  # a hung one would hold memory until its next restart
            if waiting:
                time.sleep(pipeline.HEALTH_POLL_SECONDS)


def execute_replica_actions(
    actions: Iterable[ReplicaAction], observed: Observed, now: datetime, report: PassReport, *, host: str = ""
) -> dict[str, str]:
    """Carry out the replica phase; returns the replicas that serve now (name -> address)."""
    deployments = _Deployments()
    serving: dict[str, str] = {}
    pending: list[_Pending] = []
    # Networks that could not be recreated, or whose bridge is not filtered yet: nothing starts on them.
    unsafe: set[str] = set()
    for action in actions:
        if isinstance(action, ReplicaExited | ReplicaStart) and action.app.network in unsafe:
            report.errors += 1
            continue
        try:
            if isinstance(action, NetworkCreate):
                unsafe.add(action.network)
                podman.network_ensure(
                    action.network,
                    {INSTANCE_LABEL: str(settings.INSTANCE_ID), "coltsfoot.tenant": str(action.tenant_id)},
                )
                firewall_ensure_for_network()  # its new bridge is filtered before a replica runs on it
                unsafe.discard(action.network)
                logger.info("tenant network recreated", extra={"tenant_id": str(action.tenant_id)})
                report.count("network_created")
            elif isinstance(action, OrphanRemove):
                if not _still_orphan(action.name, observed, host):
                    continue
                podman.container_remove(action.name)
                logger.info("orphan container removed", extra={"container": action.name, "reason": action.reason})
                report.count("orphan_removed")
            elif isinstance(action, ReplicaSteady):
                Replica.objects.filter(pk=action.replica.pk).update(crash_streak=0)
                report.count("replica_steady")
            elif isinstance(action, ReplicaCheck):
                pending.append(_Pending(action.app, action.replica, action.replica.address, restarted=False))
            elif isinstance(action, ReplicaExited):
                delay = _record_exit(action, deployments, now, report)
                if delay == 0:
                    address = _start(action.app, action.replica, deployments, now)
                    pending.append(_Pending(action.app, action.replica, address, restarted=True))
                    report.count("replica_started")
                else:
                    report.wake(delay)
            elif isinstance(action, ReplicaStart):
                address = _start(action.app, action.replica, deployments, now)
                pending.append(_Pending(action.app, action.replica, address, restarted=True))
                report.count("replica_started")
        except _REPAIR_ERRORS as exc:
            report.errors += 1
            logger.warning("reconcile: %s failed: %s", type(action).__name__, exc, exc_info=True)
    _health_gate(pending, deployments, now, report, serving)
    for name, container in observed.containers.items():
        if container.running and name not in {item.replica.name for item in pending}:
            serving.setdefault(name, "")
    return serving


def _still_orphan(name: str, observed: Observed, host: str = "") -> bool:
    """Right before removing a container: no replica row names it (placed on this host, when the pass is
    one host's) and its deployment is not in flight (the pipeline may have started or gone live since the
    pass read the DB)."""
    rows = Replica.objects.filter(name=name)
    if host:
        rows = rows.filter(Q(host__name=host) | Q(host__isnull=True))
    if rows.exists():
        return False
    label = observed.containers[name].labels.get("coltsfoot.deployment", "")
    try:
        deployment_id = uuid.UUID(label)
    except ValueError:
        return True
    state = Deployment.objects.filter(public_id=deployment_id).values_list("state", flat=True).first()
    return state not in Deployment.ACTIVE_STATES


def _still_live(app_id: uuid.UUID, deployment_id: uuid.UUID) -> bool:
    """Right before writing a route: the app still serves that deployment and no deploy is
    switching it (the pipeline may have gone live since the pass read the DB)."""
    live = App.objects.filter(public_id=app_id, state=App.State.ACTIVE).values_list(
        "live_deployment__public_id", flat=True
    )
    if list(live) != [deployment_id]:
        return False
    return not Deployment.objects.filter(app__public_id=app_id, state=Deployment.State.STARTING).exists()


def _route_inputs_hold(app: LiveApp) -> bool:
    """The app's hostnames, force_https and tenant status are still what the pass read."""
    row = (
        App.objects.filter(public_id=app.app_id)
        .select_related("tenant")
        .only("hostname", "force_https", "tenant__status")
        .first()
    )
    if row is None:
        return False
    return (
        tuple(route_hostnames(row)) == app.hostnames
        and bool(row.force_https) == app.force_https
        and (row.tenant.status == Tenant.Status.SUSPENDED) == app.suspended
    )


def _route_unowned(route_id: str) -> bool:
    try:
        app_id = uuid.UUID(route_id.removeprefix(planner.ROUTE_ID_PREFIX))
    except ValueError:
        return False
    app = App.objects.filter(public_id=app_id).first()
    if app is None or app.state != App.State.ACTIVE:
        return True
    return (
        app.live_deployment_id is None
        and not Deployment.objects.filter(app=app, state__in=Deployment.ACTIVE_STATES).exists()
    )


def execute_route_actions(
    actions: Iterable[RouteAction], desired: Desired, caddy: CaddyClient, report: PassReport
) -> None:
    by_app = {app.app_id: app for app in desired.apps}
    hosts = UpstreamHosts.from_settings()
    for action in actions:
        try:
            if isinstance(action, HostsSet):
                app = by_app[action.app_id]
                if not _still_live(app.app_id, app.deployment_id):
                    continue
                hosts.write(app.app_id, list(action.addresses), context=_str_context(app))
                report.count("hosts_set")
                continue
            if isinstance(action, HostsRemove):
                if _route_unowned(planner.ROUTE_ID_PREFIX + str(action.app_id)):
                    hosts.remove(action.app_id, context={"app_id": str(action.app_id)})
                    report.count("hosts_removed")
                continue
            if isinstance(action, EdgeLoad):
                caddy.edge_load(list(action.routes))
                logger.warning("edge config restored", extra={"routes": len(action.routes)})
                report.count("edge_loaded")
            elif isinstance(action, RouteSet):
                app = by_app[action.app_id]
                # Under the app's route lease, and only if the pass's read still holds: a domain removed (or
                # force_https changed) since then is being written by a refresh, which must not be undone.
                lease_seconds = float(settings.CADDY_TIMEOUT_SECONDS) * 6
                with leases.held(leases.route_lease(app.app_id), lease_seconds) as turn:
                    if not turn or not _still_live(app.app_id, app.deployment_id) or not _route_inputs_hold(app):
                        continue
                    caddy.route_set(action.route)
                logger.info("route repaired", extra=_context(app))
                report.count("route_set")
            elif isinstance(action, RouteRemove) and _route_unowned(action.route_id):
                caddy.route_delete_id(action.route_id)
                logger.info("stale route removed", extra={"route_id": action.route_id})
                report.count("route_removed")
        except _REPAIR_ERRORS as exc:
            report.errors += 1
            logger.warning("reconcile: %s failed: %s", type(action).__name__, exc, exc_info=True)


def serving_replicas(desired: Desired, serving: dict[str, str]) -> frozenset[str]:
    return frozenset(name for app in desired.apps for name in (r.name for r in app.replicas) if name in serving)


def with_addresses(desired: Desired, serving: dict[str, str]) -> Desired:
    """The desired apps with the addresses of replicas that were (re)started in this pass."""
    apps = []
    for app in desired.apps:
        replicas = tuple(
            ReplicaRow(
                pk=r.pk,
                index=r.index,
                name=r.name,
                state=Replica.State.RUNNING if r.name in serving else r.state,
                address=serving.get(r.name) or r.address,
                crash_streak=r.crash_streak,
                started_at=r.started_at,
                next_restart_at=r.next_restart_at,
            )
            for r in app.replicas
        )
        apps.append(
            LiveApp(
                app_id=app.app_id,
                tenant_id=app.tenant_id,
                deployment_id=app.deployment_id,
                network=app.network,
                hostnames=app.hostnames,
                replicas=replicas,
                switching=app.switching,
                suspended=app.suspended,
                force_https=app.force_https,
                https_port=app.https_port,
                upstream_resolver=app.upstream_resolver,
                upstream_refresh=app.upstream_refresh,
            )
        )
    return dataclasses.replace(desired, apps=tuple(apps))


def _reconcile_redis(observed: Observed, now: datetime, report: PassReport) -> None:
    """The Redis add-ons' containers, from the same observation (no podman call when all is well)."""
    result = redis_reconciler.reconcile(dict(observed.containers), dict(observed.network_created), now, "reconcile")
    for kind, count in result.actions.items():
        report.actions[kind] = report.actions.get(kind, 0) + count
    report.errors += result.errors
    if result.wake_in is not None:
        report.wake(result.wake_in)
    for app_pk in result.moved:
        app = App.objects.select_related("tenant", "live_deployment").get(pk=app_pk)
        if app.state == App.State.ACTIVE:
            release_current(app)  # its REDIS_URL changed: the app gets the new one


def reconcile_pass(now: datetime | None = None, *, host: str = "", redis: bool = True) -> PassReport:
    """Compare and repair once: the replicas, hosts files and routes of the apps live on `host` (every app when
    "": one host), from the containers labelled with it; the Redis add-ons too when `redis`. Raises only when
    podman itself cannot be observed."""
    now = now or timezone.now()
    report = PassReport()
    desired = load_desired(host)
    report.apps = len(desired.apps)
    with CaddyClient.from_settings() as caddy:
        everything, caddy_ok = observe(caddy)
        observed = on_host(everything, host)
        desired = with_known_deployments(desired, observed)
        replica_actions = planner.plan_replicas(
            desired,
            observed,
            now,
            steady_after=timedelta(seconds=settings.RESTART_RESET_SECONDS),
            orphan_grace=timedelta(seconds=settings.ORPHAN_GRACE_SECONDS),
        )
        serving = execute_replica_actions(replica_actions, observed, now, report, host=host)
        if redis:
            _reconcile_redis(everything, now, report)
        if caddy_ok:
            desired = with_addresses(desired, serving)
            route_actions = planner.plan_routes(
                desired, observed, serving_replicas(desired, serving), port=pipeline.APP_PORT
            )
            execute_route_actions(route_actions, desired, caddy, report)
    if report.actions or report.errors:
        logger.info("reconcile pass", extra=report.as_dict())
    return report
