"""Verification of CI webhooks: the generic Coltsfoot form and GitHub's push hooks.

Pure functions over (secret, headers, raw body); no models, no settings. The caller looks up
the app's secret, calls one ``verify_*`` and maps ``WebhookError.status``/``code`` to the
response. Every authentication failure has the same code and message so the response never
says which check failed; ``reason`` on the exception is for the platform's logs only.

Replay: the generic signature covers the timestamp and the body, not the delivery id, so a
captured request can be replayed inside the tolerance window under a fresh delivery id.
Deduplicate on the signature (or timestamp + body digest) as well as the delivery id if that
matters; a replayed deploy of the same commit is otherwise harmless. GitHub signs no
timestamp at all, so its deliveries can be replayed indefinitely by whoever captured one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import NoReturn

from drivers.git import GitSource

TIMESTAMP_HEADER = "X-Coltsfoot-Timestamp"
SIGNATURE_HEADER = "X-Coltsfoot-Signature"
DELIVERY_HEADER = "X-Coltsfoot-Delivery"
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
GITHUB_EVENT_HEADER = "X-GitHub-Event"
GITHUB_DELIVERY_HEADER = "X-GitHub-Delivery"

MAX_GITHUB_PAYLOAD_BYTES = 5 * 1024 * 1024
MAX_DELIVERY_ID_LENGTH = 128
_MAX_CLONE_URL_LENGTH = 2048
_MAX_REF_LENGTH = 1024
_ZERO_SHA = "0" * 40

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}", re.ASCII)
_SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})", re.ASCII)
# RFC 9110 token characters: printable, no spaces, no separators that would need quoting in logs.
_DELIVERY_RE = re.compile(rf"[A-Za-z0-9!#$%&'*+.^_`|~-]{{1,{MAX_DELIVERY_ID_LENGTH}}}", re.ASCII)
_EVENT_RE = re.compile(r"[a-z_]{1,64}", re.ASCII)
_SHA_RE = re.compile(r"[0-9a-fA-F]{40}", re.ASCII)


class WebhookError(Exception):
    """Base for webhook failures: ``code`` and ``message`` go to the caller, ``reason`` to logs only."""

    status = 400
    code = "webhook.error"
    message = "The webhook was refused."

    def __init__(self, reason: str) -> None:
        # str(exc) is the public message; the reason stays an attribute so a careless
        # f"{exc}" in a response cannot leak which check failed.
        super().__init__(self.message)
        self.reason = reason


class WebhookRejected(WebhookError):
    """Authentication failed (signature, timestamp, secret or a required header): answer 401."""

    status = 401
    code = "webhook.bad_signature"
    message = "The webhook signature is missing or invalid."


class WebhookPayloadInvalid(WebhookError):
    """The request was authentic but its body is not a payload we understand: answer 422."""

    status = 422
    code = "webhook.bad_payload"
    message = "The webhook payload is malformed."


@dataclass(frozen=True, slots=True)
class GithubDelivery:
    event: str
    delivery_id: str


def _hmac_sha256(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def sign_generic(secret: bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Coltsfoot-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign_github(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _reject(reason: str) -> NoReturn:
    raise WebhookRejected(reason)


def _header(headers: Mapping[str, str], name: str) -> str:
    # Works for plain dicts as well as Django's case-insensitive request.headers. Two spellings
    # of one header with different values are ambiguous, so refuse rather than pick one.
    wanted = name.lower()
    values = {value.strip(" \t") for key, value in headers.items() if key.lower() == wanted}
    if not values:
        _reject(f"missing header {name}")
    if len(values) > 1:
        _reject(f"conflicting values for header {name}")
    return values.pop()


def _signature_digest(value: str, header: str) -> bytes:
    match = _SIGNATURE_RE.fullmatch(value)
    if match is None:
        _reject(f"malformed {header}")
    return bytes.fromhex(match.group(1))


def _delivery_id(value: str, header: str) -> str:
    if _DELIVERY_RE.fullmatch(value) is None:
        _reject(f"malformed {header}")
    return value


def _check_secret(secret: bytes) -> None:
    # An empty key makes the HMAC computable by anyone.
    if not secret:
        _reject("empty webhook secret")


def verify_generic(secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: int) -> str:
    """Verify a generic Coltsfoot webhook and return its delivery id, or raise ``WebhookRejected``.

    Signed message: ``f"{timestamp}."`` followed by the raw body. The timestamp must be within
    ``tolerance`` seconds of ``now`` in either direction.
    """
    _check_secret(secret)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    delivery_id = _delivery_id(_header(headers, DELIVERY_HEADER), DELIVERY_HEADER)
    if _TIMESTAMP_RE.fullmatch(timestamp) is None:
        _reject("malformed timestamp")
    expected = _signature_digest(signature, SIGNATURE_HEADER)
    # Signature before freshness: an unauthenticated sender learns nothing about our clock.
    if not hmac.compare_digest(expected, _hmac_sha256(secret, timestamp.encode("ascii") + b"." + body)):
        _reject("signature mismatch")
    if abs(now - int(timestamp)) > tolerance:
        _reject("timestamp outside tolerance")
    return delivery_id


def verify_github(secret: bytes, headers: Mapping[str, str], body: bytes) -> GithubDelivery:
    """Verify a GitHub webhook (``X-Hub-Signature-256``) or raise ``WebhookRejected``."""
    _check_secret(secret)
    signature = _header(headers, GITHUB_SIGNATURE_HEADER)
    event = _header(headers, GITHUB_EVENT_HEADER)
    delivery_id = _delivery_id(_header(headers, GITHUB_DELIVERY_HEADER), GITHUB_DELIVERY_HEADER)
    if _EVENT_RE.fullmatch(event) is None:
        _reject("malformed event header")
    expected = _signature_digest(signature, GITHUB_SIGNATURE_HEADER)
    if not hmac.compare_digest(expected, _hmac_sha256(secret, body)):
        _reject("signature mismatch")
    return GithubDelivery(event=event, delivery_id=delivery_id)


def _bad_payload(reason: str) -> NoReturn:
    raise WebhookPayloadInvalid(reason)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            _bad_payload(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> NoReturn:
    _bad_payload(f"non-standard JSON constant {name}")


def _load_json_object(body: bytes, *, max_bytes: int) -> dict[str, Any]:
    if len(body) > max_bytes:
        _bad_payload(f"payload larger than {max_bytes} bytes")
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, deep nesting
        raise WebhookPayloadInvalid(f"invalid JSON: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        _bad_payload("payload is not a JSON object")
    return data


def _bounded_str(obj: Mapping[str, Any], key: str, max_length: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > max_length:
        _bad_payload(f"{key} must be a non-empty string of at most {max_length} characters")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        _bad_payload(f"{key} contains whitespace or control characters")
    return value


def parse_github_push(
    body: bytes, branch: str, *, event: str, max_bytes: int = MAX_GITHUB_PAYLOAD_BYTES
) -> GitSource | None:
    """The source to deploy for a verified GitHub delivery, or None when there is nothing to deploy.

    None for events other than ``push`` (``ping`` included), pushes to other refs (other
    branches, tags) and branch deletions. Raises ``WebhookPayloadInvalid`` for a push whose body
    is not the JSON we expect. ``clone_url`` is returned as sent: the caller must still run it
    through ``validate_git_url`` and should check it names the app's configured repository.
    """
    if event != "push":
        return None
    payload = _load_json_object(body, max_bytes=max_bytes)
    ref = _bounded_str(payload, "ref", _MAX_REF_LENGTH)
    after = _bounded_str(payload, "after", 40)
    if _SHA_RE.fullmatch(after) is None:
        _bad_payload("after is not a 40-hex commit sha")
    deleted = payload.get("deleted", False)
    if not isinstance(deleted, bool):
        _bad_payload("deleted is not a boolean")
    repository = payload.get("repository")
    if not isinstance(repository, dict):
        _bad_payload("repository is not an object")
    clone_url = _bounded_str(repository, "clone_url", _MAX_CLONE_URL_LENGTH)

    if ref != f"refs/heads/{branch}":
        return None
    if deleted or after == _ZERO_SHA:
        return None
    return GitSource(url=clone_url, ref=after.lower())
