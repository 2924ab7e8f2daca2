from __future__ import annotations

from typing import Any

import pytest

from conftest import Actor
from tenants.models import ApiToken


def test_only_the_hash_is_stored(owner: Actor):
    response = owner.call("POST", "/tokens", {"name": "ci", "scopes": ["apps:read"]})
    assert response.status_code == 201
    plaintext = response.json()["token"]
    stored = ApiToken.objects.get(public_id=response.json()["id"])
    for value in (stored.prefix, stored.token_hash, stored.name, str(stored.scopes)):
        assert plaintext not in value
    assert plaintext.split(".", 1)[1] not in stored.token_hash
    # The list never shows secrets again.
    listing = owner.call("GET", "/tokens").json()
    assert all("token" not in item for item in listing["items"])


def test_revoked_token_stops_working(owner: Actor):
    minted = owner.call("POST", "/tokens", {"name": "tmp", "scopes": ["apps:read"]}).json()
    reader = Actor(owner.tenant, minted["token"], owner.client)
    assert reader.call("GET", "/apps").status_code == 200
    assert owner.call("DELETE", f"/tokens/{minted['id']}").status_code == 204
    response = reader.call("GET", "/apps")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "auth.invalid_token"


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Bearer nope", "Basic abc", "Bearer cf_000000000.wrong", "Bearer " + "x" * 5000],
)
def test_bad_credentials_are_401(db: None, client: Any, header: str):
    response = client.get("/api/v1/apps", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "auth.invalid_token"


def test_right_prefix_wrong_secret_is_401(owner: Actor):
    prefix = owner.token.split(".", 1)[0]
    response = Actor(owner.tenant, prefix + ".forged", owner.client).call("GET", "/apps")
    assert response.status_code == 401


def test_read_scope_cannot_write(make_actor: Any):
    reader = make_actor("readers", scopes=["apps:read"])
    response = reader.call("POST", "/apps", {"name": "x"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "auth.insufficient_scope"


def test_write_scope_without_read_cannot_list(make_actor: Any):
    writer = make_actor("writers", scopes=["apps:write"])
    assert writer.call("POST", "/apps", {"name": "x"}).status_code == 201
    assert writer.call("GET", "/apps").status_code == 403


def test_token_cannot_mint_more_power_than_it_has(owner: Actor):
    minted = owner.call("POST", "/tokens", {"name": "w", "scopes": ["apps:write"]}).json()
    writer = Actor(owner.tenant, minted["token"], owner.client)
    response = writer.call("POST", "/tokens", {"name": "escalate", "scopes": ["apps:write", "deploy"]})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "token.scope_escalation"
    assert writer.call("POST", "/tokens", {"name": "same", "scopes": ["apps:write"]}).status_code == 201


def test_app_restricted_token_sees_one_app_and_cannot_widen(owner: Actor):
    one = owner.call("POST", "/apps", {"name": "one"}).json()
    two = owner.call("POST", "/apps", {"name": "two"}).json()
    minted = owner.call(
        "POST", "/tokens", {"name": "one-only", "scopes": ["apps:read", "apps:write"], "app_id": one["id"]}
    ).json()
    assert minted["app_id"] == one["id"]
    restricted = Actor(owner.tenant, minted["token"], owner.client)
    assert restricted.call("GET", f"/apps/{one['id']}").status_code == 200
    assert restricted.call("GET", f"/apps/{two['id']}").status_code == 404
    assert [a["id"] for a in restricted.call("GET", "/apps").json()["items"]] == [one["id"]]
    # It can neither mint an unrestricted token nor one for another app, nor create apps.
    widen = restricted.call("POST", "/tokens", {"name": "all", "scopes": ["apps:read"]})
    assert widen.status_code == 403
    other = restricted.call("POST", "/tokens", {"name": "two", "scopes": ["apps:read"], "app_id": two["id"]})
    assert other.status_code == 404
    assert restricted.call("POST", "/apps", {"name": "three"}).status_code == 403


def test_deploy_only_token_can_do_nothing_else(owner: Actor):
    app = owner.call("POST", "/apps", {"name": "ship"}).json()
    minted = owner.call("POST", "/tokens", {"name": "ci", "scopes": ["deploy"], "app_id": app["id"]}).json()
    ci = Actor(owner.tenant, minted["token"], owner.client)
    assert ci.call("GET", f"/apps/{app['id']}").status_code == 403
    assert ci.call("PATCH", f"/apps/{app['id']}", {"replicas": 2}).status_code == 403
    assert ci.call("DELETE", f"/apps/{app['id']}").status_code == 403
    assert ci.call("POST", "/tokens", {"name": "x", "scopes": ["deploy"], "app_id": app["id"]}).status_code == 403
    assert ci.call("GET", "/tokens").status_code == 403
    assert ci.call("POST", "/apps", {"name": "new"}).status_code == 403


def test_last_used_is_recorded(owner: Actor):
    owner.call("GET", "/apps")
    assert ApiToken.objects.get(tenant=owner.tenant).last_used_at is not None


def test_create_tenant_command_prints_json_once(db: None, capsys: Any):
    import json

    from django.core.management import call_command

    call_command("create_tenant", "newco")
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"tenant_id", "token"}
    token = ApiToken.objects.get(tenant__public_id=data["tenant_id"])
    assert token.matches(data["token"])
    assert token.scopes == ["apps:read", "apps:write", "deploy"]
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("create_tenant", "newco")
    with pytest.raises(CommandError):
        call_command("create_tenant", "Not A Slug")


def test_create_tenant_command_sets_the_cpu_quota_and_refuses_a_bad_one(db: None, capsys: Any):
    import json
    from decimal import Decimal

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from tenants.models import Tenant

    call_command("create_tenant", "bigco", "--max-cpus", "12.5")
    data = json.loads(capsys.readouterr().out)
    assert Tenant.objects.get(public_id=data["tenant_id"]).max_cpus == Decimal("12.5")
    for bad in ("0", "-1", "lots", "nan"):
        with pytest.raises(CommandError):
            call_command("create_tenant", f"co{bad.strip('-')}x", "--max-cpus", bad)
    assert not Tenant.objects.filter(slug__startswith="co").exists()
