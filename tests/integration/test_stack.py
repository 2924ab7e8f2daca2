"""`make up` as a user runs it (`python -m devstack up|status|down`, detached), on a fresh temp state dir and free
ports: the first `up` brings everything up and deploys the demo, a second `up` right after it is harmless (the
same processes, the demo still answers), and `down` leaves nothing running. And the isolated stack the chaos
tests get: one service stopped, killed and started again where it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devstack.local import LocalConfig
from devstack.local import LocalStack
from devstack.process import free_port
from devstack.process import pid_alive
from devstack.services import DEFAULT_BASE_IMAGE
from devstack.services import INSTANCE_LABEL
from devstack.services import REPO_ROOT
from devstack.services import RedisServer
from devstack.services import podman_cleanup
from devstack.services import podman_running_containers
from devstack.stack import Stack

pytestmark = pytest.mark.integration

SERVICES = ("redis", "caddy", "postgres", "pgbouncer", "dns", "worker", "beat", "api")


@pytest.fixture
def state_env(tmp_path: Path) -> Generator[dict[str, str]]:
    """The caller's environment with a fresh state dir and every port of `make up` moved to a free one."""
    env = {k: v for k, v in os.environ.items() if k != "COLTSFOOT_INSTANCE_ID" and not k.startswith("PYTEST")}
    env.update(
        {
            "COLTSFOOT_STATE_DIR": str(tmp_path / "state"),
            "COLTSFOOT_REDIS_PORT": str(free_port()),
            "COLTSFOOT_PG_PORT": str(free_port()),
            "COLTSFOOT_PGBOUNCER_PORT": str(free_port("0.0.0.0")),  # noqa: S104
            "COLTSFOOT_API_BIND": f"127.0.0.1:{free_port()}",
            "COLTSFOOT_EDGE_LISTEN": f"127.0.0.1:{free_port()}",
            "COLTSFOOT_EDGE_TLS_LISTEN": f"127.0.0.1:{free_port()}",
            "COLTSFOOT_CADDY_ADMIN_URL": f"http://127.0.0.1:{free_port()}",
            "COLTSFOOT_UPSTREAM_DNS": f"127.0.0.1:{free_port()}",
        }
    )
    local = LocalStack(LocalConfig.from_env(env), env)
    try:
        yield env
    finally:
        # Whatever the test got to: stop what runs, then remove this installation's podman objects and the
        # service dir outside the temp dir (under root, PostgreSQL's data lives in the postgres user's home).
        devstack(env, "down", check=False)
        instance = local.instance_id(create=False)
        if instance is not None:
            base_image = env.get("COLTSFOOT_BASE_IMAGE", DEFAULT_BASE_IMAGE)
            podman_cleanup([f"{INSTANCE_LABEL}={instance}"], keep_images=[base_image])
        if local.svc_dir != local.state / "pg":
            shutil.rmtree(local.svc_dir, ignore_errors=True)


