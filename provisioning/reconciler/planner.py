"""The reconciler's decisions, as pure functions of desired state, observed state and the time.

Two phases, because routes depend on the outcome of the replica repairs: `plan_replicas` first
(networks, dead replicas, health checks, orphans), then, once those actions ran, `plan_routes`
over the replicas that serve: each app's route (its shape: hostnames, redirect, app or page) and
its upstream hosts file (the addresses its name resolves to). Nothing here calls podman, Caddy,
the file system or the DB.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from datetime import timedelta

from caddy.routes import CATCHALL_ROUTE_ID
from caddy.routes import UpstreamLookup
from caddy.routes import app_route
from caddy.routes import route_id
from caddy.routes import suspended_route
from caddy.routes import unavailable_route
from drivers.podman import ObservedContainer
from drivers.upstream_hosts import upstream_name
from provisioning.reconciler.state import Desired
from provisioning.reconciler.state import EdgeLoad
from provisioning.reconciler.state import HostsRemove
from provisioning.reconciler.state import HostsSet
from provisioning.reconciler.state import JsonObject
from provisioning.reconciler.state import LiveApp
from provisioning.reconciler.state import NetworkCreate
from provisioning.reconciler.state import Observed
from provisioning.reconciler.state import OrphanRemove
from provisioning.reconciler.state import ReplicaAction
from provisioning.reconciler.state import ReplicaCheck
from provisioning.reconciler.state import ReplicaExited
from provisioning.reconciler.state import ReplicaStart
from provisioning.reconciler.state import ReplicaSteady
from provisioning.reconciler.state import RouteAction
from provisioning.reconciler.state import RouteRemove
from provisioning.reconciler.state import RouteSet

RUNNING = "running"
CRASHED = "crashed"
# Deployment states in which the pipeline owns the deployment's containers.
IN_FLIGHT = frozenset({"queued", "building", "starting"})
SIGKILL_EXIT_CODE = 137
# A dead replica leaves its app's hosts file in the pass that sees it dead: that is no Caddy config load
# (Caddy 2.6 rebuilds its whole config on each, and a request retrying off a failed dial at that moment
# fails with a 502), so nothing needs holding back any more. The route itself changes only when its
# shape does (hostnames, redirect, the 503 or suspended page), never because a replica came or went.
ROUTE_ID_PREFIX = "app-"


def restart_delay(crash_streak: int, *, base: float, cap: float) -> float:
    """Seconds to wait before restarting a replica that crashed `crash_streak` times in a row:
    base, 2 base, 4 base, ... capped. A replica that vanished without crashing has streak 0."""
    if crash_streak <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(crash_streak - 1, 30)))


def exit_reason(exit_code: int | None, *, present: bool) -> str:
    if not present:
        return "vanished"
    if exit_code == SIGKILL_EXIT_CODE:
        return "killed"
    return "exited"


def plan_replicas(
    desired: Desired, observed: Observed, now: datetime, *, steady_after: timedelta, orphan_grace: timedelta
) -> list[ReplicaAction]:
    actions: list[ReplicaAction] = []
    networks = {(app.network, app.tenant_id) for app in desired.apps}
    actions += [
        NetworkCreate(network, tenant) for network, tenant in sorted(networks) if network not in observed.networks
    ]
    wanted: set[str] = set()
    for app in desired.apps:
        for replica in app.replicas:
            wanted.add(replica.name)
            container = observed.containers.get(replica.name)
            if container is not None and container.running and _detached(app, container, observed):
                actions.append(ReplicaExited(app, replica, None, "detached", container_present=True))
                continue
            if container is not None and container.running:
                if replica.state != RUNNING:
                    actions.append(ReplicaCheck(app, replica))
                elif replica.crash_streak and replica.started_at and now - replica.started_at >= steady_after:
                    actions.append(ReplicaSteady(replica))
                continue
            if replica.state != CRASHED:
                code = container.exit_code if container is not None else None
                reason = exit_reason(code, present=container is not None)
                actions.append(ReplicaExited(app, replica, code, reason, container_present=container is not None))
            elif replica.next_restart_at is None or replica.next_restart_at <= now:
                actions.append(ReplicaStart(app, replica))
    for name in sorted(set(observed.containers) - wanted):
        reason = _orphan_reason(desired, observed, name, now, orphan_grace)
        if reason:
            actions.append(OrphanRemove(name, reason))
    return actions


def _detached(app: LiveApp, container: ObservedContainer, observed: Observed) -> bool:
    """Whether a running container cannot be on its app's network: the network was created (again) after the
    container (podman's container times are whole seconds, hence the second of slack). Such a replica runs but
    nothing can reach it, so it is replaced. A missing network is created first; the next pass sees its time."""
    network_created = observed.network_created.get(app.network, 0.0)
    return bool(network_created and container.created_at and container.created_at + 1.0 <= network_created)


def _orphan_reason(desired: Desired, observed: Observed, name: str, now: datetime, grace: timedelta) -> str:
    """Why this installation's container should go, or "" to leave it (yet)."""
    container = observed.containers[name]
    if container.created_at and now.timestamp() - container.created_at < grace.total_seconds():
        return ""
    if container.labels.get("coltsfoot.role") == "redis":
        return ""  # an add-on's, not a deployment's: `provisioning.reconciler.redis` owns it
    label = container.labels.get("coltsfoot.deployment", "")
    try:
        deployment_id = uuid.UUID(label)
    except ValueError:
        return "no deployment label"
    known = desired.deployments.get(deployment_id)
    if known is None:
        return "unknown deployment"
    if known.state in IN_FLIGHT:
        return ""  # the pipeline is working with it
    if known.state == "live" and desired.host and known.host and known.host != desired.host:
        # This host ran it until the deployment was placed again (this host was down); it runs elsewhere now.
        return f"deployment placed on {known.host}"
    if known.state == "live":
        # Only a web container of a live deployment whose replicas this pass knows can be extra: a
        # deployment that went live after the pass read its desired state has replicas it never saw.
        live_here = any(app.deployment_id == deployment_id for app in desired.apps)
        if live_here and container.labels.get("coltsfoot.role") == "web":
            return "not a replica of the live deployment"
        return ""
    if known.finished_at is not None and now - known.finished_at < grace:
        return ""  # its own retirement may still be draining it
    return f"deployment {known.state}"


def upstream_lookup(app: LiveApp, port: int) -> UpstreamLookup:
    return UpstreamLookup(
        name=upstream_name(app.app_id), port=port, resolver=app.upstream_resolver, refresh=app.upstream_refresh
    )


def desired_addresses(app: LiveApp, serving: frozenset[str]) -> tuple[str, ...]:
    """The addresses of the app's serving replicas, in index order: what its hosts file should hold."""
    ordered = sorted(app.replicas, key=lambda r: r.index)
    return tuple(dict.fromkeys(r.address for r in ordered if r.name in serving and r.address))


def desired_route(app: LiveApp, serving: frozenset[str], port: int) -> JsonObject:
    """The app's route: the "suspended" page if its tenant is, else its replicas by their upstream name
    when one serves, or the 503 page if none does."""
    hostnames = list(app.hostnames)
    force, https_port = app.force_https, app.https_port
    if app.suspended:
        return suspended_route(app.app_id, hostnames, force_https=force, https_port=https_port)
    if desired_addresses(app, serving):
        return app_route(app.app_id, hostnames, upstream_lookup(app, port), force_https=force, https_port=https_port)
    return unavailable_route(app.app_id, hostnames, force_https=force, https_port=https_port)


def plan_routes(desired: Desired, observed: Observed, serving: frozenset[str], *, port: int) -> list[RouteAction]:
    """The route and hosts file changes, in the order to make them: an app's addresses before a route that
    looks them up, and a route away from its addresses (the 503 page) before they go."""
    wanted = {route_id(app.app_id): (app, desired_route(app, serving, port)) for app in desired.apps}
    actions: list[RouteAction] = []
    if observed.routes is None or not observed.catchall:
        for app in desired.apps:
            if not app.switching and observed.hosts.get(app.app_id) != desired_addresses(app, serving):
                actions.append(HostsSet(app.app_id, desired_addresses(app, serving)))
        return [*actions, EdgeLoad(tuple(route for _app, route in wanted.values()))]
    for rid, (app, route) in wanted.items():
        if app.switching:
            continue  # the deploy in flight switches this app itself
        addresses = desired_addresses(app, serving)
        hosts = [] if observed.hosts.get(app.app_id) == addresses else [HostsSet(app.app_id, addresses)]
        routes = [] if observed.routes.get(rid) == route else [RouteSet(app.app_id, route)]
        actions += [*hosts, *routes] if addresses else [*routes, *hosts]
    for rid in sorted(set(observed.routes) - set(wanted)):
        if rid == CATCHALL_ROUTE_ID or not rid.startswith(ROUTE_ID_PREFIX):
            continue
        try:
            app_id = uuid.UUID(rid.removeprefix(ROUTE_ID_PREFIX))
        except ValueError:
            continue
        if app_id not in desired.apps_routing_soon and app_id not in desired.apps_elsewhere:
            actions.append(RouteRemove(rid))
    live = {app.app_id for app in desired.apps}
    for app_id in sorted(set(observed.hosts) - live - desired.apps_routing_soon - desired.apps_elsewhere):
        # After the routes: a route that still looks the name up goes first.
        actions.append(HostsRemove(app_id))
    return actions
