"""The Redis driver of shared dedup (`shared.py`): a key is one Redis string per event.

Taking it is `SET key token NX PX hold` (then a GET to see who holds it: `delivered`, or a
token); a commit overwrites it with `delivered` for the dedup TTL; a release is a Lua
compare-and-delete, so it deletes only while the token is still ours.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import Metrics
from .backend import BackendUnavailable
from .key import DedupKey
from .shared import Taken

T = TypeVar("T")
PREFIX = "monetag-gateway:dedup:"
DELIVERED = b"delivered"
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def redis_client(url: str) -> redis.Redis:
    """One client (one connection pool) per URL and process; short timeouts so a dead Redis
    is noticed in about a second, not after the sender gave up."""
    return redis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        health_check_interval=10,
        # a pooled connection that died with a Redis restart is retried once on a new one
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


class RedisUnavailable(BackendUnavailable):
    reason = "dedup_unavailable"


class RedisReservations:
    """The primitives on Redis; the client, and its connection pool, is shared by every route
    on the same URL."""

    name = "redis"
    in_store = False
    unavailable = RedisUnavailable

    def __init__(self, client: redis.Redis, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics
        self._release = client.register_script(_RELEASE)

    def name_of(self, key: DedupKey) -> str:
        return PREFIX + key.hex()

    async def try_take(self, key: DedupKey, token: str, hold: float) -> Taken:
        name = self.name_of(key)
        if await self._call("reserve", self._client.set(name, token, nx=True, px=int(hold * 1000))):
            return Taken.OURS
        holder = await self._call("get", self._client.get(name))
        if holder == DELIVERED:
            return Taken.DELIVERED
        if holder == token.encode():  # our SET landed, its answer was lost and retried
            return Taken.OURS
        return Taken.BUSY

    async def commit(self, key: DedupKey, ttl: float) -> None:
        await self._call(
            "commit", self._client.set(self.name_of(key), DELIVERED, px=int(ttl * 1000))
        )

    async def release(self, key: DedupKey, token: str) -> None:
        await self._call("release", self._release(keys=[self.name_of(key)], args=[token]))

    async def _call(self, operation: str, command: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await command
        except (RedisError, OSError) as error:
            self._metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable(f"redis {operation}: {type(error).__name__}: {error}") from None
        finally:
            self._metrics.redis_latency.labels(operation).observe(time.perf_counter() - started)
        return result
