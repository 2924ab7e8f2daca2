"""Runtime logs on the real stack: the collector (a process of the stack) copies what gVisor replicas print into
Redis, the API serves it as JSON and as a follow stream (SSE) under granian. Each test checks what a tenant
reading `logs` or `logs -f` notices."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from devstack.services import Platform
from drivers import logstore
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_archive
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

APP_PY = """
import os
import sys

from flask import Flask
from flask import request

app = Flask(__name__)
print("logs-test: started", flush=True)


@app.get("/")
def index():
    return "ok\\n"


@app.get("/say")
def say():
    print(f"said {request.args.get('m', '')}", flush=True)
    return "ok\\n"


@app.get("/flood")
def flood():
    line = "f" * int(request.args.get("width", "600"))
    n = int(request.args.get("n", "1000"))
    for i in range(n):
        sys.stdout.write(f"{i:06d} {line}\\n")
    sys.stdout.flush()
    return "ok\\n"
"""
PROCFILE = (
    "web: gunicorn --bind 0.0.0.0:$PORT --workers 1 --threads 4 app:app\nrelease: python -c 'print(\"release ran\")'\n"
)


def _podman(*args: str) -> str:
    argv = ["podman", "--runtime", "/usr/bin/runsc", "--runtime-flag", "network=host", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> dict[str, Any]:
    created = platform.create_tenant(f"l{uuid.uuid4().hex[:8]}")
    return {**created, "client": platform.client(created["token"])}


def _create_app(client: httpx.Client, name: str) -> dict[str, Any]:
    response = client.post("/apps", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse an SSE response as it arrives: one dict per event (data decoded from JSON)."""
    fields: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if fields:
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                yield fields
            fields = {}
            continue
        key, _, value = line.partition(":")
        fields["comment" if key == "" else key] = value.removeprefix(" ")


@pytest.fixture(scope="module")
def live_app(platform: Platform, tenant: dict[str, Any]) -> dict[str, Any]:
    """An app that prints at start-up and on request, deployed while its build is followed over SSE."""
    client = tenant["client"]
    app = _create_app(client, "logs")
    deployment = deploy_archive(client, app["id"], hello_archive(**{"app.py": APP_PY, "Procfile": PROCFILE}))
    followed: list[dict[str, Any]] = []
    headers = {"Accept": "text/event-stream"}
    with client.stream("GET", f"/deployments/{deployment['id']}/log", headers=headers, timeout=600) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        followed = list(_events(response))  # ends by itself once the deployment is live or failed
    assert followed, "the follow stream sent nothing"
    assert followed[-1] == {"event": "end", "data": {"reason": "deployment_finished", "state": "live"}}, followed[-5:]
    wait_for_deployment(client, deployment["id"], {"live"}, timeout=60)
    return {**app, "deployment": deployment, "followed": followed}


def _say(platform: Platform, app: dict[str, Any], message: str) -> None:
    """A request that makes the app print `said <message>`; retried while the edge has no replica to send it
    to (the reconciler may be replacing one)."""
    deadline = time.monotonic() + 60
    while True:
        status = platform.edge_get(f"{app['url']}say?m={message}").status_code
        if status == 200:
            return
        assert time.monotonic() < deadline, f"the app answers {status}"
        time.sleep(0.5)


