"""Everything that needs the store, started and stopped as one: the outbox of queued routes,
the deliverer, dedup keys that survive restarts, and their housekeeping.

The runtime hands it the routes of each config it loads (`serve`); it owns the store (an
`Outbox`: the SQLite file or PostgreSQL), the deliverer and its own upstream pool, and never
reaches back into the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from ..config import StoreConfig
from ..deadline import Deadline
from ..dedup import Backend, DedupKey
from ..errors import StoreUnavailable
from ..forwarding.forward import Forwarder
from ..forwarding.queued import QueuedRoute
from ..forwarding.upstream_client import UpstreamClient
from ..metrics import Metrics
from ..postback import Postback
from ..record import UpstreamAttempt
from .deliverer import Deliverer, DeliveryResultHook
from .outbox import NewEvent, Outbox, StoreError
from .postgres_outbox import PostgresOutbox
from .sqlite_outbox import SqliteOutbox

log = logging.getLogger("gateway.durable")
STATS_EVERY_SECONDS = 5.0
PROBE_EVERY_SECONDS = 1.0  # while the store is unavailable: notice its return quickly
PURGE_EVERY_SECONDS = 60.0


def open_outbox(
    config: StoreConfig, metrics: Metrics | None = None, *, for_gateway: bool = False
) -> Outbox:
    """The outbox the config names (not opened yet). `for_gateway`: the running gateway's
    own, which an SQLite file allows one of (the `queue` command opens it beside)."""
    on_commit = metrics.store_committed if metrics is not None else (lambda ok: None)
    if config.url is not None:
        return PostgresOutbox(config.url, on_commit=on_commit)
    assert config.path is not None  # the config reader requires one of the two
    return SqliteOutbox(config.path, on_commit=on_commit, exclusive=for_gateway)


class Store:
    def __init__(
        self,
        config: StoreConfig,
        metrics: Metrics,
        on_attempt: Callable[[str, UpstreamAttempt], None] = lambda request_id, attempt: None,
        on_result: DeliveryResultHook = lambda request_id, route, state, tries: None,
    ) -> None:
        self._metrics = metrics
        self.outbox = open_outbox(config, metrics, for_gateway=True)
        self._client = UpstreamClient()
        forwarder = Forwarder(self._client, metrics)
        self._deliverer = Deliverer(
            self.outbox, forwarder, metrics, on_attempt=on_attempt, on_result=on_result
        )
        self._deliveries_closed = False
        self._tasks: list[asyncio.Task[None]] = []
        metrics.watch_store(lambda: self.available)
        self.outbox.availability.watch(_log_store_change)

    @property
    def available(self) -> bool:
        """Whether the store answered the last time it was used (or probed)."""
        return self.outbox.available

    def keys_for(self, hold: float) -> Backend:
        """The dedup backend that lives in the store, for a route (see `Outbox.keys_for`)."""
        return self.outbox.keys_for(hold)

    async def start(self, routes: Iterable[QueuedRoute]) -> None:
        """Open the store (StoreError if it cannot be) and resume what a crash left pending."""
        await self.outbox.open()
        self.outbox.on_work(self._deliverer.wake)
        await self.serve(routes)
        self._tasks = [
            asyncio.create_task(self._deliverer.run()),
            asyncio.create_task(self._housekeeping()),
        ]

    async def serve(self, routes: Iterable[QueuedRoute]) -> None:
        """Deliver for the queued routes of a (re)loaded config; deliveries to upstreams that
        config no longer has become dead letters (re-drivable once they are back)."""
        queued = list(routes)
        self._deliverer.serve(queued)
        if moved := await self.outbox.relabel({r.name: dict(r.relabels) for r in queued}):
            log.info("deliveries moved to their upstream's label", extra={"count": moved})
        targets = {route.name: [upstream.label for upstream in route.upstreams] for route in queued}
        if buried := await self.outbox.bury_orphans(targets, time.time()):
            log.warning(
                "deliveries without a configured upstream dead-lettered", extra={"count": buried}
            )

    async def enqueue(
        self, route: QueuedRoute, postback: Postback, key: DedupKey, request_id: str, client: str
    ) -> bool:
        """Durably accept the event (committed and fsynced): True, or False if its dedup key was
        already stored (a duplicate, checked in the same transaction). StoreUnavailable if the
        store failed."""
        now = time.time()
        event = NewEvent(
            route=route.name,
            upstreams=[upstream.label for upstream in route.upstreams],
            postback=postback,
            dedup_key=key,
            dedup_expires_at=now + route.dedup_ttl,
            request_id=request_id,
            client=client,
            accepted_at=now,
        )
        try:
            accepted = await self.outbox.enqueue(event)
        except StoreError as error:
            raise StoreUnavailable(str(error)) from None
        if accepted:
            self._deliverer.wake()
        return accepted

    async def redrive(self, event_id: int | None = None, route: str | None = None) -> int:
        """`queue retry` from inside the gateway (the inspector's button): dead deliveries,
        or one event's undelivered ones, pending again with a fresh budget, and the deliverer
        woken for them. How many. StoreError if the store failed."""
        count = await self.outbox.redrive(time.time(), event_id, route)
        if count:
            self._deliverer.wake()
            log.info("deliveries re-driven", extra={"count": count, "event_id": event_id})
        return count

    async def close_deliveries(self, deadline: Deadline) -> None:
        """Stop delivering: the attempts in flight finish (and are recorded) by the deadline,
        so the history, closed after this, is told of every last one. `close` then closes the
        outbox."""
        if self._deliveries_closed:
            return
        self._deliveries_closed = True
        self._deliverer.stop()  # ends by itself, even if a cancellation were lost
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._deliverer.finish(deadline)
        await self._client.close()

    async def close(self, deadline: Deadline) -> None:
        await self.close_deliveries(deadline)
        await self.outbox.close()

    async def _housekeeping(self) -> None:
        """Queue gauges every few seconds, expired keys every minute; while the store is
        unavailable, a probe every second (a write, on SQLite), so readiness returns as soon as
        the store does. The outage itself is logged by the store's availability (once down,
        once back up), whichever operation noticed."""
        last_purge = 0.0
        while True:
            with contextlib.suppress(StoreError):  # told to the availability already
                if not self.outbox.available:
                    await self.outbox.ping()
                await self._refresh_queue_metrics()
                if time.monotonic() - last_purge >= PURGE_EVERY_SECONDS:
                    last_purge = time.monotonic()
                    await self.outbox.purge_expired_keys(time.time())
            pause = STATS_EVERY_SECONDS if self.outbox.available else PROBE_EVERY_SECONDS
            await asyncio.sleep(pause)

    async def _refresh_queue_metrics(self) -> None:
        now = time.time()
        snapshot = await self.outbox.stats()
        self._metrics.queue_snapshot(
            [
                (
                    item.route,
                    item.counts,
                    now - item.oldest_pending_at if item.oldest_pending_at else None,
                )
                for item in snapshot
            ]
        )


def _log_store_change(up: bool, detail: str) -> None:
    if up:
        log.warning("store reachable again")
    else:
        log.error("store unavailable", extra={"detail": detail})
