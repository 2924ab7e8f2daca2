"""`Idempotency-Key` for creating POSTs: the same key and body within 24 h get the original
response; the same key with another body is 422; a retry while the first is running is 409.

Implemented as middleware around the API so it sees the rendered response. Records belong to
the token that made the request, so a weaker token of the same tenant can never replay a
stronger one's response, and stored bodies are encrypted (they may hold a minted token).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable
from datetime import timedelta

from django.core.exceptions import RequestDataTooBig
from django.db import IntegrityError
from django.db import transaction
from django.http import HttpRequest
from django.http import HttpResponse
from django.utils import timezone

from core import crypto
from core.errors import error_response
from platform_apps.models import IdempotencyRecord
from tenants.auth import TokenAuth
from tenants.models import ApiToken

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
TTL = timedelta(hours=24)
STORE_MAX_BYTES = 256 * 1024


def fingerprint(request: HttpRequest) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}\n{request.content_type}\n".encode())
    if request.content_type == "multipart/form-data":
        for name in sorted(request.POST):
            for value in request.POST.getlist(name):
                digest.update(f"field {name}={value}\n".encode())
        for name in sorted(request.FILES):
            for upload in request.FILES.getlist(name):
                digest.update(f"file {name} {upload.size}\n".encode())
                for chunk in upload.chunks():
                    digest.update(chunk)
                upload.seek(0)
    else:
        digest.update(request.body)
    return digest.hexdigest()


def _authenticated_token(request: HttpRequest) -> ApiToken | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return None
    try:
        return TokenAuth().authenticate(request, credentials)
    except Exception:  # a suspended tenant and the like: the view answers that itself
        return None


def purge_expired() -> int:
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - TTL).delete()
    return deleted


class IdempotencyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key = request.headers.get(HEADER)
        if key is None or request.method != "POST" or not request.path.startswith("/api/v1/"):
            return self.get_response(request)
        if request.path.startswith("/api/v1/hooks/"):
            return self.get_response(request)  # webhooks deduplicate by delivery id instead
        if not KEY_RE.fullmatch(key):
            return error_response(400, "idempotency.invalid_key", f"{HEADER} must be 1-255 printable ASCII characters.")
        token = _authenticated_token(request)
        if token is None:
            return self.get_response(request)
        try:
            request_fingerprint = fingerprint(request)
        except RequestDataTooBig:
            return self.get_response(request)
        now = timezone.now()
        IdempotencyRecord.objects.filter(token=token, key=key, created_at__lt=now - TTL).delete()
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(token=token, key=key, fingerprint=request_fingerprint)
        except IntegrityError:
            existing: IdempotencyRecord | None = IdempotencyRecord.objects.filter(token=token, key=key).first()
            if existing is None:  # expired and purged between the two queries
                return error_response(409, "idempotency.in_progress", "A request with this key is in progress.")
            if existing.fingerprint != request_fingerprint:
                return error_response(
                    422,
                    "idempotency.key_reused",
                    f"This {HEADER} was used with a different request; use a new key for a new request.",
                )
            if existing.status_code == 0:
                return error_response(409, "idempotency.in_progress", "A request with this key is still running.")
            body = base64.b64decode(crypto.decrypt(existing.body_encrypted))
            replay = HttpResponse(body, status=existing.status_code, content_type=existing.content_type)
            replay["Idempotent-Replayed"] = "true"
            return replay
        response = self.get_response(request)
        body = response.content if not response.streaming else b""
        if 200 <= response.status_code < 300 and len(body) <= STORE_MAX_BYTES:
            IdempotencyRecord.objects.filter(pk=record.pk).update(
                status_code=response.status_code,
                content_type=response.get("Content-Type", ""),
                body_encrypted=crypto.encrypt(base64.b64encode(body).decode()),
            )
        else:
            # Failures are not remembered: the client may fix the request and retry with the key.
            IdempotencyRecord.objects.filter(pk=record.pk).delete()
        return response