def devstack(env: dict[str, str], command: str, *, check: bool = True, timeout: float = 900) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", command],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"devstack {command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pids(state: Path) -> dict[str, int]:
    return {name: int((state / "run" / f"{name}.pid").read_text()) for name in SERVICES}


def summary(output: str) -> dict[str, str]:
    """The values of the summary `up` prints at the end."""
    found = {}
    for key in ("API", "demo token", "demo app", "state dir"):
        match = re.search(rf"^  {key} +(\S+)$", output, re.MULTILINE)
        assert match is not None, f"no {key!r} line in:\n{output}"
        found[key] = match.group(1)
    return found


def demo_answers(env: dict[str, str], app_url: str) -> httpx.Response:
    edge = env["COLTSFOOT_EDGE_LISTEN"]
    url = httpx.URL(app_url)
    return httpx.get(f"http://{edge}/", headers={"Host": url.netloc.decode()}, timeout=10, trust_env=False)


def test_make_up_twice_is_harmless_and_down_stops_everything(state_env: dict[str, str]):
    state = Path(state_env["COLTSFOOT_STATE_DIR"])

    first = devstack(state_env, "up")
    assert "Coltsfoot is up." in first
    for name in SERVICES:
        assert re.search(rf"^    {name} +started \(pid \d+\)", first, re.MULTILINE), first
    before = pids(state)
    values = summary(first)
    assert values["state dir"] == str(state)
    assert values["API"] == f"http://{state_env['COLTSFOOT_API_BIND']}/api/v1"
    assert demo_answers(state_env, values["demo app"]).status_code == 200
    for private in ("secrets.env", "env", "demo-tenant.json", "instance-id"):
        assert (state / private).stat().st_mode & 0o077 == 0, private
    instance = (state / "instance-id").read_text().strip()
    assert instance not in {"", "default"}
    assert f"COLTSFOOT_INSTANCE_ID={instance}" in (state / "env").read_text()

    second = devstack(state_env, "up")
    for name in SERVICES:
        assert re.search(rf"^    {name} +already running \(pid {before[name]}\)", second, re.MULTILINE), second
    assert "app hello: live, answering through the edge" in second
    assert "queued" not in second  # nothing was deployed again
    assert pids(state) == before
    assert summary(second)["demo token"] == summary(first)["demo token"]
    response = demo_answers(state_env, values["demo app"])
    assert response.status_code == 200
    token = json.loads((state / "demo-tenant.json").read_text())["token"]
    apps: dict[str, Any] = httpx.get(
        f"{values['API']}/apps", headers={"Authorization": f"Bearer {token}"}, timeout=10, trust_env=False
    ).json()
    assert [app["name"] for app in apps["items"]] == ["hello"]

    status = devstack(state_env, "status")
    for name in SERVICES:
        assert re.search(rf"^{name} +running +pid {before[name]} ", status, re.MULTILINE), status
    assert f"1 container(s) running (label coltsfoot.instance={instance})" in status

    down = devstack(state_env, "down")
    assert f"stopped 1 container(s) labelled coltsfoot.instance={instance}" in down
    for name, pid in before.items():
        assert not pid_alive(pid), name
        assert not (state / "run" / f"{name}.pid").exists()
    assert podman_running_containers(instance, dict(state_env)) == []
    status = devstack(state_env, "status")
    assert all(re.search(rf"^{name} +stopped ", status, re.MULTILINE) for name in SERVICES), status


def test_isolated_stack_services_come_back_where_they_were(isolated_stack: Stack):
    """The controls the chaos tests rely on: one service stopped, killed and started again on the same port and
    data, and the whole stack down (containers removed) and up again on the same state."""
    platform = isolated_stack.require_platform()
    tenant = platform.create_tenant(f"chaos{uuid.uuid4().hex[:8]}")
    client = platform.client(tenant["token"])
    redis_service = isolated_stack.service("redis")
    assert isinstance(redis_service, RedisServer)
    store = redis.Redis.from_url(redis_service.url)
    try:
        store.set("chaos-marker", "kept")
        isolated_stack.stop_service("redis")  # SIGTERM: Redis saves its dump first
        with pytest.raises(redis.ConnectionError):
            store.ping()
        isolated_stack.start_service("redis")
        assert store.get("chaos-marker") == b"kept"
    finally:
        store.close()

    api_pid = isolated_stack.service("api").pid
    isolated_stack.kill_service("api")
    assert api_pid is not None
    assert not pid_alive(api_pid)
    with pytest.raises(httpx.HTTPError):
        client.get("/apps")
    isolated_stack.start_service("api")
    assert client.get("/apps").status_code == 200

    isolated_stack.kill_service("worker")
    isolated_stack.start_service("worker")
    assert isolated_stack.service("worker").process.running

    isolated_stack.down(containers="remove")
    assert all(not service.process.running for service in isolated_stack.leaves())
    isolated_stack.up()
    assert all(service.process.running for service in isolated_stack.leaves())
    # Same platform DB (the token still works), same ports.
    assert client.get("/apps").status_code == 200
    assert client.get("/ready").status_code == 200
