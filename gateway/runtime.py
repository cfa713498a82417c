"""The process's live state: the current Gateway, swapped on reload, and what outlives it.

Dedup per scope, metrics, the in-flight count, the draining flag, the store and the Redis
clients belong to the process, not to one config: a reload builds a new Gateway (with its own
upstream pool), points each route's dedup at its backends, hands the routes to the store's
deliverer, and keeps the rest. A route's dedup memory, and the postbacks it has in flight,
belong to its dedup scope (`RouteConfig.dedup_scope`), not to one loaded config: a renamed
route keeps it, and a route removed and put back finds it again (kept for its TTL). Data
flows one way: runtime -> gateway and durable -> the pieces they own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import redis.asyncio as redis

from .config import GatewayConfig, RouteConfig
from .config.model import DedupBackend, OnRedisError
from .deadline import Deadline
from .dedup import Backend, RouteDedup
from .dedup.redis_reservations import RedisReservations, redis_client
from .dedup.shared import SharedReservations
from .durable.service import Store
from .forwarding.policy import SYNC_BACKOFF_CAP
from .forwarding.queued import QueuedRoute
from .forwarding.upstream_client import BODY_WAIT, UpstreamClient
from .history.recorder import Recorder
from .history.store import history_store
from .journal import Journal
from .logs import configure_logging
from .metrics import RESTART_ONLY, Metrics
from .pipeline import Gateway
from .record import UpstreamAttempt
from .reward_sessions import SessionLimits
from .senders import SendersSeen
from .ymid_status import StatusWatch

log = logging.getLogger("gateway.runtime")
MAX_UPSTREAM_CONNECTIONS = 256
RESERVATION_MARGIN = 5.0


def longest_delivery_of(route: RouteConfig) -> float:
    """The most time one postback's forwarding can take: every attempt and every backoff, at
    most the route's deadline."""
    return min(
        route.deadline,
        max(
            (upstream.retries + 1) * (upstream.timeout + BODY_WAIT)
            + upstream.retries * SYNC_BACKOFF_CAP
            for upstream in route.upstreams
        ),
    )


def new_dedup_windows(old: GatewayConfig, new: GatewayConfig) -> list[tuple[str, str]]:
    """(route, what changed) for each route of `new` whose dedup identity differs from the
    same-named route's in `old`: its events get new keys. Reordering dedup.key or renaming a
    route is not such a change."""
    before = {route.name: route for route in old.routes}
    changes = []
    for route in new.routes:
        earlier = before.get(route.name)
        if earlier is None or earlier.dedup_identity == route.dedup_identity:
            continue
        parts = []
        if earlier.dedup_scope != route.dedup_scope:
            parts.append(f"scope {earlier.dedup_scope!r} -> {route.dedup_scope!r}")
        if set(earlier.dedup.key) != set(route.dedup.key):
            fields = ", ".join(sorted(earlier.dedup.key)), ", ".join(sorted(route.dedup.key))
            parts.append(f"dedup.key [{fields[0]}] -> [{fields[1]}]")
        changes.append((route.name, "; ".join(parts)))
    return changes


def restart_pending(started: GatewayConfig, loaded: GatewayConfig) -> list[str]:
    """The RESTART_ONLY keys whose value in `loaded` differs from the one the process started
    with: the listeners, the store and TLS still run on the old one."""
    server, now = started.server, loaded.server
    values = {
        "server.listen": (server.listen, now.listen),
        "server.admin_listen": (server.admin_listen, now.admin_listen),
        "server.client_timeout": (server.client_timeout, now.client_timeout),
        "server.tls": (server.tls, now.tls),
        "server.max_connections": (server.max_connections, now.max_connections),
        "store": (started.store, loaded.store),
        "history.enabled": (started.history.enabled, loaded.history.enabled),
    }
    assert tuple(values) == RESTART_ONLY
    return [key for key, (before, after) in values.items() if before != after]


def longest_delivery(config: GatewayConfig) -> float:
    return max(longest_delivery_of(route) for route in config.routes)


