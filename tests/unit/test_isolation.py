"""The tenant-isolation matrix: every tenant-owned endpoint, every method.

An outsider (another active tenant) gets 404 for the owner's objects, exactly as for objects that
do not exist; a suspended tenant gets 403 `tenant.suspended` everywhere."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conftest import Actor

# (method, path template, body). `{app}`, `{token}` and `{deployment}` are the owner's objects.
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/apps/{app}", None),
    ("PATCH", "/apps/{app}", {"replicas": 1}),
    ("DELETE", "/apps/{app}", None),
    ("DELETE", "/tokens/{token}", None),
    ("POST", "/tokens", {"name": "x", "scopes": ["deploy"], "app_id": "{app}"}),
]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.fixture
def owned(owner: Actor) -> dict[str, str]:
    app = owner.call("POST", "/apps", {"name": "shop"}).json()
    token = owner.call("POST", "/tokens", {"name": "ci", "scopes": ["apps:read"]}).json()
    return {"app": app["id"], "token": token["id"]}


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_outsider_gets_404(outsider: Actor, owner: Actor, owned: dict[str, str], method: str, path: str, body: Any):
    response = outsider.call(method, _fill(path, owned), _fill(body, owned))
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"
    # ...and nothing changed for the owner.
    assert owner.call("GET", f"/apps/{owned['app']}").json()["state"] == "active"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_missing_object_is_the_same_404(owner: Actor, method: str, path: str, body: Any):
    ids = {"app": str(uuid.uuid4()), "token": str(uuid.uuid4())}
    response = owner.call(method, _fill(path, ids), _fill(body, ids))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [*ENDPOINTS, ("GET", "/apps", None), ("POST", "/apps", {"name": "x"}), ("GET", "/tokens", None)],
)
def test_suspended_tenant_gets_403(suspended: Actor, owned: dict[str, str], method: str, path: str, body: Any):
    response = suspended.call(method, _fill(path, owned), _fill(body, owned))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant.suspended"


def test_suspended_tenant_cannot_touch_its_own_apps(make_actor: Any):
    actor = make_actor("umbrella")
    app_id = actor.call("POST", "/apps", {"name": "web"}).json()["id"]
    actor.tenant.status = "suspended"
    actor.tenant.save()
    response = actor.call("GET", f"/apps/{app_id}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant.suspended"


def test_outsider_list_shows_nothing_of_owner(outsider: Actor, owned: dict[str, str]):
    body = outsider.call("GET", "/apps").json()
    assert body == {"items": [], "count": 0}
    tokens = outsider.call("GET", "/tokens").json()
    assert owned["token"] not in {t["id"] for t in tokens["items"]}
