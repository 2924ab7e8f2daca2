"""`coltsfoot logs`: the app's recent log lines, and with `-f` the live tail (SSE, resumed with
`Last-Event-ID` across drops and the server's stream cap, so no line is lost or shown twice)."""

from __future__ import annotations

import json
from typing import Annotated
from typing import Any

import typer

from coltsfoot_cli import output
from coltsfoot_cli.api import Client
from coltsfoot_cli.context import AppOption
from coltsfoot_cli.context import JsonOption
from coltsfoot_cli.context import client
from coltsfoot_cli.context import handled
from coltsfoot_cli.context import pick
from coltsfoot_cli.context import resolve_app
from coltsfoot_cli.settings import load_login
from coltsfoot_cli.sse import Event
from coltsfoot_cli.sse import NotAnEventStream
from coltsfoot_cli.sse import follow
from coltsfoot_cli.sse import pause

MAX_LINES = 10_000
POLL_SECONDS = 1.0


def format_item(item: dict[str, Any]) -> str:
    line = str(item.get("line", ""))
    return f"{item.get('ts', '')} {item.get('source', '')}| {line.rstrip(chr(10))}\n"


def _item(event: Event) -> dict[str, Any]:
    try:
        item = json.loads(event.data)
    except ValueError:
        item = None
    if not isinstance(item, dict):
        item = {"line": event.data}
    item.setdefault("id", event.id)
    return item


def _show(item: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        output.emit_json_line(item)
    else:
        output.raw(format_item(item))


def _poll(api: Client, path: str, params: dict[str, Any], cursor: Any, *, as_json: bool) -> None:
    """A server without SSE on this endpoint: ask for what came after the cursor, once a second."""
    while True:
        pause(POLL_SECONDS)
        page = api.get(path, params={**params, **({"since": cursor} if cursor is not None else {})})
        for item in page.get("items", []):
            _show(item, as_json=as_json)
        cursor = page.get("next", cursor)


@handled
def logs(
    app_arg: Annotated[str | None, typer.Argument(metavar="[APP]", help="The app (or --app).")] = None,
    app: AppOption = None,
    tail: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines as they come.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, max=MAX_LINES, help="How many past lines.")] = 100,
    source: Annotated[
        str | None, typer.Option("--source", "-s", help="Only this source: web.1, release, build, platform.")
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Print the app's log: replicas (web.1, ...), release and build output, and the platform's events
    about it (deploys, crashes, restarts). With -f, follow it (Ctrl-C stops)."""
    login = load_login()
    params: dict[str, Any] = {"lines": lines}
    if source:
        params["source"] = source
    with client(login) as api:
        target = resolve_app(api, login, pick(app_arg, app))
        path = f"apps/{target.id}/logs"
        if not tail:
            page = api.get(path, params=params)
            if json_:
                output.emit_json(page)
            else:
                for item in page.get("items", []):
                    _show(item, as_json=False)
            return
        try:
            _follow(api, path, params, as_json=json_)
        except KeyboardInterrupt:
            return


def _follow(api: Client, path: str, params: dict[str, Any], *, as_json: bool) -> None:
    try:
        for event in follow(api, path, params=params):
            if isinstance(event, Event) and event.event == "message":
                _show(_item(event), as_json=as_json)
    except NotAnEventStream as plain:
        try:
            page = plain.response.json()
        except ValueError:
            page = {}
        for item in page.get("items", []):
            _show(item, as_json=as_json)
        _poll(api, path, params, page.get("next"), as_json=as_json)
