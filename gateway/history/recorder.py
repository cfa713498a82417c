"""The recorder: every answered postback into the history, off the serving path.

`add` is all the serving path does: a list append, or when the buffer is full a count. A task
takes what gathered every FLUSH_SECONDS (sooner once BATCH are waiting), turns it into rows
(unauthenticated ones within their budget, budget.py; a postback whose key verified is
authenticated, refused by the allowlist or not) and writes them in one transaction, with the
senders seen since the last batch (senders.py).
When the store cannot take them the batch is dropped, counted in
`gateway_history_dropped_total{why}` and logged at most once per LOG_EVERY_SECONDS: serving
never waits for the history, and readiness never depends on it.

Retention runs beside: every EXPIRE_EVERY_SECONDS it deletes rows older than
`history.retention` in batches of EXPIRE_BATCH, pausing between them so writes go first.

Reward sessions: each ymid issued (`session_issued`) and each postback that verified against
one go into the same batches as `history_sessions` rows; a sweep every SWEEP_EVERY_SECONDS
(or a quarter of the shortest `sessions.no_postback_after`) marks, per route, the issued
ymids that got no postback in time, each once across replicas, and counts them.

At shutdown, after the last postback was answered, what is buffered is written within what is
left of the shutdown deadline; what cannot be is counted (why="shutdown") and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping

from ..deadline import Deadline
from ..durable.outbox import StoreError
from ..metrics import Metrics
from ..record import RequestRecord, UpstreamAttempt
from ..reward_sessions import VERIFIED, Issued
from ..senders import SendersSeen
from .budget import Budget
from .rows import DeliveryRow, NamesOf, Row, delivery_row_of, row_of
from .sessions import SessionRow
from .store import HistoryStore

log = logging.getLogger("gateway.history")
FLUSH_SECONDS = 0.5
BATCH = 1000
CAPACITY = 50_000  # postbacks waiting to be written; past it they are dropped, counted
LOG_EVERY_SECONDS = 60.0
EXPIRE_EVERY_SECONDS = 60.0
EXPIRE_BATCH = 2000
EXPIRE_PAUSE_SECONDS = 0.05
SWEEP_EVERY_SECONDS = 60.0  # or a quarter of the shortest no_postback_after, if shorter
SWEEP_BATCH = 1000

Pending = tuple[RequestRecord, int | None, float, float]  # record, status, at, latency_ms


class Recorder:
    def __init__(
        self,
        store: HistoryStore,
        metrics: Metrics,
        *,
        retention: float,
        names_of: NamesOf,
        senders: SendersSeen | None = None,
        # each route with sessions -> its no_postback_after (the config in force, read each
        # sweep)
        no_postback_after: Callable[[], Mapping[str, float]] = dict,
        replica: str | None = None,
        capacity: int = CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._metrics = metrics
        self.retention = retention
        self._names_of = names_of
        self._senders = senders  # what it noted goes in with each batch
        if senders is not None:
            senders.keep_unwritten()
        self.replica = replica or socket.gethostname()
        self._capacity = capacity
        self._clock = clock
        self._pending: list[Pending] = []
        self._deliveries: list[DeliveryRow] = []
        self._sessions: list[SessionRow] = []
        self._no_postback_after = no_postback_after
        self._budget = Budget()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False  # after close: nothing more is written (capacity is 0)
        self._unlogged: dict[str, int] = {}  # dropped since the last log line, by why
        self._last_logged = -LOG_EVERY_SECONDS  # the first drop is told at once
        self._last_detail = ""

    # -- the serving path ---------------------------------------------------------------------

    def add(self, record: RequestRecord, status: int | None, seconds: float) -> None:
        pending = self._pending
        if len(pending) >= self._capacity:
            self._dropped("shutdown" if self._closed else "buffer_full", 1)
            return
        at = self._clock()
        pending.append((record, status, at, round(seconds * 1000, 2)))
        if record.ymid_check == VERIFIED:  # a postback came for an issued ymid
            self._session(self._postback_session(record, at))
        if len(pending) == BATCH:
            self._wake.set()

    def _postback_session(self, record: RequestRecord, at: float) -> SessionRow:
        fields = record.fields or {}
        assert record.route is not None and record.ymid_expires is not None
        return SessionRow(
            ymid=fields["ymid"],
            route=record.route,
            placement=fields.get("request_var"),
            telegram_id=fields["telegram_id"],
            replica=self.replica,
            expires=record.ymid_expires,
            issued_at=None,
            postback_at=at,
        )

    # -- the issuing endpoint -------------------------------------------------------------

    def session_issued(self, route: str, issued: Issued, at: float) -> None:
        self._session(
            SessionRow(
                ymid=issued.ymid,
                route=route,
                placement=issued.placement,
                telegram_id=str(issued.telegram_id),
                replica=self.replica,
                expires=issued.expires,
                issued_at=at,
                postback_at=None,
            )
        )

    def _session(self, row: SessionRow) -> None:
        if len(self._sessions) >= self._capacity:
            self._dropped("buffer_full", 1)
        else:
            self._sessions.append(row)

    # -- the deliverer ------------------------------------------------------------------------

    def delivered(
        self, request_id: str, route: str, state: str, tries: list[UpstreamAttempt]
    ) -> None:
        """A queued event's delivery attempt (two tries when a stale connection made it send
        again), with the state it left the delivery in."""
        now = self._clock()
        for attempt in tries:
            self._later(delivery_row_of(request_id, route, state, attempt, self.replica, now))

    def redriven(self, request_id: str, route: str, upstream: str) -> None:
        now = self._clock()
        row = delivery_row_of(request_id, route, "redriven", None, self.replica, now, upstream)
        self._later(row)

    def _later(self, row: DeliveryRow) -> None:
        if len(self._deliveries) >= self._capacity:
            self._dropped("buffer_full", 1)
        else:
            self._deliveries.append(row)

    # -- the task -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tables (StoreError if the store cannot), then start writing."""
        await self.store.open()
        self._tasks = [
            asyncio.create_task(self._flushing()),
            asyncio.create_task(self._expiring()),
            asyncio.create_task(self._sweeping()),
        ]

    async def close(self, deadline: Deadline) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # a postback cut off after this (past the shutdown deadline) is counted, not buffered
        self._closed, self._capacity = True, 0
        left = len(self._pending) + len(self._deliveries) + len(self._sessions)
        try:
            async with asyncio.timeout(max(deadline.left(), 0.1)):
                await self.flush(final=True)
        except (TimeoutError, StoreError) as error:
            self._dropped("shutdown", left)
            log.error(
                "history not written at shutdown",
                extra={"count": left, "detail": str(error) or "the shutdown deadline passed"},
            )
        await self.store.close()

    async def flush(self, *, final: bool = False) -> None:
        """Write what gathered, as one batch; a failed batch is dropped and counted."""
        pending, self._pending = self._pending, []
        deliveries, self._deliveries = self._deliveries, []
        sessions, self._sessions = self._sessions, []
        rows = self._rows(pending, final)
        senders = self._senders.take_unwritten(self.replica) if self._senders else []
        if not rows and not deliveries and not senders and not sessions:
            return
        try:
            await self.store.write(rows, deliveries, senders, sessions)
        except StoreError as error:
            if final:
                raise
            self._dropped("store_failed", len(rows) + len(deliveries) + len(sessions), str(error))
            return
        self._metrics.history_written.inc(len(rows) + len(deliveries) + len(sessions))

    def _rows(self, pending: list[Pending], final: bool) -> list[Row]:
        rows, budget, names_of, replica = [], self._budget, self._names_of, self.replica
        for record, status, at, latency_ms in pending:
            authenticated = record.key_valid or "secret" in record.passed
            if not authenticated and not budget.admit(record, status, at, latency_ms):
                continue  # unauthenticated, past its budget: counted into an aggregate
            rows.append(row_of(record, status, at, latency_ms, replica, names_of))
        for aggregate in budget.take_aggregates(self._clock(), all_of_them=final):
            rows.append(
                row_of(
                    aggregate.last,
                    aggregate.status,
                    aggregate.at,
                    aggregate.latency_ms,
                    replica,
                    names_of,
                    repeats=aggregate.repeats,
                )
            )
        return rows

    async def _flushing(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug: said loudly, and the next batch is tried all the same
                log.exception("history batch failed")
            self._log_dropped()

    async def _expiring(self) -> None:
        while True:
            try:
                await self.expire()
            except StoreError as error:
                log.warning("history retention failed", extra={"detail": str(error)})
            await asyncio.sleep(EXPIRE_EVERY_SECONDS)

    async def _sweeping(self) -> None:
        while True:
            windows = self._no_postback_after()
            try:
                await self.sweep(windows)
            except StoreError as error:
                log.warning("no_postback sweep failed", extra={"detail": str(error)})
            except Exception:  # a bug: said loudly, and the next sweep is tried all the same
                log.exception("no_postback sweep failed")
            shortest = min(windows.values(), default=SWEEP_EVERY_SECONDS * 4)
            await asyncio.sleep(max(0.2, min(SWEEP_EVERY_SECONDS, shortest / 4)))

    async def sweep(self, windows: Mapping[str, float]) -> int:
        """Mark the issued ymids of each route that got no postback within its window, each
        counted once across replicas (by whichever marks it): how many."""
        now, total = self._clock(), 0
        for route, window in windows.items():
            while True:
                missed = await self.store.no_postback(
                    route, now - window, now, self.replica, SWEEP_BATCH
                )
                for ymid in missed:
                    self._metrics.ymids_no_postback.labels(route, ymid.placement or "").inc()
                total += len(missed)
                if len(missed) < SWEEP_BATCH:
                    break
        if total:
            log.info("issued ymids got no postback", extra={"count": total})
        return total

    async def expire(self) -> int:
        """Delete what is older than the retention, a batch at a time: how many rows."""
        cutoff, total = self._clock() - self.retention, 0
        while True:
            deleted = await self.store.expire(cutoff, EXPIRE_BATCH)
            total += deleted
            if deleted < EXPIRE_BATCH:
                return total
            await asyncio.sleep(EXPIRE_PAUSE_SECONDS)

    def _dropped(self, why: str, count: int, detail: str = "") -> None:
        self._metrics.history_dropped.labels(why).inc(count)
        self._unlogged[why] = self._unlogged.get(why, 0) + count
        self._last_detail = detail or self._last_detail
        self._log_dropped()

    def _log_dropped(self) -> None:
        """What was dropped since the last line, at most one line per LOG_EVERY_SECONDS (the
        flush loop calls this too, so the last drops of an outage are told)."""
        now = time.monotonic()
        if self._unlogged and now - self._last_logged >= LOG_EVERY_SECONDS:
            self._last_logged = now
            dropped, self._unlogged = self._unlogged, {}
            log.error(
                "history records dropped",
                extra={"dropped": dropped, "detail": self._last_detail or None},
            )
            self._last_detail = ""
