"""PostgreSQL add-ons: the API, the provision/deprovision tasks and the DATABASE_URL an app gets.

`drivers.postgres` is the seam: it is patched with autospec, so nothing here touches a real
PostgreSQL or PgBouncer."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import unquote
from urllib.parse import urlsplit

import pytest
from celery.exceptions import Retry

from conftest import Actor
from core import crypto
from core.faults import PlatformError
from drivers.postgres import PgCredentials
from drivers.postgres import PostgresError
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from provisioning import addons
from provisioning import leases as named_lease
from provisioning import tasks
from provisioning.runtime import resolve_for_runtime
from tests.unit.dbdump import database_dump
from tests.unit.fakes import make_live
from tests.unit.fakes import task_queued

ADDON_FIELDS = {"id", "app_id", "kind", "state", "database", "user", "error", "created_at", "updated_at"}


@pytest.fixture
def app(owner: Actor) -> App:
    response = owner.call("POST", "/apps", {"name": "hello"})
    assert response.status_code == 201
    return App.objects.get(public_id=response.json()["id"])


@pytest.fixture
def provision_queued() -> Iterator[mock.MagicMock]:
    with task_queued("addon_provision") as delay:
        yield delay


@pytest.fixture
def deprovision_queued() -> Iterator[mock.MagicMock]:
    with task_queued("addon_deprovision") as delay:
        yield delay


@pytest.fixture
def deploy_queued() -> Iterator[mock.MagicMock]:
    with task_queued("deployment_run") as delay:
        yield delay


@pytest.fixture
def pg() -> Iterator[mock.MagicMock]:
    """The provisioner module, both entry points patched."""
    with (
        mock.patch("drivers.postgres.provision", autospec=True) as provision,
        mock.patch("drivers.postgres.deprovision", autospec=True) as deprovision,
    ):
        seam = mock.MagicMock()
        seam.provision = provision
        seam.deprovision = deprovision
        yield seam


def path(app: App) -> str:
    return f"/apps/{app.public_id}/addons/postgres"


def create(owner: Actor, app: App, capture: Any) -> dict[str, Any]:
    with capture(execute=True):
        response = owner.call("POST", path(app))
    assert response.status_code == 202, response.content
    return dict(response.json())


def attempt(task: Any, addon_id: str, *, retries: int) -> None:
    """Run one delivery of `task` as a worker would on its `retries`-th retry (no broker: the
    request is marked eager, so a retry raises Retry instead of being sent)."""
    task.push_request(
        id=str(uuid.uuid4()), args=[addon_id], kwargs={}, retries=retries, is_eager=True, called_directly=False
    )
    try:
        task.run(addon_id)
    finally:
        task.pop_request()


def provision_ready(addon_id: str, capture: Any) -> None:
    with capture(execute=True):
        tasks.addon_provision.run(addon_id)


def error_code(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"]["code"])


# --- creating -----------------------------------------------------------------------------------


def test_create_answers_202_with_names_derived_from_the_addon_uuid(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    assert set(body) == ADDON_FIELDS
    assert body["state"] == "provisioning"
    assert body["kind"] == "postgres"
    assert body["app_id"] == str(app.public_id)
    assert body["error"] is None
    addon_uuid = uuid.UUID(body["id"])
    assert body["database"] == f"d_{addon_uuid.hex[:16]}"
    assert body["user"] == f"t_{addon_uuid.hex[:16]}"
    assert re.fullmatch(r"d_[0-9a-f]{16}", body["database"])
    assert re.fullmatch(r"t_[0-9a-f]{16}", body["user"])
    for tenant_text in (app.name, owner.tenant.slug, str(app.public_id.hex[:16]), str(owner.tenant.public_id.hex[:16])):
        assert tenant_text not in body["database"]
        assert tenant_text not in body["user"]
    provision_queued.assert_called_once_with(body["id"])


def test_nothing_is_queued_before_commit(owner: Actor, app: App, provision_queued: mock.MagicMock):
    assert owner.call("POST", path(app)).status_code == 202
    provision_queued.assert_not_called()


def test_second_create_is_409(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    again = owner.call("POST", path(app))
    assert again.status_code == 409
    assert error_code(again) == "addon.exists"

    provision_ready(body["id"], django_capture_on_commit_callbacks)
    assert owner.call("POST", path(app)).status_code == 409
    assert Addon.objects.filter(app=app).count() == 1
    provision_queued.assert_called_once_with(body["id"])


def test_create_refused_while_the_app_has_its_own_database_url(
    owner: Actor, app: App, provision_queued: mock.MagicMock
):
    assert owner.call("PATCH", f"/apps/{app.public_id}/config", {"secrets": {"DATABASE_URL": "x"}}).status_code == 200
    response = owner.call("POST", path(app))
    assert response.status_code == 409
    assert error_code(response) == "config.reserved_key"
    assert not Addon.objects.filter(app=app).exists()


def test_get_shows_the_state(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    missing = owner.call("GET", path(app))
    assert missing.status_code == 404
    assert error_code(missing) == "not_found"

    body = create(owner, app, django_capture_on_commit_callbacks)
    got = owner.call("GET", path(app))
    assert got.status_code == 200
    assert got.json()["state"] == "provisioning"
    assert got.json()["id"] == body["id"]

    provision_ready(body["id"], django_capture_on_commit_callbacks)
    got = owner.call("GET", path(app))
    assert got.json()["state"] == "ready"
    assert got.json()["error"] is None
    assert {k: got.json()[k] for k in ("database", "user")} == {k: body[k] for k in ("database", "user")}


# --- the provision task ---------------------------------------------------------------------------


def test_provision_makes_it_ready_with_the_stored_password(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)

    addon = Addon.objects.get(public_id=body["id"])
    assert addon.state == Addon.State.READY
    pg.provision.assert_called_once_with(addon.public_id, crypto.decrypt(addon.password_encrypted))
    pg.deprovision.assert_not_called()
    # Never deployed: nothing to re-release.
    assert not Deployment.objects.filter(app=app).exists()
    deploy_queued.assert_not_called()


def test_provision_releases_a_live_app(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    live = make_live(app)
    body = create(owner, app, django_capture_on_commit_callbacks)
    assert Deployment.objects.filter(app=app).count() == 1  # not before the database exists
    provision_ready(body["id"], django_capture_on_commit_callbacks)

    release = Deployment.objects.get(app=app, number=2)
    assert release.source_kind == Deployment.SourceKind.RELEASE
    assert release.source_deployment_id == live.pk
    assert release.image_ref == live.image_ref
    deploy_queued.assert_called_once_with(str(release.public_id))


def test_provision_is_idempotent(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    make_live(app)
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    assert pg.provision.call_count == 1
    assert Deployment.objects.filter(app=app).count() == 2
    tasks.addon_provision.run(str(uuid.uuid4()))  # an add-on that is gone: nothing to do


def test_runtime_gets_database_url_as_a_secret_pointing_at_pgbouncer(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
):
    settings.PGBOUNCER_HOST = "10.1.2.3"
    settings.PGBOUNCER_PORT = 6433
    body = create(owner, app, django_capture_on_commit_callbacks)
    # Not before it is ready.
    assert "DATABASE_URL" not in resolve_for_runtime(app).secrets

    provision_ready(body["id"], django_capture_on_commit_callbacks)
    addon = Addon.objects.get(public_id=body["id"])
    password = crypto.decrypt(addon.password_encrypted)
    runtime = resolve_for_runtime(app)
    assert "DATABASE_URL" not in runtime.plain
    assert runtime.secrets["DATABASE_URL"] == (
        f"postgresql://{body['user']}:{password}@10.1.2.3:6433/{body['database']}"
    )
    # ...and the tenant only ever sees that it is there, as a secret name at most.
    assert password not in owner.call("GET", f"/apps/{app.public_id}/config").content.decode()


def test_database_url_quotes_the_password(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
):
    settings.PGBOUNCER_HOST = "10.1.2.3"
    body = create(owner, app, django_capture_on_commit_callbacks)
    awkward = "p@ss:w/rd?#%&[]"
    Addon.objects.filter(public_id=body["id"]).update(password_encrypted=crypto.encrypt(awkward))
    provision_ready(body["id"], django_capture_on_commit_callbacks)

    url = resolve_for_runtime(app).secrets["DATABASE_URL"]
    parts = urlsplit(url)
    assert parts.scheme == "postgresql"
    assert parts.hostname == "10.1.2.3"
    assert parts.port == settings.PGBOUNCER_PORT
    assert parts.username == body["user"]
    assert parts.password is not None
    assert unquote(parts.password) == awkward
    assert parts.path == f"/{body['database']}"
    assert awkward not in url


def test_database_url_brackets_an_ipv6_pgbouncer_address():
    credentials = PgCredentials(
        role="t_0123456789abcdef", database="d_0123456789abcdef", password="pw", host="fd00::1", port=6433
    )
    assert credentials.database_url() == "postgresql://t_0123456789abcdef:pw@[fd00::1]:6433/d_0123456789abcdef"


def test_transient_failure_retries_then_fails_and_cleans_up(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    make_live(app)
    body = create(owner, app, django_capture_on_commit_callbacks)
    pg.provision.side_effect = PostgresError("create role: 57P03", transient=True, sqlstate="57P03")

    for retries in range(tasks.MAX_RETRIES):
        with pytest.raises(Retry):
            attempt(tasks.addon_provision, body["id"], retries=retries)
        assert Addon.objects.get(public_id=body["id"]).state == Addon.State.PROVISIONING
    pg.deprovision.assert_not_called()

    with django_capture_on_commit_callbacks(execute=True):
        attempt(tasks.addon_provision, body["id"], retries=tasks.MAX_RETRIES)
    addon = Addon.objects.get(public_id=body["id"])
    assert addon.state == Addon.State.FAILED
    assert addon.error_code == "addon.provision_failed"
    pg.deprovision.assert_called_once_with(addon.public_id)  # nothing half-made is left behind
    assert pg.provision.call_count == tasks.MAX_RETRIES + 1

    got = owner.call("GET", path(app)).json()
    assert got["state"] == "failed"
    assert got["error"]["code"] == "addon.provision_failed"
    assert "57P03" not in got["error"]["message"]
    # A failed database is not wired into the app, nor released.
    assert "DATABASE_URL" not in resolve_for_runtime(app).secrets
    assert Deployment.objects.filter(app=app).count() == 1
    deploy_queued.assert_not_called()


def test_eager_run_goes_through_every_retry(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    pg.provision.side_effect = PostgresError("connect: 08006", transient=True, sqlstate="08006")
    with mock.patch("provisioning.tasks.backoff_seconds", autospec=True, return_value=0.0):
        tasks.addon_provision.apply(args=(body["id"],))
    assert pg.provision.call_count == tasks.MAX_RETRIES + 1
    assert Addon.objects.get(public_id=body["id"]).state == Addon.State.FAILED
    pg.deprovision.assert_called_once()


def test_permanent_failure_fails_at_once(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    pg.provision.side_effect = PostgresError("create database: 42501", transient=False, sqlstate="42501")
    attempt(tasks.addon_provision, body["id"], retries=0)
    addon = Addon.objects.get(public_id=body["id"])
    assert addon.state == Addon.State.FAILED
    assert addon.error_code == "addon.provision_failed"
    assert pg.provision.call_count == 1
    pg.deprovision.assert_called_once_with(addon.public_id)


def test_create_again_after_failure_reuses_the_names(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    first = create(owner, app, django_capture_on_commit_callbacks)
    password = crypto.decrypt(Addon.objects.get(public_id=first["id"]).password_encrypted)
    pg.provision.side_effect = PostgresError("create role: 53300", transient=False, sqlstate="53300")
    attempt(tasks.addon_provision, first["id"], retries=0)
    assert owner.call("GET", path(app)).json()["state"] == "failed"

    provision_queued.reset_mock()
    second = create(owner, app, django_capture_on_commit_callbacks)
    assert second["state"] == "provisioning"
    assert second["error"] is None
    assert (second["id"], second["user"], second["database"]) == (first["id"], first["user"], first["database"])
    provision_queued.assert_called_once_with(first["id"])

    pg.provision.side_effect = None
    provision_ready(second["id"], django_capture_on_commit_callbacks)
    assert owner.call("GET", path(app)).json()["state"] == "ready"
    pg.provision.assert_called_with(uuid.UUID(first["id"]), password)


# --- deleting -------------------------------------------------------------------------------------


def test_delete_deprovisions_and_removes_the_row(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
):
    settings.PGBOUNCER_HOST = "10.1.2.3"
    live = make_live(app)
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    deploy_queued.reset_mock()
    # The release that attached the database went live (no worker runs here), so removing the
    # database needs a release of its own.
    attached = Deployment.objects.filter(app=app).order_by("-number").first()
    assert attached is not None
    Deployment.objects.filter(pk=attached.pk).update(state=Deployment.State.LIVE)
    App.objects.filter(pk=app.pk).update(live_deployment=attached)
    app.refresh_from_db()

    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("DELETE", path(app))
    assert response.status_code == 202
    assert response.json()["state"] == "deprovisioning"
    assert response.json()["id"] == body["id"]
    deprovision_queued.assert_called_once_with(body["id"])
    assert owner.call("GET", path(app)).json()["state"] == "deprovisioning"
    assert owner.call("DELETE", path(app)).status_code in (202, 409)  # never a 500 while it runs

    with django_capture_on_commit_callbacks(execute=True):
        tasks.addon_deprovision.run(body["id"])
    pg.deprovision.assert_called_once_with(uuid.UUID(body["id"]))
    assert not Addon.objects.filter(app=app).exists()
    assert owner.call("GET", path(app)).status_code == 404
    # The app is released without the database.
    assert "DATABASE_URL" not in resolve_for_runtime(app).secrets
    newest = Deployment.objects.filter(app=app).order_by("-number").first()
    assert newest is not None
    assert newest.source_kind == Deployment.SourceKind.RELEASE
    assert newest.source_deployment_id == attached.pk
    assert attached.source_deployment_id == live.pk
    deploy_queued.assert_called_once_with(str(newest.public_id))
    # And the tenant may bring its own DATABASE_URL again.
    patched = owner.call("PATCH", f"/apps/{app.public_id}/config", {"secrets": {"DATABASE_URL": "postgresql://x"}})
    assert patched.status_code == 200


def test_delete_after_failure_is_allowed(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    pg.provision.side_effect = PostgresError("x", transient=False)
    attempt(tasks.addon_provision, body["id"], retries=0)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("DELETE", path(app))
    assert response.status_code == 202
    deprovision_queued.assert_called_once_with(body["id"])


def test_delete_while_provisioning_is_409(
    owner: Actor,
    app: App,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    create(owner, app, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("DELETE", path(app))
    assert response.status_code == 409
    assert error_code(response) == "addon.provisioning"
    assert Addon.objects.get(app=app).state == Addon.State.PROVISIONING
    deprovision_queued.assert_not_called()


def test_delete_without_addon_is_404(owner: Actor, app: App):
    response = owner.call("DELETE", path(app))
    assert response.status_code == 404


def test_deprovision_transient_failure_retries_and_keeps_the_row(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    owner.call("DELETE", path(app))
    pg.deprovision.side_effect = PostgresError("drop database: 55006", transient=True, sqlstate="55006")
    with pytest.raises(Retry):
        attempt(tasks.addon_deprovision, body["id"], retries=0)
    assert Addon.objects.get(public_id=body["id"]).state == Addon.State.DEPROVISIONING

    pg.deprovision.side_effect = None
    tasks.addon_deprovision.run(body["id"])
    assert not Addon.objects.filter(public_id=body["id"]).exists()


def test_create_while_deprovisioning_is_409_and_a_failed_teardown_keeps_the_row(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    assert owner.call("DELETE", path(app)).status_code == 202
    again = owner.call("POST", path(app))
    assert again.status_code == 409
    assert error_code(again) == "addon.deprovisioning"

    pg.deprovision.side_effect = PostgresError("drop role: 2BP01", transient=False, sqlstate="2BP01")
    with pytest.raises(PostgresError):
        attempt(tasks.addon_deprovision, body["id"], retries=0)
    # Not forgotten: the row stays, so the reconciler (or another DELETE) can finish the job.
    assert Addon.objects.get(public_id=body["id"]).state == Addon.State.DEPROVISIONING


# --- the reconciler's auth repair and removal never overlap -----------------------------------------


@pytest.fixture
def auth_lost() -> Iterator[mock.MagicMock]:
    """PgBouncer's auth_file has no tenant role in it (rewritten, or a teardown unregistered one)."""
    with mock.patch("drivers.postgres.pgbouncer_registered_roles", autospec=True, return_value=set()) as registered:
        yield registered


