"""Hosts (issue 14): a worker registers and heartbeats its host, deployments are placed on a host with room and
run by that host's worker, a host without heartbeats goes down and its replicas are placed again."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from core.faults import PlatformError
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Host
from platform_apps.models import Replica
from provisioning import hosts
from tests.unit.fakes import FakePodman
from tests.unit.fakes import archive_deployment
from tests.unit.fakes import make_app

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _this_host(settings: Any) -> None:
    settings.HOST_NAME = "host-1"
    settings.HOST_ADDRESS = "10.0.0.1"
    settings.HOST_MEMORY_MB = 4096
    settings.HOST_CPUS = 2.0
    settings.HOST_CAN_BUILD = True
    settings.HOST_DEAD_SECONDS = 30


def other_host(name: str = "host-2", *, memory_mb: int = 4096, **fields: Any) -> Host:
    defaults = {"address": "10.0.0.2", "memory_mb": memory_mb, "cpus": Decimal(2), "last_heartbeat": timezone.now()}
    return Host.objects.create(name=name, **{**defaults, **fields})


def test_a_worker_registers_its_host_from_the_settings_and_a_restart_updates_it(settings: Any):
    host = hosts.register()
    assert (host.name, host.address, host.memory_mb, host.cpus, host.state) == (
        "host-1",
        "10.0.0.1",
        4096,
        Decimal("2.00"),
        Host.State.ACTIVE,
    )
    assert host.queue == "host.host-1"
    settings.HOST_MEMORY_MB = 8192
    again = hosts.register()
    assert (again.pk, again.memory_mb) == (host.pk, 8192)
    assert Host.objects.count() == 1


def test_a_host_without_heartbeats_goes_down_and_its_next_heartbeat_brings_it_back():
    hosts.register()
    now = timezone.now()
    silent = other_host(last_heartbeat=now - timedelta(seconds=31))
    draining = other_host("host-3", state=Host.State.DRAINING, last_heartbeat=now - timedelta(seconds=90))
    other_host("host-4", last_heartbeat=now - timedelta(seconds=10))
    assert sorted(hosts.mark_dead(now)) == ["host-2", "host-3"]
    states = dict(Host.objects.values_list("name", "state"))
    assert states == {"host-1": "active", "host-2": "down", "host-3": "down", "host-4": "active"}
    assert hosts.mark_dead(now) == []  # already down: not again
    Host.objects.filter(name="host-1").update(last_heartbeat=now - timedelta(seconds=300))
    assert hosts.mark_dead(now) == []  # the host whose worker asks is alive, whatever its last heartbeat says
    with mock.patch.object(hosts, "this_host_name", return_value=silent.name):
        assert hosts.heartbeat() is True
    assert Host.objects.get(pk=silent.pk).state == Host.State.ACTIVE
    assert Host.objects.get(pk=draining.pk).state == Host.State.DOWN


def test_a_restarted_worker_of_a_down_host_brings_it_back():
    host = hosts.register()
    Host.objects.filter(pk=host.pk).update(state=Host.State.DOWN)
    assert hosts.register().state == Host.State.ACTIVE


def test_a_draining_host_stays_draining_through_its_heartbeats():
    host = hosts.register()
    Host.objects.filter(pk=host.pk).update(state=Host.State.DRAINING)
    assert hosts.heartbeat() is True
    assert hosts.register().state == Host.State.DRAINING


def test_the_first_deploy_before_any_host_registered_registers_this_one():
    app = make_app(replicas=2, memory_mb=256)
    host = hosts.deployment_host(archive_deployment(app))
    assert host.name == "host-1"


def test_a_deployment_goes_to_the_active_building_host_with_the_most_free_memory():
    here = hosts.register()
    roomy = other_host("host-2", memory_mb=8192)
    other_host("host-3", memory_mb=16384, state=Host.State.DRAINING)
    other_host("host-4", memory_mb=16384, state=Host.State.DOWN)
    other_host("host-5", memory_mb=16384, can_build=False)
    app = make_app(replicas=2, memory_mb=512)
    deployment = archive_deployment(app)
    assert hosts.deployment_host(deployment) == roomy
    assert Deployment.objects.get(pk=deployment.pk).host == roomy
    # What is placed counts: with 6.5 GiB placed on host-2 it has less room left than this host.
    busy = archive_deployment(make_app(name="busy", replicas=1, memory_mb=512))
    Replica.objects.bulk_create(Replica(deployment=busy, index=i, name=f"r{i}", host=roomy) for i in range(13))
    assert hosts.deployment_host(archive_deployment(make_app(slug="other", name="next", memory_mb=256))) == here


def test_a_deployment_that_fits_no_host_says_how_much_room_there_is(settings: Any):
    settings.HOST_MEMORY_MB = 1024
    hosts.register()
    app = make_app(replicas=3, memory_mb=512)
    with pytest.raises(PlatformError) as raised:
        hosts.deployment_host(archive_deployment(app))
    assert raised.value.code == "deploy.no_capacity"
    assert raised.value.transient  # capacity may come back (a host returns, an app is scaled down)
    assert "3 replica(s) of 512 MB" in raised.value.message
    assert "1024 MB" in raised.value.message


def test_a_deployment_placed_on_a_host_that_went_down_is_placed_again():
    here = hosts.register()
    gone = other_host(state=Host.State.DOWN, memory_mb=65536)
    deployment = archive_deployment(make_app(), host=gone)
    assert hosts.deployment_host(deployment) == here


def test_a_deployment_placed_on_another_host_is_sent_to_that_hosts_queue(
    pipeline_settings: None, fake_podman: FakePodman, routes: Any, http: Any
):
    from provisioning import tasks

    hosts.register()
    other = other_host(memory_mb=65536)
    deployment = archive_deployment(make_app())
    with mock.patch.object(tasks.deployment_run, "apply_async", autospec=True) as send:
        tasks.deployment_run(str(deployment.public_id))
    send.assert_called_once_with((str(deployment.public_id),), queue="host.host-2")
    row = Deployment.objects.get(pk=deployment.pk)
    # Nothing ran here; the lease is left claimable, so host-2's worker takes it at once.
    assert (row.state, row.host, row.lease_owner, row.attempts) == ("queued", other, tasks.REQUEUED, 0)
    assert fake_podman.builds == []
    # On host-2 it runs: its containers carry host-2's name.
    with mock.patch.object(hosts, "this_host_name", return_value="host-2"):
        tasks.deployment_run(str(deployment.public_id))
    row = Deployment.objects.get(pk=deployment.pk)
    assert row.state == Deployment.State.LIVE
    replicas = list(Replica.objects.filter(deployment=row))
    assert len(replicas) == 2
    assert {replica.host for replica in replicas} == {other}
    assert {fake_podman.containers[r.name].labels["coltsfoot.host"] for r in replicas} == {"host-2"}


def test_a_down_hosts_live_replicas_are_placed_again_and_restarted_there(
    pipeline_settings: None, fake_podman: FakePodman, routes: Any, http: Any
):
    from provisioning import tasks
    from provisioning.reconciler.runner import reconcile_pass

    here = hosts.register()
    doomed = other_host(memory_mb=65536)
    app = make_app(replicas=2)
    deployment = archive_deployment(app, host=doomed)
    with mock.patch.object(hosts, "this_host_name", return_value=doomed.name):
        tasks.drive(deployment.public_id)
    for replica in Replica.objects.filter(deployment=deployment):
        fake_podman.kill(replica.name)  # the host died, and its containers with it
    Host.objects.filter(pk=doomed.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=60))

    counts = hosts.fail_over()
    assert counts == {"hosts_down": 1, "replaced": 1, "drained": 0}
    assert Deployment.objects.get(pk=deployment.pk).host == here
    assert set(Replica.objects.filter(deployment=deployment).values_list("host", flat=True)) == {here.pk}
    reconcile_pass()  # sees them dead
    reconcile_pass(now=timezone.now() + timedelta(seconds=2))  # restarts them, now on this host
    replicas = list(Replica.objects.filter(deployment=deployment))
    assert {replica.state for replica in replicas} == {Replica.State.RUNNING}
    assert {fake_podman.containers[r.name].labels["coltsfoot.host"] for r in replicas} == {"host-1"}
    assert hosts.fail_over() == {"hosts_down": 0, "replaced": 0, "drained": 0}


def test_an_app_live_on_a_draining_host_gets_a_release_placed_elsewhere(
    pipeline_settings: None, fake_podman: FakePodman, routes: Any, http: Any
):
    from provisioning import tasks

    here = hosts.register()
    app = make_app(replicas=1)
    first = archive_deployment(app, host=here)
    tasks.drive(first.public_id)
    host_2 = other_host(memory_mb=65536)
    Host.objects.filter(name="host-1").update(state=Host.State.DRAINING)

    with mock.patch.object(tasks.deployment_run, "delay", autospec=True):
        assert hosts.fail_over()["drained"] == 1
        # Once the release is queued nothing more is asked for until it is done.
        assert hosts.fail_over()["drained"] == 0
    release = Deployment.objects.filter(app=app).order_by("-number").first()
    assert release is not None
    assert release.source_kind == Deployment.SourceKind.RELEASE
    assert hosts.deployment_host(release) == host_2
    assert App.objects.get(pk=app.pk).live_deployment_id == first.pk


def test_every_worker_also_consumes_its_hosts_queue():
    queues = mock.Mock()
    worker = SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=queues)))
    hosts._consume_host_queue(sender="celery@x", instance=worker)
    queues.select_add.assert_called_once_with("host.host-1")


def test_the_heartbeat_thread_registers_then_beats_until_stopped(settings: Any):
    settings.HOST_HEARTBEAT_SECONDS = 0.01
    beat = hosts.Heartbeat()
    calls: list[str] = []

    def fake_register() -> Host:
        calls.append("register")
        return Host(name="host-1")

    def fake_heartbeat() -> bool:
        calls.append("heartbeat")
        if len(calls) >= 3:
            beat.stopped.set()
        return True

    with (
        mock.patch.object(hosts, "register", side_effect=fake_register),
        mock.patch.object(hosts, "heartbeat", side_effect=fake_heartbeat),
    ):
        beat.run()
    assert calls == ["register", "heartbeat", "heartbeat"]


def test_live_deployments_from_before_hosts_run_on_the_only_host(
    pipeline_settings: None, fake_podman: FakePodman, routes: Any, http: Any
):
    from provisioning import tasks

    app = make_app(replicas=1)
    deployment = archive_deployment(app)
    tasks.drive(deployment.public_id)
    Deployment.objects.filter(pk=deployment.pk).update(host=None)  # as the migration leaves older rows
    Replica.objects.filter(deployment=deployment).update(host=None)
    hosts.fail_over()
    here = Host.objects.get(name="host-1")
    assert Deployment.objects.get(pk=deployment.pk).host == here
    assert set(Replica.objects.filter(deployment=deployment).values_list("host", flat=True)) == {here.pk}


def test_a_container_a_host_kept_after_its_deployment_moved_away_is_removed_there(
    pipeline_settings: None, fake_podman: FakePodman, routes: Any, http: Any, settings: Any
):
    from provisioning import tasks
    from provisioning.reconciler.runner import reconcile_pass

    settings.ORPHAN_GRACE_SECONDS = 0
    app = make_app(replicas=1)
    deployment = archive_deployment(app)
    tasks.drive(deployment.public_id)
    (replica,) = Replica.objects.filter(deployment=deployment)
    # host-1 was down and its replicas were placed on host-2; host-1 is back with its old container.
    elsewhere = other_host()
    Deployment.objects.filter(pk=deployment.pk).update(host=elsewhere)
    Replica.objects.filter(pk=replica.pk).update(host=elsewhere)
    report = reconcile_pass(host="host-1")
    assert report.actions.get("orphan_removed") == 1
    assert replica.name not in fake_podman.containers


def test_a_release_off_a_draining_host_that_failed_is_asked_for_again_only_after_a_while(
    pipeline_settings: None, fake_podman: FakePodman, routes: Any, http: Any
):
    from provisioning import tasks

    here = hosts.register()
    app = make_app(replicas=1)
    first = archive_deployment(app, host=here)
    tasks.drive(first.public_id)
    Host.objects.filter(pk=here.pk).update(state=Host.State.DRAINING)  # and no other host: nowhere to go

    with mock.patch.object(tasks.deployment_run, "delay", autospec=True):
        assert hosts.fail_over()["drained"] == 1
        release = Deployment.objects.filter(app=app).order_by("-number").first()
        assert release is not None
        Deployment.objects.filter(pk=release.pk).update(state=Deployment.State.FAILED)
        assert hosts.fail_over()["drained"] == 0  # not a failed release every pass
        Deployment.objects.filter(pk=release.pk).update(created_at=timezone.now() - timedelta(minutes=6))
        assert hosts.fail_over()["drained"] == 1


def test_a_hosts_pass_leaves_the_routes_of_apps_live_elsewhere_alone_at_a_fixed_cost(
    pipeline_settings: None, fake_podman: FakePodman, routes: Any, http: Any
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from caddy import routes as caddy_routes
    from provisioning import tasks
    from provisioning.reconciler.runner import reconcile_pass

    here = hosts.register()
    there = other_host(memory_mb=65536)
    tasks.drive(archive_deployment(make_app(name="here", replicas=1), host=here).public_id)

    def live_elsewhere(name: str) -> App:
        app = make_app(slug=f"t{name}", name=name, replicas=1)
        with mock.patch.object(hosts, "this_host_name", return_value=there.name):
            tasks.drive(archive_deployment(app, host=there).public_id)
        return app

    first = live_elsewhere("first")
    reconcile_pass(host="host-1")
    with CaptureQueriesContext(connection) as one:
        reconcile_pass(host="host-1")
    others = [live_elsewhere("second"), live_elsewhere("third")]
    with CaptureQueriesContext(connection) as three:
        report = reconcile_pass(host="host-1")
    assert report.actions == {}
    assert len(three) == len(one)  # not two queries more for every app on another host
    for app in (first, *others):
        assert caddy_routes.route_id(app.public_id) in routes.raw
        assert routes.table[app.public_id]  # its hosts file still names its replica