def _logs(client: httpx.Client, app_id: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/apps/{app_id}/logs", params={"lines": 10000, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


def test_a_deploys_build_output_is_followed_live_until_it_is_live(live_app: dict[str, Any]):
    events = live_app["followed"]
    lines = [e["data"] for e in events if "id" in e]
    assert any(item["source"] == "build" and item["line"].startswith("-----> ") for item in lines)
    release = [item["line"] for item in lines if item["source"] == "release"]
    assert "release ran" in release, [(item["source"], item["line"]) for item in lines][-40:]
    assert lines[-1]["source"] == "platform"
    assert lines[-1]["line"].startswith("Deploy #1 is live")
    assert events[-1] == {"event": "end", "data": {"reason": "deployment_finished", "state": "live"}}


def test_a_line_printed_at_start_up_is_in_the_logs(tenant: dict[str, Any], live_app: dict[str, Any]):
    client = tenant["client"]

    def started() -> bool:
        return any(i["line"] == "logs-test: started" for i in _logs(client, live_app["id"], source="web.1"))

    wait_until(started, timeout=20, message="the start-up line in GET /logs")
    sources = {item["source"] for item in _logs(client, live_app["id"])}
    assert {"web.1", "build", "release", "platform"} <= sources


def test_a_request_shows_up_in_the_follow_stream_within_2_seconds(
    platform: Platform, tenant: dict[str, Any], live_app: dict[str, Any]
):
    marker = uuid.uuid4().hex
    seen: dict[str, float] = {}
    opened = threading.Event()

    def follow() -> None:
        with tenant["client"].stream(
            "GET", f"/apps/{live_app['id']}/logs", params={"lines": 1}, headers={"Accept": "text/event-stream"}
        ) as response:
            for event in _events(response):
                opened.set()
                if "id" in event and event["data"]["line"] == f"said {marker}":
                    seen["at"] = time.monotonic()
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert opened.wait(10)
    sent = time.monotonic()
    assert platform.edge_get(f"{live_app['url']}say?m={marker}").status_code == 200
    thread.join(timeout=10)
    assert "at" in seen, "the request's line never reached the follow stream"
    assert seen["at"] - sent < 2.0, f"took {seen['at'] - sent:.2f} s"


def test_a_dropped_follow_stream_resumed_with_last_event_id_shows_every_line_once(
    platform: Platform, tenant: dict[str, Any], live_app: dict[str, Any]
):
    client = tenant["client"]
    run = uuid.uuid4().hex[:8]
    for i in range(5):
        _say(platform, live_app, f"{run}-{i}")
    wait_until(lambda: f"said {run}-4" in [x["line"] for x in _logs(client, live_app["id"])], timeout=10)
    first: list[dict[str, Any]] = []
    headers = {"Accept": "text/event-stream"}
    with client.stream("GET", f"/apps/{live_app['id']}/logs", params={"lines": 5}, headers=headers) as response:
        for event in _events(response):
            if "id" in event:
                first.append(event)
            if len(first) == 3:
                break  # the connection drops here
    for i in range(5, 10):  # printed while nobody follows
        _say(platform, live_app, f"{run}-{i}")
    second: list[dict[str, Any]] = []
    headers["Last-Event-ID"] = first[-1]["id"]
    with client.stream("GET", f"/apps/{live_app['id']}/logs", headers=headers) as response:
        for event in _events(response):
            if "id" in event:
                second.append(event)
                if event["data"]["line"] == f"said {run}-9":
                    break
    ids = [e["id"] for e in first + second]
    assert len(ids) == len(set(ids))
    said = [e["data"]["line"] for e in first + second if e["data"]["line"].startswith(f"said {run}-")]
    assert said == [f"said {run}-{i}" for i in range(10)]


def test_a_crashed_replica_leaves_its_last_lines_after_it_is_replaced(
    platform: Platform, tenant: dict[str, Any], live_app: dict[str, Any]
):
    client = tenant["client"]
    marker = uuid.uuid4().hex
    _say(platform, live_app, marker)
    wait_until(lambda: f"said {marker}" in [x["line"] for x in _logs(client, live_app["id"])], timeout=10)
    [name] = _podman("ps", "--filter", f"label=coltsfoot.app={live_app['id']}", "--format", "{{.Names}}").split()
    old_id = _podman("inspect", "--format", "{{.Id}}", name).strip()
    _podman("kill", name)

    def replaced() -> bool:
        replicas = client.get(f"/apps/{live_app['id']}/replicas").json()["items"]
        return bool(replicas) and replicas[0]["state"] == "running" and replicas[0]["restarts"] >= 1

    wait_until(replaced, timeout=90, message="the reconciler to replace the killed replica")
    assert _podman("inspect", "--format", "{{.Id}}", name).strip() != old_id
    wait_until(
        lambda: [x["line"] for x in _logs(client, live_app["id"], source="web.1")].count("logs-test: started") >= 2,
        timeout=20,
        message="the replacement's start-up line",
    )
    items = _logs(client, live_app["id"])
    lines = [x["line"] for x in items]
    assert f"said {marker}" in lines  # the killed container and its podman log are gone; its lines are not
    events = [x["line"] for x in items if x["source"] == "platform"]
    assert any(e.startswith("web.1 was killed") or e.startswith("web.1 exited") for e in events), events
    assert "web.1 restarted" in events


def test_a_tenant_flooding_stdout_stays_within_its_retention(
    platform: Platform, tenant: dict[str, Any], live_app: dict[str, Any]
):
    """25,000 lines of 600 bytes (15 MB) twice: the app's stream stays within 10,000 lines and 10 MiB, and
    Redis's memory after the second flood is no larger than after the first."""
    store = redis.Redis.from_url(platform.redis.url, decode_responses=True)
    logs = logstore.LogStore(store, prefix=f"coltsfoot:{platform.instance_id}:logs", max_lines=0, max_bytes=0)
    memory: list[int] = []
    for round_ in range(2):
        _say(platform, live_app, f"flood {round_}")  # the app serves (a replica may have just been replaced)
        response = platform.edge_get(f"{live_app['url']}flood?n=25000&width=600", timeout=120)
        assert response.status_code == 200

        def flooded() -> bool:
            newest = logs.read(live_app["id"], lines=1).items
            return bool(newest) and newest[0].line.startswith(f"{24999:06d} ")

        wait_until(flooded, timeout=120, message=f"flood {round_ + 1} collected")
        lines, size = logs.usage(live_app["id"])
        assert lines <= 10_000
        assert size <= 10 * 1024 * 1024
        memory.append(int(store.info("memory")["used_memory"]))
    assert memory[1] <= memory[0] * 1.1 + 2 * 1024 * 1024, memory
    items = _logs(tenant["client"], live_app["id"])
    assert len(items) <= 10_000
    assert items[-1]["line"].startswith(f"{24999:06d} ")
    # podman's own copy of the output is capped too (--log-opt max-size=16mb).
    [name] = _podman("ps", "--filter", f"label=coltsfoot.app={live_app['id']}", "--format", "{{.Names}}").split()
    path = _podman("inspect", "--format", "{{.HostConfig.LogConfig.Path}}", name).strip()
    size = int(subprocess.run(["stat", "-c", "%s", path], check=True, capture_output=True, text=True).stdout)
    assert size <= 17 * 1024 * 1024


def test_another_tenants_logs_are_404(platform: Platform, live_app: dict[str, Any]):
    other = platform.create_tenant(f"o{uuid.uuid4().hex[:8]}")
    with platform.client(other["token"]) as client:
        for path in (f"/apps/{live_app['id']}/logs", f"/deployments/{live_app['deployment']['id']}/log"):
            for headers in ({}, {"Accept": "text/event-stream"}):
                response = client.get(path, headers=headers)
                assert response.status_code == 404, (path, headers, response.text)
                assert response.json()["error"]["code"] == "not_found"
