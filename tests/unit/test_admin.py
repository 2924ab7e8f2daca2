"""The console (the Django admin): changelists an operator scans in a constant number of queries (zeal raises
on N+1), actions that go through the services and are logged with the admin user, read-only task-owned
fields, no secret anywhere."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conftest import Actor
from core import crypto
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from platform_apps.models import Replica
from tenants.models import ApiToken
from tenants.models import Tenant
from tests.unit.fakes import task_queued

CHANGELISTS = [
    "/admin/tenants/tenant/",
    "/admin/tenants/apitoken/",
    "/admin/platform_apps/app/",
    "/admin/platform_apps/deployment/",
    "/admin/platform_apps/configvar/",
    "/admin/platform_apps/addon/",
    "/admin/platform_apps/webhookdelivery/",
    "/admin/audit/auditevent/",
]
SECRET_VALUE = "s3cr3t-x"
WEBHOOK_SECRET = "whsec_not-for-your-eyes"
DB_PASSWORD = "pg-password-not-for-your-eyes"


@pytest.fixture
def staff(db: None) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client = Client()
    client.force_login(user)
    return client


def _deployment(app: App, number: int, state: str, **fields: Any) -> Deployment:
    return Deployment.objects.create(
        app=app,
        number=number,
        state=state,
        source_kind=Deployment.SourceKind.ARCHIVE,
        image_ref=f"localhost/coltsfoot/app-{app.public_id}:{number}" if state != "failed" else "",
        **fields,
    )


def live_app(app: App, *, replica_states: tuple[str, ...] = ("running", "running")) -> Deployment:
    """Give `app` the history an operator sees: #1 superseded (after it was live), #2 live with replicas,
    #3 failed."""
    _deployment(app, 1, Deployment.State.SUPERSEDED, went_live_at=timezone.now())
    live = _deployment(app, 2, Deployment.State.LIVE, log="-----> Build\n-----> Live\n", went_live_at=timezone.now())
    for index, state in enumerate(replica_states):
        Replica.objects.create(
            deployment=live,
            index=index,
            name=f"tsl-{live.public_id}-{index}",
            address=f"10.89.0.{index + 2}",
            state=state,
            last_exit_reason="oom_killed" if state == "crashed" else "",
        )
    _deployment(
        app,
        3,
        Deployment.State.FAILED,
        error_code="build.no_web_process",
        error_message="The Procfile has no web: line.",
        log="-----> Detecting the app\n-----> Failed: build.no_web_process: The Procfile has no web: line.\n",
    )
    App.objects.filter(pk=app.pk).update(live_deployment=live, replicas=len(replica_states))
    return live


def _populate(make_actor: Any, n: int, prefix: str = "tenant") -> None:
    for i in range(n):
        actor: Actor = make_actor(f"{prefix}{i}")
        created = actor.call("POST", "/apps", {"name": "web"}).json()
        actor.call("POST", "/tokens", {"name": "ci", "scopes": ["deploy"], "app_id": created["id"]})
        app = actor.tenant.apps.get()
        live_app(app, replica_states=("running", "crashed"))
        App.objects.filter(pk=app.pk).update(webhook_secret_encrypted=crypto.encrypt(WEBHOOK_SECRET))
        ConfigVar.objects.create(app=app, key="API_KEY", value_encrypted=crypto.encrypt(SECRET_VALUE), secret=True)
        password = crypto.encrypt(DB_PASSWORD)
        Addon.objects.create(app=app, role_name=f"t_{i:016x}", database_name=f"d_{i:016x}", password_encrypted=password)


def _no_secrets(page: bytes) -> None:
    for secret in (SECRET_VALUE, WEBHOOK_SECRET, DB_PASSWORD):
        assert secret.encode() not in page
    assert b"gAAAAA" not in page  # a Fernet token (any ciphertext) starts so


def _action(staff: Client, url: str, action: str, objects: list[Any], **extra: Any) -> Any:
    return staff.post(url, {"action": action, "_selected_action": [o.pk for o in objects], **extra}, follow=True)