def test_auth_repair_provisions_a_ready_addon_whose_role_pgbouncer_lost(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    auth_lost: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    pg.provision.reset_mock()
    assert addons.addons_repair_auth() == 1
    pg.provision.assert_called_once_with(uuid.UUID(body["id"]), mock.ANY)


def test_a_reconcile_pass_during_an_app_teardown_does_not_recreate_its_database(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    auth_lost: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    pg.provision.reset_mock()
    App.objects.filter(pk=app.pk).update(state=App.State.DELETING)
    app.refresh_from_db()
    repaired: list[int] = []
    # The pass runs while the teardown is dropping the role (after PgBouncer forgot it).
    pg.deprovision.side_effect = lambda addon_id: repaired.append(addons.addons_repair_auth())
    addons.addon_teardown_for_app(app)
    assert repaired == [0]
    pg.provision.assert_not_called()
    assert not Addon.objects.filter(app=app).exists()


def test_a_reconcile_pass_that_read_the_addon_before_its_removal_leaves_it_alone(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    auth_lost: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    pg.provision.reset_mock()
    real_exclusive = addons.exclusive
    passes: list[Addon] = []

    @contextlib.contextmanager
    def removed_meanwhile(addon: Addon) -> Iterator[None]:
        if not passes:
            # The pass has read the add-on as ready; the tenant's DELETE and its task finish before it acts.
            passes.append(addon)
            assert owner.call("DELETE", path(app)).status_code == 202
            tasks.addon_deprovision.run(body["id"])
        with real_exclusive(addon):
            yield

    with mock.patch("provisioning.addons.exclusive", side_effect=removed_meanwhile):
        assert addons.addons_repair_auth() == 0
    pg.deprovision.assert_called_once_with(uuid.UUID(body["id"]))
    pg.provision.assert_not_called()


def test_app_teardown_waits_while_the_repair_holds_the_addons_lease(
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    App.objects.filter(pk=app.pk).update(state=App.State.DELETING)
    app.refresh_from_db()
    name = addons.lease_name(uuid.UUID(body["id"]))
    assert named_lease.lease_acquire(name, "reconciler", 60)
    with pytest.raises(PlatformError) as raised:
        addons.addon_teardown_for_app(app)
    assert raised.value.transient
    pg.deprovision.assert_not_called()
    assert Addon.objects.filter(app=app).exists()  # kept, so the retried teardown finds it

    named_lease.lease_release(name, "reconciler")
    addons.addon_teardown_for_app(app)
    pg.deprovision.assert_called_once_with(uuid.UUID(body["id"]))
    assert not Addon.objects.filter(app=app).exists()


# --- who may --------------------------------------------------------------------------------------


def test_outsider_gets_404_on_every_addon_endpoint(
    owner: Actor,
    outsider: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    for method in ("POST", "GET", "DELETE"):
        response = outsider.call(method, path(app))
        assert response.status_code == 404, method
        assert error_code(response) == "not_found"
    assert not Addon.objects.exists()

    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    for method in ("POST", "GET", "DELETE"):
        response = outsider.call(method, path(app))
        assert response.status_code == 404, method
        assert body["database"] not in response.content.decode()
    assert Addon.objects.get(app=app).state == Addon.State.READY
    deprovision_queued.assert_not_called()


def test_suspended_tenant_gets_403(suspended: Actor, app: App, provision_queued: mock.MagicMock):
    for method in ("POST", "GET", "DELETE"):
        assert suspended.call(method, path(app)).status_code == 403, method
    assert not Addon.objects.exists()


# --- the password -------------------------------------------------------------------------------


def test_password_is_encrypted_at_rest_and_never_returned(
    caplog: pytest.LogCaptureFixture,
    owner: Actor,
    app: App,
    pg: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    caplog.set_level(logging.DEBUG)
    created = owner.call("POST", path(app))
    assert created.status_code == 202
    addon = Addon.objects.get(app=app)
    password = crypto.decrypt(addon.password_encrypted)
    assert len(password) >= 32
    assert password not in addon.password_encrypted

    dump = database_dump()
    assert addon.role_name in dump
    assert password not in dump

    provision_ready(str(addon.public_id), django_capture_on_commit_callbacks)
    responses = [
        created,
        owner.call("GET", path(app)),
        owner.call("GET", f"/apps/{app.public_id}"),
        owner.call("GET", f"/apps/{app.public_id}/config"),
        owner.call("DELETE", path(app)),
    ]
    for response in responses:
        assert response.status_code in (200, 202)
        assert password not in response.content.decode()
    assert not ConfigVar.objects.filter(app=app).exists()  # DATABASE_URL is derived, never stored as a var
    assert caplog.records
    for record in caplog.records:
        assert password not in f"{record.getMessage()} {vars(record)!r}"
