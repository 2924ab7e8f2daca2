"""Live output: SSE parsing, resuming a dropped stream with Last-Event-ID without duplicates, the
plain-text fallback, and `deploy` / `logs -f` end to end against respx."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coltsfoot_cli.api import Client
from coltsfoot_cli.api import Exit
from coltsfoot_cli.sse import Comment
from coltsfoot_cli.sse import Decoder
from coltsfoot_cli.sse import Event
from coltsfoot_cli.sse import follow
from coltsfoot_cli.watch import new_part
from tests.unit.cli.conftest import API
from tests.unit.cli.conftest import APP_ID
from tests.unit.cli.conftest import DEPLOYMENT_ID
from tests.unit.cli.conftest import TOKEN
from tests.unit.cli.conftest import app_json
from tests.unit.cli.conftest import deployment_json
from tests.unit.cli.conftest import error_json

SSE = {"content-type": "text/event-stream; charset=utf-8"}


def decode(*chunks: bytes) -> list[Event | Comment]:
    decoder = Decoder()
    return [item for chunk in chunks for item in decoder.feed(chunk)]


def test_decoder_fields_comments_and_multiline_data():
    items = decode(b": heartbeat\n\nid: 1\nevent: log\ndata: a\ndata: b\n\ndata: no id\n\n")
    assert items == [
        Comment("heartbeat"),
        Event(data="a\nb", event="log", id="1"),
        Event(data="no id", event="message", id="1"),  # the last event id persists
    ]


def test_decoder_line_endings_split_across_chunks():
    items = decode(b"id: 7\r", b"\ndata: x\r\n", b"\r\n", b"data: y\r\rdata: \xe2\x80\xa8z\n\n")
    assert items == [Event(data="x", id="7"), Event(data="y", id="7"), Event(data="\u2028z", id="7")]


def test_decoder_keeps_a_partial_line_for_the_next_chunk():
    assert decode(b"data: hel", b"lo\n", b"\n") == [Event(data="hello")]


class Dropping(httpx.SyncByteStream):
    """A response body that sends some bytes, then the connection breaks."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset")


def _sse(*events: tuple[str, str]) -> bytes:
    return b"".join(f"id: {i}\ndata: {d}\n\n".encode() for i, d in events)


