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
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from ..config import QueueConfig
from ..deadline import Deadline
from ..forwarding.forward import (
    AttemptFailure,
    Forwarder,
    Upstream,
    UpstreamReply,
    delivery_headers,
)
from ..forwarding.policy import Verdict, backoff, queued_answer, queued_failure
from ..forwarding.queued import QueuedRoute
from ..metrics import Metrics
from ..record import UpstreamAttempt
from .outbox import (
    DEAD,
    DELIVERED,
    RETRY,
    Delivery,
    DeliveryResult,
    Outbox,
    StoreError,
    storable_text,
)

log = logging.getLogger("gateway.deliverer")
# told of each recorded attempt: (request id, route, the state it left, the tries it made)
DeliveryResultHook = Callable[[str, str, str, list[UpstreamAttempt]], None]

POLL_SECONDS = 1.0
RECORD_RETRY_SECONDS = 0.5  # while the store cannot take an attempt's result
LEASE_MARGIN = 10.0  # beyond an attempt's timeout: recording its result must fit in too


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        forwarder: Forwarder,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        on_attempt: Callable[[str, UpstreamAttempt], None] = lambda request_id, attempt: None,
        on_result: DeliveryResultHook = lambda request_id, route, state, tries: None,
    ) -> None:
        self._outbox = outbox
        self._on_attempt = on_attempt  # told of every try, by the event's request id
        self._on_result = on_result  # told of each recorded result, with the state it left
        self._routes: Sequence[QueuedRoute] = ()
        self._forwarder = forwarder
        self._metrics = metrics
        self._clock = clock
        self._busy: dict[tuple[str, str], set[int]] = defaultdict(set)
        self._attempts: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def serve(self, routes: Sequence[QueuedRoute]) -> None:
        """The queued routes to deliver for, from now on (a reload passes the new ones)."""
        self._routes = routes
        self.wake()

    def wake(self) -> None:
        """Look for due deliveries now (an event was queued, or a slot came free)."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch due deliveries until `stop()` (or cancellation)."""
        failing = False  # logged once per outage, not at every turn
        while not self._stopping:
            self._wake.clear()
            try:
                await self._dispatch()
                failing = False
            except StoreError as error:
                if not failing:
                    log.error("cannot read the outbox", extra={"detail": str(error)})
                failing = True
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

    async def finish(self, deadline: Deadline) -> None:
        """At shutdown: let attempts in flight end (until the deadline); the rest stay pending
        (sent again after the restart, with the same X-Idempotency-Key)."""
        if self._attempts and deadline.left():
            await asyncio.wait(set(self._attempts), timeout=deadline.left())
        for task in self._attempts:
            task.cancel()

    async def _dispatch(self) -> None:
        now = self._clock()
        for route in self._routes:
            for upstream in route.upstreams:
                busy = self._busy[(route.name, upstream.label)]
                free = route.queue.concurrency - len(busy)
                if free <= 0:
                    continue
                lease = upstream.timeout + LEASE_MARGIN  # one attempt, then it is recorded
                due = await self._outbox.due(
                    route.name, upstream.label, now, free, frozenset(busy), lease
                )
                for delivery in due:
                    busy.add(delivery.event_id)
                    task = asyncio.create_task(self._deliver(route, upstream, delivery))
                    self._attempts.add(task)
                    task.add_done_callback(self._attempts.discard)

    async def _deliver(self, route: QueuedRoute, upstream: Upstream, delivery: Delivery) -> None:
        try:
            headers = delivery_headers(
                delivery.request_id, delivery.client, delivery.idempotency_key
            )
            tries: list[UpstreamAttempt] = []
            result = await self._forwarder.attempt_once(upstream, delivery.postback, headers, tries)
            for sent in tries:  # two when a stale kept-alive connection made it send again
                self._on_attempt(delivery.request_id, sent)
            now = self._clock()
            attempt = self._judge(route.queue, delivery, result, now, len(tries))
            if not await self._record(delivery, attempt, now):
                log.warning(
                    "delivery taken over by another replica before its result was recorded",
                    extra={"event_id": delivery.event_id, "upstream": upstream.label},
                )
                return
            self._metrics.deliveries.labels(route.name, upstream.label, attempt.state).inc()
            self._on_result(delivery.request_id, route.name, attempt.state, tries)
            if attempt.retry_at is not None:  # look again when it is due, not at the next poll
                asyncio.get_running_loop().call_later(attempt.retry_at - now, self.wake)
            if attempt.state == DEAD:
                log.warning(
                    "delivery dead-lettered",
                    extra={
                        "event_id": delivery.event_id,
                        "upstream": upstream.label,
                        "request_id": delivery.request_id,
                        "detail": _describe(result),
                    },
                )
        except StoreError as error:
            log.error("cannot record a delivery", extra={"detail": str(error)})
        except Exception:  # a bug: said loudly; the delivery stays pending, tried again later
            log.exception("delivery failed", extra={"event_id": delivery.event_id})
        finally:
            self._busy[(route.name, upstream.label)].discard(delivery.event_id)
            self.wake()

    async def _record(self, delivery: Delivery, attempt: DeliveryResult, now: float) -> bool:
        """Record the attempt's result, trying again while the store is unavailable (until
        shutdown): a delivered event whose result is not recorded would be sent again. The
        delivery stays busy here meanwhile, and its lease keeps other replicas off it."""
        try:
            return await self._outbox.record(delivery, attempt, now)
        except StoreError as error:
            log.error(
                "cannot record a delivery; trying again until the store answers",
                extra={"event_id": delivery.event_id, "detail": str(error)},
            )
        while not self._stopping:
            await asyncio.sleep(RECORD_RETRY_SECONDS)
            with contextlib.suppress(StoreError):
                recorded = await self._outbox.record(delivery, attempt, now)
                log.info("delivery recorded", extra={"event_id": delivery.event_id})
                return recorded
        raise StoreError("shutting down before the store answered")

    def _judge(
        self,
        queue: QueueConfig,
        delivery: Delivery,
        result: UpstreamReply | AttemptFailure,
        now: float,
        sends: int,
    ) -> DeliveryResult:
        """Delivered; dead (refused for good, or out of attempts or time); or retry later
        (`policy.py` says which answers are which). `sends`: the requests this attempt wrote
        to the app (each one counts)."""
        if isinstance(result, UpstreamReply):
            verdict, status = queued_answer(result.status), result.status
        else:
            verdict, status = queued_failure(result), None
        if verdict is Verdict.DELIVERED:
            return DeliveryResult(DELIVERED, status=status, sends=sends)
        if verdict is Verdict.REFUSED:
            body = storable_text(result.body) if isinstance(result, UpstreamReply) else None
            error = f"refused: {status}"
            return DeliveryResult(DEAD, error=error, status=status, body=body, sends=sends)
        # Verdict.RETRY: again later, unless out of attempts or time
        error = storable_text(_describe(result))
        attempts = delivery.attempts + sends
        if attempts >= queue.max_attempts or now - delivery.since >= queue.max_age:
            gave_up = f"gave up after {attempts}: {error}"
            return DeliveryResult(DEAD, error=gave_up, status=status, sends=sends)
        # the attempts-th retry: every send so far counts, a stale connection's resend too
        delay = backoff(attempts, queue.retry_base, queue.retry_cap)
        return DeliveryResult(RETRY, error=error, status=status, retry_at=now + delay, sends=sends)


def _describe(result: UpstreamReply | AttemptFailure) -> str:
    return f"status {result.status}" if isinstance(result, UpstreamReply) else result.detail
