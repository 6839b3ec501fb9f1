"""The portal's Redis cache: Django's, with one Redis client per process.

Django keeps a cache object per thread and per async context, so under ASGI every request
got its own, and the stock backend built a client (and a connection pool) for each: a TCP
connection to Redis opened and closed for every page that read its session. Here every cache
object of the process shares one client per configuration; redis-py's pool is
thread-safe and starts afresh in a forked child.
"""

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.utils.functional import cached_property

_clients: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()


class RedisCache(DjangoRedisCache):
    @cached_property
    def _cache(self) -> Any:
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = self._class(self._servers, **self._options)
        return client
