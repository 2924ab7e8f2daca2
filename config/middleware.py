from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest
from django.http import HttpResponse

from config.errors import HTTP_ERROR_CODES
from config.errors import error_response

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
