"""One reader per app and process for the follow streams: the fan-out behind `GET /apps/{id}/logs` (SSE).

Without it, every open follow stream held a Redis connection blocked in `XREAD` of its own, and one line
printed by an app woke every follower's read: with 100 followers, 100 replies to parse and 100 commands to send
again per line, in the event loop that also answers the rest of the API. Here the followers of one app, in one
API worker process, share one `Tail`: a task that blocks in `XREAD` on its own connection and hands each batch
it reads to every subscriber (a list append and an event set; the batches are shared, not copied).

No gap and no duplicate, whatever the timing: a subscriber joins with its cursor `c` while the tail stands at
position `p` (the last id it handed out). Joining is synchronous, so every batch the tail hands out afterwards
lies after `p`. When `c` is before `p`, the subscriber first reads `(c, p]` itself (`XRANGE`, non-blocking, on
the hub's shared client); then it takes the batches handed to it. It drops every entry at or before the last
one it delivered, which also covers `c` after `p`. A subscriber that falls far behind (a client that does not
read) is dropped by the tail instead of buffering without bound, and joins again from its cursor: a catch-up
read from the store, not a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import cast

import redis
import redis.asyncio as aioredis
from django.conf import settings

from drivers import logstore

logger = logging.getLogger(__name__)

# How long the tail's XREAD blocks before it issues the next one (no subscriber waits on it: they time out on
# their own event for heartbeats).
TAIL_BLOCK_MS = 10_000
# Consecutive failed reads after which a tail gives up and its subscribers end their streams ("unavailable").
UNAVAILABLE_TRIES = 10
# Batches a subscriber may leave unread before the tail drops it (it then catches up from the store).
MAX_PENDING_BATCHES = 256


class Unavailable(logstore.LogStoreError):
    """The tail gave up: the store did not answer UNAVAILABLE_TRIES reads in a row."""


def position(cursor: str) -> tuple[int, int]:
    """A stream id (`<ms>-<seq>`) as something that orders like the stream does."""
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One follow stream's place in an app's tail: batches handed to it, and where it stands."""

    def __init__(self, hub: Hub, app_id: str, cursor: str) -> None:
        self.hub = hub
        self.app_id = app_id
        self.cursor = cursor
        self.pending: list[list[logstore.Entry]] = []
        self.wake = asyncio.Event()
        self.catch_up_to: str | None = None
        self.dropped = False
        self.unavailable = False
        self.tail: Tail | None = None

    def join(self) -> None:
        """Join the app's tail (synchronously: no batch can slip between the snapshot and the registration)."""
        self.dropped = False
        self.pending.clear()
        self.wake.clear()
        tail = self.hub.tail(self.app_id, start=self.cursor)
        tail.subscribers.add(self)
        self.tail = tail
        behind = position(self.cursor) < position(tail.position)
        self.catch_up_to = tail.position if behind else None

    def leave(self) -> Tail | None:
        """Leave the tail; returns it when this was its last subscriber (it is stopping: await its task)."""
        tail, self.tail = self.tail, None
        if tail is not None and tail.unsubscribe(self):
            return tail
        return None

    def deliver(self, batch: list[logstore.Entry]) -> None:
        if len(self.pending) >= MAX_PENDING_BATCHES:
            logger.info("follow stream fell behind; it catches up from the store", extra={"app_id": self.app_id})
            self.leave()
            self.pending.clear()
            self.dropped = True
        else:
            self.pending.append(batch)
        self.wake.set()

    def give_up(self) -> None:
        self.tail = None
        self.unavailable = True
        self.wake.set()

    async def next(self, timeout: float) -> list[logstore.Entry]:
        """The entries after the cursor, in order: at once if there are any, else the first ones to arrive within
        `timeout` seconds, else [] (a heartbeat's turn). Raises Unavailable once the tail gave up on the store,
        LogStoreError when a catch-up read fails (the cursor is kept: call again)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.unavailable:
                raise Unavailable(f"the log store of app {self.app_id} stayed unavailable")
            if self.dropped:
                self.join()
            if self.catch_up_to is not None:
                fresh = self._fresh(await self._catch_up(self.catch_up_to))
            else:
                fresh = self._fresh([entry for batch in self.pending for entry in batch])
                self.pending.clear()
            if fresh:
                return fresh
            if self.catch_up_to is not None:
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return []
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), remaining)

    async def _catch_up(self, until: str) -> list[logstore.Entry]:
        entries = await self.hub.range_after(self.app_id, self.cursor, until)
        if not entries or position(entries[-1].id) >= position(until):
            self.catch_up_to = None
        return entries

    def _fresh(self, entries: list[logstore.Entry]) -> list[logstore.Entry]:
        """The entries after the cursor (dropping what was already delivered), moving the cursor past them."""
        last = position(self.cursor)
        fresh = [entry for entry in entries if position(entry.id) > last]
        if fresh:
            self.cursor = fresh[-1].id
        return fresh


class Tail:
    """The one blocked XREAD of an app's stream in this process, handing each batch to its subscribers."""

    def __init__(self, hub: Hub, app_id: str, start: str) -> None:
        self.hub = hub
        self.app_id = app_id
        self.position = start
        self.subscribers: set[Subscription] = set()
        self.follower = logstore.follower(app_id)
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"log tail {app_id}")

    def unsubscribe(self, subscription: Subscription) -> bool:
        """Drop a subscriber; the last one stops the tail (True)."""
        self.subscribers.discard(subscription)
        if self.subscribers:
            return False
        self.stop()
        return True

    def stop(self) -> None:
        self.hub.forget(self)
        self.task.cancel()

    async def run(self) -> None:
        failures = 0
        try:
            while self.subscribers:
                try:
                    batch = await self.follower.after(self.position, block_ms=TAIL_BLOCK_MS)
                    failures = 0
                except logstore.LogStoreError:
                    failures += 1
                    logger.warning("log tail: the store is unavailable (%d)", failures, extra={"app_id": self.app_id})
                    if failures >= UNAVAILABLE_TRIES:
                        self.hub.forget(self)
                        for subscription in list(self.subscribers):
                            subscription.give_up()
                        self.subscribers.clear()
                        return
                    await asyncio.sleep(1.0)
                    continue
                if not batch:
                    continue
                self.position = batch[-1].id
                for subscription in list(self.subscribers):
                    subscription.deliver(batch)
        finally:
            await self.follower.close()