# --- Changelists ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", CHANGELISTS)
def test_changelists_render_in_constant_queries(staff: Client, make_actor: Any, url: str):
    _populate(make_actor, 1)
    with CaptureQueriesContext(connection) as few:
        assert staff.get(url).status_code == 200
    _populate(make_actor, 3, prefix="more")
    with CaptureQueriesContext(connection) as many:
        response = staff.get(url)
    assert response.status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries)
    _no_secrets(response.content)


def test_the_apps_changelist_says_which_apps_are_unhealthy_and_why(staff: Client, make_actor: Any):
    healthy, broken = make_actor("healthy"), make_actor("broken")
    for actor in (healthy, broken):
        actor.call("POST", "/apps", {"name": "web"})
    live_app(healthy.tenant.apps.get())
    live_app(broken.tenant.apps.get(), replica_states=("crashed", "crashed"))

    page = staff.get("/admin/platform_apps/app/").content.decode()

    assert 'cf-badge-running">Running' in page
    assert 'cf-badge-crashed">Crashed' in page
    assert "2 / 2" in page
    assert "0 / 2" in page
    assert "web.1 oom_killed; last deploy failed: build.no_web_process" in page
    assert "http://web-broken.localhost:8080/" in page
    crashed = staff.get("/admin/platform_apps/app/?status=crashed").content.decode()
    assert "web-broken.localhost" in crashed
    assert "web-healthy.localhost" not in crashed


def test_the_tenants_changelist_shows_usage_against_quotas(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "web", "replicas": 3, "memory_mb": 384})
    page = staff.get("/admin/tenants/tenant/").content.decode()
    assert "1 / 10" in page  # apps
    assert "3 / 4" in page  # replicas of the largest app
    assert "384 / 512" in page  # MiB per replica


def test_the_deployments_changelist_shows_state_error_and_duration(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "web"})
    live = live_app(owner.tenant.apps.get())
    from datetime import timedelta

    Deployment.objects.filter(pk=live.pk).update(finished_at=live.created_at + timedelta(seconds=4.2))
    page = staff.get("/admin/platform_apps/deployment/").content.decode()
    assert 'cf-badge-failed">Failed' in page
    assert "build.no_web_process" in page
    assert "4.2 s" in page


# --- Pages ---------------------------------------------------------------------------------------


def test_a_deployments_page_shows_its_log_as_a_terminal_would_and_is_read_only(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "web"})
    live_app(owner.tenant.apps.get())
    failed = Deployment.objects.get(state="failed")
    Deployment.objects.filter(pk=failed.pk).update(log=failed.log + "<script>alert(1)</script>\n")

    page = staff.get(f"/admin/platform_apps/deployment/{failed.pk}/change/").content.decode()

    assert '<div class="cf-log" data-cf-log><pre>' in page
    assert "-----&gt; Failed: build.no_web_process: The Procfile has no web: line." in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # tenant output is escaped
    assert "coltsfoot/console.css" in page
    assert "coltsfoot/console.js" in page
    assert 'name="_save"' not in page
    assert staff.post(f"/admin/platform_apps/deployment/{failed.pk}/change/", {"state": "live"}).status_code == 403
    assert Deployment.objects.get(pk=failed.pk).state == "failed"


@pytest.mark.parametrize(
    "url",
    [
        "/admin/platform_apps/app/{app}/change/",
        "/admin/platform_apps/configvar/{var}/change/",
        "/admin/platform_apps/addon/{addon}/change/",
        "/admin/tenants/apitoken/{token}/change/",
        "/admin/tenants/tenant/{tenant}/change/",
    ],
)
def test_change_pages_show_no_secret_and_no_ciphertext(staff: Client, make_actor: Any, url: str):
    _populate(make_actor, 1)
    app = App.objects.get()
    ids = {
        "app": app.pk,
        "var": ConfigVar.objects.get().pk,
        "addon": Addon.objects.get().pk,
        "token": ApiToken.objects.filter(app__isnull=True).get().pk,
        "tenant": app.tenant_id,
    }
    response = staff.get(url.format(**ids))
    assert response.status_code == 200
    _no_secrets(response.content)


