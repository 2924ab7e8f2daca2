"""Where replicas and builds go when there is more than one host (issue 14, "Placement").

The decisions are pure functions over `HostRoom`s (a host's capacity and what is already placed on it), so
they can be tested and benchmarked without a database; the few readers at the bottom build the rooms from the
platform DB in a fixed number of queries and map the decisions back to `Host` rows. Nothing here writes: the
caller records the placement (Replica.host, Deployment.host) in its own transaction.

The rules:
- only an ACTIVE host takes new work (a draining host is being emptied, a down one is dead);
- a replica needs the app's `memory_mb` free on its host: the host's capacity minus the memory of every
  replica placed there (what runs, what crashed and will be restarted, what is starting), so memory is never
  overcommitted by placement;
- one app's replicas spread: the host with the fewest replicas of that app wins, then the one with the most
  free memory, then the name (so the same rows always give the same answer);
- a build goes to an active host that can build, the one with the most free memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.db.models import Q
from django.db.models import QuerySet
from django.db.models import Sum

from core.faults import PlatformError
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Host
from platform_apps.models import Replica

NO_CAPACITY = "deploy.no_capacity"
NO_BUILD_HOST = "deploy.no_build_host"


class NoCapacity(PlatformError):
    """No active host has room for what was asked. Not transient by itself: whoever places decides whether
    waiting (a host coming back, a deployment retiring) is worth a retry. `needed_mb` is the memory one
    replica needs, `largest_free_mb` the most any active host has left (0 without any active host)."""

    def __init__(
        self,
        code: str = NO_CAPACITY,
        message: str | None = None,
        *,
        transient: bool = False,
        needed_mb: int = 0,
        largest_free_mb: int = 0,
    ) -> None:
        super().__init__(code, message, transient=transient)
        self.needed_mb = needed_mb
        self.largest_free_mb = largest_free_mb

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_no_capacity, (self.code, self.message, self.transient, self.needed_mb, self.largest_free_mb))


def _rebuild_no_capacity(code: str, message: str, transient: bool, needed_mb: int, largest_free_mb: int) -> NoCapacity:
    return NoCapacity(code, message, transient=transient, needed_mb=needed_mb, largest_free_mb=largest_free_mb)


@dataclass(frozen=True)
class HostRoom:
    """A host as placement sees it. `placed_mb` is the memory of every replica placed on it; `app_replicas`
    how many of those belong to the app being placed (0 when no app is in question)."""

    pk: int
    name: str
    state: str
    memory_mb: int
    placed_mb: int
    can_build: bool
    app_replicas: int = 0
    replicas: int = 0

    @property
    def free_mb(self) -> int:
        return self.memory_mb - self.placed_mb

    @property
    def active(self) -> bool:
        return self.state == Host.State.ACTIVE


class _Ledger:
    """What one placement call has put on each host so far, on top of the rooms it started from."""

    def __init__(self, rooms: Iterable[HostRoom], exclude: frozenset[Hashable]) -> None:
        self.rooms = [r for r in rooms if r.active and r.name not in exclude and r.pk not in exclude]
        self.added_mb: Counter[str] = Counter()

    def free(self, room: HostRoom) -> int:
        return room.free_mb - self.added_mb[room.name]

    def largest_free(self) -> int:
        return max((self.free(r) for r in self.rooms), default=0)

    def pick(self, memory_mb: int, spread: Mapping[str, int]) -> HostRoom | None:
        """The host for one replica of `memory_mb`; `spread` counts the app's replicas per host name."""
        fits = [r for r in self.rooms if self.free(r) >= memory_mb]
        if not fits:
            return None
        best = min(fits, key=lambda r: (spread.get(r.name, 0), -self.free(r), r.name))
        self.added_mb[best.name] += memory_mb
        return best


def _no_capacity(ledger: _Ledger, memory_mb: int, placed: int, count: int) -> NoCapacity:
    if not ledger.rooms:
        message = "No host can take new replicas right now: every host is draining or down."
    else:
        message = (
            f"No host has room for replica {placed + 1} of {count}: each replica needs {memory_mb} MiB, and the "
            f"most free memory on any host is {max(0, ledger.largest_free())} MiB."
        )
    return NoCapacity(NO_CAPACITY, message, needed_mb=memory_mb, largest_free_mb=max(0, ledger.largest_free()))


