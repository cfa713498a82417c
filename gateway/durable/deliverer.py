"""Delivering queued events in the background: retries with backoff, dead letters, no blocking.

Each (route, upstream) pair has its own concurrency cap and its own query for due deliveries,
so an upstream that is down only fills its own slots: other upstreams and other events keep
moving. A delivery is marked only after its attempt, so a crash mid-attempt leaves it pending
and it is sent again after restart (at least once; X-Idempotency-Key makes it exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial

from ..config import QueueConfig
from ..forwarding.forward import (
    AttemptFailure,
    Forwarder,
    Upstream,
    UpstreamReply,
    delivery_headers,
)
from ..metrics import Metrics
from ..route import CompiledRoute
from . import outbox
from .outbox import Attempt, Delivery
from .store import Store, StoreError

log = logging.getLogger("gateway.deliverer")

POLL_SECONDS = 1.0
RETRYABLE_4XX = frozenset({408, 429})


class Deliverer:
    def __init__(
        self,
        store: Store,
        forwarder: Forwarder,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._routes: Sequence[CompiledRoute] = ()
        self._forwarder = forwarder
        self._metrics = metrics
        self._clock = clock
        self._busy: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._attempts: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def serve(self, routes: Sequence[CompiledRoute]) -> None:
        """The queued routes to deliver for, from now on (a reload passes the new ones)."""
        self._routes = routes
        self.wake()

    def wake(self) -> None:
        """Look for due deliveries now (an event was queued, or a slot came free)."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch due deliveries until `stop()` (or cancellation)."""
        while not self._stopping:
            self._wake.clear()
            try:
                await self._dispatch()
            except StoreError as error:
                log.error("cannot read the outbox", extra={"detail": str(error)})
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set, and this loop would never end (a gateway that
            # hung for good after SIGTERM under load)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    def stop(self) -> None:
        """Dispatch nothing more; `run()` returns at its next turn."""
        self._stopping = True
        self._wake.set()

    async def finish(self, grace: float) -> None:
        """At shutdown: let attempts in flight end (up to `grace`); the rest stay pending."""
        if self._attempts:
            await asyncio.wait(set(self._attempts), timeout=grace)
        for task in self._attempts:
            task.cancel()

    async def _dispatch(self) -> None:
        now = self._clock()
        for route in self._routes:
            for upstream in route.upstreams:
                busy = self._busy[(route.name, upstream.label)]
                free = route.config.queue.concurrency - len(busy)
                if free <= 0:
                    continue
                due = partial(
                    outbox.due, route=route.name, upstream=upstream.label, now=now,
                    limit=free, busy=frozenset(busy),
                )  # fmt: skip
                for delivery in await self._store.run(due):
                    busy.add(delivery.event_id)
                    task = asyncio.create_task(self._deliver(route, upstream, delivery))
                    self._attempts.add(task)
                    task.add_done_callback(self._attempts.discard)

    async def _deliver(self, route: CompiledRoute, upstream: Upstream, delivery: Delivery) -> None:
        try:
            headers = delivery_headers(
                delivery.request_id, delivery.client, delivery.idempotency_key
            )
            result = await self._forwarder.attempt_once(upstream, delivery.postback, headers)
            now = self._clock()
            attempt = self._judge(route.config.queue, delivery, result, now)
            await self._store.run(partial(outbox.record_attempt, delivery=delivery,
                                          attempt=attempt, now=now))  # fmt: skip
            self._metrics.deliveries.labels(route.name, upstream.label, attempt.state).inc()
            if attempt.retry_at is not None:  # look again when it is due, not at the next poll
                asyncio.get_running_loop().call_later(attempt.retry_at - now, self.wake)
            if attempt.state == outbox.DEAD:
                log.warning(
                    "delivery dead-lettered",
                    extra={"event_id": delivery.event_id, "upstream": upstream.label,
                           "request_id": delivery.request_id, "detail": _describe(result)},
                )  # fmt: skip
        except StoreError as error:
            log.error("cannot record a delivery", extra={"detail": str(error)})
        finally:
            self._busy[(route.name, upstream.label)].discard(delivery.event_id)
            self.wake()

    def _judge(
        self,
        queue: QueueConfig,
        delivery: Delivery,
        result: UpstreamReply | AttemptFailure,
        now: float,
    ) -> Attempt:
        """Delivered; dead (refused for good, or out of attempts or time); or retry later."""
        if isinstance(result, UpstreamReply):
            if result.delivered:
                return Attempt(outbox.DELIVERED, status=result.status)
            if 400 <= result.status < 500 and result.status not in RETRYABLE_4XX:
                body = result.body.decode(errors="replace")
                error = f"refused: {result.status}"
                return Attempt(outbox.DEAD, error=error, status=result.status, body=body)
        status = result.status if isinstance(result, UpstreamReply) else None
        error = _describe(result)
        attempts = delivery.attempts + 1
        if attempts >= queue.max_attempts or now - delivery.since >= queue.max_age:
            return Attempt(outbox.DEAD, error=f"gave up after {attempts}: {error}", status=status)
        delay = random.uniform(0, min(queue.retry_cap, queue.retry_base * 2 ** (attempts - 1)))
        return Attempt(outbox.RETRY, error=error, status=status, retry_at=now + delay)


def _describe(result: UpstreamReply | AttemptFailure) -> str:
    return f"status {result.status}" if isinstance(result, UpstreamReply) else result.detail
