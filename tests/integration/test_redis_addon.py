"""The Redis add-on end to end: a real Redis container under gVisor on the tenant's network, used by an app
running in gVisor through its REDIS_URL, driven through the API and checked through the edge, as a tenant
would see it. Only the checks that nothing is published or left behind look at podman and the disk."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.services import Platform
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import latest_deployment_number
from tests.integration.helpers import tar_gz
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_for_deployment_after
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

# A tenant app that uses its Redis the way real apps do (redis-py from REDIS_URL), plus a raw TCP probe for
# the isolation checks. A new client per request, so a Redis that was restarted is simply dialled again.
REDIS_APP = """
from __future__ import annotations

import json
import os
import socket

import redis
from flask import Flask
from flask import jsonify
from flask import request

app = Flask(__name__)


def client():
    return redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=10, socket_connect_timeout=10)


@app.get("/")
def index():
    return "redis app\\n"


@app.get("/set")
def set_key():
    client().set(request.args["k"], request.args["v"])
    return jsonify(ok=True)


@app.get("/get")
def get_key():
    value = client().get(request.args["k"])
    return jsonify(value=value.decode() if value is not None else None)


@app.get("/cmd")
def command():
    args = json.loads(request.args["args"])
    try:
        result = client().execute_command(*args)
    except redis.RedisError as exc:
        return jsonify(ok=False, error=type(exc).__name__, message=str(exc))
    return jsonify(ok=True, result=repr(result)[:200])


@app.get("/fill")
def fill():
    # Write `mb` MiB in 64 KiB values; stop at the first error (noeviction: OOM).
    conn = client()
    prefix = request.args.get("prefix", "fill")
    value = b"x" * 65536
    written = 0
    error = None
    for index in range(int(request.args["mb"]) * 16):
        try:
            conn.set(f"{prefix}:{index}", value)
        except redis.RedisError as exc:
            error = f"{type(exc).__name__}: {exc}"
            break
        written += 1
    try:
        info = conn.info("memory")
        dbsize = conn.dbsize()
    except redis.RedisError as exc:
        return jsonify(written=written, error=error, info_error=f"{type(exc).__name__}: {exc}")
    return jsonify(written=written, error=error, dbsize=dbsize, used=info["used_memory"],
                   maxmemory=info["maxmemory"], policy=info["maxmemory_policy"])


@app.get("/probe")
def probe():
    try:
        with socket.create_connection((request.args["host"], int(request.args["port"])), timeout=3) as conn:
            conn.settimeout(3)
            conn.sendall(b"PING\\r\\n")
            answer = conn.recv(64).decode(errors="replace")
    except OSError as exc:
        return jsonify(ok=False, error=type(exc).__name__, message=str(exc))
    return jsonify(ok=True, answer=answer)


@app.get("/env/<name>")
def env(name):
    return jsonify(set=name in os.environ, value=os.environ.get(name))
