"""The audit trail: one row per change, with who, what, from where and how it ended; nothing for a
request that was refused; never a secret; each tenant sees only its own."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from audit import actions
from audit.models import AppendOnlyError
from audit.models import AuditEvent
from audit.services import audit_record
from conftest import Actor
from platform_apps.models import Deployment
from platform_apps.webhooks.signatures import sign_generic
from tenants.models import ApiToken
from tenants.models import Tenant

IMAGE = "docker.io/library/python:3.13"
SECRET_VALUE = "hunter2-very-secret-value"
REQUEST_ID = "audit-test-request-0001"


def _ok(response: Any, status: int) -> Any:
    assert response.status_code == status, response.content
    return response.json() if response.content else None


def _owner_token(actor: Actor) -> ApiToken:
    return ApiToken.objects.get(tenant=actor.tenant, prefix=actor.token.split(".", 1)[0])


def _rows_after(mark: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(pk__gt=mark).order_by("pk"))


def _mark() -> int:
    last = AuditEvent.objects.order_by("-pk").first()
    return last.pk if last else 0


def _everything_recorded() -> str:
    """Every stored column of every audit row, as one string to grep."""
    return json.dumps(list(AuditEvent.objects.values()), default=str)


def test_a_scripted_sequence_writes_one_row_per_action(owner: Actor, settings: Any, tmp_path: Any):
    settings.BUILD_ROOT = tmp_path / "builds"
    mark = _mark()
    headers = {"HTTP_X_REQUEST_ID": REQUEST_ID}

    app = _ok(owner.call("POST", "/apps", {"name": "shop"}, **headers), 201)
    _ok(owner.call("PATCH", f"/apps/{app['id']}", {"replicas": 2}), 200)
    # Refused by schema validation: nothing happened, so nothing is recorded.
    _ok(owner.call("PATCH", f"/apps/{app['id']}", {"replicas": "lots"}), 422)
    _ok(owner.call("POST", "/apps", {"name": "Not A DNS Label!"}), 422)
    _ok(owner.call("PATCH", f"/apps/{app['id']}/config", {"vars": {"GREETING": "hi"}, "secrets": {"API_KEY": 7}}), 422)
    _ok(
        owner.call(
            "PATCH", f"/apps/{app['id']}/config", {"vars": {"GREETING": "hi"}, "secrets": {"API_KEY": SECRET_VALUE}}
        ),
        200,
    )
    deployment = _ok(owner.call("POST", f"/apps/{app['id']}/deployments", {"image": IMAGE}), 202)
    # As if the pipeline had built and served it, so that it can be rolled back to.
    Deployment.objects.filter(public_id=deployment["id"]).update(
        state=Deployment.State.LIVE,
        image_ref=f"localhost/coltsfoot-app:{deployment['id']}",
        image_id="sha256:" + "a" * 64,
    )
    rollback = _ok(owner.call("POST", f"/apps/{app['id']}/rollback", {"deployment_id": deployment["id"]}), 202)
    webhook_secret = _ok(owner.call("POST", f"/apps/{app['id']}/webhook-secret"), 200)["secret"]
    minted = _ok(owner.call("POST", "/tokens", {"name": "ci", "scopes": ["deploy"], "app_id": app["id"]}), 201)
    _ok(owner.call("DELETE", f"/tokens/{minted['id']}"), 204)
    _ok(owner.call("DELETE", f"/apps/{app['id']}"), 202)

    rows = _rows_after(mark)
    app_id, deployment_id, token_id = uuid.UUID(app["id"]), uuid.UUID(deployment["id"]), uuid.UUID(minted["id"])
    assert [(row.action, row.object_type, row.object_id, row.outcome) for row in rows] == [
        (actions.APP_CREATE, "app", app_id, "succeeded"),
        (actions.APP_UPDATE, "app", app_id, "succeeded"),
        (actions.CONFIG_UPDATE, "app", app_id, "succeeded"),
        (actions.DEPLOYMENT_CREATE, "deployment", deployment_id, "accepted"),
        (actions.DEPLOYMENT_ROLLBACK, "deployment", uuid.UUID(rollback["id"]), "accepted"),
        (actions.WEBHOOK_SECRET_ROTATE, "app", app_id, "succeeded"),
        (actions.TOKEN_CREATE, "token", token_id, "succeeded"),
        (actions.TOKEN_REVOKE, "token", token_id, "succeeded"),
        (actions.APP_DELETE, "app", app_id, "accepted"),
    ]
    token = _owner_token(owner)
    for row in rows:
        assert (row.actor_kind, row.actor_id, row.actor_name) == ("token", token.public_id, token.prefix)
        assert row.tenant_id == owner.tenant.pk
        assert row.app_public_id == app_id
        assert row.source_address == "127.0.0.1"
        assert row.request_id
    assert rows[0].request_id == REQUEST_ID
    assert len({row.request_id for row in rows}) == len(rows)  # one request each
    assert rows[2].details["keys"] == ["API_KEY", "GREETING"]
    assert rows[2].details["secret_keys"] == ["API_KEY"]
    assert rows[4].details["target_deployment_id"] == deployment["id"]

    # No secret, token or hash anywhere in what was stored, nor in what the API shows.
    recorded = _everything_recorded() + owner.call("GET", "/audit?limit=100").content.decode()
    for secret in (SECRET_VALUE, webhook_secret, minted["token"], owner.token, token.token_hash):
        assert secret not in recorded


def test_the_api_lists_the_tenants_own_rows_newest_first(owner: Actor, outsider: Actor):
    app = _ok(owner.call("POST", "/apps", {"name": "shop"}), 201)
    _ok(owner.call("PATCH", f"/apps/{app['id']}/config", {"secrets": {"API_KEY": SECRET_VALUE}}), 200)

    listing = _ok(owner.call("GET", "/audit"), 200)
    newest = listing["items"][0]
    assert newest["action"] == "config.update"
    assert newest["object"] == {"type": "app", "id": app["id"]}
    assert newest["actor"] == {"kind": "token", "id": str(_owner_token(owner).public_id), "name": owner.token[:12]}
    assert newest["app_id"] == app["id"]
    assert newest["outcome"] == "succeeded"
    assert newest["details"]["secret_keys"] == ["API_KEY"]
    assert listing["count"] == len(listing["items"])

    # The other tenant sees only its own rows (its creation and first token), none of these.
    theirs = _ok(outsider.call("GET", "/audit?limit=100"), 200)
    assert {item["action"] for item in theirs["items"]} == {"tenant.create", "token.create"}
    assert app["id"] not in json.dumps(theirs)
    assert _ok(outsider.call("GET", f"/audit?app_id={app['id']}"), 200)["count"] == 0


def test_filters_and_an_app_restricted_token(owner: Actor):
    one = _ok(owner.call("POST", "/apps", {"name": "one"}), 201)
    two = _ok(owner.call("POST", "/apps", {"name": "two"}), 201)
    _ok(owner.call("PATCH", f"/apps/{two['id']}", {"memory_mb": 128}), 200)

    updates = _ok(owner.call("GET", "/audit?action=app.update"), 200)
    assert [(item["action"], item["object"]["id"]) for item in updates["items"]] == [("app.update", two["id"])]
    only_two = _ok(owner.call("GET", f"/audit?app_id={two['id']}"), 200)
    assert [item["action"] for item in only_two["items"]] == ["app.update", "app.create"]

    minted = _ok(owner.call("POST", "/tokens", {"name": "r", "scopes": ["apps:read"], "app_id": one["id"]}), 201)
    restricted = Actor(owner.tenant, minted["token"], Client())
    seen = _ok(restricted.call("GET", "/audit?limit=100"), 200)
    assert seen["items"], "the app's own rows are visible"
    assert {item["app_id"] for item in seen["items"]} == {one["id"]}
    assert _ok(restricted.call("GET", f"/audit?app_id={two['id']}"), 200)["count"] == 0


def test_refused_requests_write_nothing(owner: Actor, make_actor: Any):
    app = _ok(owner.call("POST", "/apps", {"name": "shop"}), 201)
    reader_token = _ok(owner.call("POST", "/tokens", {"name": "r", "scopes": ["apps:read"]}), 201)["token"]
    reader = Actor(owner.tenant, reader_token, Client())
    mark = _mark()
    _ok(owner.call("POST", "/apps", {"name": "shop"}), 409)  # name taken
    _ok(reader.call("PATCH", f"/apps/{app['id']}", {"replicas": 2}), 403)  # scope
    _ok(reader.call("POST", f"/apps/{app['id']}/webhook-secret"), 403)
    _ok(owner.call("PATCH", f"/apps/{uuid.uuid4()}", {"replicas": 2}), 404)
    _ok(Client().post("/api/v1/apps", data={"name": "x"}, content_type="application/json"), 401)
    assert _rows_after(mark) == []


def test_source_address_believes_only_trusted_proxies(owner: Actor, settings: Any):
    forwarded = {"HTTP_X_FORWARDED_FOR": "198.51.100.7, 203.0.113.9"}
    _ok(owner.call("POST", "/apps", {"name": "direct"}, **forwarded), 201)
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    _ok(owner.call("POST", "/apps", {"name": "proxied"}, **forwarded), 201)
    _ok(owner.call("POST", "/apps", {"name": "garbage"}, HTTP_X_FORWARDED_FOR="not-an-address"), 201)
    rows = AuditEvent.objects.filter(action="app.create").order_by("pk")
    # Untrusted: the connecting address. Trusted: the hop our proxy saw, not what the client claims.
    assert [row.source_address for row in rows] == ["127.0.0.1", "203.0.113.9", "127.0.0.1"]


def test_a_webhook_deploy_is_recorded_as_the_webhook(owner: Actor, settings: Any):
    app = _ok(owner.call("POST", "/apps", {"name": "shop"}), 201)
    secret = _ok(owner.call("POST", f"/apps/{app['id']}/webhook-secret"), 200)["secret"]
    body = json.dumps({"image": IMAGE}).encode()
    stamp = int(time.time())
    headers = {
        "X-Coltsfoot-Timestamp": str(stamp),
        "X-Coltsfoot-Signature": sign_generic(secret.encode(), stamp, body),
        "X-Coltsfoot-Delivery": "dlv-audit-1",
    }
    mark = _mark()
    url = f"/api/v1/hooks/apps/{app['id']}/deploy"
    created = _ok(Client().post(url, data=body, content_type="application/json", headers=headers), 202)
    _ok(Client().post(url, data=body, content_type="application/json", headers=headers), 200)  # a replay
    rows = _rows_after(mark)
    assert [(row.action, row.object_id, row.outcome) for row in rows] == [
        ("webhook.deploy", uuid.UUID(created["id"]), "accepted")
    ]
    row = rows[0]
    assert (row.actor_kind, row.actor_id, row.actor_name) == ("webhook", uuid.UUID(app["id"]), "webhook")
    assert row.details["delivery_id"] == "dlv-audit-1"
    assert secret not in _everything_recorded()


@pytest.fixture
def staff(db: None) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client = Client()
    client.force_login(user)
    return client


def test_admin_actions_are_recorded_with_the_admin_user(staff: Client, owner: Actor):
    mark = _mark()
    token = _owner_token(owner)
    staff.post("/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [owner.tenant.pk]})
    staff.post("/admin/tenants/tenant/", {"action": "reactivate", "_selected_action": [owner.tenant.pk]})
    staff.post("/admin/tenants/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    rows = _rows_after(mark)
    assert [(row.action, row.object_id) for row in rows] == [
        ("tenant.suspend", owner.tenant.public_id),
        ("tenant.reactivate", owner.tenant.public_id),
        ("token.revoke", token.public_id),
    ]
    assert {(row.actor_kind, row.actor_name, row.tenant_id) for row in rows} == {("admin", "root", owner.tenant.pk)}
    assert Tenant.objects.get(pk=owner.tenant.pk).is_active
    assert _owner_token(owner).is_revoked


def test_admin_edits_are_recorded(staff: Client, owner: Actor):
    app = _ok(owner.call("POST", "/apps", {"name": "shop"}), 201)
    mark = _mark()
    tenant = owner.tenant
    form = {
        "slug": tenant.slug,
        "status": "active",
        "max_apps": 3,
        "max_replicas": tenant.max_replicas,
        "max_memory_mb": tenant.max_memory_mb,
        "max_cpus": tenant.max_cpus,
    }
    response = staff.post(f"/admin/tenants/tenant/{tenant.pk}/change/", form)
    assert response.status_code == 302, response.content
    [row] = _rows_after(mark)
    assert (row.action, row.object_type, row.object_id, row.actor_name) == (
        "admin.change",
        "tenant",
        tenant.public_id,
        "root",
    )
    assert row.details["fields"] == ["max_apps"]
    assert app["id"]  # the app is untouched; only the tenant's quota changed


def test_the_admin_shows_the_trail_read_only(staff: Client, owner: Actor):
    row = AuditEvent.objects.filter(tenant=owner.tenant).first()
    assert row is not None
    assert staff.get("/admin/audit/auditevent/?action=token.create").status_code == 200
    page = staff.get(f"/admin/audit/auditevent/{row.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert staff.get("/admin/audit/auditevent/add/").status_code == 403
    assert staff.get(f"/admin/audit/auditevent/{row.pk}/delete/").status_code == 403
    assert staff.post(f"/admin/audit/auditevent/{row.pk}/change/", {"action": "x"}).status_code == 403


def test_rows_are_append_only(owner: Actor):
    row = AuditEvent.objects.filter(tenant=owner.tenant).first()
    assert row is not None
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=row.pk).update(action="app.delete")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=row.pk).delete()
    row.action = "app.delete"
    with pytest.raises(AppendOnlyError):
        row.save()
    with pytest.raises(AppendOnlyError):
        row.delete()


def test_unknown_actions_are_refused(owner: Actor):
    with pytest.raises(ValueError, match="unknown audit action"), transaction.atomic():
        audit_record(action="app.explode", tenant_id=owner.tenant.pk, object_type="app", object_id=None)