def test_token_hash_is_read_only(staff: Client, owner: Actor):
    token = ApiToken.objects.get(tenant=owner.tenant)
    page = staff.get(f"/admin/tenants/apitoken/{token.pk}/change/").content.decode()
    assert token.token_hash in page  # shown, read-only
    for field in ("token_hash", "scopes", "tenant", "revoked_at"):
        assert f'name="{field}"' not in page
    assert owner.token not in page


def test_ids_hostnames_and_states_are_read_only(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    page = staff.get(f"/admin/platform_apps/app/{app.pk}/change/").content.decode()
    for field in ("public_id", "hostname", "state", "tenant", "name", "live_deployment"):
        assert f'name="{field}"' not in page
    assert 'name="replicas"' in page
    tenant_page = staff.get(f"/admin/tenants/tenant/{owner.tenant.pk}/change/").content.decode()
    assert 'name="status"' not in tenant_page
    assert 'name="slug"' not in tenant_page
    assert 'name="max_apps"' in tenant_page


# --- Actions ---------------------------------------------------------------------------------------


def test_suspend_and_reactivate_go_through_the_service_move_the_edge_and_are_logged(
    staff: Client, owner: Actor, django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="coltsfoot.console")
    with task_queued("reconcile") as reconcile, django_capture_on_commit_callbacks(execute=True):
        response = _action(staff, "/admin/tenants/tenant/", "suspend", [owner.tenant])
    assert response.status_code == 200
    owner.tenant.refresh_from_db()
    assert owner.tenant.status == Tenant.Status.SUSPENDED
    reconcile.assert_called_once_with()  # the edge shows the suspended page without waiting for a pass
    assert owner.call("GET", "/apps").json()["error"]["code"] == "tenant.suspended"
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "suspend"]
    assert record.admin_user == "root"  # type: ignore[attr-defined]
    assert record.object_ids == [str(owner.tenant.public_id)]  # type: ignore[attr-defined]

    with task_queued("reconcile") as reconcile, django_capture_on_commit_callbacks(execute=True):
        _action(staff, "/admin/tenants/tenant/", "reactivate", [owner.tenant])
    owner.tenant.refresh_from_db()
    assert owner.tenant.status == Tenant.Status.ACTIVE
    reconcile.assert_called_once_with()
    assert owner.call("GET", "/apps").status_code == 200
    history = staff.get(f"/admin/tenants/tenant/{owner.tenant.pk}/history/").content.decode()
    assert "suspend (admin console)" in history
    assert "reactivate (admin console)" in history


def test_scaling_from_the_change_page_releases_through_app_update(
    staff: Client, owner: Actor, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="coltsfoot.console")
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    live = live_app(app, replica_states=("running",))
    url = f"/admin/platform_apps/app/{app.pk}/change/"
    form = {"replicas": 3, "memory_mb": 256, "cpus": "1.00", "deploy_branch": "main"}

    assert staff.post(url, form).status_code == 302

    app.refresh_from_db()
    assert app.replicas == 3
    release = Deployment.objects.filter(app=app).order_by("-number").first()
    assert release is not None
    assert (release.source_kind, release.source_deployment_id, release.state) == ("release", live.pk, "queued")
    assert any(getattr(r, "action", "") == "app changed" for r in caplog.records)


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"replicas": 5}, "quota of 4"),
        ({"memory_mb": 4096}, "quota of 512 MiB"),
        ({"replicas": 0}, "Between 1"),
    ],
)
def test_scaling_beyond_the_quota_is_a_form_error(staff: Client, owner: Actor, form: dict[str, Any], error: str):
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    data = {"replicas": 1, "memory_mb": 256, "cpus": "1.00", "deploy_branch": "main", **form}
    response = staff.post(f"/admin/platform_apps/app/{app.pk}/change/", data)
    assert response.status_code == 200
    assert error in response.content.decode()
    app.refresh_from_db()
    assert (app.replicas, app.memory_mb) == (1, 256)
    assert not Deployment.objects.filter(app=app).exists()


