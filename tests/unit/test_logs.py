"""App logs: line normalisation, the store's retention bounds and cursors (on a real redis-server), the collector
reading podman's k8s-file logs (resume after a restart, rotation, a removed container), and the API's JSON and
SSE framing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import async_to_sync

from conftest import Actor
from drivers import logstore
from drivers import podman
from platform_apps.models import App
from platform_apps.models import Deployment
from provisioning import logcollector
from provisioning import pipeline

APP_1 = "4b1f7a52-8a3e-4c62-9a43-0d3f5b9e2c11"

# --- normalisation -------------------------------------------------------------------------------


def test_secrets_and_api_tokens_are_redacted():
    line = "connecting with hunter2-long-secret and token cf_0123abcd.AbCdEfGhIjKlMnOpQrStUv"
    assert logstore.normalise(line, secrets=["hunter2-long-secret"]) == (
        "connecting with [redacted] and token [redacted]"
    )


def test_short_secrets_are_not_searched_for():
    assert logstore.normalise("a b c", secrets=["a", "b"]) == "a b c"


def test_a_progress_line_keeps_only_its_last_state():
    assert logstore.normalise("downloading  10%\rdownloading  55%\rdownloading 100%\n") == "downloading 100%"


def test_crlf_line_ends_keep_the_line():
    assert logstore.normalise("GET / 200\r\n") == "GET / 200"


def test_nul_bytes_are_escaped():
    assert logstore.normalise("a\x00b") == "a\\0b"


def test_a_long_line_is_cut_with_a_marker_without_splitting_a_character():
    line = "é" * 100  # two bytes each
    cut = logstore.normalise(line, max_bytes=51)
    assert cut == "é" * 25 + " … [line cut: 150 more bytes]"


def test_a_secret_straddling_the_cut_is_redacted_first():
    secret = "s3cr3t-value-here"
    line = "x" * 10 + secret
    assert secret[:5] not in logstore.normalise(line, secrets=[secret], max_bytes=15)


# --- the store: retention and cursors -------------------------------------------------------------


def _lines(n: int, *, source: str = "web.1", size: int = 10, start: int = 0) -> list[logstore.Line]:
    return [logstore.Line(logstore.timestamp(), source, f"{i + start:0{size}d}") for i in range(n)]


def _store(log_store: logstore.LogStore, *, max_lines: int, max_bytes: int) -> logstore.LogStore:
    return logstore.LogStore(log_store.client, prefix=log_store.prefix, max_lines=max_lines, max_bytes=max_bytes)


def test_retention_keeps_the_newest_lines_within_the_line_bound(log_store):
    store = _store(log_store, max_lines=100, max_bytes=10**9)
    for start in range(0, 250, 50):
        store.append("app", _lines(50, start=start))
    page = store.read("app", lines=1000)
    assert [entry.line for entry in page.items] == [f"{i:010d}" for i in range(150, 250)]
    assert store.usage("app")[0] == 100


def test_retention_keeps_the_stream_within_the_byte_bound(log_store):
    store = _store(log_store, max_lines=10**6, max_bytes=20_000)
    for start in range(0, 3000, 500):
        store.append("app", _lines(500, size=100, start=start))
    lines, size = store.usage("app")
    # The counter is exact: the sum of what the kept entries hold.
    kept = store.read("app", lines=10_000).items
    assert len(kept) == lines
    assert size == sum(len(e.ts) + len(e.source) + len(e.line) + len(e.deployment_id) for e in kept)
    assert size <= 20_000
    assert size > 20_000 - 200  # trimmed to the bound, not far below it
    assert kept[-1].line == f"{2999:0100d}"


def test_one_app_flooding_does_not_trim_another(log_store):
    store = _store(log_store, max_lines=10, max_bytes=10**9)
    store.append("quiet", _lines(3))
    store.append("loud", _lines(100))
    assert store.usage("quiet")[0] == 3


def test_without_since_the_last_lines_and_a_cursor_for_what_follows(log_store):
    log_store.append("app", _lines(5))
    page = log_store.read("app", lines=2)
    assert [e.line for e in page.items] == [f"{3:010d}", f"{4:010d}"]
    assert page.next == page.items[-1].id
    assert log_store.read("app", lines=10, since=page.next).items == []
    log_store.append("app", _lines(2, start=5))
    assert [e.line for e in log_store.read("app", lines=10, since=page.next).items] == [f"{5:010d}", f"{6:010d}"]


def test_paging_after_a_cursor_visits_every_line_once(log_store):
    log_store.append("app", _lines(7))
    seen: list[str] = []
    cursor = "0-0"
    for _ in range(10):
        page = log_store.read("app", lines=3, since=cursor)
        seen += [e.line for e in page.items]
        cursor = page.next
    assert seen == [f"{i:010d}" for i in range(7)]


def test_a_source_filter_and_an_empty_stream(log_store):
    log_store.append("app", [*_lines(3, source="web.1"), *_lines(2, source="web.2", start=3)])
    page = log_store.read("app", lines=10, match=logstore.Matcher(source="web.2"))
    assert [e.source for e in page.items] == ["web.2", "web.2"]
    assert log_store.read("nothing", lines=10) == logstore.Page([], "0-0")


def test_follow_delivers_lines_after_the_cursor():
    async def go(store: logstore.LogStore) -> list[str]:
        follower = logstore.follower("app")
        try:
            cursor = store.read("app", lines=1).next
            store.append("app", _lines(2, start=100))
            return [e.line for e in await follower.after(cursor, block_ms=1000)]
        finally:
            await follower.close()

    store = logstore.store()
    store.append("app", _lines(1))
    assert async_to_sync(go)(store) == [f"{100:010d}", f"{101:010d}"]


# --- the collector ---------------------------------------------------------------------------------


def _record(text: str, tag: str = "F", ts: str = "2026-12-01T10:18:56.082718319+00:00") -> bytes:
    return f"{ts} stdout {tag} {text}\n".encode()


def test_reader_joins_partial_records_and_applies_carriage_returns():
    reader = logcollector.K8sFileReader(max_line_bytes=100)
    data = _record("hello ", "P") + _record("world") + _record("10%\r50%", "P") + _record("\r100%\r") + b"2026-12"
    lines, advanced = reader.feed(data)
    assert [text for _ts, text, _cut in lines] == ["hello world", "100%"]
    assert advanced == len(data) - len(b"2026-12")  # the incomplete record is not committed


def test_reader_holds_at_most_one_line_of_a_flood_without_newline():
    reader = logcollector.K8sFileReader(max_line_bytes=1000)
    for _ in range(200):
        lines, advanced = reader.feed(_record("x" * 8192, "P"))
        assert lines == []
        assert advanced == 0
    assert len(reader.line) <= 1000 + logcollector.SECRET_MARGIN
    lines, _ = reader.feed(_record("end"))
    (_ts, text, dropped) = lines[0]
    assert logstore.normalise(text, max_bytes=1000, already_cut=dropped).endswith(
        f" … [line cut: {200 * 8192 + 3 - 1000} more bytes]"
    )


def _container(cid: str, app_id: str, index: int = 0, role: str = "web") -> podman.ObservedContainer:
    labels = {"coltsfoot.role": role, "coltsfoot.app": app_id, "coltsfoot.deployment": "d-1"}
    return podman.ObservedContainer(f"tsl-d-1-{index}", labels, "running", 0, 1.0, 0.0, 1.0, id=cid)


@pytest.fixture
def podman_seen() -> Any:
    state: dict[str, Any] = {"containers": [], "paths": {}}
    with (
        mock.patch.object(
            podman, "containers_observe", autospec=True, side_effect=lambda *_: list(state["containers"])
        ),
        mock.patch.object(
            podman,
            "container_log_paths",
            autospec=True,
            side_effect=lambda ids: {i: state["paths"][i] for i in ids if i in state["paths"]},
        ),
    ):
        yield state


def _collector(store: logstore.LogStore) -> logcollector.Collector:
    return logcollector.Collector(store, instance_id="test", max_line_bytes=200)


def _round(collector: logcollector.Collector) -> None:
    collector.discover()
    while collector.collect():
        pass


@pytest.mark.django_db
def test_collector_restart_neither_loses_nor_repeats_a_line(log_store, podman_seen, tmp_path: Path):
    path = tmp_path / "ctr.log"
    path.write_bytes(b"".join(_record(f"line {i}") for i in range(3)) + _record("half ", "P"))
    podman_seen["containers"] = [_container("c1", APP_1)]
    podman_seen["paths"] = {"c1": str(path)}
    first = _collector(log_store)
    _round(first)
    first.close()  # killed: whatever it had not committed is read again
    with path.open("ab") as log:
        log.write(_record("done") + _record("line 4"))
    second = _collector(log_store)
    _round(second)
    items = log_store.read(APP_1, lines=100).items
    assert [e.line for e in items] == ["line 0", "line 1", "line 2", "half done", "line 4"]
    assert {e.source for e in items} == {"web.1"}
    assert items[0].ts == "2026-12-01T10:18:56.082718Z"


@pytest.mark.django_db
def test_collector_reads_a_replaced_file_and_a_removed_container_to_the_end(log_store, podman_seen, tmp_path: Path):
    path = tmp_path / "ctr.log"
    path.write_bytes(_record("before rotation"))
    podman_seen["containers"] = [_container("c1", APP_1, index=1)]
    podman_seen["paths"] = {"c1": str(path)}
    collector = _collector(log_store)
    _round(collector)
    # conmon at max-size: the last lines go to the old file, then a new file takes the path.
    with path.open("ab") as log:
        log.write(_record("last of the old file"))
    os.replace(_write(tmp_path / "new.log", _record("first of the new file")), path)
    _round(collector)
    # The replica crashes and is removed: its file is gone, what was written before is kept.
    with path.open("ab") as log:
        log.write(_record("dying words"))
    path.unlink()
    podman_seen["containers"] = []
    _round(collector)
    lines = [e.line for e in log_store.read(APP_1, lines=100).items]
    assert lines == ["before rotation", "last of the old file", "first of the new file", "dying words"]
    assert collector.tails == {}
    assert "c1" not in log_store.offsets()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.django_db
def test_collector_redacts_the_apps_secrets(owner: Actor, log_store, podman_seen, tmp_path: Path):
    app_id = owner.call("POST", "/apps", {"name": "leaky"}).json()["id"]
    assert owner.call("PATCH", f"/apps/{app_id}/config", {"secrets": {"API_KEY": "sk-live-123456"}}).status_code == 200
    path = _write(tmp_path / "ctr.log", _record("key is sk-live-123456"))
    podman_seen["containers"] = [_container("c1", app_id)]
    podman_seen["paths"] = {"c1": str(path)}
    _round(_collector(log_store))
    assert [e.line for e in log_store.read(app_id, lines=10).items] == ["key is [redacted]"]


def test_release_and_dependency_sandboxes_are_not_followed():
    assert logcollector.source_of(_container("c", "a", role="release")) is None
    assert logcollector.source_of(_container("c", "a", index=2)) == "web.3"


# --- the API --------------------------------------------------------------------------------------


@pytest.fixture
def app_id(owner: Actor) -> str:
    return str(owner.call("POST", "/apps", {"name": "hello"}).json()["id"])


def test_logs_json(owner: Actor, app_id: str, log_store):
    log_store.append(app_id, [*_lines(3, source="web.1"), *_lines(1, source="platform", start=3)])
    response = owner.call("GET", f"/apps/{app_id}/logs?lines=2")
    assert response.status_code == 200
    body = response.json()
    assert [item["line"] for item in body["items"]] == [f"{2:010d}", f"{3:010d}"]
    assert set(body["items"][0]) == {"id", "ts", "source", "line"}
    assert body["next"] == body["items"][-1]["id"]
    only = owner.call("GET", f"/apps/{app_id}/logs?source=platform").json()["items"]
    assert [item["source"] for item in only] == ["platform"]
    log_store.append(app_id, _lines(1, start=4))
    after = owner.call("GET", f"/apps/{app_id}/logs?since={body['next']}").json()
    assert [item["line"] for item in after["items"]] == [f"{4:010d}"]


@pytest.mark.parametrize(
    ("query", "code"),
    [("lines=10001", "request.invalid"), ("source=web.x", "logs.bad_source"), ("since=abc", "logs.bad_cursor")],
)
def test_logs_bad_parameters(owner: Actor, app_id: str, query: str, code: str):
    response = owner.call("GET", f"/apps/{app_id}/logs?{query}")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


def test_another_tenants_logs_are_404(owner: Actor, outsider: Actor, app_id: str, log_store):
    log_store.append(app_id, _lines(1))
    for extra in ({}, {"HTTP_ACCEPT": "text/event-stream"}):
        response = outsider.call("GET", f"/apps/{app_id}/logs", **extra)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def _events(response: Any) -> list[dict[str, Any]]:
    """The SSE events of a (finished) stream: each a dict of its fields, comments as {"comment": ...}."""

    async def read() -> str:
        return "".join([chunk.decode() async for chunk in response.streaming_content])

    events = []
    for block in async_to_sync(read)().split("\n\n"):
        if not block:
            continue
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            fields["comment" if key == "" else key] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        events.append(fields)
    return events


def test_follow_stream_framing_and_resume(owner: Actor, app_id: str, log_store, settings):
    settings.LOG_STREAM_MAX_SECONDS = 1
    settings.LOG_HEARTBEAT_SECONDS = 0.3
    log_store.append(app_id, _lines(3))
    response = owner.call("GET", f"/apps/{app_id}/logs?lines=2", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    events = _events(response)
    assert events[0] == {"retry": "2000"}
    lines = [e for e in events if "id" in e]
    assert [e["data"]["line"] for e in lines] == [f"{1:010d}", f"{2:010d}"]
    assert all(e["id"] == e["data"]["id"] for e in lines)
    assert {"comment": "keepalive"} in events
    assert events[-1] == {"event": "end", "data": {"reason": "max_duration"}}
    # Reconnect after the first line: the second comes again once, then what was added since.
    log_store.append(app_id, _lines(1, start=3))
    resumed = owner.call(
        "GET", f"/apps/{app_id}/logs?follow=1", HTTP_LAST_EVENT_ID=lines[0]["id"], HTTP_ACCEPT="text/event-stream"
    )
    again = [e["data"]["line"] for e in _events(resumed) if "id" in e]
    assert again == [f"{2:010d}", f"{3:010d}"]


def test_deployment_log_follow_ends_when_the_deployment_finishes(owner: Actor, app_id: str, log_store, settings):
    settings.LOG_STREAM_MAX_SECONDS = 5
    deployment_id = owner.call("POST", f"/apps/{app_id}/deployments", {"image": "docker.io/library/python:3"}).json()[
        "id"
    ]
    deployment = Deployment.objects.select_related("app").get(public_id=deployment_id)
    pipeline.log_append(deployment, "-----> Building\nStep 1/2\n")
    pipeline.deploy_event(deployment, Deployment.State.FAILED, "build.failed: it broke")
    log_store.append(app_id, _lines(2))  # runtime lines are not the build log
    response = owner.call("GET", f"/deployments/{deployment_id}/log", HTTP_ACCEPT="text/event-stream")
    events = _events(response)
    assert [e["data"]["line"] for e in events if "id" in e] == [
        "-----> Building",
        "Step 1/2",
        "Deploy #1 failed: build.failed: it broke",
    ]
    assert events[-1] == {"event": "end", "data": {"reason": "deployment_finished", "state": "failed"}}
    # The text log is unchanged.
    text = owner.call("GET", f"/deployments/{deployment_id}/log")
    assert text["Content-Type"].startswith("text/plain")
    assert "Step 1/2" in text.content.decode()


def test_pipeline_lines_carry_their_source(owner: Actor, app_id: str, log_store):
    app = App.objects.get(public_id=app_id)
    deployment_id = owner.call("POST", f"/apps/{app_id}/deployments", {"image": "docker.io/library/python:3"}).json()[
        "id"
    ]
    deployment = Deployment.objects.select_related("app").get(public_id=deployment_id)
    pipeline.log_append(deployment, "migrating with pw-123456\n", secrets=["pw-123456"], source="release")
    pipeline.log_append(deployment, "only in the deployment log", source=None)
    items = log_store.read(str(app.public_id), lines=10).items
    assert [(e.source, e.line) for e in items] == [("release", "migrating with [redacted]")]
