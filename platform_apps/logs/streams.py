"""Follow streams: Server-Sent Events over a log stream.

The answer is a StreamingHttpResponse over an async generator: under the ASGI server (granian) an open stream
costs a coroutine, no worker thread and no Redis connection of its own (the followers of an app in one process
share one blocked XREAD: `hub`), so many followers do not slow the rest of the API. Framing (one event per line):

    id: <cursor>
    data: {"id": "<cursor>", "ts": "...", "source": "web.1", "line": "..."}

then, every LOG_HEARTBEAT_SECONDS without a line, a comment (`: keepalive`); a stream ends with
`event: end` and `data: {"reason": "max_duration"}` after LOG_STREAM_MAX_SECONDS, or (a deployment's)
`{"reason": "deployment_finished", "state": "live"}`. A client reconnecting with `Last-Event-ID: <cursor>` gets
every line after that one, none twice.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpRequest
from django.http import StreamingHttpResponse

from drivers import logstore
from platform_apps.logs import hub

logger = logging.getLogger(__name__)

RETRY_MS = 2000
UNAVAILABLE_TRIES = 10


def wants_stream(request: HttpRequest, follow: bool) -> bool:
    return follow or "text/event-stream" in request.headers.get("Accept", "")


def last_event_id(request: HttpRequest) -> str | None:
    value = request.headers.get("Last-Event-ID", "").strip()
    return value or None


# The stream yields bytes: Django's streaming response passes bytes through, while each str chunk costs it a
# charset lookup and an encode per follower.
RETRY = f"retry: {RETRY_MS}\n\n".encode()
KEEPALIVE = b": keepalive\n\n"


@functools.lru_cache(maxsize=1024)
def event(entry: logstore.Entry) -> bytes:
    """One line's SSE event; cached, since every follower of an app sends the same bytes for the same entry (at
    most 1,024 entries of at most a cut line each: a few MiB per process)."""
    return f"id: {entry.id}\ndata: {json.dumps(entry.as_item(), ensure_ascii=False)}\n\n".encode()


def end_event(**data: str) -> bytes:
    return f"event: end\ndata: {json.dumps(data)}\n\n".encode()


async def events(
    app_id: str,
    *,
    history: list[logstore.Entry],
    cursor: str,
    match: logstore.Matcher,
    until_end_state: bool = False,
    final_state: str = "",
) -> AsyncIterator[bytes]:
    """The history, then the lines that follow `cursor` as they arrive. With `until_end_state`, the stream ends
    at the entry that carries a deployment's final state (or at once after the history, if `final_state` says
    the deployment had already finished)."""
    yield RETRY
    for entry in history:
        yield event(entry)
        if until_end_state and entry.end_state:
            yield end_event(reason="deployment_finished", state=entry.end_state)
            return
    if final_state:
        yield end_event(reason="deployment_finished", state=final_state)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(settings.LOG_STREAM_MAX_SECONDS)
    heartbeat = float(settings.LOG_HEARTBEAT_SECONDS)
    failures = 0
    quiet_since = loop.time()
    async with hub.subscribe(app_id, cursor) as subscription:
        while True:
            now = loop.time()
            if now >= deadline:
                yield end_event(reason="max_duration")
                return
            if now - quiet_since >= heartbeat:
                yield KEEPALIVE
                quiet_since = now
            wait = min(heartbeat - (now - quiet_since), deadline - now)
            try:
                batch = await subscription.next(timeout=max(0.001, wait))
                failures = 0
            except hub.Unavailable:
                yield end_event(reason="unavailable")
                return
            except logstore.LogStoreError:
                # A blip (a reconnect, a slow connect on a loaded host) costs nothing: the cursor says where
                # to go on. Only a store that stays away ends the stream (the client reconnects later).
                failures += 1
                logger.warning("follow stream: log store unavailable (%d)", failures, exc_info=True)
                if failures >= UNAVAILABLE_TRIES:
                    yield end_event(reason="unavailable")
                    return
                await asyncio.sleep(1.0)
                continue
            for entry in batch:
                if not match(entry):
                    continue
                yield event(entry)
                quiet_since = loop.time()
                if until_end_state and entry.end_state:
                    yield end_event(reason="deployment_finished", state=entry.end_state)
                    return


def sse_response(content: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(content, content_type="text/event-stream; charset=utf-8")
    # Nothing between us and the client may buffer or cache the stream (Caddy, nginx, a browser).
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