def test_a_suspended_tenants_apps_cannot_be_scaled_redeployed_or_rolled_back(staff: Client, make_actor: Any):
    actor = make_actor("initech")
    actor.call("POST", "/apps", {"name": "web"})
    app = actor.tenant.apps.get()
    live_app(app, replica_states=("running",))
    Tenant.objects.filter(pk=actor.tenant.pk).update(status=Tenant.Status.SUSPENDED)
    before = Deployment.objects.count()

    data = {"replicas": 2, "memory_mb": 256, "cpus": "1.00", "deploy_branch": "main"}
    page = staff.post(f"/admin/platform_apps/app/{app.pk}/change/", data).content.decode()
    assert "tenant is suspended" in page
    for action in ("redeploy", "rollback"):
        page = _action(staff, "/admin/platform_apps/app/", action, [app]).content.decode()
        assert "its tenant is suspended" in page
    assert Deployment.objects.count() == before


def test_redeploy_releases_the_live_image_again(staff: Client, owner: Actor, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="coltsfoot.console")
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    live = live_app(app)

    page = _action(staff, "/admin/platform_apps/app/", "redeploy", [app]).content.decode()

    new = Deployment.objects.filter(app=app).order_by("-number").first()
    assert new is not None
    assert (new.number, new.source_kind, new.image_ref) == (4, "release", live.image_ref)
    assert "deployment #4 queued" in page
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "redeploy"]
    assert record.object_ids == [str(app.public_id)]  # type: ignore[attr-defined]


def test_rollback_goes_to_the_previous_live_deployment(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    live_app(app)
    first = Deployment.objects.get(app=app, number=1)

    page = _action(staff, "/admin/platform_apps/app/", "rollback", [app]).content.decode()

    new = Deployment.objects.filter(app=app).order_by("-number").first()
    assert new is not None
    assert (new.source_kind, new.source_deployment_id, new.image_ref) == ("rollback", first.pk, first.image_ref)
    assert "rolling back to #1 as deployment #4" in page


def test_rollback_to_a_chosen_deployment_and_not_to_a_failed_one(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    live_app(app)
    first, failed = (Deployment.objects.get(app=app, number=n) for n in (1, 3))

    page = _action(staff, "/admin/platform_apps/deployment/", "rollback_to", [failed]).content.decode()
    assert "Only a deployment that went live" in page
    assert Deployment.objects.filter(app=app).count() == 3

    _action(staff, "/admin/platform_apps/deployment/", "rollback_to", [first])
    new = Deployment.objects.filter(app=app).order_by("-number").first()
    assert new is not None
    assert (new.number, new.source_kind, new.source_deployment_id) == (4, "rollback", first.pk)


def test_force_reconcile_queues_a_pass(staff: Client, owner: Actor, django_capture_on_commit_callbacks: Any):
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    with task_queued("reconcile") as reconcile, django_capture_on_commit_callbacks(execute=True):
        page = _action(staff, "/admin/platform_apps/app/", "force_reconcile", [app]).content.decode()
    reconcile.assert_called_once_with()
    assert "A reconcile pass is queued" in page


def test_delete_tears_down_through_the_service(staff: Client, owner: Actor, django_capture_on_commit_callbacks: Any):
    owner.call("POST", "/apps", {"name": "web"})
    app = owner.tenant.apps.get()
    with task_queued("app_teardown") as teardown, django_capture_on_commit_callbacks(execute=True):
        _action(staff, "/admin/platform_apps/app/", "delete_apps", [app])
    app.refresh_from_db()
    assert app.state == App.State.DELETING
    teardown.assert_called_once_with(str(app.public_id))


def test_rows_whose_deletion_would_bypass_a_task_cannot_be_deleted(staff: Client, make_actor: Any):
    _populate(make_actor, 1)
    app = App.objects.get()
    for url in (
        f"/admin/platform_apps/app/{app.pk}/delete/",
        f"/admin/tenants/tenant/{app.tenant_id}/delete/",
        f"/admin/platform_apps/deployment/{Deployment.objects.first().pk}/delete/",  # type: ignore[union-attr]
        f"/admin/platform_apps/addon/{Addon.objects.get().pk}/delete/",
    ):
        assert staff.post(url, {"post": "yes"}).status_code == 403, url
    assert App.objects.filter(pk=app.pk).exists()


def test_revoke_goes_through_the_service_and_the_token_stops_working(
    staff: Client, owner: Actor, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="coltsfoot.console")
    token = ApiToken.objects.get(tenant=owner.tenant)
    _action(staff, "/admin/tenants/apitoken/", "revoke", [token])
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert owner.call("GET", "/apps").status_code == 401
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "revoke token"]
    assert record.object_ids == [str(token.public_id)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_apps", 0, "Between 1 and 1000"),
        ("max_replicas", 1000, "Between 1 and 64"),
        ("max_replicas", 2, "already uses 3 replicas per app"),
        ("max_memory_mb", 128, "already uses 256 MiB per replica"),
        ("max_cpus", 2, "already uses 3.00 CPUs"),
        ("max_cpus", 5000, "Between 1 and 1024"),
    ],
)
def test_editing_quotas_validates_them(staff: Client, owner: Actor, field: str, value: int, error: str):
    owner.call("POST", "/apps", {"name": "web", "replicas": 3})
    data = {"max_apps": 10, "max_replicas": 4, "max_memory_mb": 512, "max_cpus": 4, field: value}
    response = staff.post(f"/admin/tenants/tenant/{owner.tenant.pk}/change/", data)
    assert response.status_code == 200
    assert error in response.content.decode()
    owner.tenant.refresh_from_db()
    assert (owner.tenant.max_apps, owner.tenant.max_replicas, owner.tenant.max_memory_mb) == (10, 4, 512)


