from __future__ import annotations

import json

import pytest

from drivers.git import GitSource
from platform_apps.webhooks.signatures import GithubDelivery
from platform_apps.webhooks.signatures import WebhookPayloadInvalid
from platform_apps.webhooks.signatures import WebhookRejected
from platform_apps.webhooks.signatures import parse_github_push
from platform_apps.webhooks.signatures import sign_generic
from platform_apps.webhooks.signatures import sign_github
from platform_apps.webhooks.signatures import verify_generic
from platform_apps.webhooks.signatures import verify_github

SECRET = b"whsec-test-0123456789"
NOW = 1_750_000_000
TOLERANCE = 300
BODY = b'{"ref": "main"}'
SHA = "a" * 40


def generic_headers(body: bytes = BODY, *, timestamp: int = NOW, secret: bytes = SECRET) -> dict[str, str]:
    return {
        "X-Coltsfoot-Timestamp": str(timestamp),
        "X-Coltsfoot-Signature": sign_generic(secret, timestamp, body),
        "X-Coltsfoot-Delivery": "dlv_01HZX9Y2",
    }


def verify(headers: dict[str, str], body: bytes = BODY, *, secret: bytes = SECRET) -> str:
    return verify_generic(secret, headers, body, now=NOW, tolerance=TOLERANCE)


def assert_rejected(exc_info: pytest.ExceptionInfo[WebhookRejected]) -> None:
    exc = exc_info.value
    assert exc.code == "webhook.bad_signature"
    assert exc.status == 401
    # The public text is the same whatever failed.
    assert str(exc) == WebhookRejected.message


def test_generic_valid_signature_returns_delivery_id() -> None:
    assert verify(generic_headers()) == "dlv_01HZX9Y2"


def test_generic_header_names_are_case_insensitive() -> None:
    headers = {key.lower(): value for key, value in generic_headers().items()}
    assert verify(headers) == "dlv_01HZX9Y2"


def test_generic_wrong_secret() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify(generic_headers(secret=b"another-secret"))
    assert_rejected(exc_info)
    assert exc_info.value.reason == "signature mismatch"


def test_generic_tampered_body() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify(generic_headers(), body=BODY + b" ")
    assert_rejected(exc_info)


def test_generic_signature_binds_timestamp() -> None:
    headers = generic_headers()
    headers["X-Coltsfoot-Timestamp"] = str(NOW + 1)
    with pytest.raises(WebhookRejected):
        verify(headers)


@pytest.mark.parametrize("offset", [-TOLERANCE - 1, TOLERANCE + 1, -86400, 86400])
def test_generic_stale_or_future_timestamp(offset: int) -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify(generic_headers(timestamp=NOW + offset))
    assert_rejected(exc_info)
    assert exc_info.value.reason == "timestamp outside tolerance"


@pytest.mark.parametrize("offset", [-TOLERANCE, 0, TOLERANCE])
def test_generic_timestamp_at_tolerance_edge(offset: int) -> None:
    assert verify(generic_headers(timestamp=NOW + offset)) == "dlv_01HZX9Y2"


@pytest.mark.parametrize("missing", ["X-Coltsfoot-Timestamp", "X-Coltsfoot-Signature", "X-Coltsfoot-Delivery"])
def test_generic_missing_header(missing: str) -> None:
    headers = generic_headers()
    del headers[missing]
    with pytest.raises(WebhookRejected) as exc_info:
        verify(headers)
    assert_rejected(exc_info)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256=",
        "sha256=zz",
        "sha1=" + "0" * 40,
        "sha256=" + "0" * 63,
        "sha256=" + "0" * 65,
        "sha256=" + "g" * 64,
        "SHA256=" + "0" * 64,
    ],
)
def test_generic_malformed_signature_header(value: str) -> None:
    headers = generic_headers()
    headers["X-Coltsfoot-Signature"] = value
    with pytest.raises(WebhookRejected) as exc_info:
        verify(headers)
    assert_rejected(exc_info)


@pytest.mark.parametrize("value", ["", "-1", "1.5", "1e9", " ", "\uff11\uff12\uff13", "9" * 13])
def test_generic_malformed_timestamp(value: str) -> None:
    headers = generic_headers()
    headers["X-Coltsfoot-Timestamp"] = value
    headers["X-Coltsfoot-Signature"] = sign_generic(SECRET, value, BODY)
    with pytest.raises(WebhookRejected):
        verify(headers)


@pytest.mark.parametrize("value", ["", "a b", "x" * 129, "id\n", "ünï", "a/b", 'a"b'])
def test_generic_malformed_delivery_id(value: str) -> None:
    headers = generic_headers()
    headers["X-Coltsfoot-Delivery"] = value
    with pytest.raises(WebhookRejected):
        verify(headers)


