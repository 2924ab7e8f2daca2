"""The follow streams' fan-out (platform_apps.logs.hub), on a real redis-server: the followers of an app share one
blocked read, and every follower gets every line after its cursor exactly once, however it joins or lags."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from drivers import logstore
from platform_apps.logs import hub
from platform_apps.logs import streams

APP = "6d0c4a8e-1f2b-4c3d-9e8f-a1b2c3d4e5f6"
OTHER = "0f9e8d7c-6b5a-4493-8271-605f4e3d2c1b"


def _append(store: logstore.LogStore, *lines: str, app: str = APP) -> None:
    store.append(app, [logstore.Line(logstore.timestamp(), "web.1", line) for line in lines])


async def _take(subscription: hub.Subscription, n: int, timeout: float = 5) -> list[str]:
    """The next n lines the subscription delivers (fails on a timeout rather than hanging)."""
    got: list[str] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got += [entry.line for entry in await subscription.next(timeout=1)]
    return got


async def _settle() -> None:
    """Give the tail's read a moment to return and hand out what was appended."""
    await asyncio.sleep(0.2)


def _run(go: Callable[[], Awaitable[Any]]) -> Any:
    return async_to_sync(go)()


def test_followers_of_one_app_share_one_read_and_each_gets_every_line(log_store):
    _append(log_store, "old")
    start = log_store.read(APP, lines=1).next

    async def go() -> list[list[str]]:
        async with hub.subscribe(APP, start) as a, hub.subscribe(APP, start) as b, hub.subscribe(OTHER, "0-0") as c:
            assert set(hub.hub().tails) == {APP, OTHER}
            assert a.tail is b.tail
            _append(log_store, "1", "2")
            await _settle()
            _append(log_store, "3")
            lines = [await _take(a, 3), await _take(b, 3)]
            assert await c.next(timeout=0.2) == []
        assert hub.hub().tails == {}
        return lines

    assert _run(go) == [["1", "2", "3"], ["1", "2", "3"]]


def test_a_follower_joining_behind_the_tail_catches_up_without_a_gap_or_a_repeat(log_store):
    start = log_store.read(APP, lines=1).next

    async def go() -> list[str]:
        async with hub.subscribe(APP, start) as first:
            _append(log_store, "1", "2", "3")
            assert await _take(first, 3) == ["1", "2", "3"]
            # The tail now stands after "3"; a reconnect from the start must still see 1..3, then 4, once each.
            async with hub.subscribe(APP, start) as late:
                assert late.catch_up_to is not None
                _append(log_store, "4")
                return await _take(late, 4)

    assert _run(go) == ["1", "2", "3", "4"]


def test_a_follower_joining_ahead_of_the_tail_gets_nothing_twice(log_store):
    start = log_store.read(APP, lines=1).next

    async def go() -> list[str]:
        async with hub.subscribe(APP, start):
            # Appended while the tail's read is blocked: the tail has not handed these out yet.
            _append(log_store, "1", "2")
            cursor = log_store.read(APP, lines=1).next
            async with hub.subscribe(APP, cursor) as ahead:
                _append(log_store, "3")
                return await _take(ahead, 1) + [entry.line for entry in await ahead.next(timeout=0.3)]

    assert _run(go) == ["3"]


def test_a_follower_that_does_not_read_is_dropped_and_catches_up_from_the_store(log_store, monkeypatch):
    monkeypatch.setattr(hub, "MAX_PENDING_BATCHES", 2)
    start = log_store.read(APP, lines=1).next

    async def go() -> list[str]:
        async with hub.subscribe(APP, start) as reader, hub.subscribe(APP, start) as idle:
            for i in range(6):
                _append(log_store, str(i))
                await _settle()
                assert await _take(reader, 1) == [str(i)]
            assert idle.dropped
            assert idle.pending == []
            return await _take(idle, 6)

    assert _run(go) == [str(i) for i in range(6)]


def test_when_the_store_stays_away_the_stream_ends_unavailable(log_store, settings, monkeypatch):
    monkeypatch.setattr(hub, "UNAVAILABLE_TRIES", 1)
    settings.LOG_REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens on the discard port
    settings.LOG_HEARTBEAT_SECONDS = 5
    settings.LOG_STREAM_MAX_SECONDS = 30

    async def go() -> list[bytes]:
        async with asyncio.timeout(20):
            return [chunk async for chunk in streams.events(APP, history=[], cursor="0-0", match=logstore.Matcher())]

    events = _run(go)
    assert events[-1] == b'event: end\ndata: {"reason": "unavailable"}\n\n'


@pytest.mark.parametrize("cursor", ["0-0", "1700000000000-0", "1700000000000-12"])
def test_positions_order_like_stream_ids(cursor):
    assert hub.position(cursor) < hub.position("1700000000001-0")
    assert hub.position("1700000000000-2") < hub.position("1700000000000-10")