def test_a_valid_quota_change_is_saved_and_logged(staff: Client, owner: Actor, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="coltsfoot.console")
    data = {"max_apps": 20, "max_replicas": 8, "max_memory_mb": 1024, "max_cpus": 4}
    assert staff.post(f"/admin/tenants/tenant/{owner.tenant.pk}/change/", data).status_code == 302
    owner.tenant.refresh_from_db()
    assert (owner.tenant.max_apps, owner.tenant.max_replicas, owner.tenant.max_memory_mb) == (20, 8, 1024)
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "quotas changed"]
    assert record.changes == {"max_apps": 20, "max_replicas": 8, "max_memory_mb": 1024}  # type: ignore[attr-defined]


def test_search_and_filter(staff: Client, make_actor: Any):
    _populate(make_actor, 2)
    assert b"tenant1" in staff.get("/admin/tenants/tenant/?q=tenant1").content
    assert staff.get("/admin/tenants/tenant/?status__exact=suspended").status_code == 200
    assert staff.get("/admin/platform_apps/app/?q=web").status_code == 200
    for status in ("running", "degraded", "crashed", "stopped", "deploying"):
        assert staff.get(f"/admin/platform_apps/app/?status={status}").status_code == 200
    degraded = staff.get("/admin/platform_apps/app/?status=degraded").content.decode()
    assert "web-tenant0.localhost" in degraded
    assert "web-tenant1.localhost" in degraded


def test_tenant_changelist_shows_cpu_quota_and_use_and_the_form_edits_it(staff: Client, owner: Actor):
    owner.call("POST", "/apps", {"name": "a", "replicas": 2, "cpus": 0.75})
    owner.call("POST", "/apps", {"name": "b", "replicas": 1, "cpus": 1.0})
    page = staff.get("/admin/tenants/tenant/").content.decode()
    assert "CPUs in use" in page
    assert "2.50" in page  # 2 x 0.75 + 1
    form = staff.get(f"/admin/tenants/tenant/{owner.tenant.pk}/change/").content.decode()
    assert 'name="max_cpus"' in form
