"""What the reconciler compares: the desired state read from the platform DB, the actual state
observed from podman, Caddy and the upstream hosts files, and the actions that move one toward the other.

Plain frozen dataclasses, so the planner is a pure function that unit tests drive as a table.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from typing import Any

from drivers.podman import ObservedContainer

type JsonObject = dict[str, Any]


@dataclass(frozen=True)
class ReplicaRow:
    """One Replica row of a live deployment: a replica that should run."""

    pk: int
    index: int
    name: str
    state: str
    address: str
    crash_streak: int
    started_at: datetime | None
    next_restart_at: datetime | None


@dataclass(frozen=True)
class LiveApp:
    """An app with a live deployment, and that deployment's replicas."""

    app_id: uuid.UUID
    tenant_id: uuid.UUID
    deployment_id: uuid.UUID
    network: str
    hostnames: tuple[str, ...]
    replicas: tuple[ReplicaRow, ...]
    # A deployment of the app is starting: the pipeline owns the route until it is live.
    switching: bool = False
    # Its tenant is suspended: the edge answers the "suspended" page (its replicas keep running).
    suspended: bool = False
    # Plain-HTTP requests are redirected to HTTPS on this port.
    force_https: bool = False
    https_port: int = 443
    # Where the edge looks the app's replicas up (caddy.routes.UpstreamLookup): the platform's DNS server and
    # how long Caddy keeps an answer.
    upstream_resolver: str = "127.0.0.1:5354"
    upstream_refresh: str = "1000ms"


@dataclass(frozen=True)
class KnownDeployment:
    state: str
    finished_at: datetime | None
    # The host it is placed on ("" when not placed).
    host: str = ""


@dataclass(frozen=True)
class Desired:
    apps: tuple[LiveApp, ...]
    # Every deployment of this installation that an observed container names, by id.
    deployments: dict[uuid.UUID, KnownDeployment] = field(default_factory=dict)
    # App ids that may have a route although they are not live (a first deploy is starting).
    apps_routing_soon: frozenset[uuid.UUID] = frozenset()
    # The host whose containers this pass manages ("": every container of the installation, one host).
    host: str = ""
    # Apps live on other hosts (a host's pass): their routes and hosts files are those hosts' passes' to repair.
    apps_elsewhere: frozenset[uuid.UUID] = frozenset()


@dataclass(frozen=True)
class Observed:
    containers: dict[str, ObservedContainer]
    # The edge server's routes by `@id`; None when Caddy has no edge server at all.
    routes: dict[str, JsonObject] | None
    networks: frozenset[str]
    # Whether the catch-all route is there (only meaningful when `routes` is not None).
    catchall: bool = True
    # When each network was created (unix seconds): a container older than its network is not on it.
    network_created: Mapping[str, float] = field(default_factory=dict)
    # The addresses each app's upstream hosts file holds (drivers/upstream_hosts.py), by app id.
    hosts: Mapping[uuid.UUID, tuple[str, ...]] = field(default_factory=dict)


# --- Actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkCreate:
    network: str
    tenant_id: uuid.UUID


@dataclass(frozen=True)
class ReplicaExited:
    """A replica that should run is not running: record why, then restart it (now or later)."""

    app: LiveApp
    replica: ReplicaRow
    exit_code: int | None
    reason: str  # exited, killed, vanished, detached (check for oom_killed happens when acting)
    container_present: bool


@dataclass(frozen=True)
class ReplicaStart:
    """Start a replacement container for a crashed replica whose backoff has passed."""

    app: LiveApp
    replica: ReplicaRow


@dataclass(frozen=True)
class ReplicaCheck:
    """The container runs but has not passed the health gate yet."""

    app: LiveApp
    replica: ReplicaRow


@dataclass(frozen=True)
class ReplicaSteady:
    """Ran healthily long enough: the crash-loop backoff starts over."""

    replica: ReplicaRow


@dataclass(frozen=True)
class OrphanRemove:
    name: str
    reason: str


@dataclass(frozen=True)
class RouteSet:
    app_id: uuid.UUID
    route: JsonObject


@dataclass(frozen=True)
class RouteRemove:
    route_id: str


@dataclass(frozen=True)
class EdgeLoad:
    routes: tuple[JsonObject, ...]


@dataclass(frozen=True)
class HostsSet:
    """Rewrite the app's upstream hosts file: the edge resolves its name to `addresses` from then on."""

    app_id: uuid.UUID
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class HostsRemove:
    """The hosts file of an app the platform no longer serves."""

    app_id: uuid.UUID


type ReplicaAction = NetworkCreate | ReplicaExited | ReplicaStart | ReplicaCheck | ReplicaSteady | OrphanRemove
type RouteAction = RouteSet | RouteRemove | EdgeLoad | HostsSet | HostsRemove
