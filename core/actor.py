"""Who is making the current request, and from where: what the audit trail records with each change.

Like the log context (`core.logging`), these live in context variables that the middleware resets
per request: the auth layer sets the actor once it has resolved a token, the webhook endpoint once
a signature has verified, and the admin passes its user explicitly. Outside a request (a Celery
task, a management command) there is no actor, and the audit trail says `system`.
"""

from __future__ import annotations

import contextvars
import ipaddress
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest
from django.http import HttpResponse


@dataclass(frozen=True)
class Actor:
    """`kind` is token, admin, webhook or system; `id` the token's (or, for a webhook, the app's)
    public UUID; `name` the token's prefix or the admin's username. Never a secret or a hash."""

    kind: str
    id: uuid.UUID | None = None
    name: str = ""

    @classmethod
    def token(cls, public_id: uuid.UUID, prefix: str) -> Actor:
        return cls("token", public_id, prefix)

    @classmethod
    def admin(cls, username: str) -> Actor:
        return cls("admin", None, username)

    @classmethod
    def webhook(cls, app_id: uuid.UUID) -> Actor:
        return cls("webhook", app_id, "webhook")


SYSTEM = Actor("system")

actor_var: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("actor", default=None)
client_address_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_address", default=None)


def set_actor(actor: Actor) -> None:
    actor_var.set(actor)


def current_actor() -> Actor:
    return actor_var.get() or SYSTEM


def _ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_address(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, unless it is a proxy listed in COLTSFOOT_TRUSTED_PROXIES: then the nearest
    X-Forwarded-For hop that is not itself a trusted proxy (walking from the right, the entries
    our own proxies appended; anything further left is whatever the client chose to send)."""
    remote = _ip(str(request.META.get("REMOTE_ADDR") or ""))
    trusted = set(settings.TRUSTED_PROXIES)
    if remote is None or remote not in trusted:
        return remote
    hops = [hop for hop in str(request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            break
        if address not in trusted:
            return address
    return remote


class RequestContextMiddleware:
    """Start each request with no actor and its client address."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        actor_token = actor_var.set(None)
        address_token = client_address_var.set(client_address(request))
        try:
            return self.get_response(request)
        finally:
            client_address_var.reset(address_token)
            actor_var.reset(actor_token)
