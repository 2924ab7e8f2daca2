"""One Redis connection pool per process and server for Django's cache.

Django keeps its cache backends per async context, so under ASGI every request gets a new `RedisCache`,
and each of those made a connection pool of its own: a TCP connection to Redis opened (and left to the
garbage collector) per request. `CACHES["default"]["OPTIONS"]["pool_class"]` names this class, whose
`from_url` hands every backend the process's one pool for that URL and options. redis-py's pool notices a
fork and starts afresh in the child, so worker processes never share a socket.
"""

from __future__ import annotations

import threading
from typing import Any
from typing import Self

import redis

# Options that differ per backend instance without changing the connection (Django's client adds its
# own DriverInfo object each time).
_PER_INSTANCE_OPTIONS = frozenset({"driver_info", "lib_name", "lib_version"})


_POOLS: dict[tuple[str, str], redis.ConnectionPool] = {}
_POOLS_LOCK = threading.Lock()


class SharedConnectionPool(redis.ConnectionPool):
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        options = {key: value for key, value in kwargs.items() if key not in _PER_INSTANCE_OPTIONS}
        key = (url, repr(sorted(options.items())))
        with _POOLS_LOCK:
            pool = _POOLS.get(key)
            if not isinstance(pool, cls):
                pool = super().from_url(url, **kwargs)
                _POOLS[key] = pool
        return pool
