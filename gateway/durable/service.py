"""Everything that needs the store, started and stopped as one: the outbox of queued routes,
the deliverer, dedup keys that survive restarts, and their housekeeping.

The runtime hands it the routes of each config it loads (`serve`); it owns the store, the
deliverer and its own upstream pool, and never reaches back into the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from functools import partial

from ..config import StoreConfig
from ..dedup import DedupKey
from ..errors import StoreUnavailable
from ..forwarding.forward import Forwarder
from ..forwarding.upstream_client import UpstreamClient
from ..metrics import Metrics
from ..observe import RequestRecord
from ..postback import Postback
from ..route import CompiledRoute
from . import keys, outbox
from .deliverer import Deliverer
from .store import Store, StoreError

log = logging.getLogger("gateway.durable")
STATS_EVERY_SECONDS = 5.0
PURGE_EVERY_SECONDS = 60.0
STORE_SCHEMA = outbox.SCHEMA + keys.SCHEMA  # the tables of a new store file


class Durable:
    def __init__(self, config: StoreConfig, metrics: Metrics) -> None:
        self._metrics = metrics
        self.store = Store(config.path, STORE_SCHEMA, on_commit=self._count_commit)
        self.keys = keys.StoreKeys(self.store)  # the dedup backend of every route
        self._client = UpstreamClient()
        self._deliverer = Deliverer(self.store, Forwarder(self._client, metrics), metrics)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, routes: Iterable[CompiledRoute]) -> None:
        """Open the store (StoreError if it cannot be) and resume what a crash left pending."""
        await self.store.open()
        await self.serve(routes)
        self._tasks = [
            asyncio.create_task(self._deliverer.run()),
            asyncio.create_task(self._housekeeping()),
        ]

    async def serve(self, routes: Iterable[CompiledRoute]) -> None:
        """Deliver for the queued routes of a (re)loaded config; deliveries to upstreams that
        config no longer has become dead letters (re-drivable once they are back)."""
        queued = [route for route in routes if route.queued]
        self._deliverer.serve(queued)
        targets = {route.name: [upstream.label for upstream in route.upstreams] for route in queued}
        bury = partial(outbox.bury_orphans, targets=targets, now=time.time())
        if buried := await self.store.run(bury):
            log.warning("deliveries without a configured upstream dead-lettered",
                        extra={"count": buried})  # fmt: skip

    async def enqueue(
        self, route: CompiledRoute, postback: Postback, key: DedupKey, record: RequestRecord
    ) -> bool:
        """Durably accept the event (committed and fsynced): True, or False if its dedup key was
        already stored (a duplicate, checked in the same transaction). StoreUnavailable if the
        store failed."""
        now = time.time()
        accept = partial(
            outbox.enqueue, route=route.name, upstreams=[u.label for u in route.upstreams],
            postback=postback, idempotency_key=key.hex(), request_id=record.request_id,
            client=record.client or "", now=now, dedup_key=key,
            dedup_expires_at=now + route.config.dedup.ttl,
        )  # fmt: skip
        try:
            event_id = await self.store.run(accept)
        except StoreError as error:
            raise StoreUnavailable(str(error)) from None
        if event_id is None:
            return False
        self._deliverer.wake()
        return True

    async def close(self, grace: float) -> None:
        self._deliverer.stop()  # ends by itself, even if a cancellation were lost
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._deliverer.finish(grace)
        await self._client.close()
        await self.store.close()

    async def _housekeeping(self) -> None:
        last_purge = 0.0
        while True:
            try:
                await self._refresh_queue_metrics()
                if time.monotonic() - last_purge >= PURGE_EVERY_SECONDS:
                    last_purge = time.monotonic()
                    await self.keys.purge_expired()
            except StoreError as error:
                log.error("store housekeeping failed", extra={"detail": str(error)})
            await asyncio.sleep(STATS_EVERY_SECONDS)

    async def _refresh_queue_metrics(self) -> None:
        now = time.time()
        snapshot = await self.store.run(outbox.stats)
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

    def _count_commit(self, ok: bool) -> None:
        (self._metrics.store_commits if ok else self._metrics.store_failures).inc()
