"""A fixed-window request counter in the shared cache (Redis in production)."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from django.core.cache import DEFAULT_CACHE_ALIAS
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


def hit(bucket: str, *, limit: int, window_seconds: int = 60, count: bool = True) -> int | None:
    """Count one request (or, with count=False, only look); return None if under the limit,
    else the seconds until the window resets. With the cache unreachable it fails open: a
    Redis outage must not turn every limited call into an error."""
    try:
        return _hit(bucket, limit=limit, window_seconds=window_seconds, count=count)
    except (RedisError, OSError) as exc:
        logger.warning("rate limit not applied, the cache is unreachable: %s", type(exc).__name__)
        return None


def _hit(bucket: str, *, limit: int, window_seconds: int, count: bool) -> int | None:
    now = int(time.time())
    window = now // window_seconds
    key = f"ratelimit:{bucket}:{window}"
    current = _count(key, timeout=window_seconds + 5) if count else int(_counters().get(key, 0)) + 1
    if current > limit:
        return (window + 1) * window_seconds - now
    return None


def _count(key: str, *, timeout: int) -> int:
    """Add one to the window's counter and return it. On Redis one round trip (INCR, and the expiry set by
    the window's first hit: EXPIRE NX), since every API request pays it; on other caches (tests) three."""
    backend = _counters()
    if isinstance(backend, RedisCache):
        name = backend.make_and_validate_key(key)
        pipe = backend._cache.get_client(name, write=True).pipeline(transaction=False)
        pipe.incr(name)
        pipe.expire(name, timeout, nx=True)
        current, _ = pipe.execute()
        return int(current)
    backend.add(key, 0, timeout=timeout)
    try:
        return int(backend.incr(key))
    except ValueError:  # expired between add and incr
        backend.set(key, 1, timeout=timeout)
        return 1


@functools.cache
def _counters() -> BaseCache:
    """The default cache's backend, one per process. Django builds its backends per async context, so under ASGI
    `caches["default"]` is a new backend on every request: for Redis a new client, its options worked out again,
    1.1 ms of CPU on the 2-core VM, more than the counting round trip. The Redis backend is safe to share between
    threads (redis-py's clients and the one pool, core.redispool), and so is the local-memory one of the tests."""
    return caches.create_connection(DEFAULT_CACHE_ALIAS)


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "CACHES":  # as Django drops its own backends (tests)
        _counters.cache_clear()
