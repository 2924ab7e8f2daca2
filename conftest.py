"""Shared fixtures for the unit tests: three tenants, as in every isolation test here — one
that owns things, one that must see nothing of them, and one that is suspended."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client


@dataclass
class Actor:
    tenant: Any
    token: str
    client: Client

    def call(self, method: str, path: str, body: Any = None, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {self.token}", **extra}
        if body is not None and not isinstance(body, bytes | str):
            kwargs["data"] = json.dumps(body)
            kwargs["content_type"] = "application/json"
        elif body is not None:
            kwargs["data"] = body
            kwargs.setdefault("content_type", "application/json")
        return getattr(self.client, method.lower())(f"/api/v1{path}", **kwargs)


@pytest.fixture
def make_actor(db: None) -> Callable[..., Actor]:
    from tenants.models import ApiToken
    from tenants.services import tenant_create
    from tenants.services import token_create_initial

    def make(slug: str, *, scopes: list[str] | None = None, suspended: bool = False) -> Actor:
        tenant = tenant_create(slug=slug)
        token, plaintext = token_create_initial(tenant=tenant, name="test")
        if scopes is not None:
            ApiToken.objects.filter(pk=token.pk).update(scopes=scopes)
        if suspended:
            tenant.status = tenant.Status.SUSPENDED
            tenant.save()
        return Actor(tenant=tenant, token=plaintext, client=Client())

    return make


@pytest.fixture
def owner(make_actor: Callable[..., Actor]) -> Actor:
    return make_actor("acme")


@pytest.fixture
def outsider(make_actor: Callable[..., Actor]) -> Actor:
    return make_actor("globex")


@pytest.fixture
def suspended(make_actor: Callable[..., Actor]) -> Actor:
    return make_actor("initech", suspended=True)
