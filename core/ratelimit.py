"""A fixed-window request counter in the shared cache (Redis in production)."""

from __future__ import annotations

import logging
import time

from django.core.cache import cache
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
    if count:
        cache.add(key, 0, timeout=window_seconds + 5)
        try:
            current = int(cache.incr(key))
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window_seconds + 5)
            current = 1
    else:
        current = int(cache.get(key, 0)) + 1
    if current > limit:
        return (window + 1) * window_seconds - now
    return None