"""

REDIS_PROCFILE = "web: gunicorn --bind 0.0.0.0:$PORT --workers 1 --threads 4 --timeout 120 app:app\n"
REDIS_REQUIREMENTS = "flask\ngunicorn\nredis\n"


def redis_archive() -> bytes:
    return tar_gz({"app.py": REDIS_APP, "Procfile": REDIS_PROCFILE, "requirements.txt": REDIS_REQUIREMENTS})


def _podman(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", "--runtime", "/usr/bin/runsc", *args], check=check, capture_output=True, text=True, timeout=60
    )
    return result.stdout


def _container(addon: dict[str, Any]) -> str:
    return f"cf-redis-{uuid.UUID(addon['id']).hex}"


def _container_state(name: str) -> dict[str, Any] | None:
    result = subprocess.run(
        ["podman", "container", "inspect", "--format", "{{json .State}}", name],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _get_json(platform: Platform, app: dict[str, Any], path: str, *, timeout: float = 60.0) -> dict[str, Any]:
    response = platform.edge_get(app["url"].rstrip("/") + path, timeout=timeout)
    assert response.status_code == 200, f"{path}: HTTP {response.status_code}: {response.text[:500]}"
    return response.json()  # type: ignore[no-any-return]


def _cmd(platform: Platform, app: dict[str, Any], *args: str) -> dict[str, Any]:
    return _get_json(platform, app, "/cmd?" + str(httpx.QueryParams({"args": json.dumps(list(args))})))


def _new_tenant(platform: Platform) -> httpx.Client:
    created = platform.create_tenant(f"rd{uuid.uuid4().hex[:8]}")
    return platform.client(created["token"], timeout=60)


def _wait_redis(client: httpx.Client, app_id: str, state: str = "ready") -> dict[str, Any]:
    addon: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal addon
        addon = client.get(f"/apps/{app_id}/addons/redis").json()
        assert addon["state"] != "failed", addon
        return bool(addon["state"] == state)

    wait_until(reached, timeout=240, message=f"the redis add-on to be {state}")
    return addon


def _add_redis(client: httpx.Client, app_id: str, **plan: Any) -> dict[str, Any]:
    response = client.post(f"/apps/{app_id}/addons/redis", json=plan)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "provisioning"
    return _wait_redis(client, app_id)


def _deploy(client: httpx.Client, name: str) -> dict[str, Any]:
    app = client.post("/apps", json={"name": name}).json()
    first = deploy_archive(client, app["id"], redis_archive())
    done = wait_for_deployment(client, first["id"], {"live", "failed"}, timeout=420)
    assert done["state"] == "live", client.get(f"/deployments/{first['id']}/log").text
    return app  # type: ignore[no-any-return]


def _redis_url(platform: Platform, app: dict[str, Any]) -> str:
    env = _get_json(platform, app, "/env/REDIS_URL")
    assert env["set"] is True, env
    return str(env["value"])


@pytest.fixture(scope="module")
def tenant_a(platform: Platform) -> httpx.Client:
    return _new_tenant(platform)


@pytest.fixture(scope="module")
def app_a(platform: Platform, tenant_a: httpx.Client) -> dict[str, Any]:
    """An app running REDIS_APP with a ready Redis (16 MiB, noeviction, persistence), and the release the
    add-on triggered live."""
    app = _deploy(tenant_a, "redisapp")
    assert _get_json(platform, app, "/env/REDIS_URL")["set"] is False  # nothing before the add-on
    number = latest_deployment_number(tenant_a, app["id"])
    addon = _add_redis(tenant_a, app["id"], maxmemory_mb=16, policy="noeviction", persistence=True)
    release = wait_for_deployment_after(tenant_a, app["id"], number, {"live", "failed"})
    assert release["state"] == "live", tenant_a.get(f"/deployments/{release['id']}/log").text
    assert release["source"]["kind"] == "release"
    return {"app": app, "addon": addon}


@pytest.fixture(scope="module")
def app_b(platform: Platform) -> dict[str, Any]:
    """Another tenant's app (same code, its own network)."""
    return _deploy(_new_tenant(platform), "neighbour")


def test_app_writes_and_reads_back_through_redis_url(platform: Platform, app_a: dict[str, Any]):
    app, addon = app_a["app"], app_a["addon"]
    assert addon["kind"] == "redis"
    assert (addon["maxmemory_mb"], addon["policy"], addon["persistence"]) == (16, "noeviction", True)
    assert "password" not in json.dumps(addon).lower()
    marker = f"v-{uuid.uuid4().hex[:8]}"
    assert _get_json(platform, app, f"/set?k=greeting&v={marker}")["ok"] is True
    assert _get_json(platform, app, "/get?k=greeting") == {"value": marker}
    # The URL points at the Redis container's own address on the tenant network, on Redis's port.
    url = httpx.URL(_redis_url(platform, app))
    networks = json.loads(_podman("container", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                  _container(addon)))  # fmt: skip
    assert [entry["IPAddress"] for entry in networks.values()] == [url.host]
    assert url.port == 6379


