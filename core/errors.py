"""One error shape for the whole API: {"error": {"code", "message", "details"}}.

Services raise `ApiError` (or a subclass with a fixed status); every other failure Ninja or
Django can produce is mapped here too, so clients never see a stack trace or a second shape.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import SuspiciousOperation
from django.core.exceptions import TooManyFieldsSent
from django.http import Http404
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import JsonResponse
from ninja import NinjaAPI
from ninja import Schema
from ninja.errors import AuthenticationError
from ninja.errors import AuthorizationError
from ninja.errors import HttpError
from ninja.errors import Throttled
from ninja.errors import ValidationError
from pydantic import ValidationError as PydanticValidationError

from core.logging import request_id_var

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on. `code` is stable; `message` is for humans."""

    status = 400

    def __init__(self, code: str, message: str, *, status: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        if status is not None:
            self.status = status


class NotFound(ApiError):
    status = 404

    def __init__(self, what: str = "resource") -> None:
        super().__init__("not_found", f"No such {what}.")


class Forbidden(ApiError):
    status = 403


class Conflict(ApiError):
    status = 409


class Unprocessable(ApiError):
    status = 422


class RateLimited(ApiError):
    """429 `rate_limited`, answered with `Retry-After: <retry_after>` (whole seconds, at least 1)."""

    status = 429

    def __init__(self, message: str, *, retry_after: int, details: Any = None) -> None:
        super().__init__("rate_limited", message, details=details)
        self.retry_after = max(1, int(retry_after))


def rate_limited_response(message: str, retry_after: int) -> JsonResponse:
    response = error_response(429, "rate_limited", message)
    response["Retry-After"] = str(max(1, int(retry_after)))
    return response


def parse_json(body: bytes) -> Any:
    """A request body as JSON, or 400 `request.malformed` for any body that does not parse: bad
    syntax, bad UTF-8, and nesting too deep for the parser (a `RecursionError`, not a ValueError)."""
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError("request.malformed", "The request body is not valid JSON.", status=400) from exc


class ErrorDetail(Schema):
    code: str
    message: str
    details: Any = None


class ErrorOut(Schema):
    """The error shape, for the OpenAPI document."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int, type[ErrorOut]]:
    """`response=` entries for a route's error statuses."""
    return dict.fromkeys(statuses, ErrorOut)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(status: int, code: str, message: str, details: Any = None) -> JsonResponse:
    response = JsonResponse(error_body(code, message, details), status=status)
    request_id = request_id_var.get()
    if request_id:
        response["X-Request-Id"] = request_id
    return response


def _validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep location, message and type; drop the echoed input (it may be huge or hostile)."""
    cleaned = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        # Ninja prefixes the parameter source and the schema argument name: keep what the client sent.
        if loc and loc[0] in {"body", "query", "path", "form", "file", "header"}:
            loc = loc[2:] if len(loc) > 2 and loc[0] in {"body", "form"} else loc[1:]
        cleaned.append(
            {"field": ".".join(loc) or None, "message": str(error.get("msg", "")), "type": error.get("type")}
        )
    return cleaned


def invalid_request(exc: PydanticValidationError, message: str = "The request is invalid.") -> ApiError:
    """A body the view validated itself (not through a Ninja parameter), in the same 422 shape."""
    details = _validation_details([dict(error) for error in exc.errors()])
    return ApiError("request.invalid", message, status=422, details=details)


HTTP_ERROR_CODES = {
    400: "request.malformed",
    401: "auth.invalid_token",
    403: "auth.forbidden",
    404: "not_found",
    405: "request.method_not_allowed",
    409: "conflict",
    413: "request.too_large",
    415: "request.unsupported_media_type",
    422: "request.invalid",
    429: "rate_limited",
}


def install_error_handlers(api: NinjaAPI) -> None:
    def on_api_error(request: HttpRequest, exc: Any) -> HttpResponse:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.retry_after)
        return response

    def on_validation_error(request: HttpRequest, exc: Any) -> HttpResponse:
        return error_response(422, "request.invalid", "The request is invalid.", _validation_details(exc.errors))

    def on_authentication_error(request: HttpRequest, exc: Any) -> HttpResponse:
        response = error_response(401, "auth.invalid_token", "Missing, malformed, unknown or revoked API token.")
        response["WWW-Authenticate"] = "Bearer"
        return response

    def on_authorization_error(request: HttpRequest, exc: Any) -> HttpResponse:
        return error_response(403, "auth.forbidden", "This token may not do that.")

    def on_throttled(request: HttpRequest, exc: Any) -> HttpResponse:
        response = error_response(429, "rate_limited", "Too many requests; slow down.")
        if exc.wait:
            response["Retry-After"] = str(int(exc.wait))
        return response

    def on_http_error(request: HttpRequest, exc: Any) -> HttpResponse:
        status = exc.status_code
        code = HTTP_ERROR_CODES.get(status, "request.error")
        message = "The request body is not valid JSON." if status == 400 else str(exc.message)
        return error_response(status, code, message)

    def on_not_found(request: HttpRequest, exc: Any) -> HttpResponse:
        return error_response(404, "not_found", "Not found.")

    def on_exception(request: HttpRequest, exc: Any) -> HttpResponse:
        if isinstance(exc, RequestDataTooBig):
            return error_response(413, "request.too_large", "The request body is too large.")
        if isinstance(exc, TooManyFieldsSent | SuspiciousOperation | RecursionError | UnicodeDecodeError):
            # RecursionError: a body nested deeper than a parser (Ninja's, Django's) can follow.
            return error_response(400, "request.malformed", "The request is malformed.")
        if isinstance(exc, PermissionDenied):
            return error_response(403, "auth.forbidden", "This token may not do that.")
        logger.error("unhandled API error", exc_info=exc, extra={"path": request.path, "method": request.method})
        return error_response(500, "internal", "Something went wrong on our side; it has been logged.")

    api.add_exception_handler(ApiError, on_api_error)
    api.add_exception_handler(ValidationError, on_validation_error)
    api.add_exception_handler(AuthenticationError, on_authentication_error)
    api.add_exception_handler(AuthorizationError, on_authorization_error)
    api.add_exception_handler(Throttled, on_throttled)
    api.add_exception_handler(HttpError, on_http_error)
    api.add_exception_handler(Http404, on_not_found)
    api.add_exception_handler(Exception, on_exception)
