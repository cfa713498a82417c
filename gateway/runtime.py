"""The process's live state: the current Gateway, swapped on reload, and what outlives it.

Dedup per route, metrics, the in-flight count, the draining flag, the store and the Redis
clients belong to the process, not to one config: a reload builds a new Gateway (with its own
upstream pool), points each route's dedup at its backends, hands the routes to the store's
deliverer, and keeps the rest. Data flows one way: runtime -> gateway and durable -> the
pieces they own.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as redis

from .config import GatewayConfig, RouteConfig
from .config.model import DedupBackend, OnRedisError
from .dedup import Backend, RouteDedup
from .dedup.redis_reservations import RedisReservations, redis_client
from .durable.service import Durable
from .forwarding.forward import BACKOFF_CAP
from .forwarding.upstream_client import BODY_WAIT, UpstreamClient
from .inspector.journal import Journal
from .metrics import Metrics
from .observe import configure_logging
from .pipeline import Gateway

log = logging.getLogger("gateway.runtime")
MAX_UPSTREAM_CONNECTIONS = 256
RESERVATION_MARGIN = 5.0


def longest_delivery_of(route: RouteConfig) -> float:
    """The most time one postback's forwarding can take: every attempt and every backoff, at
    most the route's deadline."""
    return min(
        route.deadline,
        max(
            (upstream.retries + 1) * (upstream.timeout + BODY_WAIT) + upstream.retries * BACKOFF_CAP
            for upstream in route.upstreams
        ),
    )


def longest_delivery(config: GatewayConfig) -> float:
    return max(longest_delivery_of(route) for route in config.routes)


class Runtime:
    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.dedup: dict[str, RouteDedup] = {}  # by route name, across reloads
        self.draining = False
        self.in_flight = 0
        self.metrics.in_flight.set_function(lambda: self.in_flight)  # read at scrape time
        self._gateway: Gateway | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._redis_clients: dict[str, redis.Redis] = {}
        self._store = config.store  # changing it needs a restart
        self.journal = Journal(config.server.recent_postbacks)  # for the inspector
        self.loaded_at = time.time()  # when the running config was loaded
        self.reload_error: list[str] | None = None  # the problems of the last failed reload
        self.durable = (
            Durable(config.store, self.metrics, on_attempt=self.journal.attempted)
            if config.store
            else None
        )
        self.metrics.watch_dedup(lambda: {name: len(dedup) for name, dedup in self.dedup.items()})

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "Runtime.start() was not awaited"
        return self._gateway

    @property
    def ready(self) -> bool:
        return self._gateway is not None and not self.draining

    async def start(self) -> None:
        """Open the store if there is one (StoreError if it cannot be), then serve the config."""
        gateway = self._build(self.config)
        if self.durable is not None:
            await self.durable.start(gateway.routes.values())
        self._gateway = gateway
        self.metrics.config_loaded()

    async def apply(self, config: GatewayConfig) -> None:
        """Switch to a validated config. Requests already accepted finish on the old one."""
        old = self._gateway
        if config.store != self._store:
            log.warning("store changes take effect at the next restart")
        self._gateway = self._build(config)
        self.config = config
        self.loaded_at, self.reload_error = time.time(), None
        self.journal.resize(config.server.recent_postbacks)
        if self.durable is not None:
            await self.durable.serve(self._gateway.routes.values())
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
            self._dedup_for(route).reconfigure(
                route.dedup.ttl, route.dedup.max_entries, self._backends_for(route)
            )
        for name in set(self.dedup) - {route.name for route in config.routes}:
            del self.dedup[name]
        client = UpstreamClient(MAX_UPSTREAM_CONNECTIONS)
        return Gateway(config, client, self.metrics, self.dedup, self.durable)

    def _dedup_for(self, route: RouteConfig) -> RouteDedup:
        """The route's dedup, kept across reloads (a renamed route starts empty)."""
        dedup = self.dedup.get(route.name)
        if dedup is None:
            dedup = self.dedup[route.name] = RouteDedup(
                route.dedup.ttl,
                route.dedup.max_entries,
                on_evict=self.metrics.dedup_evictions.labels(route.name).inc,
                on_fallback=self.metrics.dedup_fallbacks.labels(route.name).inc,
            )
        return dedup

    def _backends_for(self, route: RouteConfig) -> list[Backend]:
        """Where, beyond this process, the route's delivered events are known: the store's
        keys (restart-proof), then Redis (shared by replicas), in that order."""
        backends: list[Backend] = []
        # longer than the slowest delivery, so only a crashed replica's reservation expires
        hold = longest_delivery_of(route) + RESERVATION_MARGIN
        if self.durable is not None:
            backends.append(self.durable.keys_for(hold))
        dedup = route.dedup
        if dedup.backend == DedupBackend.REDIS and dedup.redis_url is not None:
            client = self._redis_clients.get(dedup.redis_url)
            if client is None:
                client = self._redis_clients[dedup.redis_url] = redis_client(dedup.redis_url)
            fail_open = dedup.on_redis_error == OnRedisError.FAIL_OPEN
            backends.append(RedisReservations(client, hold, self.metrics, fail_open=fail_open))
        return backends
