from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest
from django.http import HttpResponse

from core.errors import HTTP_ERROR_CODES
from core.errors import error_response

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