def place_replicas(
    count: int, memory_mb: int, rooms: Sequence[HostRoom], *, exclude: frozenset[Hashable] = frozenset()
) -> list[str]:
    """The host names for `count` new replicas of one app, each needing `memory_mb`. `rooms` carry the app's
    existing replicas in `app_replicas`; `exclude` holds names (or pks) of hosts not to use. All or nothing:
    raises `NoCapacity` when any replica does not fit."""
    ledger = _Ledger(rooms, exclude)
    spread: Counter[str] = Counter({r.name: r.app_replicas for r in ledger.rooms})
    names: list[str] = []
    for _ in range(count):
        room = ledger.pick(memory_mb, spread)
        if room is None:
            raise _no_capacity(ledger, memory_mb, len(names), count)
        spread[room.name] += 1
        names.append(room.name)
    return names


def place_build(rooms: Sequence[HostRoom], *, exclude: frozenset[Hashable] = frozenset()) -> str:
    """The host name for a build: active, allowed to build, the most free memory first (then the name)."""
    candidates = [r for r in rooms if r.active and r.can_build and r.name not in exclude and r.pk not in exclude]
    if not candidates:
        raise NoCapacity(NO_BUILD_HOST, "No host can build right now: every host that builds is draining or down.")
    return min(candidates, key=lambda r: (-r.free_mb, r.name)).name


@dataclass(frozen=True)
class Move:
    """A replica to place again (its host is down or draining): `key` names it to the caller (a Replica pk),
    `app` is its app (a pk), `memory_mb` its app's memory."""

    key: Hashable
    app: Hashable
    memory_mb: int


@dataclass(frozen=True)
class Replacement:
    """Where each moved replica goes (`placed`: key -> host name) and which found no room (`unplaced`), with the
    most free memory left on any host after the placed ones."""

    placed: dict[Hashable, str]
    unplaced: tuple[Hashable, ...]
    largest_free_mb: int


def replace_replicas(
    moves: Sequence[Move],
    rooms: Sequence[HostRoom],
    spread: Mapping[Hashable, Mapping[str, int]],
    *,
    exclude: frozenset[Hashable] = frozenset(),
) -> Replacement:
    """Places again the replicas of a host that is going away (failover, drain). `spread` counts each app's
    replicas per host name as they are now. Largest replicas first (then by key), so big ones are not left
    without room by small ones; unlike `place_replicas` it places whatever fits and reports the rest, since a
    failover should bring back as many replicas as it can."""
    ledger = _Ledger(rooms, exclude)
    counts: dict[Hashable, Counter[str]] = {}
    placed: dict[Hashable, str] = {}
    unplaced: list[Hashable] = []
    for move in sorted(moves, key=lambda m: (-m.memory_mb, str(m.key))):
        app_counts = counts.get(move.app)
        if app_counts is None:
            app_counts = counts[move.app] = Counter(spread.get(move.app, {}))
        room = ledger.pick(move.memory_mb, app_counts)
        if room is None:
            unplaced.append(move.key)
            continue
        app_counts[room.name] += 1
        placed[move.key] = room.name
    return Replacement(placed=placed, unplaced=tuple(unplaced), largest_free_mb=max(0, ledger.largest_free()))


# --- Reading the rooms from the platform DB --------------------------------------------------------------


def _hosts() -> QuerySet[Host]:
    hosts = Host.objects.order_by("name")
    # Inside the caller's transaction (the one that records the placement) lock the host rows, in name order,
    # so two placements on PostgreSQL cannot both take the same free memory; SQLite serialises writers anyway.
    if transaction.get_connection().in_atomic_block:
        hosts = hosts.select_for_update()
    return hosts


