"""Server-sent events: a decoder that follows the WHATWG rules (fields, comments, multi-line data,
the last event id that persists across events, `retry`), fed raw bytes, so a tenant's log line with a
U+2028 or a form feed stays one line; and a reader that keeps a stream going across drops by
reconnecting with `Last-Event-ID`, never yielding an event id twice."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from coltsfoot_cli.api import STREAM_TIMEOUT
from coltsfoot_cli.api import Client
from coltsfoot_cli.api import CliError
from coltsfoot_cli.api import unreachable

EVENT_STREAM = "text/event-stream"
MAX_RECONNECT_DELAY = 10.0
# Consecutive failed connection attempts before giving up (a dropped stream that reconnects at once
# resets the count).
MAX_ATTEMPTS = 8
SEEN_IDS = 4096


def pause(seconds: float) -> None:
    """Wait before reconnecting (the tests replace this)."""
    time.sleep(seconds)


@dataclass(frozen=True)
class Event:
    data: str
    event: str = "message"
    id: str | None = None


@dataclass(frozen=True)
class Comment:
    """A comment line (`: ...`): servers send these as heartbeats."""

    text: str


class Decoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> Iterator[Event | Comment]:
        for line in self._lines(chunk):
            yield from self._line(line.decode("utf-8", errors="replace"))

    def _lines(self, chunk: bytes) -> Iterator[bytes]:
        # Lines end in CRLF, LF or CR; a CRLF may be split across two chunks.
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        data = self._buffer + chunk
        start = 0
        index = 0
        while index < len(data):
            byte = data[index]
            if byte in (0x0A, 0x0D):
                yield data[start:index]
                if byte == 0x0D:
                    if index + 1 < len(data):
                        if data[index + 1] == 0x0A:
                            index += 1
                    else:
                        self._pending_cr = True
                start = index + 1
            index += 1
        self._buffer = data[start:]

    def _line(self, line: str) -> Iterator[Event | Comment]:
        if line == "":
            if self._data:
                yield Event(data="\n".join(self._data), event=self._event or "message", id=self.last_event_id)
            self._data, self._event = [], ""
            return
        if line.startswith(":"):
            yield Comment(line[1:].lstrip(" "))
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)


def is_event_stream(response: httpx.Response) -> bool:
    content_type = str(response.headers.get("content-type", ""))
    return content_type.split(";")[0].strip().lower() == EVENT_STREAM


class NotAnEventStream(Exception):
    """The server answered the follow request without SSE: the caller falls back to polling."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__("not an event stream")
        self.response = response


def follow(
    client: Client,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    last_event_id: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[Event | Comment]:
    """Events of `path`, reconnecting whenever the stream ends or drops, each time with the id of the
    last event received in `Last-Event-ID`, so the server resumes right after it. An event id seen
    before is never yielded again. `should_stop` is asked whenever the stream ends (and after every
    event or heartbeat is yielded the caller may simply stop iterating). Raises `NotAnEventStream` if
    the first answer is not SSE, `CliError` for an error answer or when reconnecting keeps failing."""
    seen: collections.OrderedDict[str, None] = collections.OrderedDict()
    failures = 0
    first = True
    delay_override: float | None = None
    while True:
        headers = {"Accept": EVENT_STREAM, "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        decoder = Decoder()
        decoder.last_event_id = last_event_id
        received = False
        try:
            with client.stream("GET", path, params=params, headers=headers, timeout=STREAM_TIMEOUT) as response:
                if not is_event_stream(response):
                    if first:
                        response.read()
                        raise NotAnEventStream(response)
                    raise CliError("stream.not_sse", "The API stopped answering with an event stream.")
                first = False
                failures = 0
                for chunk in response.iter_bytes():
                    for item in decoder.feed(chunk):
                        received = True
                        if isinstance(item, Event) and item.id is not None:
                            if item.id in seen:
                                continue
                            seen[item.id] = None
                            if len(seen) > SEEN_IDS:
                                seen.popitem(last=False)
                        yield item
                    last_event_id = decoder.last_event_id
                if decoder.retry_ms is not None:
                    delay_override = min(decoder.retry_ms / 1000, MAX_RECONNECT_DELAY)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            last_event_id = decoder.last_event_id
            failures += 1
            if failures >= MAX_ATTEMPTS:
                raise unreachable(client.api, exc) from exc
        if should_stop is not None and should_stop():
            return
        if failures:
            pause(min(0.5 * 2 ** (failures - 1), MAX_RECONNECT_DELAY))
        elif delay_override is not None:
            pause(delay_override)
        elif not received:
            pause(1.0)  # a server that closes every stream at once must not make this a busy loop
