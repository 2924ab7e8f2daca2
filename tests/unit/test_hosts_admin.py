"""The console's hosts: what each holds and whether it heartbeats, in a constant number of queries (zeal raises on
N+1); drain and undrain through the same service as `manage.py host`; no adding (workers register hosts), no
deleting a host something runs on; and where each replica runs, wherever the console lists replicas."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Host
from platform_apps.models import Replica
from tenants.models import Tenant
from tenants.services import tenant_create

HOSTS = "/admin/platform_apps/host/"


@pytest.fixture
def staff(db: None) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def tenant(db: None) -> Tenant:
    return tenant_create(slug="acme")


def _host(name: str, memory: int = 4096, **fields: Any) -> Host:
    return Host.objects.create(
        name=name, address=f"10.0.0.{name.rsplit('-', 1)[-1]}", memory_mb=memory, cpus=4, **fields
    )


def _deploy(tenant: Tenant, name: str, hosts: list[Host], *, memory: int = 256, number: int = 1) -> Deployment:
    app = App.objects.filter(tenant=tenant, name=name).first() or App.objects.create(
        tenant=tenant, name=name, hostname=App.hostname_for(name, tenant.slug), memory_mb=memory, replicas=len(hosts)
    )
    deployment = Deployment.objects.create(app=app, number=number, state="live", source_kind="image")
    for index, host in enumerate(hosts):
        Replica.objects.create(
            deployment=deployment,
            index=index,
            name=f"tsl-{deployment.public_id}-{index}",
            host=host,
            address=f"10.89.0.{index + 2}",
            state="running",
        )
    App.objects.filter(pk=app.pk).update(live_deployment=deployment)
    return deployment


def _fleet(tenant: Tenant, n: int, prefix: str = "host") -> list[Host]:
    hosts = [_host(f"{prefix}-{i + 1}", last_heartbeat=timezone.now()) for i in range(n)]
    for i, host in enumerate(hosts):
        _deploy(tenant, f"{prefix}-app{i}", [host, hosts[(i + 1) % n]])
    return hosts


def _action(staff: Client, action: str, hosts: list[Host]) -> Any:
    return staff.post(HOSTS, {"action": action, "_selected_action": [h.pk for h in hosts]}, follow=True)


# --- The list and the page -------------------------------------------------------------------------------


def test_the_hosts_changelist_shows_state_room_replicas_and_heartbeat(staff: Client, tenant: Tenant):
    busy = _host("host-1", last_heartbeat=timezone.now() - timedelta(seconds=12))
    _host("host-2", 2048, state=Host.State.DRAINING)
    _deploy(tenant, "web", [busy, busy], memory=384)

    page = staff.get(HOSTS).content.decode()

    assert 'cf-badge-active">Active' in page
    assert 'cf-badge-draining">Draining' in page
    assert "768 / 4096 MiB" in page
    assert "0 / 2048 MiB" in page
    assert "10.0.0.1" in page
    first, second = re.findall(r'<td class="field-heartbeat">([^<]*)</td>', page)
    seconds = re.fullmatch(r"(\d+\.\d) s ago", first)
    assert seconds is not None
    assert 12 <= float(seconds.group(1)) < 60
    assert second == "never"
    draining = staff.get(f"{HOSTS}?state=draining").content.decode()
    assert "host-2" in draining
    assert "host-1" not in draining


def test_the_hosts_changelist_and_a_hosts_page_render_in_constant_queries(staff: Client, tenant: Tenant):
    first = _fleet(tenant, 1, prefix="one")[0]
    staff.get(f"{HOSTS}{first.pk}/change/")  # the first view of a model's page caches its content type
    with CaptureQueriesContext(connection) as few:
        assert staff.get(HOSTS).status_code == 200
    with CaptureQueriesContext(connection) as page_few:
        assert staff.get(f"{HOSTS}{first.pk}/change/").status_code == 200

    crowded = _fleet(tenant, 4, prefix="many")[0]
    _deploy(tenant, "many-app0", [crowded, crowded, crowded], number=2)
    with CaptureQueriesContext(connection) as many:
        assert staff.get(HOSTS).status_code == 200
    with CaptureQueriesContext(connection) as page_many:
        response = staff.get(f"{HOSTS}{crowded.pk}/change/")
    assert response.status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries)
    assert len(page_many.captured_queries) == len(page_few.captured_queries)


def test_a_hosts_page_lists_what_runs_there_and_is_read_only(staff: Client, tenant: Tenant):
    host, other = _host("host-1"), _host("host-2")
    live = _deploy(tenant, "web", [host, other])

    page = staff.get(f"{HOSTS}{host.pk}/change/").content.decode()

    assert "Replicas placed here" in page
    assert f"tsl-{live.public_id}-0" in page
    assert f"tsl-{live.public_id}-1" not in page  # that one runs on host-2
    assert "web-acme.localhost" in page
    assert "#1 (live)" in page
    for field in ("name", "state", "address", "memory_mb", "last_heartbeat", "registered_at"):
        assert f'name="{field}"' not in page
    assert 'name="_save"' not in page
    assert staff.post(f"{HOSTS}{host.pk}/change/", {"state": "down"}).status_code == 403
    assert Host.objects.get(pk=host.pk).state == Host.State.ACTIVE


def test_hosts_cannot_be_added_and_one_with_replicas_cannot_be_deleted(staff: Client, tenant: Tenant):
    busy, empty = _host("host-1"), _host("host-2")
    _deploy(tenant, "web", [busy])

    assert staff.get(f"{HOSTS}add/").status_code == 403
    assert staff.post(f"{HOSTS}{busy.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Host.objects.filter(pk=busy.pk).exists()
    assert "delete_selected" not in staff.get(HOSTS).content.decode()

    assert staff.post(f"{HOSTS}{empty.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Host.objects.filter(pk=empty.pk).exists()
    deleted = AuditEvent.objects.get(action="admin.delete")
    assert (deleted.object_type, deleted.object_id, deleted.tenant_id) == ("host", empty.public_id, None)


# --- Actions ---------------------------------------------------------------------------------------------


def test_drain_and_undrain_go_through_the_service_and_are_logged_and_audited(
    staff: Client, tenant: Tenant, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="coltsfoot.console")
    host = _host("host-1")

    page = _action(staff, "drain", [host]).content.decode()

    assert "Host host-1: active -&gt; draining." in page
    assert Host.objects.get(pk=host.pk).state == Host.State.DRAINING
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "drain"]
    assert record.admin_user == "root"  # type: ignore[attr-defined]
    assert record.object_ids == [str(host.public_id)]  # type: ignore[attr-defined]
    event = AuditEvent.objects.get(action="host.drain")
    assert (event.actor_kind, event.actor_name, event.object_id) == ("admin", "root", host.public_id)

    assert "Host host-1 is already draining." in _action(staff, "drain", [host]).content.decode()
    assert AuditEvent.objects.filter(action="host.drain").count() == 1

    assert "Host host-1: draining -&gt; active." in _action(staff, "undrain", [host]).content.decode()
    assert Host.objects.get(pk=host.pk).state == Host.State.ACTIVE
    history = staff.get(f"{HOSTS}{host.pk}/history/").content.decode()
    assert "drain (admin console)" in history
    assert "undrain (admin console)" in history


def test_a_down_host_is_refused_and_the_others_still_change(staff: Client, tenant: Tenant):
    down, draining = _host("host-1", state=Host.State.DOWN), _host("host-2", state=Host.State.DRAINING)

    page = _action(staff, "undrain", [down, draining]).content.decode()

    assert "Host host-1 is down: it becomes active again by itself when its worker heartbeats." in page
    assert "Host host-2: draining -&gt; active." in page
    assert Host.objects.get(pk=down.pk).state == Host.State.DOWN
    assert Host.objects.get(pk=draining.pk).state == Host.State.ACTIVE


# --- Where replicas run, where the console lists them ----------------------------------------------------


def test_a_deployments_replicas_and_an_apps_replica_table_show_their_host(staff: Client, tenant: Tenant):
    live = _deploy(tenant, "web", [_host("host-1"), _host("host-2")])
    Replica.objects.filter(deployment=live, index=1).update(host=None)  # a row from before hosts

    deployment_page = staff.get(f"/admin/platform_apps/deployment/{live.pk}/change/").content.decode()
    assert "host-1 (active)" in deployment_page

    app_page = staff.get(f"/admin/platform_apps/app/{live.app_id}/change/").content.decode()
    assert "<th>host</th>" in app_page
    assert "<td>web.1</td><td>host-1</td>" in app_page
    assert "<td>web.2</td><td>-</td>" in app_page
