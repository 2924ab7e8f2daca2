from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest
from django.http import HttpResponse

from core.errors import HTTP_ERROR_CODES
from core.errors import error_response
from core.errors import rate_limited_response
from core.ratelimit import hit

_MESSAGES = {
    404: "Not found.",
    405: "This method is not allowed here.",
}


class ApiErrorShapeMiddleware:
    """Responses Ninja and Django produce outside our handlers (405 from the router, 404 from
    URL resolution) come back in the API's single error shape too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            request.path.startswith("/api/")
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            status = response.status_code
            shaped = error_response(
                status, HTTP_ERROR_CODES.get(status, "request.error"), _MESSAGES.get(status, "The request failed.")
            )
            if response.has_header("Allow"):
                shaped["Allow"] = response["Allow"]
            return shaped
        return response


class UploadLimitMiddleware:
    """Refuse an oversized upload by its Content-Length, before Django reads (and spools to disk)
    a single byte of it. Django never reads past Content-Length, so the header cannot lie upward."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/") and request.content_type == "multipart/form-data":
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return error_response(400, "request.malformed", "Content-Length is not a number.")
            # Multipart framing adds a little; the archive itself is checked again after upload.
            if length > int(settings.SOURCE_MAX_UPLOAD_BYTES) + 64 * 1024:
                return error_response(
                    413,
                    "source.too_large",
                    f"The upload is over the limit of {int(settings.SOURCE_MAX_UPLOAD_BYTES) // (1024 * 1024)} MiB.",
                )
        return self.get_response(request)


# Probes must answer even while a client floods the API.
_UNLIMITED_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})
_BEARER = "bearer "
_MAX_PREFIX = 16


class ApiRateLimitMiddleware:
    """Requests per minute per API token (by its public prefix, so no DB lookup is spent on a
    flood), and per client address for requests without a token (the webhooks, the OpenAPI
    document). Over the limit: 429 `rate_limited` with `Retry-After`. The counters live in the
    shared cache; without it the limit fails open (core.ratelimit)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/") and request.path not in _UNLIMITED_PATHS:
            bucket, limit, who = self._bucket(request)
            retry_after = hit(bucket, limit=limit)
            if retry_after is not None:
                return rate_limited_response(f"Too many requests from this {who}; slow down.", retry_after)
        return self.get_response(request)

    @staticmethod
    def _bucket(request: HttpRequest) -> tuple[str, int, str]:
        header = request.headers.get("Authorization", "")
        if header[: len(_BEARER)].lower() == _BEARER:
            prefix = header[len(_BEARER) :].strip().split(".", 1)[0][:_MAX_PREFIX]
            if prefix.isascii() and prefix.replace("_", "").isalnum():
                return f"api-token:{prefix}", int(settings.API_RATE_LIMIT_PER_TOKEN), "token"
        address = str(request.META.get("REMOTE_ADDR") or "unknown")
        return f"api-addr:{address}", int(settings.API_RATE_LIMIT_PER_ADDRESS), "address"


class SyncChainMiddleware:
    """Last in MIDDLEWARE, and sync only, so that under ASGI the whole chain runs in one thread.

    Django runs each middleware in the mode of what it wraps: with the (async) ASGI handler at the bottom,
    Django's own middleware and WhiteNoise ran async, each of their hooks hopping to the sync thread and back,
    under our sync middleware above them, which hopped back again: about a dozen thread switches per request.
    With this one at the bottom, Django adapts the handler to sync once, and everything above runs sync."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)