class Runtime:
    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.dedup: dict[str, RouteDedup] = {}  # by route name, of the config in force
        self._dedup_of_scope: dict[str, RouteDedup] = {}  # across reloads and removals
        self._scope_retired_at: dict[str, float] = {}  # no route of the config uses it
        self._scope_label: dict[str, str] = {}  # a route name, for the scope's metrics
        self.draining = False
        self.in_flight = 0
        self.metrics.in_flight.set_function(lambda: self.in_flight)  # read at scrape time
        self._gateway: Gateway | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._old_gateways: set[Gateway] = set()  # retiring: their requests still count
        self._redis_clients: dict[str, redis.Redis] = {}
        self._started_with = config  # what the listeners, the store and TLS were built from
        self.restart_pending: list[str] = []  # RESTART_ONLY keys reloaded but not in force
        self.journal = Journal(config.server.recent_postbacks)  # for the inspector
        # reward sessions' rate limits by route, across reloads
        self._session_limits: dict[str, SessionLimits] = {}
        # where postbacks with a valid key came from (`allowlist suggest`, the inspector)
        self.senders = SendersSeen(metrics)
        self.loaded_at = time.time()  # when the running config was loaded
        self.reload_error: list[str] | None = None  # the problems of the last failed reload
        self.store = (
            Store(
                config.store,
                self.metrics,
                on_attempt=self.journal.attempted,
                on_result=self._delivery_result,
            )
            if config.store
            else None
        )
        # every postback, kept in the store (history/): made once the store is open
        self.history: Recorder | None = None
        # ymids' status for the Mini App's frontends, read from the history
        self.status_watch: StatusWatch | None = None
        self.metrics.watch_dedup(lambda: {name: len(dedup) for name, dedup in self.dedup.items()})
        self.metrics.watch_readiness(lambda: self.readiness() == "ready")

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "Runtime.start() was not awaited"
        return self._gateway

    @property
    def ready(self) -> bool:
        return self._gateway is not None and not self.draining

    def readiness(self) -> str:
        """What /readyz says (`ready` is the only 200): `ready`, `store_unavailable` (postbacks
        would get 503 store_error), `draining` or `starting`; `gateway_ready` reads it too."""
        if not self.ready:
            return "draining" if self.draining else "starting"
        if self.store is not None and not self.store.available:
            return "store_unavailable"
        return "ready"

    async def start(self) -> None:
        """Open the store if there is one (StoreError if it cannot be), then serve the config."""
        gateway = self._build(self.config)
        if self.store is not None:
            await self.store.start(_queued(gateway))
            assert self.config.store is not None
            if self.config.history.enabled:
                history = Recorder(
                    history_store(self.config.store),
                    self.metrics,
                    retention=self.config.history.retention,
                    names_of=self._aliases_of,
                    senders=self.senders,
                    no_postback_after=self._no_postback_windows,
                )
                await history.start()
                self.history = history
                self.status_watch = StatusWatch(
                    history.store.session_events, self.metrics.ymid_status_waiting.set
                )
        self._gateway = gateway
        self.metrics.config_loaded()

    async def apply(self, config: GatewayConfig) -> None:
        """Switch to a validated config. Requests already accepted finish on the old one.
        Keys only a restart can apply keep their value from the start (`restart_pending`)."""
        old = self._gateway
        self.restart_pending = restart_pending(self._started_with, config)
        for route, change in new_dedup_windows(self.config, config):
            log.warning(
                "dedup identity changed: a new dedup window starts, and events delivered "
                "before may be forwarded again",
                extra={"route": route, "change": change},
            )
        self._gateway = self._build(config)
        self.config = config
        self.loaded_at, self.reload_error = time.time(), None
        self.journal.resize(config.server.recent_postbacks)
        if self.history is not None:
            self.history.retention = config.history.retention
        if self.store is not None:
            await self.store.serve(_queued(self._gateway))
        configure_logging(config.logging.format, config.logging.level)
        self.metrics.config_loaded(self.restart_pending)
        if old is not None:
            self._old_gateways.add(old)
            task = asyncio.create_task(old.retire(Deadline(longest_delivery(old.config) + 1)))
            self._retiring.add(task)
            task.add_done_callback(lambda done: self._retired(old, done))

    def _retired(self, old: Gateway, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        self._old_gateways.discard(old)

    async def requests_finished(self, deadline: Deadline) -> bool:
        """Wait, until the deadline, for every request in flight, on any config, to finish."""
        gateways = [self.gateway, *self._old_gateways] if self._gateway else []
        results = [await gateway.finished(deadline) for gateway in gateways]
        return all(results)

    async def close(self, deadline: Deadline) -> None:
        """At shutdown, after the listener stopped: finish copies and deliveries in flight,
        close upstream pools and the store, all by the one deadline."""
        if self._gateway is not None:
            await self._gateway.retire(deadline)
        if self._retiring and deadline.left():
            await asyncio.wait(set(self._retiring), timeout=deadline.left())
        if self.store is not None:
            await self.store.close_deliveries(deadline)
        if self.status_watch is not None:
            await self.status_watch.close()
        if self.history is not None:  # every postback answered: what is left gets written
            await self.history.close(deadline)
        if self.store is not None:
            await self.store.close(deadline)
        for client in self._redis_clients.values():
            await client.aclose()

    def _aliases_of(self, route: str) -> Mapping[str, str]:
        """A route's names as sent -> canonical, for the history of a postback refused before
        it was normalized (the config in force: a route removed since has none)."""
        for configured in self.config.routes:
            if configured.name == route:
                return configured.aliases
        return {}

    def _no_postback_windows(self) -> dict[str, float]:
        """Each route with sessions and its no_postback_after, in the config in force."""
        return {
            route.name: route.sessions.no_postback_after
            for route in self.config.routes
            if route.sessions is not None
        }

    def _delivery_result(
        self, request_id: str, route: str, state: str, tries: list[UpstreamAttempt]
    ) -> None:
        if self.history is not None:
            self.history.delivered(request_id, route, state, tries)

    def _build(self, config: GatewayConfig) -> Gateway:
        dedup: dict[str, RouteDedup] = {}
        for route in config.routes:
            dedup[route.name] = self._dedup_for(route)
            dedup[route.name].reconfigure(
                route.dedup.ttl, route.dedup.max_entries, self._backends_for(route)
            )
        self.dedup = dedup
        self._forget_retired_scopes({route.dedup_scope for route in config.routes})
        limits: dict[str, SessionLimits] = {}
        for route in config.routes:
            if route.sessions is not None:
                self.metrics.sessions_configured(route.name, route.sessions.placements)
                kept = self._session_limits.get(route.name)
                if kept is None or not kept.fit(route.sessions):
                    kept = SessionLimits.of(route.sessions)  # new, or its rates changed
                limits[route.name] = kept
        self._session_limits = limits  # a route's buckets outlive a reload, not its removal
        client = UpstreamClient(MAX_UPSTREAM_CONNECTIONS)
        return Gateway(config, client, self.metrics, self.dedup, self.store, limits)

    def _dedup_for(self, route: RouteConfig) -> RouteDedup:
        """The dedup of the route's scope, kept across reloads, renames and removals."""
        scope = route.dedup_scope
        self._scope_label[scope] = route.name
        for counter in (self.metrics.dedup_evictions, self.metrics.dedup_fallbacks):
            counter.labels(route.name)  # the series exists, at 0, before anything happens
        dedup = self._dedup_of_scope.get(scope)
        if dedup is None:
            dedup = self._dedup_of_scope[scope] = RouteDedup(
                route.dedup.ttl,
                route.dedup.max_entries,
                on_evict=lambda count: self.metrics.dedup_evictions.labels(
                    self._scope_label[scope]
                ).inc(count),
                on_fallback=lambda: self.metrics.dedup_fallbacks.labels(
                    self._scope_label[scope]
                ).inc(),
            )
        return dedup

    def _forget_retired_scopes(self, in_use: set[str]) -> None:
        """A scope no route uses is kept for its TTL (what it knows would have expired by
        then), so a route removed by mistake and put back still knows its events."""
        now = time.monotonic()
        for scope in list(self._dedup_of_scope):
            if scope in in_use:
                self._scope_retired_at.pop(scope, None)
                continue
            retired_at = self._scope_retired_at.setdefault(scope, now)
            dedup = self._dedup_of_scope[scope]
            if now - retired_at >= dedup.ttl and not dedup.in_flight:
                del self._dedup_of_scope[scope], self._scope_retired_at[scope]
                del self._scope_label[scope]

    def _backends_for(self, route: RouteConfig) -> list[Backend]:
        """Where, beyond this process, the route's delivered events are known: the store's
        keys (restart-proof), then Redis (shared by replicas), in that order."""
        backends: list[Backend] = []
        # longer than the slowest delivery, so only a crashed replica's reservation expires
        hold = longest_delivery_of(route) + RESERVATION_MARGIN
        if self.store is not None:
            backends.append(self.store.keys_for(hold))
        dedup = route.dedup
        if dedup.backend == DedupBackend.REDIS and dedup.redis_url is not None:
            client = self._redis_clients.get(dedup.redis_url)
            if client is None:
                client = self._redis_clients[dedup.redis_url] = redis_client(dedup.redis_url)
            fail_open = dedup.on_redis_error == OnRedisError.FAIL_OPEN
            keys = RedisReservations(client, self.metrics)
            backends.append(SharedReservations(keys, hold, fail_open=fail_open))
        return backends


def _queued(gateway: Gateway) -> list[QueuedRoute]:
    """The loaded config's queued routes, as the store is handed them."""
    return [route.queued for route in gateway.routes.values() if route.queued is not None]