def test_follow_resumes_with_last_event_id_and_never_repeats_an_event(api, no_sleep):
    seen_headers: list[str | None] = []
    answers = [
        httpx.Response(200, headers=SSE, stream=Dropping(_sse(("1", "a"), ("2", "b")))),  # drops
        httpx.Response(200, headers=SSE, content=_sse(("2", "b"), ("3", "c"))),  # a replayed 2, then ends
        httpx.Response(200, headers=SSE, content=b": hb\n\n" + _sse(("4", "d"))),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        seen_headers.append(request.headers.get("Last-Event-ID"))
        return answers.pop(0)

    api.get("/stream").mock(side_effect=answer)
    with Client(API, TOKEN) as client:
        stop = iter([False, False, True])
        items = list(follow(client, "stream", should_stop=lambda: next(stop)))
    assert [e.data for e in items if isinstance(e, Event)] == ["a", "b", "c", "d"]
    assert seen_headers == [None, "2", "3"]
    assert no_sleep  # the drop was followed by a pause before reconnecting


def test_follow_gives_up_when_the_api_stays_unreachable(api, no_sleep):
    api.get("/stream").mock(side_effect=httpx.ConnectError("refused"))
    with Client(API, TOKEN) as client, pytest.raises(Exception, match="Could not reach"):
        list(follow(client, "stream"))
    assert len(no_sleep) >= 5


def test_new_part_of_a_growing_and_a_tail_cut_log():
    assert new_part("a\nb\n", "a\nb\nc\n") == "c\n"
    assert new_part("", "x\n") == "x\n"
    assert new_part("0123456789" * 100 + "end\n", ("0123456789" * 100)[500:] + "end\nmore\n") == "more\n"


# --- deploy ---------------------------------------------------------------------------------------


def _app_dir(root: Path) -> Path:
    directory = root / "hello"
    directory.mkdir()
    (directory / "Procfile").write_text("web: gunicorn app:app\n")
    (directory / "app.py").write_text("app = None\n")
    (directory / ".gitignore").write_text("*.pyc\n")
    (directory / "junk.pyc").write_text("")
    (directory / ".git").mkdir()
    (directory / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return directory


def _uploaded_names(request: httpx.Request) -> set[str]:
    content = request.content
    start = content.index(b"\x1f\x8b")
    with tarfile.open(fileobj=io.BytesIO(content[start:]), mode="r:gz") as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_first_deploy_creates_the_app_packs_streams_and_ends_with_the_url(cli, api, workdir):
    directory = _app_dir(workdir)
    api.get("/apps").respond(json={"items": [], "count": 0})
    create = api.post("/apps").respond(201, json=app_json())
    upload = api.post(f"/apps/{APP_ID}/deployments").respond(202, json=deployment_json())
    log = api.get(f"/deployments/{DEPLOYMENT_ID}/log").respond(
        headers=SSE,
        content=_sse(("1", "-----> Building the app image"), ("2", json.dumps({"line": "release: ran"})))
        + b"event: end\ndata: live\n\n",
    )
    api.get(f"/deployments/{DEPLOYMENT_ID}").respond(json=deployment_json(state="live"))
    result = cli("deploy", str(directory))
    assert result.exit_code == 0, result.output
    assert json.loads(create.calls.last.request.content) == {"name": "hello"}
    assert _uploaded_names(upload.calls.last.request) == {"Procfile", "app.py", ".gitignore"}
    assert log.calls.last.request.headers["Accept"] == "text/event-stream"
    assert "-----> Building the app image\n" in result.stdout
    assert "release: ran\n" in result.stdout
    assert result.stdout.strip().endswith("http://hello-acme.localhost:8080/")
    project = json.loads((directory / ".coltsfoot").read_text())
    assert project == {"app": "hello", "app_id": APP_ID, "api": API}


def test_a_failed_deploy_exits_3_with_its_error_code(cli, api, workdir, hello):
    hello()
    directory = _app_dir(workdir)
    api.post(f"/apps/{APP_ID}/deployments").respond(202, json=deployment_json())
    api.get(f"/deployments/{DEPLOYMENT_ID}/log").respond(headers=SSE, content=_sse(("1", "-----> Detecting")))
    failed = {"code": "build.no_web_process", "message": "The Procfile has no web: line."}
    api.get(f"/deployments/{DEPLOYMENT_ID}").respond(json=deployment_json(state="failed", error=failed))
    result = cli("deploy", str(directory), "--app", "hello")
    assert result.exit_code == Exit.DEPLOY_FAILED
    assert "build.no_web_process" in result.stderr
    assert "The Procfile has no web: line." in result.stderr


def test_deploy_falls_back_to_polling_a_plain_text_log_printing_only_what_is_new(cli, api, workdir, hello):
    hello()
    directory = _app_dir(workdir)
    (directory / ".coltsfoot").write_text(json.dumps({"app": "hello", "app_id": APP_ID, "api": API}))
    api.post(f"/apps/{APP_ID}/deployments").respond(202, json=deployment_json())
    api.get(f"/deployments/{DEPLOYMENT_ID}/log").mock(
        side_effect=[
            httpx.Response(200, text="one\n"),
            httpx.Response(200, text="one\ntwo\n"),
            httpx.Response(200, text="one\ntwo\nthree\n"),
        ]
    )
    api.get(f"/deployments/{DEPLOYMENT_ID}").mock(
        side_effect=[
            httpx.Response(200, json=deployment_json(state="building")),
            httpx.Response(200, json=deployment_json(state="live")),
            httpx.Response(200, json=deployment_json(state="live")),
        ]
    )
    result = cli("deploy", str(directory))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("one\n") == 1
    assert result.stdout.count("two\n") == 1
    assert "three\n" in result.stdout


def test_deploy_detach_returns_after_the_upload(cli, api, workdir, hello):
    hello()
    directory = _app_dir(workdir)
    api.post(f"/apps/{APP_ID}/deployments").respond(202, json=deployment_json())
    log = api.get(f"/deployments/{DEPLOYMENT_ID}/log").respond(text="")
    result = cli("deploy", str(directory), "--app", "hello", "--detach")
    assert result.exit_code == 0, result.output
    assert DEPLOYMENT_ID in result.stdout
    assert not log.called


@pytest.mark.parametrize(
    ("args", "sent"),
    [
        (["--image", "ghcr.io/you/app:1.0"], {"image": "ghcr.io/you/app:1.0"}),
        (
            ["--git", "https://github.com/you/repo.git", "--ref", "v2"],
            {"git": {"url": "https://github.com/you/repo.git", "ref": "v2"}},
        ),
    ],
)
def test_deploy_an_image_or_a_git_ref(cli, api, hello, args, sent):
    hello(live_deployment_id=DEPLOYMENT_ID)
    route = api.post(f"/apps/{APP_ID}/deployments").respond(202, json=deployment_json())
    api.get(f"/deployments/{DEPLOYMENT_ID}/log").respond(text="")
    api.get(f"/deployments/{DEPLOYMENT_ID}").respond(json=deployment_json(state="live"))
    result = cli("deploy", "--app", "hello", *args)
    assert result.exit_code == 0, result.output
    assert json.loads(route.calls.last.request.content) == sent


def test_deploy_refusal_prints_the_api_code(cli, api, workdir, hello):
    hello()
    directory = _app_dir(workdir)
    api.post(f"/apps/{APP_ID}/deployments").respond(413, json=error_json("source.too_large", "Over 50 MiB."))
    result = cli("deploy", str(directory), "--app", "hello")
    assert result.exit_code == Exit.API_ERROR
    assert "source.too_large" in result.stderr


def test_a_deploy_token_deploys_by_the_project_file(cli, api, workdir):
    directory = _app_dir(workdir)
    (directory / ".coltsfoot").write_text(json.dumps({"app": "hello", "app_id": APP_ID, "api": API}))
    denied = error_json("auth.insufficient_scope", "needs apps:read")
    api.get("/apps").respond(403, json=denied)
    api.get(f"/apps/{APP_ID}").respond(403, json=denied)
    upload = api.post(f"/apps/{APP_ID}/deployments").respond(202, json=deployment_json())
    api.get(f"/deployments/{DEPLOYMENT_ID}/log").respond(text="ok\n")
    api.get(f"/deployments/{DEPLOYMENT_ID}").respond(json=deployment_json(state="live"))
    result = cli("deploy", str(directory))
    assert result.exit_code == 0, result.output
    assert upload.called


# --- logs -----------------------------------------------------------------------------------------

ITEMS = [
    {"id": "1-0", "ts": "2026-12-01T10:00:00Z", "source": "web.1", "line": "Listening at 0.0.0.0:8000"},
    {"id": "2-0", "ts": "2026-12-01T10:00:01Z", "source": "platform", "line": "deployment #1 is live"},
]


def test_logs_prints_lines_with_source_and_passes_the_filters(cli, api, hello):
    hello()
    route = api.get(f"/apps/{APP_ID}/logs").respond(json={"items": ITEMS, "next": "2-0"})
    result = cli("logs", "hello", "-n", "50", "--source", "web.1")
    assert result.exit_code == 0, result.output
    assert "web.1| Listening at 0.0.0.0:8000" in result.stdout
    params = route.calls.last.request.url.params
    assert params["lines"] == "50"
    assert params["source"] == "web.1"
    assert json.loads(cli("logs", "hello", "--json").stdout)["next"] == "2-0"


def test_logs_line_is_printed_verbatim_not_as_markup(cli, api, hello):
    hello()
    api.get(f"/apps/{APP_ID}/logs").respond(json={"items": [{**ITEMS[0], "line": "[bold red]x[/] \x1b[31m"}]})
    assert "[bold red]x[/]" in cli("logs", "hello").stdout


def test_logs_follow_resumes_after_a_drop_and_shows_every_line_once(cli, api, hello):
    hello()
    resumed_from: list[str | None] = []

    def event(item: dict[str, str]) -> bytes:
        return f"id: {item['id']}\ndata: {json.dumps(item)}\n\n".encode()

    third = {**ITEMS[1], "id": "3-0", "line": "GET / 200"}
    answers: list[httpx.Response] = [
        httpx.Response(200, headers=SSE, stream=Dropping(event(ITEMS[0]) + event(ITEMS[1]))),
        httpx.Response(200, headers=SSE, content=b": heartbeat\n\n" + event(ITEMS[1]) + event(third)),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        resumed_from.append(request.headers.get("Last-Event-ID"))
        if not answers:
            raise KeyboardInterrupt  # the user presses Ctrl-C
        return answers.pop(0)

    api.get(f"/apps/{APP_ID}/logs").mock(side_effect=answer)
    result = cli("logs", "hello", "-f")
    assert result.exit_code == 0, result.output
    assert resumed_from == [None, "2-0", "3-0"]
    assert result.stdout.count("Listening at") == 1
    assert result.stdout.count("deployment #1 is live") == 1
    assert "GET / 200" in result.stdout


def test_logs_follow_polls_with_the_cursor_when_the_server_has_no_sse(cli, api, hello):
    hello()
    calls: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.params.get("since"))
        if len(calls) == 1:
            return httpx.Response(200, json={"items": ITEMS, "next": "2-0"})
        if len(calls) == 2:
            return httpx.Response(200, json={"items": [{**ITEMS[0], "id": "3-0", "line": "new"}], "next": "3-0"})
        raise KeyboardInterrupt

    api.get(f"/apps/{APP_ID}/logs").mock(side_effect=answer)
    result = cli("logs", "hello", "-f", "--json")
    assert result.exit_code == 0, result.output
    assert calls == [None, "2-0", "3-0"]
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["1-0", "2-0", "3-0"]


def test_logs_of_another_tenants_app_is_not_found(cli, api):
    api.get("/apps").respond(json={"items": [], "count": 0})
    api.get(f"/apps/{APP_ID}").respond(404, json=error_json("not_found", "No such app."))
    result = cli("logs", APP_ID)
    assert result.exit_code == Exit.API_ERROR
    assert "No app named" in result.stderr
