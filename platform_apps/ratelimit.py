"""A fixed-window request counter in the shared cache (Redis in production)."""

from __future__ import annotations

import time

from django.core.cache import cache


def hit(bucket: str, *, limit: int, window_seconds: int = 60) -> int | None:
    """Count one request; return None if allowed, else the seconds until the window resets."""
    now = int(time.time())
    window = now // window_seconds
    key = f"ratelimit:{bucket}:{window}"
    cache.add(key, 0, timeout=window_seconds + 5)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window_seconds + 5)
        count = 1
    if count > limit:
        return (window + 1) * window_seconds - now
    return None
