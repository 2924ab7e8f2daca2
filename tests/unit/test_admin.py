"""The admin changelists: searchable, filterable, and a constant number of queries (zeal raises on N+1)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from conftest import Actor
from core import crypto
from platform_apps.models import ConfigVar
from tenants.models import Tenant

CHANGELISTS = [
    "/admin/tenants/tenant/",
    "/admin/tenants/apitoken/",
    "/admin/platform_apps/app/",
    "/admin/platform_apps/deployment/",
    "/admin/platform_apps/configvar/",
    "/admin/platform_apps/addon/",
    "/admin/platform_apps/webhookdelivery/",
]


@pytest.fixture
def staff(db: None) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client = Client()
    client.force_login(user)
    return client


def _populate(make_actor: Any, n: int) -> None:
    for i in range(n):
        actor: Actor = make_actor(f"tenant{i}")
        app = actor.call("POST", "/apps", {"name": "web"}).json()
        actor.call("POST", "/tokens", {"name": "ci", "scopes": ["deploy"], "app_id": app["id"]})
        ConfigVar.objects.create(
            app_id=actor.tenant.apps.get().pk, key="API_KEY", value_encrypted=crypto.encrypt("s3cr3t-x"), secret=True
        )


@pytest.mark.parametrize("url", CHANGELISTS)
def test_changelists_render_in_constant_queries(staff: Client, make_actor: Any, url: str):
    _populate(make_actor, 1)
    with CaptureQueriesContext(connection) as few:
        assert staff.get(url).status_code == 200
    for i in range(1, 4):
        _populate(lambda slug, i=i: make_actor(f"{slug}x{i}"), 1)
    with CaptureQueriesContext(connection) as many:
        response = staff.get(url)
    assert response.status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries)
    assert b"s3cr3t-x" not in response.content


def test_suspend_and_reactivate_actions(staff: Client, owner: Actor):
    response = staff.post(
        "/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [owner.tenant.pk]}, follow=True
    )
    assert response.status_code == 200
    owner.tenant.refresh_from_db()
    assert owner.tenant.status == Tenant.Status.SUSPENDED
    assert owner.call("GET", "/apps").json()["error"]["code"] == "tenant.suspended"
    staff.post("/admin/tenants/tenant/", {"action": "reactivate", "_selected_action": [owner.tenant.pk]})
    owner.tenant.refresh_from_db()
    assert owner.tenant.status == Tenant.Status.ACTIVE
    assert owner.call("GET", "/apps").status_code == 200


def test_search_and_filter(staff: Client, make_actor: Any):
    _populate(make_actor, 2)
    assert b"tenant1" in staff.get("/admin/tenants/tenant/?q=tenant1").content
    assert staff.get("/admin/tenants/tenant/?status__exact=suspended").status_code == 200
    assert staff.get("/admin/platform_apps/app/?q=web").status_code == 200


def test_token_hash_is_read_only(staff: Client, owner: Actor):
    from tenants.models import ApiToken

    token = ApiToken.objects.get(tenant=owner.tenant)
    page = staff.get(f"/admin/tenants/apitoken/{token.pk}/change/").content.decode()
    assert token.token_hash in page  # shown, read-only
    assert 'name="token_hash"' not in page
    assert owner.token not in page


def test_tenant_changelist_shows_cpu_quota_and_use_and_the_form_edits_it(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "a", "replicas": 2, "cpus": 0.75})
    owner.call("POST", "/apps", {"name": "b", "replicas": 1, "cpus": 1.0})
    page = staff.get("/admin/tenants/tenant/").content.decode()
    assert "CPUs in use" in page
    assert "2.50" in page  # 2 x 0.75 + 1
    form = staff.get(f"/admin/tenants/tenant/{owner.tenant.pk}/change/").content.decode()
    assert 'name="max_cpus"' in form
