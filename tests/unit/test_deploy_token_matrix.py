"""The scoped-token matrix over every endpoint of the API.

Each endpoint in the OpenAPI document is classified below; adding an endpoint without saying
what a deploy-only, app-restricted token and a read-only token may do with it fails
`test_every_endpoint_is_classified`. Only the endpoints in `PUBLIC` (no token at all) are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from conftest import Actor
from core import crypto
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from platform_apps.models import Domain
from platform_apps.models import RedisAddon
from tenants.models import ApiToken

IMAGE = "docker.io/library/python:3.13"
PREFIX = "/api/v1"

# Reachable without a token, and so outside any scope: excluded by name.
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("POST", "/hooks/apps/{app_id}/deploy"),
}


@dataclass(frozen=True)
class World:
    owner: Actor
    apps: dict[str, str]  # "A"/"B" -> app public id
    deployments: dict[str, str]  # "A"/"B" -> a live deployment of that app
    backups: dict[str, str]  # "A"/"B" -> a finished backup of that app's database
    spare_token_id: str
    domains: dict[str, str]  # "A"/"B" -> a pending custom domain of that app


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None


@dataclass(frozen=True)
class Rule:
    """How to call an endpoint for app `which`, and what each restricted token gets back."""

    build: Callable[[World, str], Call]
    deploy: int  # the deploy-only token restricted to app A, called for app A
    reader: int  # an unrestricted apps:read token
    per_app: bool = True  # names an app (or one of its deployments): app B is invisible to the deploy token


def _app(method: str, suffix: str = "", body: Any = None) -> Callable[[World, str], Call]:
    return lambda world, which: Call(method, f"/apps/{world.apps[which]}{suffix}", body)


def _deployment(suffix: str = "") -> Callable[[World, str], Call]:
    return lambda world, which: Call("GET", f"/deployments/{world.deployments[which]}{suffix}")


def _backup(method: str, suffix: str = "") -> Callable[[World, str], Call]:
    return lambda world, which: Call(
        method, f"/apps/{world.apps[which]}/addons/postgres/backups/{world.backups[which]}{suffix}"
    )


def _domain(method: str, suffix: str = "") -> Callable[[World, str], Call]:
    return lambda world, which: Call(method, f"/apps/{world.apps[which]}/domains/{world.domains[which]}{suffix}")


def _rollback(world: World, which: str) -> Call:
    return Call("POST", f"/apps/{world.apps[which]}/rollback", {"deployment_id": world.deployments[which]})


def _token_create(world: World, which: str) -> Call:
    return Call("POST", "/tokens", {"name": "another", "scopes": ["deploy"], "app_id": world.apps["A"]})


MATRIX: dict[tuple[str, str], Rule] = {
    # Deploying: all the deploy scope is for.
    ("POST", "/apps/{app_id}/deployments"): Rule(_app("POST", "/deployments", {"image": IMAGE}), 202, 403),
    ("GET", "/apps/{app_id}/deployments"): Rule(_app("GET", "/deployments"), 200, 200),
    ("GET", "/deployments/{deployment_id}"): Rule(_deployment(), 200, 200),
    ("GET", "/deployments/{deployment_id}/log"): Rule(_deployment("/log"), 200, 200),
    ("POST", "/apps/{app_id}/rollback"): Rule(_rollback, 202, 403),
    # The rest of the app: not the deploy token's business.
    ("GET", "/apps/{app_id}"): Rule(_app("GET"), 403, 200),
    ("GET", "/apps/{app_id}/replicas"): Rule(_app("GET", "/replicas"), 403, 200),
    ("GET", "/apps/{app_id}/logs"): Rule(_app("GET", "/logs"), 403, 200),
    ("PATCH", "/apps/{app_id}"): Rule(_app("PATCH", "", {"replicas": 2}), 403, 403),
    ("DELETE", "/apps/{app_id}"): Rule(_app("DELETE"), 403, 403),
    ("GET", "/apps/{app_id}/config"): Rule(_app("GET", "/config"), 403, 200),
    ("PATCH", "/apps/{app_id}/config"): Rule(_app("PATCH", "/config", {"vars": {"GREETING": "hi"}}), 403, 403),
    ("POST", "/apps/{app_id}/webhook-secret"): Rule(_app("POST", "/webhook-secret"), 403, 403),
    ("GET", "/apps/{app_id}/addons/postgres"): Rule(_app("GET", "/addons/postgres"), 403, 200),
    ("POST", "/apps/{app_id}/addons/postgres"): Rule(_app("POST", "/addons/postgres"), 403, 403),
    ("DELETE", "/apps/{app_id}/addons/postgres"): Rule(_app("DELETE", "/addons/postgres"), 403, 403),
    ("GET", "/apps/{app_id}/addons/redis"): Rule(_app("GET", "/addons/redis"), 403, 200),
    ("POST", "/apps/{app_id}/addons/redis"): Rule(_app("POST", "/addons/redis", {"maxmemory_mb": 16}), 403, 403),
    ("PATCH", "/apps/{app_id}/addons/redis"): Rule(_app("PATCH", "/addons/redis", {"policy": "allkeys-lru"}), 403, 403),
    ("DELETE", "/apps/{app_id}/addons/redis"): Rule(_app("DELETE", "/addons/redis"), 403, 403),
    # Database backups: their list and state with apps:read (like the add-on's); taking, restoring and
    # downloading one (all of the app's data) with apps:write.
    ("POST", "/apps/{app_id}/addons/postgres/backups"): Rule(_app("POST", "/addons/postgres/backups"), 403, 403),
    ("GET", "/apps/{app_id}/addons/postgres/backups"): Rule(_app("GET", "/addons/postgres/backups"), 403, 200),
    ("GET", "/apps/{app_id}/addons/postgres/backups/{backup_id}"): Rule(_backup("GET"), 403, 200),
    ("POST", "/apps/{app_id}/addons/postgres/backups/{backup_id}/restore"): Rule(_backup("POST", "/restore"), 403, 403),
    ("GET", "/apps/{app_id}/addons/postgres/backups/{backup_id}/download"): Rule(_backup("GET", "/download"), 403, 403),
    # Custom domains: listed and read with apps:read, added, checked and removed with apps:write.
    ("POST", "/apps/{app_id}/domains"): Rule(_app("POST", "/domains", {"hostname": "new.example.org"}), 403, 403),
    ("GET", "/apps/{app_id}/domains"): Rule(_app("GET", "/domains"), 403, 200),
    ("GET", "/apps/{app_id}/domains/{domain_id}"): Rule(_domain("GET"), 403, 200),
    ("POST", "/apps/{app_id}/domains/{domain_id}/verify"): Rule(_domain("POST", "/verify"), 403, 403),
    ("DELETE", "/apps/{app_id}/domains/{domain_id}"): Rule(_domain("DELETE"), 403, 403),
    # Tenant-wide: apps and tokens. Tokens need apps:write even to be listed.
    ("POST", "/apps"): Rule(lambda w, _: Call("POST", "/apps", {"name": "gamma"}), 403, 403, per_app=False),
    ("GET", "/apps"): Rule(lambda w, _: Call("GET", "/apps"), 403, 200, per_app=False),
    ("POST", "/tokens"): Rule(_token_create, 403, 403, per_app=False),
    ("GET", "/tokens"): Rule(lambda w, _: Call("GET", "/tokens"), 403, 403, per_app=False),
    ("DELETE", "/tokens/{token_id}"): Rule(
        lambda w, _: Call("DELETE", f"/tokens/{w.spare_token_id}"), 403, 403, per_app=False
    ),
    # The audit trail is read with apps:read (a deploy-only token does not read it).
    ("GET", "/audit"): Rule(lambda w, _: Call("GET", "/audit"), 403, 200, per_app=False),
}

IDS = [f"{method} {path}" for method, path in MATRIX]
PER_APP = {key: rule for key, rule in MATRIX.items() if rule.per_app}


def _ok(response: Any, status: int) -> Any:
    assert response.status_code == status, response.content
    return response.json()


def _mint(owner: Actor, name: str, scopes: list[str], app_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "scopes": scopes}
    if app_id is not None:
        body["app_id"] = app_id
    return dict(_ok(owner.call("POST", "/tokens", body), 201))


@pytest.fixture
def world(owner: Actor, settings: Any, tmp_path: Any) -> World:
    settings.BUILD_ROOT = tmp_path / "builds"
    apps: dict[str, str] = {}
    deployments: dict[str, str] = {}
    backups: dict[str, str] = {}
    domains: dict[str, str] = {}
    for which, name in (("A", "alpha"), ("B", "beta")):
        app_id = _ok(owner.call("POST", "/apps", {"name": name}), 201)["id"]
        apps[which] = app_id
        deployment_id = _ok(owner.call("POST", f"/apps/{app_id}/deployments", {"image": IMAGE}), 202)["id"]
        # As if the pipeline had built and served it, so that it can be rolled back to.
        Deployment.objects.filter(public_id=deployment_id).update(
            state=Deployment.State.LIVE,
            image_ref=f"localhost/coltsfoot-app:{deployment_id}",
            image_id="sha256:" + "a" * 64,
        )
        deployments[which] = deployment_id
        addon_id = _ok(owner.call("POST", f"/apps/{app_id}/addons/postgres"), 202)["id"]
        _ok(owner.call("POST", f"/apps/{app_id}/addons/redis", {"maxmemory_mb": 16}), 202)
        addon = Addon.objects.get(public_id=addon_id)
        backup = AddonBackup.objects.create(
            app=addon.app, addon=addon, state=AddonBackup.State.SUCCEEDED, key_encrypted=crypto.encrypt("k")
        )
        backups[which] = str(backup.public_id)
        domains[which] = _ok(owner.call("POST", f"/apps/{app_id}/domains", {"hostname": f"{name}.example.org"}), 201)[
            "id"
        ]
    spare = _mint(owner, "spare", ["apps:read"])
    return World(
        owner=owner,
        apps=apps,
        deployments=deployments,
        backups=backups,
        spare_token_id=spare["id"],
        domains=domains,
    )


def _actor(world: World, scopes: list[str], app: str | None) -> Actor:
    minted = _mint(world.owner, "+".join(scopes), scopes, world.apps[app] if app else None)
    assert minted["scopes"] == scopes
    return Actor(world.owner.tenant, minted["token"], Client())


@pytest.fixture
def ci(world: World) -> Actor:
    """The CI token: `{"scopes": ["deploy"], "app_id": A}`, minted by the owner."""
    return _actor(world, ["deploy"], "A")


@pytest.fixture
def reader(world: World) -> Actor:
    return _actor(world, ["apps:read"], None)


def snapshot() -> tuple[list[Any], ...]:
    """Everything a forbidden call could have changed."""
    return (
        list(
            App.objects.order_by("pk").values_list("public_id", "name", "state", "replicas", "webhook_secret_encrypted")
        ),
        list(Deployment.objects.order_by("pk").values_list("public_id", "state")),
        list(ConfigVar.objects.order_by("pk").values_list("app_id", "key")),
        list(Addon.objects.order_by("pk").values_list("public_id", "state")),
        list(RedisAddon.objects.order_by("pk").values_list("public_id", "state", "maxmemory_mb", "policy")),
        list(ApiToken.objects.order_by("pk").values_list("public_id", "scopes", "revoked_at")),
        list(Domain.objects.order_by("pk").values_list("public_id", "hostname", "status", "next_check_at")),
    )


def call(actor: Actor, request: Call) -> Any:
    return actor.call(request.method, request.path, request.body)


def assert_refused(actor: Actor, request: Call, status: int, code: str) -> None:
    before = snapshot()
    response = call(actor, request)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert snapshot() == before


# --- the classification itself -----------------------------------------------------------------


def test_every_endpoint_is_classified(db: None):
    response = Client().get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    operations = {
        (method.upper(), path.removeprefix(PREFIX))
        for path, methods in response.json()["paths"].items()
        for method in methods
    }
    unclassified = operations - set(MATRIX) - PUBLIC
    assert not unclassified, f"add these endpoints to MATRIX (or PUBLIC): {sorted(unclassified)}"
    assert not (set(MATRIX) | PUBLIC) - operations, "MATRIX names endpoints the API no longer has"
    assert not set(MATRIX) & PUBLIC


def test_per_app_endpoints_are_those_naming_an_app_or_deployment():
    for (_, path), rule in MATRIX.items():
        assert rule.per_app == ("{app_id}" in path or "{deployment_id}" in path), path


# --- deploy-only token restricted to app A ---------------------------------------------------


@pytest.mark.parametrize("key", list(MATRIX), ids=IDS)
def test_deploy_token_on_its_own_app(world: World, ci: Actor, key: tuple[str, str]):
    rule = MATRIX[key]
    request = rule.build(world, "A")
    if rule.deploy == 403:
        assert_refused(ci, request, 403, "auth.insufficient_scope")
        return
    response = call(ci, request)
    assert response.status_code == rule.deploy, response.content
    if request.method == "POST":
        created = response.json()
        assert created["app_id"] == world.apps["A"]
        assert created["state"] == "queued"
        assert Deployment.objects.filter(public_id=created["id"], app__public_id=world.apps["A"]).exists()


@pytest.mark.parametrize("key", list(PER_APP), ids=[f"{m} {p}" for m, p in PER_APP])
def test_deploy_token_cannot_see_another_app(world: World, ci: Actor, key: tuple[str, str]):
    # Same 404 as for an app that does not exist, whatever the scope would have allowed.
    assert_refused(ci, MATRIX[key].build(world, "B"), 404, "not_found")


def test_deploy_token_cannot_roll_its_app_back_to_another_apps_image(world: World, ci: Actor):
    request = Call("POST", f"/apps/{world.apps['A']}/rollback", {"deployment_id": world.deployments["B"]})
    assert_refused(ci, request, 404, "not_found")


def test_deploy_token_rollback_reuses_the_image(world: World, ci: Actor):
    response = call(ci, _rollback(world, "A"))
    assert response.status_code == 202
    source = response.json()["source"]
    assert source == {"kind": "rollback", "deployment_id": world.deployments["A"]}
    assert response.json()["image"] == f"localhost/coltsfoot-app:{world.deployments['A']}"


def test_deploy_token_lists_only_its_apps_deployments(world: World, ci: Actor):
    listing = call(ci, Call("GET", f"/apps/{world.apps['A']}/deployments")).json()
    assert [item["app_id"] for item in listing["items"]] == [world.apps["A"]]
    assert listing["count"] == 1


# --- read-only token -------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(MATRIX), ids=IDS)
def test_read_only_token(world: World, reader: Actor, key: tuple[str, str]):
    rule = MATRIX[key]
    request = rule.build(world, "A")
    # Every write is refused, whatever the table says; GETs as classified (tokens need apps:write).
    if request.method != "GET" or rule.reader == 403:
        assert_refused(reader, request, 403, "auth.insufficient_scope")
        return
    response = call(reader, request)
    assert response.status_code == 200, response.content


def test_read_only_token_sees_every_app(world: World, reader: Actor):
    listing = call(reader, Call("GET", "/apps")).json()
    assert {item["id"] for item in listing["items"]} == set(world.apps.values())
    for which in ("A", "B"):
        for key, rule in MATRIX.items():
            # A backup's download is all of the app's data: apps:write, like the writes.
            if key[0] == "GET" and rule.per_app and not key[1].endswith("/download"):
                assert call(reader, rule.build(world, which)).status_code == 200, key