def _rooms(hosts: Iterable[Host], app: App | None) -> list[HostRoom]:
    sums: dict[str, Any] = {"placed_mb": Sum("deployment__app__memory_mb"), "replicas": Count("pk")}
    if app is not None:
        sums["app_replicas"] = Count("pk", filter=Q(deployment__app=app))
    placed = Replica.objects.filter(host__isnull=False).values("host_id").order_by().annotate(**sums)
    usage = {row["host_id"]: row for row in placed}
    rooms = []
    for host in hosts:
        row = usage.get(host.pk, {})
        rooms.append(
            HostRoom(
                pk=host.pk,
                name=host.name,
                state=host.state,
                memory_mb=int(host.memory_mb),
                placed_mb=int(row.get("placed_mb") or 0),
                can_build=bool(host.can_build),
                app_replicas=int(row.get("app_replicas") or 0),
                replicas=int(row.get("replicas") or 0),
            )
        )
    return rooms


def host_rooms(app: App | None = None) -> list[HostRoom]:
    """Every host's room, in name order, with `app`'s replicas counted per host: two queries (the hosts, and
    one aggregate over the placed replicas), whatever the number of hosts, apps and replicas."""
    return _rooms(list(_hosts()), app)


def place_deployment_replicas(deployment: Deployment) -> list[Host]:
    """The host of each of the deployment's `app.replicas` replicas, by index. Indexes already placed (a
    retried start) keep their host; the others are placed by `place_replicas`. Raises `NoCapacity`."""
    app = deployment.app
    hosts = {host.name: host for host in _hosts()}
    rooms = _rooms(hosts.values(), app)
    by_pk = {host.pk: host for host in hosts.values()}
    already = dict(
        Replica.objects.filter(deployment=deployment, host__isnull=False, index__lt=app.replicas).values_list(
            "index", "host_id"
        )
    )
    missing = [index for index in range(app.replicas) if index not in already]
    names = iter(place_replicas(len(missing), int(app.memory_mb), rooms))
    return [by_pk[already[index]] if index in already else hosts[next(names)] for index in range(app.replicas)]


def build_host() -> Host:
    """The host a build goes to. Raises `NoCapacity` (`deploy.no_build_host`)."""
    hosts = {host.name: host for host in _hosts()}
    return hosts[place_build(_rooms(hosts.values(), None))]


@dataclass(frozen=True)
class HostReplacement:
    """`replace_host_replicas`' answer: the new host of each replica (Replica pk -> Host) and the replica pks
    that found no room."""

    placed: dict[int, Host]
    unplaced: tuple[int, ...]
    largest_free_mb: int


def replace_host_replicas(host: Host) -> HostReplacement:
    """Where every replica placed on `host` would go on the other active hosts (as failover or a drain moves
    them), in four queries whatever their number: the hosts, the rooms, the replicas on `host`, and one count
    of replicas per (host, app) for the spread. Writes nothing."""
    hosts = {h.name: h for h in _hosts()}
    rooms = _rooms(hosts.values(), None)
    names = {h.pk: h.name for h in hosts.values()}
    rows = list(
        Replica.objects.filter(host=host)
        .order_by("pk")
        .values_list("pk", "deployment__app_id", "deployment__app__memory_mb")
    )
    moves = [Move(key=pk, app=app_id, memory_mb=int(memory)) for pk, app_id, memory in rows]
    on_host = Replica.objects.filter(host=host).values("deployment__app_id")
    per_app = (
        Replica.objects.filter(host__isnull=False, deployment__app_id__in=on_host)
        .values("host_id", "deployment__app_id")
        .order_by()
        .annotate(n=Count("pk"))
    )
    spread: dict[Hashable, Counter[str]] = {}
    for row in per_app:
        spread.setdefault(row["deployment__app_id"], Counter())[names[row["host_id"]]] = row["n"]
    result = replace_replicas(moves, rooms, spread, exclude=frozenset({host.name}))
    keys = [pk for pk, _, _ in rows]
    return HostReplacement(
        placed={pk: hosts[result.placed[pk]] for pk in keys if pk in result.placed},
        unplaced=tuple(pk for pk in keys if pk not in result.placed),
        largest_free_mb=result.largest_free_mb,
    )
