"""The CI webhook end to end: the secret's rotation, and the signed deploy hook in its generic and
GitHub-compatible forms, driven through the real HTTP stack with real HMACs."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from django.test import Client

from conftest import Actor
from core import crypto
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import WebhookDelivery
from platform_apps.webhooks.signatures import sign_generic
from platform_apps.webhooks.signatures import sign_github
from tests.unit.fakes import task_queued

IMAGE = "docker.io/library/python:3.13"
CLONE_URL = "https://github.com/acme/shop.git"
SHA = "0123456789abcdef0123456789abcdef01234567"
PUBLIC_ADDRESS = "140.82.112.3"


# --- helpers ---------------------------------------------------------------------------------


def hook_url(app_id: str | uuid.UUID) -> str:
    return f"/api/v1/hooks/apps/{app_id}/deploy"


def hook(app_id: str | uuid.UUID, body: bytes, headers: dict[str, str], content_type: str = "application/json") -> Any:
    # A fresh client with no Authorization header: the signature is the only credential.
    return Client().post(hook_url(app_id), data=body, content_type=content_type, headers=headers)


def generic_headers(
    secret: str,
    body: bytes,
    *,
    timestamp: int | str | None = None,
    delivery: str | None = None,
) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "X-Coltsfoot-Timestamp": str(stamp),
        "X-Coltsfoot-Signature": sign_generic(secret.encode(), stamp, body),
        "X-Coltsfoot-Delivery": delivery or f"dlv-{uuid.uuid4().hex}",
    }


def github_headers(secret: str, body: bytes, *, event: str = "push", delivery: str | None = None) -> dict[str, str]:
    return {
        "X-Hub-Signature-256": sign_github(secret.encode(), body),
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
    }


def image_body(image: str = IMAGE) -> bytes:
    return json.dumps({"image": image}).encode()


def push_body(*, ref: str = "refs/heads/main", after: str = SHA, clone_url: str = CLONE_URL, **extra: Any) -> bytes:
    return json.dumps({"ref": ref, "after": after, "repository": {"clone_url": clone_url}, **extra}).encode()


def source_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in (("Procfile", b"web: python app.py\n"), ("requirements.txt", b"flask==3.1.0\n")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def unknown_app_answer() -> dict[str, Any]:
    """What a caller gets for an app that does not exist: every refusal must look exactly like it."""
    body = image_body()
    response = hook(uuid.uuid4(), body, generic_headers("whsec_guess", body))
    assert response.status_code == 401
    return dict(response.json())


def assert_nothing_created() -> None:
    assert Deployment.objects.count() == 0
    assert WebhookDelivery.objects.count() == 0


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(settings: Any, tmp_path: Path) -> Iterator[None]:
    settings.BUILD_ROOT = tmp_path / "builds"
    cache.clear()  # the rate-limit counters live in the LocMem cache
    yield
    cache.clear()


@pytest.fixture
def public_dns() -> Iterator[mock.MagicMock]:
    answer = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_ADDRESS, 443))]
    with mock.patch("socket.getaddrinfo", return_value=answer) as resolver:
        yield resolver


@pytest.fixture
def app(owner: Actor) -> dict[str, Any]:
    response = owner.call("POST", "/apps", {"name": "shop"})
    assert response.status_code == 201
    return dict(response.json())


@pytest.fixture
def rotate(owner: Actor) -> Callable[[str], str]:
    def rotate(app_id: str) -> str:
        response = owner.call("POST", f"/apps/{app_id}/webhook-secret")
        assert response.status_code == 200
        return str(response.json()["secret"])

    return rotate


@pytest.fixture
def secret(app: dict[str, Any], rotate: Callable[[str], str]) -> str:
    return rotate(app["id"])


# --- the secret ------------------------------------------------------------------------------


def test_secret_is_shown_once_and_stored_encrypted(owner: Actor, app: dict[str, Any]):
    assert owner.call("GET", f"/apps/{app['id']}").json()["has_webhook_secret"] is False

    response = owner.call("POST", f"/apps/{app['id']}/webhook-secret")
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"secret", "webhook_url"}
    assert data["webhook_url"] == f"http://127.0.0.1:8000/api/v1/hooks/apps/{app['id']}/deploy"
    secret = data["secret"]
    assert len(secret) >= 32

    row = App.objects.filter(public_id=app["id"]).values().get()
    assert row["webhook_secret_encrypted"]
    for value in row.values():
        assert secret not in str(value)
    assert crypto.decrypt(row["webhook_secret_encrypted"]) == secret

    shown = owner.call("GET", f"/apps/{app['id']}")
    assert shown.json()["has_webhook_secret"] is True
    assert secret not in shown.content.decode()
    assert secret not in owner.call("GET", "/apps").content.decode()


def test_rotation_invalidates_the_old_secret(app: dict[str, Any], rotate: Callable[[str], str]):
    old = rotate(app["id"])
    new = rotate(app["id"])
    assert old != new

    body = image_body()
    refused = hook(app["id"], body, generic_headers(old, body))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "webhook.bad_signature"
    assert Deployment.objects.count() == 0

    accepted = hook(app["id"], body, generic_headers(new, body))
    assert accepted.status_code == 202


def test_secret_of_another_tenants_app_is_404(outsider: Actor, app: dict[str, Any]):
    response = outsider.call("POST", f"/apps/{app['id']}/webhook-secret")
    assert response.status_code == 404
    assert App.objects.get(public_id=app["id"]).webhook_secret_encrypted == ""


def test_read_only_token_cannot_rotate(owner: Actor, app: dict[str, Any]):
    minted = owner.call("POST", "/tokens", {"name": "ro", "scopes": ["apps:read"]}).json()
    reader = Actor(owner.tenant, minted["token"], owner.client)
    response = reader.call("POST", f"/apps/{app['id']}/webhook-secret")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auth.insufficient_scope"
    assert App.objects.get(public_id=app["id"]).webhook_secret_encrypted == ""


# --- generic form: accepted ------------------------------------------------------------------


def test_signed_image_deploy_is_queued(app: dict[str, Any], secret: str, django_capture_on_commit_callbacks: Any):
    body = image_body()
    with (
        task_queued("deployment_run") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = hook(app["id"], body, generic_headers(secret, body))
    assert response.status_code == 202
    data = response.json()
    assert data["app_id"] == app["id"]
    assert data["state"] == "queued"
    assert data["number"] == 1
    assert data["source"] == {"kind": "image", "url": IMAGE}
    delay.assert_called_once_with(data["id"])
    deployment = Deployment.objects.get(public_id=data["id"])
    assert deployment.source_kind == Deployment.SourceKind.IMAGE
    assert deployment.app.public_id == uuid.UUID(app["id"])


def test_signed_archive_deploy_is_unpacked(app: dict[str, Any], secret: str, settings: Any):
    body = source_archive()
    response = hook(app["id"], body, generic_headers(secret, body), content_type="application/gzip")
    assert response.status_code == 202
    data = response.json()
    assert data["source"] == {"kind": "archive"}
    src = Path(settings.BUILD_ROOT) / data["id"] / "src"
    assert (src / "Procfile").read_bytes() == b"web: python app.py\n"
    assert (src / "requirements.txt").is_file()


def test_signed_git_deploy_in_generic_form(app: dict[str, Any], secret: str, public_dns: mock.MagicMock):
    body = json.dumps({"git": {"url": CLONE_URL, "ref": "main"}}).encode()
    response = hook(app["id"], body, generic_headers(secret, body))
    assert response.status_code == 202
    assert response.json()["source"] == {"kind": "git", "url": CLONE_URL, "ref": "main"}
    public_dns.assert_called()


def test_header_names_are_case_insensitive(app: dict[str, Any], secret: str):
    body = image_body()
    headers = {key.lower(): value for key, value in generic_headers(secret, body).items()}
    assert hook(app["id"], body, headers).status_code == 202


# --- generic form: refused, and indistinguishably so -------------------------------------------


def _wrong_secret(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, generic_headers("whsec_not-the-right-one", body)


def _tampered(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return image_body("docker.io/library/redis:7"), generic_headers(secret, body)


def _stale(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, generic_headers(secret, body, timestamp=int(time.time()) - 6 * 60)


def _future(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, generic_headers(secret, body, timestamp=int(time.time()) + 6 * 60)


def _without(header: str) -> Callable[[str, bytes], tuple[bytes, dict[str, str]]]:
    def case(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = generic_headers(secret, body)
        del headers[header]
        return body, headers

    return case


def _signature(value: Callable[[str], str]) -> Callable[[str, bytes], tuple[bytes, dict[str, str]]]:
    def case(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = generic_headers(secret, body)
        headers["X-Coltsfoot-Signature"] = value(headers["X-Coltsfoot-Signature"])
        return body, headers

    return case


def _timestamp_not_a_number(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    # Correctly signed over the odd timestamp, so only the format check can refuse it.
    return body, generic_headers(secret, body, timestamp=f"{int(time.time())}.5")


def _delivery_with_space(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, generic_headers(secret, body, delivery="dlv 1")


def _github_wrong_secret(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    return push_body(), github_headers("whsec_not-the-right-one", push_body())


def _github_without(header: str) -> Callable[[str, bytes], tuple[bytes, dict[str, str]]]:
    def case(secret: str, body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = github_headers(secret, push_body())
        del headers[header]
        return push_body(), headers

    return case


REFUSED = {
    "wrong secret": _wrong_secret,
    "tampered body": _tampered,
    "stale timestamp": _stale,
    "future timestamp": _future,
    "no timestamp": _without("X-Coltsfoot-Timestamp"),
    "no signature": _without("X-Coltsfoot-Signature"),
    "no delivery id": _without("X-Coltsfoot-Delivery"),
    "signature not hex": _signature(lambda sig: "sha256=" + "z" * 64),
    "signature without scheme": _signature(lambda sig: sig.removeprefix("sha256=")),
    "signature sha1 scheme": _signature(lambda sig: sig.replace("sha256=", "sha1=")),
    "signature truncated": _signature(lambda sig: sig[:-2]),
    "signature empty": _signature(lambda sig: ""),
    "timestamp not a number": _timestamp_not_a_number,
    "delivery id with space": _delivery_with_space,
    "github wrong secret": _github_wrong_secret,
    "github no event": _github_without("X-GitHub-Event"),
    "github no delivery id": _github_without("X-GitHub-Delivery"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=list(REFUSED))
def test_bad_signatures_are_one_indistinguishable_401(
    app: dict[str, Any], secret: str, case: Callable[[str, bytes], tuple[bytes, dict[str, str]]]
):
    reference = unknown_app_answer()
    assert reference["error"]["code"] == "webhook.bad_signature"
    assert reference["error"]["details"] is None

    body, headers = case(secret, image_body())
    response = hook(app["id"], body, headers)
    assert response.status_code == 401
    assert response.json() == reference
    assert_nothing_created()


def test_app_without_a_secret_is_the_same_401(app: dict[str, Any]):
    reference = unknown_app_answer()
    body = image_body()
    # An empty key would make the HMAC computable by anyone: it must not be accepted.
    for secret in ("", "whsec_guess"):
        response = hook(app["id"], body, generic_headers(secret, body))
        assert response.status_code == 401
        assert response.json() == reference
    assert_nothing_created()


def test_a_secret_only_opens_its_own_app(owner: Actor, app: dict[str, Any], secret: str):
    other = owner.call("POST", "/apps", {"name": "other"}).json()
    owner.call("POST", f"/apps/{other['id']}/webhook-secret")
    body = image_body()
    response = hook(other["id"], body, generic_headers(secret, body))
    assert response.status_code == 401
    assert response.json() == unknown_app_answer()
    assert_nothing_created()


def test_fresh_timestamp_inside_tolerance_is_accepted(app: dict[str, Any], secret: str):
    body = image_body()
    response = hook(app["id"], body, generic_headers(secret, body, timestamp=int(time.time()) - 4 * 60))
    assert response.status_code == 202


# --- replays ---------------------------------------------------------------------------------


def test_replayed_delivery_returns_the_original_deployment(
    app: dict[str, Any], secret: str, django_capture_on_commit_callbacks: Any
):
    body = image_body()
    headers = generic_headers(secret, body)
    with (
        task_queued("deployment_run") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        first = hook(app["id"], body, headers)
        again = hook(app["id"], body, headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Deployment.objects.count() == 1
    delay.assert_called_once_with(first.json()["id"])


def test_delivery_id_reused_for_another_body_creates_nothing(app: dict[str, Any], secret: str):
    body = image_body()
    first = hook(app["id"], body, generic_headers(secret, body, delivery="dlv-42"))
    other = image_body("docker.io/library/redis:7")
    again = hook(app["id"], other, generic_headers(secret, other, delivery="dlv-42"))
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Deployment.objects.count() == 1


def test_same_signature_under_a_new_delivery_id_creates_nothing(app: dict[str, Any], secret: str):
    body = image_body()
    headers = generic_headers(secret, body)
    first = hook(app["id"], body, headers)
    assert first.status_code == 202
    replayed = {**headers, "X-Coltsfoot-Delivery": "dlv-captured-and-replayed"}
    again = hook(app["id"], body, replayed)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Deployment.objects.count() == 1


def test_two_genuine_deliveries_make_two_deployments(app: dict[str, Any], secret: str):
    for number, image in enumerate((IMAGE, "docker.io/library/python:3.12"), start=1):
        body = image_body(image)
        response = hook(app["id"], body, generic_headers(secret, body))
        assert response.status_code == 202
        assert response.json()["number"] == number
    assert Deployment.objects.count() == 2


def test_a_refused_delivery_can_be_retried(app: dict[str, Any], secret: str, public_dns: mock.MagicMock):
    bad = json.dumps({"git": {"url": "https://10.0.0.5/x.git"}}).encode()
    assert hook(app["id"], bad, generic_headers(secret, bad, delivery="dlv-7")).status_code == 422
    assert WebhookDelivery.objects.count() == 0
    good = image_body()
    response = hook(app["id"], good, generic_headers(secret, good, delivery="dlv-7"))
    assert response.status_code == 202


# --- the body of a signed generic call -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        ("https://10.0.0.5/x.git", PUBLIC_ADDRESS),
        ("http://169.254.169.254/", PUBLIC_ADDRESS),
        ("https://evil.example.com/acme/shop.git", PUBLIC_ADDRESS),
        (CLONE_URL, "10.0.0.5"),  # an allowed host whose DNS answers with a private address
        ("file:///etc", PUBLIC_ADDRESS),
    ],
)
def test_generic_git_url_outside_the_allow_list_is_422(app: dict[str, Any], secret: str, url: str, resolved: str):
    answer = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (resolved, 443))]
    body = json.dumps({"git": {"url": url, "ref": "main"}}).encode()
    with mock.patch("socket.getaddrinfo", return_value=answer):
        response = hook(app["id"], body, generic_headers(secret, body))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "source.git_url_not_allowed"
    assert_nothing_created()


def test_image_from_an_unlisted_registry_is_422(app: dict[str, Any], secret: str):
    body = image_body("registry.internal:5000/evil:latest")
    response = hook(app["id"], body, generic_headers(secret, body))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "source.registry_not_allowed"
    assert_nothing_created()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"image": "docker.io/library/python:3.13", "extra": 1}', "application/json", 422),
        (b"not json", "application/json", 400),  # issue 11: every parse failure is 400 request.malformed
        (b"web: python app.py", "text/plain", 415),
        (b"this is not a gzip stream", "application/gzip", 422),
    ],
)
def test_signed_but_unusable_body_creates_nothing(
    app: dict[str, Any], secret: str, settings: Any, body: bytes, content_type: str, status: int
):
    response = hook(app["id"], body, generic_headers(secret, body), content_type=content_type)
    assert response.status_code == status
    assert response.json()["error"]["code"] != "webhook.bad_signature"
    assert_nothing_created()
    build_root = Path(settings.BUILD_ROOT)
    assert not build_root.exists() or not any(build_root.iterdir())


# --- GitHub form -----------------------------------------------------------------------------


def test_github_push_to_the_deploy_branch_deploys_that_commit(
    app: dict[str, Any], secret: str, public_dns: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    body = push_body(after=SHA.upper())
    with (
        task_queued("deployment_run") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = hook(app["id"], body, github_headers(secret, body))
    assert response.status_code == 202
    data = response.json()
    assert data["source"] == {"kind": "git", "url": CLONE_URL, "ref": SHA}
    delay.assert_called_once_with(data["id"])
    stored = Deployment.objects.get(public_id=data["id"])
    assert (stored.source_kind, stored.source_url, stored.source_ref) == ("git", CLONE_URL, SHA)


def test_github_redelivery_creates_nothing(app: dict[str, Any], secret: str, public_dns: mock.MagicMock):
    body = push_body()
    headers = github_headers(secret, body)
    first = hook(app["id"], body, headers)
    again = hook(app["id"], body, headers)
    # GitHub signs no timestamp: the same body re-sent under a fresh delivery id has the same signature.
    fresh = hook(app["id"], body, {**headers, "X-GitHub-Delivery": str(uuid.uuid4())})
    assert first.status_code == 202
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    assert (fresh.status_code, fresh.json()["id"]) == (200, first.json()["id"])
    assert Deployment.objects.count() == 1


@pytest.mark.parametrize(
    ("event", "body"),
    [
        ("push", push_body(ref="refs/heads/feature")),
        ("push", push_body(ref="refs/tags/main")),
        ("push", push_body(after="0" * 40, deleted=True)),
        ("ping", json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()),
        ("pull_request", push_body()),
    ],
    ids=["other branch", "tag named like the branch", "branch deleted", "ping", "other event"],
)
def test_github_deliveries_with_nothing_to_deploy_are_204(
    app: dict[str, Any], secret: str, public_dns: mock.MagicMock, event: str, body: bytes
):
    response = hook(app["id"], body, github_headers(secret, body, event=event))
    assert response.status_code == 204
    assert response.content == b""
    assert Deployment.objects.count() == 0


def test_github_push_follows_the_apps_deploy_branch(
    owner: Actor, app: dict[str, Any], secret: str, public_dns: mock.MagicMock
):
    assert owner.call("PATCH", f"/apps/{app['id']}", {"deploy_branch": "release/v2"}).status_code == 200
    to_main = push_body(ref="refs/heads/main")
    assert hook(app["id"], to_main, github_headers(secret, to_main)).status_code == 204
    to_release = push_body(ref="refs/heads/release/v2")
    assert hook(app["id"], to_release, github_headers(secret, to_release)).status_code == 202
    assert Deployment.objects.count() == 1


@pytest.mark.parametrize("clone_url", ["https://10.0.0.5/x.git", "http://169.254.169.254/", "file:///srv/repo"])
def test_github_clone_url_outside_the_allow_list_is_422(
    app: dict[str, Any], secret: str, public_dns: mock.MagicMock, clone_url: str
):
    body = push_body(clone_url=clone_url)
    response = hook(app["id"], body, github_headers(secret, body))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "source.git_url_not_allowed"
    assert_nothing_created()


@pytest.mark.parametrize(
    "body",
    [
        push_body(after="main"),
        json.dumps({"ref": "refs/heads/main", "after": SHA}).encode(),
        b"[]",
        b"{not json",
        b'{"ref": "refs/heads/main", "ref": "refs/heads/x", "after": "' + SHA.encode() + b'"}',
    ],
    ids=["after not a sha", "no repository", "not an object", "not json", "duplicate keys"],
)
def test_github_malformed_push_is_422(app: dict[str, Any], secret: str, body: bytes):
    response = hook(app["id"], body, github_headers(secret, body))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "webhook.bad_payload"
    assert_nothing_created()


# --- rate limit and tenant state -------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(
    owner: Actor, app: dict[str, Any], secret: str, rotate: Callable[[str], str], settings: Any
):
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 2
    # Pin the limiter's clock mid-window so the test cannot straddle a minute boundary.
    frozen = (int(time.time()) // 60) * 60 + 30
    with mock.patch("core.ratelimit.time", autospec=True) as clock:
        clock.time.return_value = frozen
        statuses = []
        for image in (IMAGE, "docker.io/library/python:3.12", "docker.io/library/python:3.11"):
            body = image_body(image)
            statuses.append(hook(app["id"], body, generic_headers(secret, body)))
        assert [r.status_code for r in statuses] == [202, 202, 429]
        limited = statuses[-1]
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited["Retry-After"]) <= 60
        assert Deployment.objects.count() == 2

        # The limit is per app: another app of the same tenant is unaffected.
        other = owner.call("POST", "/apps", {"name": "other"}).json()
        other_secret = rotate(other["id"])
        body = image_body()
        assert hook(other["id"], body, generic_headers(other_secret, body)).status_code == 202

        # The next window opens again.
        clock.time.return_value = frozen + 60
        body = image_body("docker.io/library/python:3.10")
        assert hook(app["id"], body, generic_headers(secret, body)).status_code == 202


def test_suspended_tenant_with_a_valid_signature_is_403(owner: Actor, app: dict[str, Any], secret: str):
    owner.tenant.status = owner.tenant.Status.SUSPENDED
    owner.tenant.save()
    body = image_body()
    response = hook(app["id"], body, generic_headers(secret, body))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant.suspended"
    # Without the secret nobody learns that the tenant is suspended.
    forged = hook(app["id"], body, generic_headers("whsec_guess", body))
    assert forged.status_code == 401
    assert Deployment.objects.count() == 0


def test_app_being_deleted_takes_no_webhook_deploys(owner: Actor, app: dict[str, Any], secret: str):
    assert owner.call("DELETE", f"/apps/{app['id']}").status_code == 202
    body = image_body()
    response = hook(app["id"], body, generic_headers(secret, body))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "app.deleting"
    assert_nothing_created()


# --- issue 11: the lockout repro, and who may rotate the secret -------------------------------


def test_refused_calls_cannot_lock_out_the_signed_call(app: dict[str, Any], secret: str, settings: Any):
    # The repro: enough unsigned calls in one minute to fill the refused-calls bucket (10x the
    # limit), then the real CI's correctly signed call.
    settings.WEBHOOK_RATE_LIMIT_PER_MINUTE = 3
    frozen = (int(time.time()) // 60) * 60 + 30
    with mock.patch("core.ratelimit.time", autospec=True) as clock:
        clock.time.return_value = frozen
        body = image_body()
        answers = [hook(app["id"], body, generic_headers("whsec_guess", body)).status_code for _ in range(31)]
        assert answers[:30] == [401] * 30
        assert answers[30] == 429  # only the refused calls are throttled
        signed = hook(app["id"], body, generic_headers(secret, body))
    assert signed.status_code == 202, signed.content
    assert Deployment.objects.count() == 1


def test_apps_write_token_cannot_rotate_the_webhook_secret(owner: Actor, app: dict[str, Any], secret: str):
    minted = owner.call("POST", "/tokens", {"name": "writer", "scopes": ["apps:read", "apps:write"]}).json()
    writer = Actor(owner.tenant, minted["token"], owner.client)
    response = writer.call("POST", f"/apps/{app['id']}/webhook-secret")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auth.insufficient_scope"
    assert response.json()["error"]["details"] == {"required": ["deploy"]}
    # The CI's secret still works: nothing was rotated.
    body = image_body()
    assert hook(app["id"], body, generic_headers(secret, body)).status_code == 202

    both = owner.call("POST", "/tokens", {"name": "both", "scopes": ["apps:write", "deploy"]}).json()
    rotator = Actor(owner.tenant, both["token"], owner.client)
    assert rotator.call("POST", f"/apps/{app['id']}/webhook-secret").status_code == 200