class Hub:
    """The tails of one event loop (an API worker process has one), and a shared client for catch-up reads."""

    def __init__(self) -> None:
        self.tails: dict[str, Tail] = {}
        self.client = aioredis.Redis.from_url(
            str(settings.LOG_REDIS_URL), decode_responses=True, socket_connect_timeout=10
        )

    def tail(self, app_id: str, *, start: str) -> Tail:
        tail = self.tails.get(app_id)
        if tail is None:
            tail = self.tails[app_id] = Tail(self, app_id, start)
        return tail

    def forget(self, tail: Tail) -> None:
        if self.tails.get(tail.app_id) is tail:
            del self.tails[tail.app_id]

    async def range_after(self, app_id: str, cursor: str, until: str) -> list[logstore.Entry]:
        key = logstore.store().stream_key(app_id)
        try:
            raw = cast(
                logstore.RawEntries,
                await self.client.xrange(key, min=f"({cursor}", max=until, count=logstore.READ_CHUNK),
            )
        except redis.RedisError as exc:
            raise logstore.LogStoreError(f"reading {key} failed: {exc}") from exc
        return [logstore.entry_from_raw(raw_id, fields) for raw_id, fields in raw]


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        _hubs[loop] = Hub()
    return _hubs[loop]


@contextlib.asynccontextmanager
async def subscribe(app_id: str, cursor: str) -> AsyncIterator[Subscription]:
    """Follow an app's stream after `cursor` for as long as the block runs."""
    subscription = Subscription(hub(), app_id, cursor)
    subscription.join()
    try:
        yield subscription
    finally:
        stopping = subscription.leave()
        if stopping is not None:
            # Let the cancelled read unwind and close its connection before the stream's task ends.
            await asyncio.wait({stopping.task}, timeout=5)
