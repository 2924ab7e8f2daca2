"""Placement across hosts: replicas only on active hosts with the memory free, one app's replicas spread, builds
on a host that builds; a deploy that cannot be placed says how much it needs and how much there is. And the
readers that build the rooms from the DB in a fixed number of queries."""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Host
from platform_apps.models import Replica
from provisioning import placement
from provisioning.placement import HostRoom
from provisioning.placement import Move
from provisioning.placement import NoCapacity
from tenants.models import Tenant
from tenants.services import tenant_create


def room(name: str, memory: int = 4096, placed: int = 0, *, state: str = "active", **fields: Any) -> HostRoom:
    return HostRoom(
        pk=int(name.rsplit("-", 1)[-1]),
        name=name,
        state=state,
        memory_mb=memory,
        placed_mb=placed,
        can_build=fields.pop("can_build", True),
        **fields,
    )


# --- place_replicas --------------------------------------------------------------------------------------


def test_two_replicas_of_one_app_land_on_two_hosts():
    rooms = [room("host-1"), room("host-2")]
    assert sorted(placement.place_replicas(2, 512, rooms)) == ["host-1", "host-2"]


def test_a_replica_goes_where_the_most_memory_is_free():
    rooms = [room("host-1", placed=3000), room("host-2", placed=1000), room("host-3", placed=2000)]
    assert placement.place_replicas(1, 512, rooms) == ["host-2"]


def test_the_apps_existing_replicas_count_before_free_memory():
    # host-2 has far more room, but already runs this app: the new replica goes to host-1.
    rooms = [room("host-1", placed=3000), room("host-2", app_replicas=1)]
    assert placement.place_replicas(1, 512, rooms) == ["host-1"]


def test_more_replicas_than_hosts_spread_evenly():
    rooms = [room("host-1", 8192), room("host-2", 8192), room("host-3", 8192)]
    names = placement.place_replicas(7, 256, rooms)
    assert sorted(Counter(names).values()) == [2, 2, 3]


def test_draining_down_and_excluded_hosts_get_nothing():
    rooms = [
        room("host-1", state=Host.State.DRAINING),
        room("host-2", state=Host.State.DOWN),
        room("host-3", 1024),
        room("host-4", 1024),
    ]
    assert placement.place_replicas(2, 512, rooms, exclude=frozenset({"host-4"})) == ["host-3", "host-3"]
    assert placement.place_replicas(1, 512, rooms, exclude=frozenset({3})) == ["host-4"]  # by pk too


def test_a_full_host_is_skipped_even_for_spreading():
    rooms = [room("host-1", 1024, placed=800), room("host-2", 4096, app_replicas=3)]
    assert placement.place_replicas(1, 256, rooms) == ["host-2"]


def test_what_this_call_placed_counts_against_free_memory():
    rooms = [room("host-1", 1024)]
    assert placement.place_replicas(2, 512, rooms) == ["host-1", "host-1"]
    with pytest.raises(NoCapacity):
        placement.place_replicas(3, 512, rooms)


def test_a_deploy_that_does_not_fit_says_what_it_needs_and_what_is_free():
    rooms = [room("host-1", 1024, placed=800), room("host-2", 1024, placed=700), room("host-3", 9999, state="down")]
    with pytest.raises(NoCapacity) as caught:
        placement.place_replicas(1, 512, rooms)
    error = caught.value
    assert error.code == "deploy.no_capacity"
    assert (error.needed_mb, error.largest_free_mb) == (512, 324)
    assert "needs 512 MiB" in error.message
    assert "324 MiB" in error.message
    assert "host-" not in error.message  # tenants see it: no host names
    assert not error.transient
    assert error.as_dict() == {"code": "deploy.no_capacity", "message": error.message}


def test_no_active_host_at_all_is_said_so():
    with pytest.raises(NoCapacity, match="draining or down") as caught:
        placement.place_replicas(1, 64, [room("host-1", state="draining")])
    assert caught.value.largest_free_mb == 0
    with pytest.raises(NoCapacity, match="draining or down"):
        placement.place_replicas(1, 64, [])


def test_no_capacity_survives_a_trip_through_celery():
    error = NoCapacity("deploy.no_capacity", "full", transient=True, needed_mb=512, largest_free_mb=100)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round-tripped
    assert (copy.code, copy.message, copy.transient, copy.needed_mb, copy.largest_free_mb) == (
        "deploy.no_capacity",
        "full",
        True,
        512,
        100,
    )


# --- place_build -----------------------------------------------------------------------------------------


def test_a_build_goes_to_an_active_host_that_builds_with_the_most_free_memory():
    rooms = [
        room("host-1", 8192, can_build=False),
        room("host-2", 4096, placed=1000),
        room("host-3", 4096, placed=500),
        room("host-4", 99999, state="draining"),
    ]
    assert placement.place_build(rooms) == "host-3"


