"""Structured logging: one JSON line per event, carrying the request id and the tenant, app and
deployment UUIDs the request (or task) is about.

Those ids live in context variables: the middleware resets them per request, the auth layer binds
the tenant, the access helpers bind the app and deployment (`bind`), and Celery tasks bind their
own, so no log call has to repeat them and every line about a tenant's infrastructure can be found.
An id passed through `extra=` (say, of an object just created) wins over the bound one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC
from datetime import datetime

from django.http import HttpRequest
from django.http import HttpResponse

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant_id", default=None)
app_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("app_id", default=None)
deployment_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("deployment_id", default=None)

# LogRecord attribute -> the context variable that fills it when the call did not pass it.
_CONTEXT: dict[str, contextvars.ContextVar[str | None]] = {
    "request_id": request_id_var,
    "tenant_id": tenant_id_var,
    "app_id": app_id_var,
    "deployment_id": deployment_id_var,
}

# Attributes every LogRecord has; anything else was passed through `extra=` and is printed.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def bind(
    *,
    tenant_id: uuid.UUID | str | None = None,
    app_id: uuid.UUID | str | None = None,
    deployment_id: uuid.UUID | str | None = None,
) -> None:
    """Attach ids to every later log line of this request or task (None leaves one as it is)."""
    for var, value in ((tenant_id_var, tenant_id), (app_id_var, app_id), (deployment_id_var, deployment_id)):
        if value is not None:
            var.set(str(value))


def unbind() -> None:
    """Forget every bound id (a worker process runs one task after another)."""
    for var in _CONTEXT.values():
        var.set(None)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for attribute, var in _CONTEXT.items():
            if not hasattr(record, attribute):
                setattr(record, attribute, var.get())
        return True


class StructuredFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and value is not None and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class RequestIdMiddleware:
    """Give each request an id (a client's X-Request-Id if it is sane), echo it back, log with it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get("X-Request-Id", "")
        request_id = supplied if 8 <= len(supplied) <= 64 and supplied.replace("-", "").isalnum() else uuid.uuid4().hex
        resets = [(var, var.set(None)) for var in _CONTEXT.values()]
        request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            for var, token in reversed(resets):
                var.reset(token)
        response["X-Request-Id"] = request_id
        return response
