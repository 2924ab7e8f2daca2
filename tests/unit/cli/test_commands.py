"""Every command against an API answered by respx: what it sends, what it prints, how it exits."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from coltsfoot_cli.api import Exit
from coltsfoot_cli.main import rollback_target
from tests.unit.cli.conftest import API
from tests.unit.cli.conftest import APP_ID
from tests.unit.cli.conftest import DEPLOYMENT_ID
from tests.unit.cli.conftest import TOKEN
from tests.unit.cli.conftest import app_json
from tests.unit.cli.conftest import deployment_json
from tests.unit.cli.conftest import error_json


def body(route) -> Any:
    return json.loads(route.calls.last.request.content)


# --- login, whoami, errors and exit codes ---------------------------------------------------------


def test_login_verifies_the_token_and_stores_it_readable_only_by_the_owner(cli, api, workdir, monkeypatch):
    monkeypatch.delenv("COLTSFOOT_TOKEN")
    probe = api.get("/apps").respond(json={"items": [], "count": 0})
    result = cli("login", "--api", "http://api.test", input=TOKEN + "\n")
    assert result.exit_code == 0, result.output
    assert probe.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    stored = workdir.parent / "config" / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text()) == {"api": API, "token": TOKEN}
    assert "s3cretpart" not in result.output
    # The stored login is used from now on.
    monkeypatch.delenv("COLTSFOOT_API")
    api.get("/apps").respond(json={"items": [app_json()], "count": 1})
    listed = cli("apps")
    assert listed.exit_code == 0
    assert api.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_login_with_a_refused_token_stores_nothing_and_exits_4(cli, api, workdir, monkeypatch):
    monkeypatch.delenv("COLTSFOOT_TOKEN")
    api.get("/apps").respond(401, json=error_json("auth.invalid_token", "Invalid or missing API token."))
    result = cli("login", input="cf_x.y\n")
    assert result.exit_code == Exit.AUTH
    assert "auth.invalid_token" in result.stderr
    assert not (workdir.parent / "config" / "credentials.json").exists()


def test_login_accepts_a_deploy_only_token(cli, api, monkeypatch):
    monkeypatch.delenv("COLTSFOOT_TOKEN")
    api.get("/apps").respond(403, json=error_json("auth.insufficient_scope", "lacks apps:read"))
    assert cli("login", input=TOKEN + "\n").exit_code == 0


def test_without_a_login_commands_exit_4(cli, api, monkeypatch):
    monkeypatch.delenv("COLTSFOOT_TOKEN")
    result = cli("apps")
    assert result.exit_code == Exit.AUTH
    assert "coltsfoot login" in result.stderr
    assert not api.calls


def test_a_token_stored_for_another_api_is_not_sent_to_this_one(cli, api, workdir, monkeypatch):
    monkeypatch.delenv("COLTSFOOT_TOKEN")
    config = workdir.parent / "config"
    config.mkdir()
    (config / "credentials.json").write_text(json.dumps({"api": "http://other.test/api/v1", "token": TOKEN}))
    result = cli("apps")  # COLTSFOOT_API is api.test
    assert result.exit_code == Exit.AUTH
    assert not api.calls


def test_unreachable_api_exits_5(cli, api):
    api.get("/apps").mock(side_effect=httpx.ConnectError("refused"))
    result = cli("apps")
    assert result.exit_code == Exit.UNREACHABLE
    assert "network.unreachable" in result.stderr


def test_an_answer_that_is_not_the_error_shape_is_reported_briefly(cli, api):
    api.get("/apps").respond(502, text="<html>" + "x" * 5000 + "</html>")
    result = cli("apps")
    assert result.exit_code == Exit.UNREACHABLE
    assert "http.502" in result.stderr
    assert len(result.stderr) < 600


def test_whoami_finds_the_token_by_its_prefix(cli, api, hello):
    hello()
    api.get("/tokens").respond(
        json={
            "items": [
                {
                    "id": "t1",
                    "name": "laptop",
                    "prefix": "cf_abc123",
                    "scopes": ["apps:read", "apps:write", "deploy"],
                    "app_id": None,
                    "created_at": "x",
                    "last_used_at": None,
                    "revoked": False,
                },
                {
                    "id": "t2",
                    "name": "ci",
                    "prefix": "cf_other",
                    "scopes": ["deploy"],
                    "app_id": APP_ID,
                    "created_at": "x",
                    "last_used_at": None,
                    "revoked": False,
                },
            ],
            "count": 2,
        }
    )
    result = cli("whoami", "--json")
    assert result.exit_code == 0, result.output
    me = json.loads(result.stdout)
    assert me["api"] == API
    assert me["token_prefix"] == "cf_abc123"
    assert me["token_from"] == "COLTSFOOT_TOKEN"
    assert me["name"] == "laptop"
    assert me["apps"] == ["hello"]
    assert "s3cretpart" not in result.output


def test_whoami_of_a_deploy_only_token_says_what_it_cannot_see(cli, api):
    denied = error_json("auth.insufficient_scope", "lacks the scope", {"required": ["apps:write"]})
    api.get("/tokens").respond(403, json=denied)
    api.get("/apps").respond(403, json=denied)
    result = cli("whoami")
    assert result.exit_code == 0, result.output
    assert "cf_abc123" in result.stdout
    assert "cannot list apps" in result.stdout


# --- apps -----------------------------------------------------------------------------------------


def test_apps_lists_names_status_and_urls(cli, hello):
    hello(status="running")
    result = cli("apps")
    assert result.exit_code == 0
    assert "hello" in result.stdout
    assert "running" in result.stdout
    assert "http://hello-acme.localhost:8080/" in result.stdout


def test_apps_json_is_the_api_items(cli, hello):
    hello()
    result = cli("apps", "--json")
    assert json.loads(result.stdout)[0]["id"] == APP_ID


def test_apps_create_sends_name_and_size(cli, api):
    route = api.post("/apps").respond(201, json=app_json(name="web"))
    result = cli("apps", "create", "web", "--replicas", "2", "--memory", "512")
    assert result.exit_code == 0, result.output
    assert body(route) == {"name": "web", "replicas": 2, "memory_mb": 512}


def test_apps_create_prints_the_api_error_code_and_details(cli, api):
    api.post("/apps").respond(
        422,
        json=error_json(
            "request.invalid", "The request is invalid.", [{"field": "name", "message": "bad label", "type": "x"}]
        ),
    )
    result = cli("apps", "create", "Bad_Name")
    assert result.exit_code == Exit.API_ERROR
    assert "request.invalid" in result.stderr
    assert "name: bad label" in result.stderr


def test_apps_delete_needs_the_name_confirmed(cli, api, hello):
    hello()
    route = api.delete(f"/apps/{APP_ID}").respond(202, json=app_json(state="deleting"))
    refused = cli("apps", "delete", "hello", "--confirm", "helo")
    assert refused.exit_code == Exit.USAGE
    assert not route.called
    assert cli("apps", "delete", "hello", "--confirm", "hello").exit_code == 0
    assert route.called


def test_an_unknown_app_is_an_api_error(cli, api):
    api.get("/apps").respond(json={"items": [], "count": 0})
    result = cli("status", "nope")
    assert result.exit_code == Exit.API_ERROR
    assert "No app named 'nope'" in result.stderr


def test_app_lookup_pages_through_every_app(cli, api):
    first = [app_json(id=f"00000000-0000-4000-8000-{i:012d}", name=f"app{i}") for i in range(100)]
    pages = api.get("/apps").mock(
        side_effect=[
            httpx.Response(200, json={"items": first, "count": 101}),
            httpx.Response(200, json={"items": [app_json()], "count": 101}),
        ]
    )
    api.get(f"/apps/{APP_ID}").respond(json=app_json())
    api.get(f"/apps/{APP_ID}/replicas").respond(json={"items": [], "count": 0})
    assert cli("status", "hello").exit_code == 0
    assert [c.request.url.params["offset"] for c in pages.calls] == ["0", "100"]


def test_no_app_given_and_no_project_file_is_a_usage_error(cli, api):
    result = cli("status")
    assert result.exit_code == Exit.USAGE
    assert "--app" in result.stderr


# --- status ---------------------------------------------------------------------------------------


def test_status_shows_each_replica(cli, api, hello):
    hello(status="degraded", live_deployment_id=DEPLOYMENT_ID, replicas=2)
    replica = {"deployment_id": DEPLOYMENT_ID, "started_at": "2026-12-01T10:00:00Z", "next_restart_at": None}
    api.get(f"/apps/{APP_ID}/replicas").respond(
        json={
            "items": [
                {
                    **replica,
                    "index": 1,
                    "name": "web.1",
                    "state": "running",
                    "restarts": 0,
                    "last_exit_code": None,
                    "last_exit_reason": None,
                },
                {
                    **replica,
                    "index": 2,
                    "name": "web.2",
                    "state": "crashed",
                    "restarts": 3,
                    "last_exit_code": 137,
                    "last_exit_reason": "oom_killed",
                },
            ],
            "count": 2,
        }
    )
    result = cli("status", "hello")
    assert result.exit_code == 0, result.output
    assert "degraded" in result.stdout
    assert "http://hello-acme.localhost:8080/" in result.stdout
    web2 = next(line for line in result.stdout.splitlines() if "web.2" in line)
    assert "crashed" in web2
    assert "3" in web2
    assert "oom_killed (137)" in web2
    as_json = json.loads(cli("status", "--app", "hello", "--json").stdout)
    assert [r["name"] for r in as_json["replicas"]] == ["web.1", "web.2"]


def test_status_refuses_two_different_apps(cli, api):
    assert cli("status", "one", "--app", "two").exit_code == Exit.USAGE


# --- config ---------------------------------------------------------------------------------------


def test_config_shows_vars_and_secret_names(cli, api, hello):
    hello()
    api.get(f"/apps/{APP_ID}/config").respond(json={"vars": {"GREETING": "Hi"}, "secrets": ["API_KEY"]})
    result = cli("config", "hello")
    assert result.exit_code == 0, result.output
    assert "GREETING" in result.stdout
    assert "Hi" in result.stdout
    assert "API_KEY" in result.stdout
    assert json.loads(cli("config", "--app", "hello", "--json").stdout)["secrets"] == ["API_KEY"]


def test_config_set_sends_vars_or_secrets(cli, api, hello):
    hello()
    route = api.patch(f"/apps/{APP_ID}/config").respond(
        json={"vars": {"A": "1", "B": "x=y"}, "secrets": [], "deployment_id": DEPLOYMENT_ID}
    )
    result = cli("config", "set", "A=1", "B=x=y", "--app", "hello")
    assert result.exit_code == 0, result.output
    assert body(route) == {"vars": {"A": "1", "B": "x=y"}}
    assert DEPLOYMENT_ID in result.stderr  # the release that applies it
    assert cli("config", "hello", "set", "TOKEN=t", "--secret").exit_code == 0
    assert body(route) == {"secrets": {"TOKEN": "t"}}


def test_config_set_refuses_what_is_not_key_value(cli, api):
    assert cli("config", "set", "NOVALUE", "--app", "hello").exit_code == Exit.USAGE


def test_config_unset_deletes_each_key_where_it_is(cli, api, hello):
    hello()
    api.get(f"/apps/{APP_ID}/config").respond(json={"vars": {"A": "1"}, "secrets": ["S"]})
    route = api.patch(f"/apps/{APP_ID}/config").respond(json={"vars": {}, "secrets": [], "deployment_id": None})
    result = cli("config", "unset", "A", "S", "MISSING", "--app", "hello")
    assert result.exit_code == 0, result.output
    assert body(route) == {"vars": {"A": None}, "secrets": {"S": None}}
    assert "MISSING is not set" in result.stderr


def test_config_error_codes_are_printed(cli, api, hello):
    hello()
    api.patch(f"/apps/{APP_ID}/config").respond(422, json=error_json("config.reserved_key", "PORT is reserved."))
    result = cli("config", "set", "PORT=1", "--app", "hello")
    assert result.exit_code == Exit.API_ERROR
    assert "config.reserved_key" in result.stderr
    assert "PORT is reserved." in result.stderr


# --- scale, releases, rollback, url ---------------------------------------------------------------


def test_scale_patches_replicas_and_memory(cli, api, hello):
    hello()
    route = api.patch(f"/apps/{APP_ID}").respond(json=app_json(replicas=3, memory_mb=512))
    result = cli("scale", "3", "--memory", "512", "--app", "hello")
    assert result.exit_code == 0, result.output
    assert body(route) == {"replicas": 3, "memory_mb": 512}
    assert cli("scale", "--app", "hello").exit_code == Exit.USAGE


def test_scale_quota_error(cli, api, hello):
    hello()
    api.patch(f"/apps/{APP_ID}").respond(422, json=error_json("quota.replicas_exceeded", "At most 4 replicas."))
    result = cli("scale", "40", "--app", "hello")
    assert result.exit_code == Exit.API_ERROR
    assert "quota.replicas_exceeded" in result.stderr


def _history() -> list[dict[str, Any]]:
    return [
        deployment_json(id="d4", number=4, state="live", image="img4"),
        deployment_json(id="d3", number=3, state="failed", error={"code": "build.no_web_process", "message": "x"}),
        deployment_json(id="d2", number=2, state="superseded", image="img2"),
        deployment_json(id="d1", number=1, state="superseded", image="img1"),
    ]


def test_releases_lists_deployments_with_their_error_codes(cli, api, hello):
    hello()
    api.get(f"/apps/{APP_ID}/deployments").respond(json={"items": _history(), "count": 4})
    result = cli("releases", "--app", "hello")
    assert result.exit_code == 0
    assert "build.no_web_process" in result.stdout
    assert [d["number"] for d in json.loads(cli("releases", "--app", "hello", "--json").stdout)] == [4, 3, 2, 1]


def test_rollback_target_is_the_previous_live_deployment_by_default():
    history = _history()
    assert rollback_target(history, "d4", None)["id"] == "d2"
    assert rollback_target(history, "d4", 1)["id"] == "d1"
    with pytest.raises(Exception, match="no deployment #9"):
        rollback_target(history, "d4", 9)
    with pytest.raises(Exception, match="nothing to roll back to"):
        rollback_target(history[:1], "d4", None)


def test_rollback_posts_the_target_and_watches_it_go_live(cli, api, hello):
    hello(live_deployment_id="d4")
    api.get(f"/apps/{APP_ID}/deployments").respond(json={"items": _history(), "count": 4})
    route = api.post(f"/apps/{APP_ID}/rollback").respond(202, json=deployment_json(number=5))
    api.get(f"/deployments/{DEPLOYMENT_ID}/log").respond(text="-----> Starting 1 replica(s)\n")
    api.get(f"/deployments/{DEPLOYMENT_ID}").respond(json=deployment_json(number=5, state="live"))
    result = cli("rollback", "--app", "hello")
    assert result.exit_code == 0, result.output
    assert body(route) == {"deployment_id": "d2"}
    assert "http://hello-acme.localhost:8080/" in result.stdout


def test_url_prints_the_url(cli, hello):
    hello()
    result = cli("url", "--app", "hello")
    assert result.stdout.strip() == "http://hello-acme.localhost:8080/"


def test_open_opens_a_browser(cli, hello, monkeypatch):
    hello()
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert cli("open", "--app", "hello").exit_code == 0
    assert opened == ["http://hello-acme.localhost:8080/"]


# --- db, webhook secret, tokens -------------------------------------------------------------------

ADDON = {
    "id": "a1",
    "app_id": APP_ID,
    "kind": "postgres",
    "state": "provisioning",
    "database": "d_1",
    "user": "t_1",
    "error": None,
    "created_at": "x",
    "updated_at": "x",
}


def test_db_create_info_destroy(cli, api, hello):
    hello()
    create = api.post(f"/apps/{APP_ID}/addons/postgres").respond(202, json=ADDON)
    api.get(f"/apps/{APP_ID}/addons/postgres").respond(json={**ADDON, "state": "ready"})
    destroy = api.delete(f"/apps/{APP_ID}/addons/postgres").respond(202, json={**ADDON, "state": "deprovisioning"})
    assert "provisioning" in cli("db", "create", "--app", "hello").stdout
    assert create.called
    assert json.loads(cli("db", "info", "--app", "hello", "--json").stdout)["state"] == "ready"
    assert cli("db", "destroy", "--app", "hello").exit_code == Exit.USAGE
    assert not destroy.called
    assert cli("db", "destroy", "--app", "hello", "--confirm", "hello").exit_code == 0
    assert destroy.called


def test_db_create_conflict(cli, api, hello):
    hello()
    api.post(f"/apps/{APP_ID}/addons/postgres").respond(409, json=error_json("addon.exists", "It has one."))
    result = cli("db", "create", "--app", "hello")
    assert result.exit_code == Exit.API_ERROR
    assert "addon.exists" in result.stderr


def test_webhook_secret_is_shown(cli, api, hello):
    hello()
    api.post(f"/apps/{APP_ID}/webhook-secret").respond(json={"secret": "whsec_1", "webhook_url": "http://h/deploy"})
    result = cli("webhook-secret", "--app", "hello")
    assert "whsec_1" in result.stdout
    assert "http://h/deploy" in result.stdout


def test_tokens_create_deploy_is_restricted_to_the_app(cli, api, hello):
    hello()
    route = api.post("/tokens").respond(
        201,
        json={
            "id": "t",
            "name": "deploy hello",
            "prefix": "cf_new",
            "scopes": ["deploy"],
            "app_id": APP_ID,
            "created_at": "x",
            "last_used_at": None,
            "revoked": False,
            "token": "cf_new.secret",
        },
    )
    result = cli("tokens", "create", "--deploy", "--app", "hello")
    assert result.exit_code == 0, result.output
    assert body(route) == {"name": "deploy hello", "scopes": ["deploy"], "app_id": APP_ID}
    assert result.stdout.strip() == "cf_new.secret"
    assert cli("tokens", "create", "--app", "hello").exit_code == Exit.USAGE


def test_scope_errors_exit_4(cli, api, hello):
    hello()
    api.post("/tokens").respond(403, json=error_json("auth.insufficient_scope", "needs apps:write"))
    result = cli("tokens", "create", "--deploy", "--app", "hello")
    assert result.exit_code == Exit.AUTH
    assert "auth.insufficient_scope" in result.stderr


def test_the_project_file_names_the_app(cli, api, hello, workdir: Path, monkeypatch):
    hello()
    (workdir / ".coltsfoot").write_text(json.dumps({"app": "hello", "app_id": APP_ID, "api": API}))
    sub = workdir / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)  # found in a parent directory, like git
    assert cli("url").stdout.strip() == "http://hello-acme.localhost:8080/"


def test_help_documents_the_exit_codes(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for line in ("0  success", "1  the API refused", "2  usage", "3  the deployment failed", "4  not logged in"):
        assert line in result.stdout
