"""The Redis dedup backend: reservations and delivered keys shared by every replica.

A replica that wants to forward an event first takes a reservation: `SET key token NX PX hold`.
Whoever gets it forwards; the others wait until the key says `delivered` (a duplicate) or is
gone (released after a failure: they try again). Delivery success overwrites the reservation
with `delivered` for the dedup TTL; failure deletes it only if the token is still ours
(compare-and-delete), so a late release never frees someone else's reservation. A replica that
crashes mid-delivery leaves a reservation that expires by itself after `hold` seconds, which
is longer than the slowest delivery (every attempt and backoff).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..metrics import Metrics
from .backend import KNOWN, BackendUnavailable, Claim
from .key import DedupKey

T = TypeVar("T")
PREFIX = "monetag-gateway:dedup:"
DELIVERED = b"delivered"
POLL_SECONDS = 0.025
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
    """The backend for one route (`fail_open` is the route's `on_redis_error`); the client, and
    its connection pool, is shared by every route on the same URL."""

    name = "redis"
    in_store = False

    def __init__(
        self, client: redis.Redis, hold_seconds: float, metrics: Metrics, *, fail_open: bool
    ) -> None:
        self._client = client
        self._hold_ms = int(hold_seconds * 1000)
        self._metrics = metrics
        self._release = client.register_script(_RELEASE)
        self.fail_open = fail_open

    async def claim(self, key: DedupKey) -> Claim:
        """Our token if this replica may deliver the event; KNOWN if it was delivered."""
        name = PREFIX + key.hex()
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self._hold_ms / 1000 + 1
        while True:
            if await self._call(
                "reserve", self._client.set(name, token, nx=True, px=self._hold_ms)
            ):
                return Claim(token=token)
            holder = await self._call("get", self._client.get(name))
            if holder == DELIVERED:
                return KNOWN
            if holder == token.encode():  # our SET landed, its answer was lost and retried
                return Claim(token=token)
            if time.monotonic() > deadline:  # a reservation outlived its own expiry: broken
                raise RedisUnavailable(f"reservation {name} never ends")
            await asyncio.sleep(POLL_SECONDS)

    async def commit(self, key: DedupKey, claim: Claim, ttl: float) -> None:
        name = PREFIX + key.hex()
        await self._call("commit", self._client.set(name, DELIVERED, px=int(ttl * 1000)))

    async def release(self, key: DedupKey, claim: Claim) -> None:
        await self._call("release", self._release(keys=[PREFIX + key.hex()], args=[claim.token]))

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