def test_generic_conflicting_header_spellings() -> None:
    headers = generic_headers()
    headers["x-coltsfoot-delivery"] = "other"
    with pytest.raises(WebhookRejected):
        verify(headers)


def test_generic_empty_secret_is_refused() -> None:
    with pytest.raises(WebhookRejected):
        verify(generic_headers(secret=b""), secret=b"")


# --- GitHub ------------------------------------------------------------------------------------


def push_payload(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "ref": "refs/heads/main",
        "before": "b" * 40,
        "after": SHA,
        "created": False,
        "deleted": False,
        "repository": {"full_name": "owner/repo", "clone_url": "https://github.com/owner/repo.git"},
        "commits": [{"id": SHA, "message": "fix"}],
    }
    payload.update(overrides)
    return payload


def github_headers(body: bytes, *, event: str = "push", secret: bytes = SECRET) -> dict[str, str]:
    return {
        "X-Hub-Signature-256": sign_github(secret, body),
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }


def test_github_verify_returns_event_and_delivery() -> None:
    body = json.dumps(push_payload()).encode()
    delivery = verify_github(SECRET, github_headers(body), body)
    assert delivery == GithubDelivery(event="push", delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958")


def test_github_verify_wrong_secret() -> None:
    body = json.dumps(push_payload()).encode()
    with pytest.raises(WebhookRejected) as exc_info:
        verify_github(SECRET, github_headers(body, secret=b"nope"), body)
    assert_rejected(exc_info)


def test_github_verify_tampered_body() -> None:
    body = json.dumps(push_payload()).encode()
    with pytest.raises(WebhookRejected):
        verify_github(SECRET, github_headers(body), body.replace(b"main", b"evil"))


@pytest.mark.parametrize("missing", ["X-Hub-Signature-256", "X-GitHub-Event", "X-GitHub-Delivery"])
def test_github_missing_header(missing: str) -> None:
    body = json.dumps(push_payload()).encode()
    headers = github_headers(body)
    del headers[missing]
    with pytest.raises(WebhookRejected) as exc_info:
        verify_github(SECRET, headers, body)
    assert_rejected(exc_info)


def test_github_push_to_branch_gives_source() -> None:
    body = json.dumps(push_payload()).encode()
    source = parse_github_push(body, "main", event="push")
    assert source == GitSource(url="https://github.com/owner/repo.git", ref=SHA)


def test_github_push_normalises_sha_case() -> None:
    body = json.dumps(push_payload(after="ABCDEF" + "0" * 34)).encode()
    source = parse_github_push(body, "main", event="push")
    assert source is not None
    assert source.ref == "abcdef" + "0" * 34


@pytest.mark.parametrize("ref", ["refs/heads/develop", "refs/heads/main2", "refs/tags/main", "main"])
def test_github_push_to_other_ref_is_ignored(ref: str) -> None:
    body = json.dumps(push_payload(ref=ref)).encode()
    assert parse_github_push(body, "main", event="push") is None


def test_github_ping_is_ignored() -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    assert parse_github_push(body, "main", event="ping") is None


@pytest.mark.parametrize(
    "overrides", [{"deleted": True, "after": "0" * 40}, {"deleted": False, "after": "0" * 40}, {"deleted": True}]
)
def test_github_branch_deletion_is_ignored(overrides: dict[str, object]) -> None:
    body = json.dumps(push_payload(**overrides)).encode()
    assert parse_github_push(body, "main", event="push") is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"refs/heads/main"',
        b"\xff\xfe",
        b'{"ref": "refs/heads/main", "ref": "refs/heads/main"}',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(push_payload(after=None)).encode(),
        json.dumps(push_payload(after="abc")).encode(),
        json.dumps(push_payload(after="g" * 40)).encode(),
        json.dumps(push_payload(ref=7)).encode(),
        json.dumps(push_payload(ref="refs/heads/main\n")).encode(),
        json.dumps(push_payload(deleted="false")).encode(),
        json.dumps(push_payload(repository="owner/repo")).encode(),
        json.dumps(push_payload(repository={"clone_url": None})).encode(),
        json.dumps(push_payload(repository={"clone_url": "x" * 5000})).encode(),
        json.dumps(push_payload(extra=float("nan"))).encode(),
    ],
)
def test_github_bad_payload(body: bytes) -> None:
    with pytest.raises(WebhookPayloadInvalid) as exc_info:
        parse_github_push(body, "main", event="push")
    assert exc_info.value.code == "webhook.bad_payload"
    assert exc_info.value.status == 422


def test_github_payload_size_is_bounded() -> None:
    body = json.dumps(push_payload(padding="x" * 2000)).encode()
    with pytest.raises(WebhookPayloadInvalid):
        parse_github_push(body, "main", event="push", max_bytes=1000)
