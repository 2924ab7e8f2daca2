"""Hostile input on every write: always a 4xx in the error shape, never a 500, never a partial write."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Actor
from platform_apps.models import App
from tenants.models import ApiToken

BAD_NAMES: list[Any] = [
    "",
    " ",
    "Hello",
    "hello_world",
    "-hello",
    "hello-",
    "1hello",
    "a" * 31,
    "a" * 10_000,
    "hеllo",  # Cyrillic e
    "һello",  # Cyrillic shha
    "hello\u200b",  # zero-width space
    "ｈｅｌｌｏ",  # full-width
    "hello.evil",
    "../etc",
    "hello\n",
    "hel\x00lo",
    "😀",
    None,
    123,
    1.5,
    True,
    ["hello"],
    {"name": "hello"},
]

BAD_APP_BODIES: list[Any] = [
    *({"name": name} for name in BAD_NAMES),
    {},
    {"name": "ok", "unknown": 1},
    {"name": "ok", "replicas": 0},
    {"name": "ok", "replicas": -1},
    {"name": "ok", "replicas": "2"},
    {"name": "ok", "replicas": 1.5},
    {"name": "ok", "replicas": 10**30},
    {"name": "ok", "memory_mb": 1},
    {"name": "ok", "cpus": "NaN"},
    {"name": "ok", "cpus": 1000},
    {"name": "ok", "deploy_branch": "-x"},
    {"name": "ok", "deploy_branch": "a b"},
    [],
    "hello",
    42,
    None,
]

MALFORMED_BODIES: list[bytes] = [
    b"{",
    b'{"name": "ok",}',
    b"\xff\xfe\x00",
    b'{"name": "ok"' + b" " * 100,
    b"nul\x00l",
]


def _assert_error_shape(response: Any, statuses: set[int]) -> None:
    assert response.status_code in statuses, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["code"], str)
    assert body["error"]["code"]
    assert "Traceback" not in response.content.decode(errors="replace")


@pytest.mark.parametrize("body", BAD_APP_BODIES, ids=repr)
def test_create_app_refuses_bad_bodies(owner: Actor, body: Any):
    response = owner.call("POST", "/apps", json.dumps(body))
    _assert_error_shape(response, {400, 422})
    assert not App.objects.exists()


@pytest.mark.parametrize("raw", MALFORMED_BODIES, ids=repr)
def test_malformed_json(owner: Actor, raw: bytes):
    response = owner.call("POST", "/apps", raw)
    _assert_error_shape(response, {400, 422})
    assert not App.objects.exists()


def test_multi_mib_body_is_413(owner: Actor):
    huge = json.dumps({"name": "ok", "pad": "a" * (3 * 1024 * 1024)})
    response = owner.call("POST", "/apps", huge)
    _assert_error_shape(response, {413})
    assert response.json()["error"]["code"] == "request.too_large"
    assert not App.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"replicas": 0},
        {"replicas": "2"},
        {"name": "renamed"},
        {"unknown": True},
        {"cpus": -1},
        {"memory_mb": None, "extra": 1},
        [],
        "x",
    ],
    ids=repr,
)
def test_patch_refuses_bad_bodies_and_changes_nothing(owner: Actor, body: Any):
    app = owner.call("POST", "/apps", {"name": "stable"}).json()
    response = owner.call("PATCH", f"/apps/{app['id']}", json.dumps(body))
    _assert_error_shape(response, {400, 422})
    after = owner.call("GET", f"/apps/{app['id']}").json()
    assert after == app | {"updated_at": after["updated_at"]}
    assert after["name"] == "stable"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "x", "scopes": ["deploy", "deploy"]},
        {"name": "x", "scopes": "deploy"},
        {"name": "", "scopes": ["deploy"]},
        {"name": "x" * 101, "scopes": ["deploy"]},
        {"name": "x\n", "scopes": ["deploy"]},
        {"name": "x", "scopes": ["deploy"], "app_id": "not-a-uuid"},
        {"name": "x", "scopes": ["deploy"], "app_id": 1},
        {"name": "x", "scopes": ["deploy"], "tenant": "other"},
    ],
    ids=repr,
)
def test_token_create_refuses_bad_bodies(owner: Actor, body: Any):
    before = ApiToken.objects.count()
    response = owner.call("POST", "/tokens", json.dumps(body))
    _assert_error_shape(response, {400, 422})
    assert ApiToken.objects.count() == before


@pytest.mark.parametrize("path", ["/apps/1", "/apps/not-a-uuid", "/apps/%00", "/tokens/1", "/apps/" + "f" * 500])
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_non_uuid_ids(owner: Actor, path: str, method: str):
    if path.startswith("/tokens") and method != "DELETE":
        method = "DELETE"
    response = owner.call(method, path, {"replicas": 1} if method == "PATCH" else None)
    _assert_error_shape(response, {404, 405, 422})


def test_unknown_route_and_method_use_error_shape(owner: Actor):
    _assert_error_shape(owner.call("GET", "/nope"), {404})
    _assert_error_shape(owner.call("PUT", "/apps"), {405})