def test_another_tenant_cannot_reach_it_and_the_host_publishes_nothing(
    platform: Platform, app_a: dict[str, Any], app_b: dict[str, Any]
):
    name = _container(app_a["addon"])
    host = httpx.URL(_redis_url(platform, app_a["app"])).host
    # Its own app reaches it (Redis answers an unauthenticated PING with NOAUTH)...
    own = _get_json(platform, app_a["app"], f"/probe?host={host}&port=6379")
    assert own["ok"] is True, own
    assert "NOAUTH" in own["answer"], own
    # ...another tenant's app, on its own network, does not.
    other = _get_json(platform, app_b, f"/probe?host={host}&port=6379")
    assert other["ok"] is False, f"tenant B reached tenant A's Redis: {other}"
    # No port is published on the host, and the container is on tenant A's network only.
    assert _podman("port", name).strip() == ""
    ports = json.loads(_podman("container", "inspect", "--format", "{{json .HostConfig.PortBindings}}", name))
    assert not ports, ports
    networks = json.loads(_podman("container", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name))
    assert len(networks) == 1, networks
    assert next(iter(networks)).startswith("cf-t-"), networks
    # The same sandbox as a replica: gVisor, no capabilities, read-only root, a non-root user.
    create = json.loads(_podman("container", "inspect", "--format", "{{json .Config.CreateCommand}}", name))
    assert "runsc" in " ".join(create)
    for flag in ("--cap-drop=all", "--security-opt=no-new-privileges", "--read-only", "--pull=never"):
        assert flag in create, (flag, create)
    user = create[create.index("--user") + 1]
    assert user.split(":")[0].isdigit(), user
    assert int(user.split(":")[0]) > 0, user
    assert not any(arg.startswith(("-p", "--publish")) for arg in create), create


@pytest.mark.parametrize(
    "args",
    [
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "maxmemory", "0"),
        ("DEBUG", "SLEEP", "0"),
        ("MODULE", "LIST"),
        ("SHUTDOWN", "NOSAVE"),
        ("REPLICAOF", "10.0.0.1", "6379"),
        ("SLAVEOF", "10.0.0.1", "6379"),
        ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all"),
    ],
)
def test_dangerous_commands_are_refused(platform: Platform, app_a: dict[str, Any], args: tuple[str, ...]):
    result = _cmd(platform, app_a["app"], *args)
    assert result["ok"] is False, f"{args} succeeded: {result}"
    assert "unknown command" in result["message"].lower(), result
    assert _cmd(platform, app_a["app"], "PING")["ok"] is True  # and the server is still there


def test_past_maxmemory_it_refuses_then_evicts_without_dying(
    platform: Platform, tenant_a: httpx.Client, app_a: dict[str, Any]
):
    app, addon = app_a["app"], app_a["addon"]
    name = _container(addon)
    started = (_container_state(name) or {}).get("StartedAt")
    assert _get_json(platform, app, "/set?k=early&v=before-full")["ok"] is True
    # noeviction: writes past 16 MiB are refused with Redis's OOM error, and the server lives on.
    full = _get_json(platform, app, "/fill?mb=40&prefix=noev", timeout=180)
    assert full["maxmemory"] == 16 * 1024 * 1024, full
    assert full["policy"] == "noeviction", full
    assert full["error"] is not None, full
    assert "used memory > 'maxmemory'" in full["error"], full  # Redis's OOM error
    assert full["written"] < 40 * 16
    assert _get_json(platform, app, "/get?k=early") == {"value": "before-full"}  # older data still there
    # The plan changes through the API: allkeys-lru evicts instead, on the same container name and URL.
    url = _redis_url(platform, app)
    response = tenant_a.patch(f"/apps/{app['id']}/addons/redis", json={"policy": "allkeys-lru"})
    assert response.status_code == 200, response.text
    assert response.json()["policy"] == "allkeys-lru"
    assert _wait_redis(tenant_a, app["id"])["policy"] == "allkeys-lru"
    assert _cmd(platform, app, "PING")["ok"] is True  # reachable again at once: same address and MAC
    evicting = _get_json(platform, app, "/fill?mb=40&prefix=lru", timeout=180)
    assert evicting["error"] is None, evicting
    assert evicting["written"] == 40 * 16
    assert evicting["policy"] == "allkeys-lru"
    assert evicting["dbsize"] * 65536 < 16 * 1024 * 1024, evicting  # most of what was written was evicted
    assert evicting["used"] <= 17 * 1024 * 1024, evicting
    state = _container_state(name)
    assert state is not None
    assert state["Running"], state
    assert not state["OOMKilled"], state
    assert state["StartedAt"] != started  # re-provisioned once for the new plan, never killed
    assert _redis_url(platform, app) == url  # same address and password: no re-release was needed


