"""`Idempotency-Key` on creating POSTs, through the real middleware stack: replays, conflicts,
per-tenant keys, forgotten failures, expiry, and what the stored responses may not contain."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory
from django.utils import timezone

from conftest import Actor
from platform_apps.idempotency import fingerprint
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import IdempotencyRecord
from tenants.models import ApiToken
from tests.unit.fakes import task_queued

IMAGE = "docker.io/library/python:3.13"


@pytest.fixture(autouse=True)
def _build_root(settings: Any, tmp_path: Path) -> None:
    settings.BUILD_ROOT = tmp_path / "builds"


@pytest.fixture
def app(owner: Actor) -> dict[str, Any]:
    response = owner.call("POST", "/apps", {"name": "shop"})
    assert response.status_code == 201
    return dict(response.json())


def source_archive(procfile: bytes = b"web: python app.py\n") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in (("Procfile", procfile), ("requirements.txt", b"flask==3.1.0\n")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def upload_archive(actor: Actor, app_id: str, archive: bytes, *, key: str) -> Any:
    upload = SimpleUploadedFile("source.tar.gz", archive, content_type="application/gzip")
    return actor.client.post(
        f"/api/v1/apps/{app_id}/deployments",
        {"source": upload},
        HTTP_AUTHORIZATION=f"Bearer {actor.token}",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def mint(owner: Actor, scopes: list[str], app_id: str | None = None) -> Actor:
    body: dict[str, Any] = {"name": "+".join(scopes), "scopes": scopes}
    if app_id is not None:
        body["app_id"] = app_id
    response = owner.call("POST", "/tokens", body)
    assert response.status_code == 201
    return Actor(owner.tenant, response.json()["token"], owner.client)


# --- replay ----------------------------------------------------------------------------------


def test_same_key_same_body_replays_the_first_response(owner: Actor):
    first = owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="create-hello-1")
    again = owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="create-hello-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert again["Content-Type"] == first["Content-Type"]
    assert App.objects.filter(tenant=owner.tenant).count() == 1


def test_without_a_key_a_retry_is_a_new_request(owner: Actor):
    assert owner.call("POST", "/apps", {"name": "hello"}).status_code == 201
    response = owner.call("POST", "/apps", {"name": "hello"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "app.name_taken"


def test_same_key_different_body_is_422(owner: Actor):
    assert owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="k-1").status_code == 201
    response = owner.call("POST", "/apps", {"name": "world"}, HTTP_IDEMPOTENCY_KEY="k-1")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency.key_reused"
    assert list(App.objects.filter(tenant=owner.tenant).values_list("name", flat=True)) == ["hello"]


def test_same_key_on_another_endpoint_is_422(owner: Actor, app: dict[str, Any]):
    assert owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="k-2").status_code == 201
    response = owner.call("POST", f"/apps/{app['id']}/deployments", {"image": IMAGE}, HTTP_IDEMPOTENCY_KEY="k-2")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency.key_reused"
    assert Deployment.objects.count() == 0


def test_keys_are_per_tenant(owner: Actor, outsider: Actor):
    mine = owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="shared-key")
    theirs = outsider.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="shared-key")
    assert mine.status_code == theirs.status_code == 201
    assert not theirs.has_header("Idempotent-Replayed")
    assert theirs.json()["id"] != mine.json()["id"]
    assert theirs.json()["hostname"] == "hello-globex.localhost"
    assert App.objects.filter(tenant=owner.tenant).count() == 1
    assert App.objects.filter(tenant=outsider.tenant).count() == 1


def test_a_failed_request_is_not_remembered(owner: Actor):
    failed = owner.call("POST", "/apps", {"name": "Not A Name!"}, HTTP_IDEMPOTENCY_KEY="retry-me")
    assert failed.status_code == 422
    assert IdempotencyRecord.objects.count() == 0
    fixed = owner.call("POST", "/apps", {"name": "fixed"}, HTTP_IDEMPOTENCY_KEY="retry-me")
    assert fixed.status_code == 201
    assert not fixed.has_header("Idempotent-Replayed")
    assert list(App.objects.filter(tenant=owner.tenant).values_list("name", flat=True)) == ["fixed"]


def test_a_refused_request_is_not_remembered_either(owner: Actor):
    owner.tenant.max_apps = 0
    owner.tenant.save()
    refused = owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="quota")
    assert refused.status_code == 409
    owner.tenant.max_apps = 5
    owner.tenant.save()
    retried = owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="quota")
    assert retried.status_code == 201
    assert not retried.has_header("Idempotent-Replayed")


def test_a_request_still_running_is_409(owner: Actor):
    body = {"name": "hello"}
    # What the middleware writes before the first request's view returns.
    request = RequestFactory().post("/api/v1/apps", data=json.dumps(body), content_type="application/json")
    token = ApiToken.objects.get(tenant=owner.tenant)
    IdempotencyRecord.objects.create(token=token, key="racing", fingerprint=fingerprint(request))
    response = owner.call("POST", "/apps", body, HTTP_IDEMPOTENCY_KEY="racing")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency.in_progress"
    assert App.objects.count() == 0


# --- the key itself --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["x" * 256, "two words", "", "tab\there", "del\x7f"], ids=repr)
def test_invalid_key_is_400(owner: Actor, key: str):
    response = owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "idempotency.invalid_key"
    assert App.objects.count() == 0


def test_longest_valid_key_is_accepted(owner: Actor):
    key = "k" * 255
    assert owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY=key).status_code == 201
    again = owner.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY=key)
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"


def test_key_on_a_get_is_ignored(owner: Actor):
    assert owner.call("GET", "/apps", HTTP_IDEMPOTENCY_KEY="not a valid key").status_code == 200


def test_key_without_valid_credentials_is_still_401(owner: Actor):
    bad = Actor(owner.tenant, "cf_000000000.forged", owner.client)
    response = bad.call("POST", "/apps", {"name": "hello"}, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 401
    assert IdempotencyRecord.objects.count() == 0


# --- deployments -----------------------------------------------------------------------------


def test_archive_upload_with_the_same_key_deploys_once(
    owner: Actor, app: dict[str, Any], django_capture_on_commit_callbacks: Any
):
    archive = source_archive()
    with (
        task_queued("deployment_run") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        first = upload_archive(owner, app["id"], archive, key="upload-1")
        again = upload_archive(owner, app["id"], archive, key="upload-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Deployment.objects.count() == 1
    delay.assert_called_once_with(first.json()["id"])


def test_another_archive_under_the_same_key_is_422(owner: Actor, app: dict[str, Any]):
    assert upload_archive(owner, app["id"], source_archive(), key="upload-2").status_code == 202
    other = source_archive(procfile=b"web: gunicorn app:app\n")
    response = upload_archive(owner, app["id"], other, key="upload-2")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency.key_reused"
    assert Deployment.objects.count() == 1


def test_json_deploy_with_the_same_key_deploys_once(owner: Actor, app: dict[str, Any]):
    path = f"/apps/{app['id']}/deployments"
    first = owner.call("POST", path, {"image": IMAGE}, HTTP_IDEMPOTENCY_KEY="img-1")
    again = owner.call("POST", path, {"image": IMAGE}, HTTP_IDEMPOTENCY_KEY="img-1")
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert Deployment.objects.count() == 1


# --- expiry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("age_hours", "replayed"), [(23, True), (25, False)])
def test_records_expire_after_a_day(owner: Actor, app: dict[str, Any], age_hours: int, replayed: bool):
    path = f"/apps/{app['id']}/deployments"
    first = owner.call("POST", path, {"image": IMAGE}, HTTP_IDEMPOTENCY_KEY="nightly")
    assert first.status_code == 202
    moved = IdempotencyRecord.objects.filter(token__tenant=owner.tenant, key="nightly").update(
        created_at=timezone.now() - timedelta(hours=age_hours)
    )
    assert moved == 1
    again = owner.call("POST", path, {"image": IMAGE}, HTTP_IDEMPOTENCY_KEY="nightly")
    assert again.status_code == 202
    assert (again.json()["id"] == first.json()["id"]) is replayed
    assert again.has_header("Idempotent-Replayed") is replayed
    assert Deployment.objects.count() == (1 if replayed else 2)
    assert IdempotencyRecord.objects.filter(token__tenant=owner.tenant, key="nightly").count() == 1


# --- what a replay may reveal, and to whom ---------------------------------------------------


@dataclass(frozen=True)
class ShownOnce:
    """A POST whose response carries a secret that is shown only that once."""

    path: str
    body: dict[str, Any] | None
    field: str
    status: int

    def url(self, app: dict[str, Any]) -> str:
        return self.path.format(app_id=app["id"])

    def mint(self, actor: Actor, app: dict[str, Any], key: str) -> str:
        response = actor.call("POST", self.url(app), self.body, HTTP_IDEMPOTENCY_KEY=key)
        assert response.status_code == self.status
        return str(response.json()[self.field])


SHOWN_ONCE = {
    "api token": ShownOnce("/tokens", {"name": "ci", "scopes": ["deploy"]}, "token", 201),
    "webhook secret": ShownOnce("/apps/{app_id}/webhook-secret", None, "secret", 200),
}


@pytest.mark.parametrize("endpoint", SHOWN_ONCE.values(), ids=list(SHOWN_ONCE))
def test_shown_once_secrets_are_not_stored_in_plaintext(owner: Actor, app: dict[str, Any], endpoint: ShownOnce):
    # API tokens are stored only as a hash and webhook secrets only encrypted; a client that sends
    # an Idempotency-Key must not get a plaintext copy written to the platform DB.
    secret = endpoint.mint(owner, app, "mint-1")
    stored = list(IdempotencyRecord.objects.values_list("body_encrypted", flat=True))
    assert stored, "the response was not recorded at all"
    for body in stored:
        assert secret not in body, "the shown-once secret was stored in IdempotencyRecord in plaintext"
        assert secret.encode() not in base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_")


@pytest.mark.parametrize(
    ("scopes", "restricted"),
    [(["apps:read"], False), (["deploy"], True)],
    ids=["read-only token", "deploy token for the app"],
)
@pytest.mark.parametrize("endpoint", SHOWN_ONCE.values(), ids=list(SHOWN_ONCE))
def test_a_weaker_token_cannot_replay_a_stronger_tokens_response(
    owner: Actor, app: dict[str, Any], endpoint: ShownOnce, scopes: list[str], restricted: bool
):
    weak = mint(owner, scopes, app["id"] if restricted else None)
    secret = endpoint.mint(owner, app, "owner-key")
    # The weaker token sends the very same request under the same key. It lacks apps:write, so it
    # must be refused exactly as it is without the key, and must not receive the owner's secret.
    response = weak.call("POST", endpoint.url(app), endpoint.body, HTTP_IDEMPOTENCY_KEY="owner-key")
    assert secret not in response.content.decode(), "a replay handed the owner's secret to a weaker token"
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auth.insufficient_scope"
    without_key = weak.call("POST", endpoint.url(app), endpoint.body)
    assert without_key.status_code == 403


def test_the_token_is_looked_up_once_per_request(owner: Actor):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        response = owner.call("POST", "/apps", {"name": "once"}, HTTP_IDEMPOTENCY_KEY="lookup-once")
    assert response.status_code == 201
    lookups = [q["sql"] for q in ctx.captured_queries if 'FROM "tenants_apitoken"' in q["sql"] and "prefix" in q["sql"]]
    assert len(lookups) == 1