def test_no_host_that_can_build():
    with pytest.raises(NoCapacity) as caught:
        placement.place_build([room("host-1", can_build=False), room("host-2", state="down")])
    assert caught.value.code == "deploy.no_build_host"


# --- replace_replicas (failover) -------------------------------------------------------------------------


def test_replicas_of_a_dead_host_move_to_the_others_spread_and_within_memory():
    rooms = [room("host-1", 2048, placed=1024, state="down"), room("host-2", 2048), room("host-3", 2048, placed=1024)]
    moves = [Move(key=1, app="a", memory_mb=512), Move(key=2, app="b", memory_mb=512)]
    # app "a" already runs on host-2: its moved replica goes to host-3 though host-2 has more free.
    result = placement.replace_replicas(moves, rooms, {"a": {"host-1": 1, "host-2": 1}}, exclude=frozenset({"host-1"}))
    assert result.placed == {1: "host-3", 2: "host-2"}
    assert result.unplaced == ()
    assert result.largest_free_mb == 1536


def test_a_failover_places_what_fits_and_reports_the_rest():
    rooms = [room("host-1", state="down"), room("host-2", 1024)]
    moves = [Move(key=k, app=k, memory_mb=m) for k, m in ((1, 256), (2, 1024), (3, 512))]
    result = placement.replace_replicas(moves, rooms, {})
    # Largest first: the 1024 MiB replica takes the room, the smaller two wait.
    assert result.placed == {2: "host-2"}
    assert result.unplaced == (3, 1)


# --- Properties ------------------------------------------------------------------------------------------

STATES = st.sampled_from([Host.State.ACTIVE, Host.State.ACTIVE, Host.State.DRAINING, Host.State.DOWN])


@st.composite
def fleets(draw: st.DrawFn) -> list[HostRoom]:
    n = draw(st.integers(min_value=0, max_value=8))
    rooms = []
    for i in range(n):
        memory = draw(st.integers(min_value=0, max_value=8192))
        rooms.append(
            HostRoom(
                pk=i + 1,
                name=f"host-{i + 1}",
                state=draw(STATES),
                memory_mb=memory,
                # Rows may already overcommit a host (capacity lowered): placement must still add nothing there.
                placed_mb=draw(st.integers(min_value=0, max_value=memory + 512)),
                can_build=draw(st.booleans()),
                app_replicas=draw(st.integers(min_value=0, max_value=3)),
            )
        )
    return rooms


@given(fleets(), st.integers(min_value=0, max_value=12), st.integers(min_value=1, max_value=2048))
@hypothesis_settings(max_examples=300, deadline=None)
def test_placement_never_overcommits_never_uses_an_inactive_host_and_is_deterministic(
    rooms: list[HostRoom], count: int, memory: int
):
    refused: NoCapacity | None = None
    try:
        names = placement.place_replicas(count, memory, rooms)
    except NoCapacity as exc:
        refused = exc
    if refused is not None:
        # It refused: so there really was no way to add the next replica (largest free < what it needs).
        assert refused.largest_free_mb < memory or not any(r.active for r in rooms)
        return
    assert len(names) == count
    assert placement.place_replicas(count, memory, list(rooms)) == names
    by_name = {r.name: r for r in rooms}
    for name, n in Counter(names).items():
        host = by_name[name]
        assert host.active
        assert host.placed_mb + n * memory <= host.memory_mb


@given(fleets(), st.integers(min_value=64, max_value=1024))
@hypothesis_settings(max_examples=200, deadline=None)
def test_with_room_on_two_hosts_a_two_replica_app_lands_on_two_hosts(rooms: list[HostRoom], memory: int):
    fresh = [HostRoom(r.pk, r.name, r.state, r.memory_mb, r.placed_mb, r.can_build) for r in rooms]
    roomy = [r for r in fresh if r.active and r.free_mb >= memory]
    names = placement.place_replicas(2, memory, fresh) if len(roomy) >= 2 else None
    if names is not None:
        assert len(set(names)) == 2


@given(fleets(), st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2048)), max_size=20))
@hypothesis_settings(max_examples=200, deadline=None)
def test_a_failover_never_overcommits_nor_uses_the_dead_host(rooms: list[HostRoom], replicas: list[tuple[int, int]]):
    moves = [Move(key=i, app=app, memory_mb=memory) for i, (app, memory) in enumerate(replicas)]
    result = placement.replace_replicas(moves, rooms, {}, exclude=frozenset({"host-1"}))
    assert set(result.placed) | set(result.unplaced) == {m.key for m in moves}
    by_name = {r.name: r for r in rooms}
    added: Counter[str] = Counter()
    for move in moves:
        if move.key in result.placed:
            added[result.placed[move.key]] += move.memory_mb
    for name, memory in added.items():
        assert name != "host-1"
        assert by_name[name].active
        assert by_name[name].placed_mb + memory <= by_name[name].memory_mb
    assert placement.replace_replicas(moves, rooms, {}, exclude=frozenset({"host-1"})) == result


# --- Reading rooms from the DB ---------------------------------------------------------------------------


