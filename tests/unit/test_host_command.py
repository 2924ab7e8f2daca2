"""`manage.py host list|drain|undrain`: what an operator sees of the hosts and how one is taken out of placement.
Drain and undrain are one conditional UPDATE each, logged and audited, shared with the console."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from core.errors import Conflict
from platform_apps.hosts import services
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Host
from platform_apps.models import Replica
from provisioning import placement
from tenants.services import tenant_create
from tests.unit.fakes import task_queued


def _host(name: str, memory: int = 4096, **fields: Any) -> Host:
    return Host.objects.create(name=name, address=f"10.0.0.{name[-1]}", memory_mb=memory, cpus=2, **fields)


@pytest.fixture
def fleet(db: None) -> dict[str, Host]:
    """host-1 runs two replicas of web (512 MiB each) and heartbeated 3 s ago; host-2 is draining and empty;
    host-3 is down and never heartbeated."""
    now = timezone.now()
    hosts = {
        "host-1": _host("host-1", last_heartbeat=now - timedelta(seconds=3)),
        "host-2": _host("host-2", 2048, state=Host.State.DRAINING, last_heartbeat=now),
        "host-3": _host("host-3", state=Host.State.DOWN),
    }
    tenant = tenant_create(slug="acme")
    app = App.objects.create(tenant=tenant, name="web", hostname=App.hostname_for("web", "acme"), memory_mb=512)
    deployment = Deployment.objects.create(app=app, number=1, state="live", source_kind="image")
    for index in range(2):
        Replica.objects.create(
            deployment=deployment, index=index, name=f"tsl-{deployment.public_id}-{index}", host=hosts["host-1"]
        )
    return hosts


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("host", *args, stdout=out)
    return out.getvalue()


# --- list ------------------------------------------------------------------------------------------------


def test_list_shows_each_hosts_state_room_replicas_and_heartbeat(fleet: dict[str, Host]):
    lines = run("list").splitlines()
    assert len(lines) == 3
    one, two, three = lines
    assert one.split()[:3] == ["host-1", "active", "10.0.0.1"]
    assert "1024/4096 MB" in one
    assert "2 replicas" in one
    assert "heartbeat 3" in one
    assert one.endswith("s ago")
    assert two.split()[:2] == ["host-2", "draining"]
    assert "0/2048 MB" in two
    assert three.split()[:2] == ["host-3", "down"]
    assert three.endswith("heartbeat never")


def test_list_json_has_public_ids_and_the_same_figures(fleet: dict[str, Host], django_assert_max_num_queries: Any):
    with django_assert_max_num_queries(1):
        document = json.loads(run("list", "--json"))
    first = document[0]
    assert first["id"] == str(fleet["host-1"].public_id)
    assert "pk" not in first
    assert (first["name"], first["state"], first["address"]) == ("host-1", "active", "10.0.0.1")
    assert (first["memory_placed_mb"], first["memory_mb"], first["replicas"], first["cpus"]) == (1024, 4096, 2, 2.0)
    assert 3 <= first["heartbeat_age_seconds"] < 60
    assert document[2]["heartbeat_age_seconds"] is None
    assert document[2]["last_heartbeat"] is None
    assert [h["name"] for h in document] == ["host-1", "host-2", "host-3"]


def test_list_without_hosts_says_so(db: None):
    assert "No host has registered yet" in run("list")
    assert json.loads(run("list", "--json")) == []


# --- drain / undrain -------------------------------------------------------------------------------------


def test_drain_takes_a_host_out_of_placement_and_undrain_puts_it_back(
    fleet: dict[str, Host], django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="platform_apps.hosts.services")
    Host.objects.filter(name="host-2").update(state=Host.State.ACTIVE)
    web = App.objects.get(name="web")  # both its replicas run on host-1: the next one goes to host-2 if it can
    assert placement.place_replicas(1, 512, placement.host_rooms(app=web)) == ["host-2"]

    with task_queued("reconcile") as reconcile, django_capture_on_commit_callbacks(execute=True):
        assert run("drain", "host-2").strip() == "Host host-2: active -> draining."
    reconcile.assert_called_once_with()
    assert Host.objects.get(name="host-2").state == Host.State.DRAINING
    assert placement.place_replicas(1, 512, placement.host_rooms(app=web)) == ["host-1"]
    (record,) = [r for r in caplog.records if r.getMessage() == "host state changed"]
    assert record.host == "host-2"  # type: ignore[attr-defined]
    assert record.host_id == str(fleet["host-2"].public_id)  # type: ignore[attr-defined]
    assert (record.from_state, record.to_state) == ("active", "draining")  # type: ignore[attr-defined]

    assert run("undrain", "host-2").strip() == "Host host-2: draining -> active."
    assert Host.objects.get(name="host-2").state == Host.State.ACTIVE
    assert placement.place_replicas(1, 512, placement.host_rooms(app=web)) == ["host-2"]


def test_each_change_is_in_the_audit_trail_without_a_tenant(fleet: dict[str, Host]):
    run("undrain", "host-2")
    run("drain", "host-2")
    events = list(AuditEvent.objects.filter(object_type="host").order_by("id"))
    assert [e.action for e in events] == ["host.undrain", "host.drain"]
    assert {e.object_id for e in events} == {fleet["host-2"].public_id}
    assert all(e.tenant_id is None and e.actor_kind == "system" for e in events)
    assert events[1].details == {"name": "host-2", "from": "active", "to": "draining"}


def test_draining_a_draining_host_is_a_no_op_that_says_so(fleet: dict[str, Host]):
    assert run("drain", "host-2").strip() == "Host host-2 is already draining."
    assert run("undrain", "host-1").strip() == "Host host-1 is already active."
    assert not AuditEvent.objects.filter(object_type="host").exists()


@pytest.mark.parametrize("verb", ["drain", "undrain"])
def test_an_unknown_host_is_an_error(fleet: dict[str, Host], verb: str):
    with pytest.raises(CommandError, match="No host is named 'host-9'"):
        run(verb, "host-9")


@pytest.mark.parametrize(("verb", "says"), [("undrain", "becomes active again"), ("drain", "takes no placements")])
def test_a_down_host_can_be_neither_drained_nor_undrained(fleet: dict[str, Host], verb: str, says: str):
    with pytest.raises(CommandError, match=f"Host host-3 is down: it {says}"):
        run(verb, "host-3")
    assert Host.objects.get(name="host-3").state == Host.State.DOWN


def test_the_command_exits_non_zero_on_an_error(fleet: dict[str, Host], capsys: pytest.CaptureFixture[str]):
    from provisioning.management.commands.host import Command

    # run_from_argv is what `manage.py host ...` ends in, without ManagementUtility's django.setup(): that would
    # configure logging again onto this test's captured stderr, closed after it (later tests then print "Logging
    # error" tracebacks into their own output).
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "host", "undrain", "host-3"])
    assert exited.value.code == 1
    assert "host-3 is down" in capsys.readouterr().err


def test_a_reconciler_marking_the_host_down_meanwhile_is_not_overwritten(fleet: dict[str, Host]):
    """The state is read, then written only if it still is what was read: a reconcile pass that marks the host
    down in between wins, and drain answers with what it then finds."""
    real_filter = Host.objects.filter
    raced: list[int] = []

    def mark_down_before_the_update(*args: Any, **kwargs: Any) -> Any:
        if "state" in kwargs and not raced:  # the conditional UPDATE, after the service read "active"
            raced.append(real_filter(name="host-1").update(state=Host.State.DOWN))
        return real_filter(*args, **kwargs)

    with (
        mock.patch.object(Host.objects, "filter", side_effect=mark_down_before_the_update),
        pytest.raises(Conflict, match="Host host-1 is down"),
    ):
        services.host_drain(name="host-1")
    assert raced == [1]
    assert Host.objects.get(name="host-1").state == Host.State.DOWN
    assert not AuditEvent.objects.filter(object_type="host").exists()
