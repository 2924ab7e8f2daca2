"""Disaster recovery of the platform DB on a stack of this module's own: `backup_platform` while eight
writers write through the API, the DB file lost, `restore_platform` on the stopped stack with its
containers gone, and then the API serves the same tenants, apps and config while the reconciler brings
the deployed app back by itself."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.process import ServiceError
from devstack.stack import Stack
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_archive
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

WRITERS = 8


def _snapshot(client: httpx.Client) -> dict[str, Any]:
    apps = client.get("/apps", params={"limit": 100})
    assert apps.status_code == 200, apps.text
    state: dict[str, Any] = {}
    for app in apps.json()["items"]:
        config = client.get(f"/apps/{app['id']}/config")
        assert config.status_code == 200, config.text
        state[app["id"]] = {"name": app["name"], "url": app["url"], "config": config.json()}
    return state


def test_backup_under_writers_then_restore_after_losing_the_db_serves_the_same_platform(
    isolated_stack: Stack, tmp_path: Path
) -> None:
    stack = isolated_stack
    platform = stack.require_platform()
    keeper = platform.create_tenant(f"k{uuid.uuid4().hex[:8]}")
    busy = platform.create_tenant(f"b{uuid.uuid4().hex[:8]}")

    with platform.client(keeper["token"]) as client:
        web = client.post("/apps", json={"name": "web"}).json()
        created = deploy_archive(client, web["id"], hello_archive())
        done = wait_for_deployment(client, created["id"], {"live", "failed"})
        assert done["state"] == "live", client.get(f"/deployments/{created['id']}/log").text
        other = client.post("/apps", json={"name": "other"}).json()
        patched = client.patch(
            f"/apps/{other['id']}/config", json={"vars": {"GREETING": "hi"}, "secrets": {"API_KEY": "s3cr3t"}}
        )
        assert patched.status_code == 200, patched.text
        expected = _snapshot(client)
    with platform.client(busy["token"]) as client:
        targets = [
            client.post("/apps", json={"name": f"w{index}", "cpus": 0.25}).json()["id"] for index in range(WRITERS)
        ]

    # Eight writers, each rewriting two vars of its own app in one PATCH (one transaction) as fast as
    # the API lets it: a consistent backup has A == B in every app.
    stop = threading.Event()
    writes = [0] * WRITERS
    failures: list[str] = []

    def writer(index: int) -> None:
        with platform.client(busy["token"]) as client:
            while not stop.is_set():
                value = str(writes[index])
                response = client.patch(f"/apps/{targets[index]}/config", json={"vars": {"A": value, "B": value}})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    return
                writes[index] += 1

    threads = [threading.Thread(target=writer, args=(index,), daemon=True) for index in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: min(writes) >= 2, timeout=60, message="every writer wrote")
        backup = tmp_path / "platform.sqlite3"
        result = json.loads(platform.manage("backup_platform", str(backup)).stdout.splitlines()[-1])
        during = list(writes)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not failures
    assert result["engine"] == "sqlite"
    assert result["size"] == backup.stat().st_size > 0

    # A restore on the running stack is refused, and says why.
    with pytest.raises(ServiceError, match="the stack is running"):
        platform.manage("restore_platform", str(backup))

    # The disk is lost: stack down, its containers gone, the platform DB gone.
    stack.down(containers="remove")
    for path in platform.data_dir.glob("coltsfoot.sqlite3*"):
        path.unlink()
    restored = json.loads(platform.manage("restore_platform", str(backup)).stdout.splitlines()[-1])
    assert restored["tenants"] >= 2
    stack.up()

    with platform.client(keeper["token"]) as client:
        assert _snapshot(client) == expected
    with platform.client(busy["token"]) as client:
        after = _snapshot(client)
    assert sorted(after) == sorted(targets)
    for index, app_id in enumerate(targets):
        config_vars = after[app_id]["config"]["vars"]
        assert config_vars["A"] == config_vars["B"]  # both halves of one transaction, or neither
        assert int(config_vars["A"]) <= during[index]

    # Nothing was deployed again: the reconciler recreated the containers and the route from the DB.
    wait_until(
        lambda: _answers(platform, web["url"]), timeout=120, interval=1.0, message="the restored app served again"
    )
    with platform.client(keeper["token"]) as client:
        assert client.get(f"/apps/{web['id']}/deployments").json()["count"] == 1


def _answers(platform: Any, url: str) -> bool:
    try:
        return bool(platform.edge_get(url, timeout=5.0).status_code == 200)
    except httpx.HTTPError:
        return False