def _host(name: str, memory: int = 4096, **fields: Any) -> Host:
    return Host.objects.create(name=name, address=f"10.0.0.{name[-1]}", memory_mb=memory, cpus=4, **fields)


def _app(tenant: Tenant, name: str, *, memory: int = 256, replicas: int = 2) -> App:
    return App.objects.create(
        tenant=tenant,
        name=name,
        hostname=App.hostname_for(name, tenant.slug),
        memory_mb=memory,
        replicas=replicas,
    )


def _live(app: App, hosts: list[Host | None], *, number: int = 1) -> Deployment:
    deployment = Deployment.objects.create(app=app, number=number, state="live", source_kind="image")
    for index, host in enumerate(hosts):
        Replica.objects.create(
            deployment=deployment, index=index, name=f"tsl-{deployment.public_id}-{index}", host=host, state="running"
        )
    return deployment


@pytest.fixture
def tenant(db: None) -> Tenant:
    return tenant_create(slug="acme")


def test_host_rooms_sum_the_memory_of_the_replicas_placed_on_each_host(tenant: Tenant, django_assert_num_queries: Any):
    h1, h2, _h3 = _host("host-1"), _host("host-2", 2048), _host("host-3", state="draining")
    web, worker = _app(tenant, "web", memory=512), _app(tenant, "worker", memory=128)
    _live(web, [h1, h2])
    _live(worker, [h1, h1, None])  # a replica from before hosts takes no host's room
    with django_assert_num_queries(2):
        rooms = placement.host_rooms(app=web)
    assert [(r.name, r.state, r.memory_mb, r.placed_mb, r.replicas, r.app_replicas) for r in rooms] == [
        ("host-1", "active", 4096, 768, 3, 1),
        ("host-2", "active", 2048, 512, 1, 1),
        ("host-3", "draining", 4096, 0, 0, 0),
    ]
    assert [r.app_replicas for r in placement.host_rooms()] == [0, 0, 0]


def test_host_rooms_cost_two_queries_whatever_the_fleet(tenant: Tenant, django_assert_num_queries: Any):
    hosts = [_host(f"host-{i}") for i in range(1, 6)]
    for i in range(12):
        _live(_app(tenant, f"app{i}"), [hosts[i % 5], hosts[(i + 1) % 5]])
    app = App.objects.get(name="app3")
    with django_assert_num_queries(2):
        rooms = placement.host_rooms(app=app)
    assert sum(r.replicas for r in rooms) == 24
    assert sum(r.app_replicas for r in rooms) == 2


def test_a_deployments_replicas_are_placed_on_different_hosts_with_room(tenant: Tenant):
    h1 = _host("host-1")
    _host("host-2")
    _host("host-3", 256)  # too small for a 512 MiB replica
    other = _app(tenant, "other", memory=1024)
    _live(other, [h1])
    web = _app(tenant, "web", memory=512, replicas=3)
    deployment = Deployment.objects.create(app=web, number=1, source_kind="image")
    hosts = placement.place_deployment_replicas(deployment)
    assert [h.name for h in hosts] == ["host-2", "host-1", "host-2"]
    assert all(isinstance(h, Host) for h in hosts)


def test_a_retried_start_keeps_the_hosts_of_the_replicas_already_placed(tenant: Tenant):
    h1, _h2 = _host("host-1"), _host("host-2")
    web = _app(tenant, "web", replicas=2)
    deployment = _live(web, [h1])  # index 0 is placed on host-1, index 1 not yet
    assert [h.name for h in placement.place_deployment_replicas(deployment)] == ["host-1", "host-2"]


def test_a_deployment_that_cannot_be_placed_fails_with_no_capacity(tenant: Tenant):
    _host("host-1", 1024)
    web = _app(tenant, "web", memory=768, replicas=2)
    with pytest.raises(NoCapacity, match="768 MiB"):
        placement.place_deployment_replicas(Deployment.objects.create(app=web, number=1, source_kind="image"))


def test_the_build_host_is_an_active_builder(tenant: Tenant):
    _host("host-1", 8192, can_build=False)
    _host("host-2", 2048)
    _host("host-3", 4096, state="down")
    assert placement.build_host().name == "host-2"


def test_replacing_a_dead_hosts_replicas_spreads_them_in_four_queries(tenant: Tenant, django_assert_num_queries: Any):
    h1, h2, h3 = _host("host-1"), _host("host-2"), _host("host-3")
    Host.objects.filter(pk=h1.pk).update(state="down")
    web, api = _app(tenant, "web", memory=512), _app(tenant, "api", memory=256)
    _live(web, [h1, h2])
    _live(api, [h1, h3])
    with django_assert_num_queries(4):
        result = placement.replace_host_replicas(h1)
    moved = {Replica.objects.get(pk=pk).deployment.app.name: host.name for pk, host in result.placed.items()}
    assert moved == {"web": "host-3", "api": "host-2"}  # each away from where its app runs already
    assert result.unplaced == ()