def test_with_persistence_data_survives_a_kill(platform: Platform, app_a: dict[str, Any]):
    app, addon = app_a["app"], app_a["addon"]
    name = _container(addon)
    marker = f"kept-{uuid.uuid4().hex[:8]}"
    assert _cmd(platform, app, "SET", "durable", marker)["ok"] is True
    time.sleep(1.5)  # appendfsync everysec
    before = _container_state(name)
    assert before is not None
    assert before["Running"]
    _podman("kill", name)
    # The reconciler restarts it (same name, same data dir) and the app reads its data back.
    wait_until(
        lambda: (
            (state := _container_state(name)) is not None
            and state["Running"]
            and state["StartedAt"] != before["StartedAt"]
        ),
        timeout=90,
        message="the reconciler to restart the killed Redis",
    )

    def readable() -> bool:
        response = platform.edge_get(app["url"].rstrip("/") + "/get?k=durable", timeout=30)
        return response.status_code == 200 and response.json() == {"value": marker}

    wait_until(readable, timeout=60, message="the app to read its data back")


def test_the_password_is_nowhere_but_in_the_app(platform: Platform, tenant_a: httpx.Client, app_a: dict[str, Any]):
    app, addon = app_a["app"], app_a["addon"]
    password = httpx.URL(_redis_url(platform, app)).password
    assert password
    assert len(password) >= 32
    api_views = [
        tenant_a.get(f"/apps/{app['id']}/addons/redis").text,
        tenant_a.get(f"/apps/{app['id']}/config").text,
        tenant_a.get(f"/apps/{app['id']}").text,
        tenant_a.get(f"/apps/{app['id']}/deployments", params={"limit": 100}).text,
    ]
    for deployment in tenant_a.get(f"/apps/{app['id']}/deployments", params={"limit": 100}).json()["items"]:
        api_views.append(tenant_a.get(f"/deployments/{deployment['id']}/log").text)
    for text in api_views:
        assert password not in text
    names = [_container(addon), *_podman("ps", "--all", "--filter", f"label=coltsfoot.app={app['id']}",
                                         "--format", "{{.Names}}").split()]  # fmt: skip
    inspected = _podman("inspect", *names)
    assert password not in inspected
    assert "REDIS_URL" in inspected  # the app gets it as a podman secret, by name only
    sqlite_files = sorted(Path(platform.data_dir).glob("*.sqlite3*"))
    assert any(p.name.endswith(".sqlite3") for p in sqlite_files), sqlite_files
    for path in sqlite_files:
        assert password.encode() not in path.read_bytes(), path
    for log_file in sorted(Path(platform.log_dir).glob("*.log")):
        assert password.encode() not in log_file.read_bytes(), log_file
    assert password not in _podman("logs", _container(addon))


def test_deleting_the_addon_leaves_no_container_volume_or_url(
    platform: Platform, tenant_a: httpx.Client, app_a: dict[str, Any]
):
    app, addon = app_a["app"], app_a["addon"]
    name = _container(addon)
    volume = Path(platform.data_dir) / "redis" / uuid.UUID(addon["id"]).hex
    assert volume.is_dir(), volume
    assert any(volume.rglob("*.aof")), volume
    number = latest_deployment_number(tenant_a, app["id"])
    response = tenant_a.delete(f"/apps/{app['id']}/addons/redis")
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "deprovisioning"
    wait_until(
        lambda: tenant_a.get(f"/apps/{app['id']}/addons/redis").status_code == 404,
        timeout=120,
        message="the add-on to be gone",
    )
    assert _container_state(name) is None
    assert not volume.exists()
    assert f"cf-redis-{uuid.UUID(addon['id']).hex}-conf" not in _podman("secret", "ls", "--format", "{{.Name}}")
    release = wait_for_deployment_after(tenant_a, app["id"], number, {"live", "failed"})
    assert release["state"] == "live", tenant_a.get(f"/deployments/{release['id']}/log").text
    assert _get_json(platform, app, "/env/REDIS_URL") == {"set": False, "value": None}


def test_deleting_the_app_removes_its_redis(platform: Platform):
    client = _new_tenant(platform)
    app = client.post("/apps", json={"name": "shortlived"}).json()
    addon = _add_redis(client, app["id"], maxmemory_mb=8, persistence=True)
    name = _container(addon)
    volume = Path(platform.data_dir) / "redis" / uuid.UUID(addon["id"]).hex
    state = _container_state(name)
    assert state is not None
    assert state["Running"]
    assert volume.is_dir()
    response = client.delete(f"/apps/{app['id']}")
    assert response.status_code == 202, response.text
    wait_until(lambda: client.get(f"/apps/{app['id']}").status_code == 404, timeout=180, message="the app gone")
    assert _container_state(name) is None
    assert not volume.exists()
