"""Watching a deployment: its build and release output as it is written, until it is live or failed.

The follow mode of `GET /deployments/{id}/log` (`Accept: text/event-stream`) is used when the server
offers it; a server that answers with the plain-text log instead is polled, printing only what is new
each time. Either way the deployment's state is checked as the output comes (and whenever the stream
ends), and the watch stops at a final state."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from coltsfoot_cli import output
from coltsfoot_cli.api import Client
from coltsfoot_cli.sse import Comment
from coltsfoot_cli.sse import Event
from coltsfoot_cli.sse import NotAnEventStream
from coltsfoot_cli.sse import follow
from coltsfoot_cli.sse import pause

FINAL_STATES = frozenset({"live", "failed", "superseded"})
STATE_POLL_SECONDS = 2.0
LOG_POLL_SECONDS = 1.0
FINAL_GRACE = 1.0


def new_part(seen: str, text: str) -> str:
    """What `text` (the log now) has that `seen` (the log printed so far) had not. The server keeps
    only the log's tail, so once it is cut at the front the old text is found by its last part."""
    if text.startswith(seen):
        return text[len(seen) :]
    anchor = seen[-256:]
    at = text.rfind(anchor) if anchor else -1
    return text[at + len(anchor) :] if at >= 0 else text


def event_text(event: Event) -> str:
    """One event's line(s): the data is either a JSON log item (`{"line": ...}`) or the text itself."""
    data = event.data
    if data.startswith("{"):
        try:
            item = json.loads(data)
        except ValueError:
            item = None
        if isinstance(item, dict) and isinstance(item.get("line"), str):
            data = item["line"]
    return data if data.endswith("\n") else data + "\n"


class Watcher:
    def __init__(
        self,
        api: Client,
        deployment_id: str,
        *,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        printer: Callable[[str], None] = output.raw,
    ) -> None:
        self.api = api
        self.deployment_id = deployment_id
        self.sleep = sleep or pause
        self.clock = clock
        self.printer = printer
        self.deployment: dict[str, Any] = {}
        self._checked_at = float("-inf")

    def _state(self, *, force: bool = False) -> str:
        now = self.clock()
        if force or now - self._checked_at >= STATE_POLL_SECONDS:
            self._checked_at = now
            self.deployment = self.api.get(f"deployments/{self.deployment_id}")
        return str(self.deployment.get("state", ""))

    def _finished(self) -> bool:
        return self._state() in FINAL_STATES

    def run(self) -> dict[str, Any]:
        """Print the output until the deployment reaches a final state; return the deployment."""
        path = f"deployments/{self.deployment_id}/log"
        final_at: float | None = None
        try:
            for item in follow(self.api, path, should_stop=lambda: self._state(force=True) in FINAL_STATES):
                if isinstance(item, Event) and item.event == "message":
                    self.printer(event_text(item))
                # The state flips as the last lines are written: once it is final, what is already on
                # its way is still printed, and the watch ends when the stream goes quiet (a heartbeat)
                # or a moment later. A server that ends the stream itself ends it sooner.
                if final_at is None and self._finished():
                    final_at = self.clock()
                if final_at is not None and (isinstance(item, Comment) or self.clock() - final_at >= FINAL_GRACE):
                    break
        except NotAnEventStream as plain:
            self._poll(plain.response.text)
        self._state(force=True)
        return self.deployment

    def _poll(self, first: str) -> None:
        seen, text = "", first
        while True:
            if text != seen:
                self.printer(new_part(seen, text))
                seen = text
            final = self._state(force=True) in FINAL_STATES
            if not final:
                self.sleep(LOG_POLL_SECONDS)
            text = self.api.request("GET", f"deployments/{self.deployment_id}/log").text
            if final:  # one last read: what was written before the final state
                if text != seen:
                    self.printer(new_part(seen, text))
                return
