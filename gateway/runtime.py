"""The process's live state: the current Gateway, swapped on reload, and what outlives it.

Dedup memories, metrics, the in-flight count and the draining flag belong to the process, not
to one config: a reload replaces the Gateway (and its upstream pool) and keeps the rest.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis

from .config import GatewayConfig, RouteConfig
from .config.model import DedupBackend, OnRedisError
from .dedup import DedupMemory, Sharing
from .durable import Durable
from .forward import BACKOFF_CAP
from .metrics import Metrics
from .observe import configure_logging
from .pipeline import Gateway
from .shared_dedup import RedisReservations, redis_client
from .upstream_client import UpstreamClient

log = logging.getLogger("gateway.runtime")
MAX_UPSTREAM_CONNECTIONS = 256
REDIS_HOLD_MARGIN = 5.0


def longest_delivery_of(route: RouteConfig) -> float:
    """The most time one postback's forwarding can take: every attempt and every backoff."""
    return max(
        (upstream.retries + 1) * upstream.timeout + upstream.retries * BACKOFF_CAP
        for upstream in route.upstreams
    )


def longest_delivery(config: GatewayConfig) -> float:
    return max(longest_delivery_of(route) for route in config.routes)


class Runtime:
    def __init__(self, config: GatewayConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.dedup_memories: dict[str, DedupMemory] = {}
        self.draining = False
        self.in_flight = 0
        self.metrics.in_flight.set_function(lambda: self.in_flight)  # read at scrape time
        self._gateway: Gateway | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._redis_clients: dict[str, redis.Redis] = {}
        routes = lambda: self.gateway.routes.values()  # noqa: E731 - read at each use
        self.durable = Durable(config.store, self.metrics, routes) if config.store else None
        self.metrics.watch_dedup(
            lambda: {name: len(memory) for name, memory in self.dedup_memories.items()}
        )

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "Runtime.start() was not awaited"
        return self._gateway

    @property
    def ready(self) -> bool:
        return self._gateway is not None and not self.draining

    async def start(self) -> None:
        """Open the store if there is one (StoreError if it cannot be), then serve the config."""
        self._gateway = self._build(self.config)
        if self.durable is not None:
            await self.durable.start()
        self.metrics.config_loaded()

    async def apply(self, config: GatewayConfig) -> None:
        """Switch to a validated config. Requests already accepted finish on the old one."""
        old = self._gateway
        if (config.store is None) != (self.durable is None) or (
            config.store and self.config.store and config.store != self.config.store
        ):
            log.warning("store changes take effect at the next restart")
        self._gateway = self._build(config)
        self.config = config
        if self.durable is not None:
            await self.durable.adopt()
        configure_logging(config.logging.format, config.logging.level)
        self.metrics.config_loaded()
        if old is not None:
            task = asyncio.create_task(old.retire(longest_delivery(old.config) + 1))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self, grace: float) -> None:
        """At shutdown, after the listener stopped: finish copies, close upstream pools."""
        if self._gateway is not None:
            await self._gateway.retire(grace)
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=grace)
        if self.durable is not None:
            await self.durable.close(grace)
        for client in self._redis_clients.values():
            await client.aclose()

    def _build(self, config: GatewayConfig) -> Gateway:
        for route in config.routes:
            memory = self._memory_for(route)
            memory.sharing = self._sharing_for(route)
        for name in set(self.dedup_memories) - {route.name for route in config.routes}:
            del self.dedup_memories[name]
        client = UpstreamClient(MAX_UPSTREAM_CONNECTIONS)
        enqueue = self.durable.enqueue if self.durable else None
        return Gateway(config, client, self.metrics, self.dedup_memories, enqueue)

    def _memory_for(self, route: RouteConfig) -> DedupMemory:
        """The route's dedup memory: kept across reloads, resized if the config changed."""
        memory = self.dedup_memories.get(route.name)
        if memory is None:
            evicted = self.metrics.dedup_evictions.labels(route.name).inc
            memory = DedupMemory(
                route.dedup.ttl,
                route.dedup.max_entries,
                on_evict=evicted,
                durable=self.durable.keys if self.durable else None,
            )
            self.dedup_memories[route.name] = memory
        else:
            memory.reconfigure(route.dedup.ttl, route.dedup.max_entries)
        return memory

    def _sharing_for(self, route: RouteConfig) -> Sharing | None:
        """Redis reservations for a `backend: redis` route; one client per URL and process."""
        dedup = route.dedup
        if dedup.backend != DedupBackend.REDIS or dedup.redis_url is None:
            return None
        client = self._redis_clients.get(dedup.redis_url)
        if client is None:
            client = self._redis_clients[dedup.redis_url] = redis_client(dedup.redis_url)
        # longer than the slowest delivery, so only a crashed replica's reservation expires
        hold = longest_delivery_of(route) + REDIS_HOLD_MARGIN
        return Sharing(
            RedisReservations(client, hold, self.metrics),
            fail_open=dedup.on_redis_error == OnRedisError.FAIL_OPEN,
            on_fallback=self.metrics.dedup_fallbacks.labels(route.name).inc,
        )
