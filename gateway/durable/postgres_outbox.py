"""The outbox on PostgreSQL, shared by every replica (`store: {url: postgresql://...}`).

Any replica accepts an event and any replica delivers it:
- **Acknowledged once committed.** An event, its deliveries and its dedup key are written by
  one statement (one implicit transaction, fsynced by PostgreSQL's commit). Concurrent
  postbacks share it: while one batch is in flight the next ones gather, and go together
  (`_Batches`), so the round trip and the commit are shared.
- **Claims with a lease.** `due` takes pending deliveries with `FOR UPDATE SKIP LOCKED` and
  marks them leased to this process (`lease_owner`, `lease_until`); another replica skips them
  until the lease runs out, which happens only if this process died or hung: then it takes
  them over. `record` writes a result only while the lease is still this process's; results
  of concurrent attempts are recorded together, like enqueues.
- **Wake-ups by LISTEN/NOTIFY.** Accepting or re-driving an event notifies
  `monetag_gateway_work`; every replica listens on a connection of its own (reconnecting by
  itself), so deliverers wake at once instead of polling tightly.
- **Its own tables only.** Every table is `monetag_gateway_*`; the schema is versioned in
  `monetag_gateway_schema` and created or upgraded under an advisory lock, so replicas starting
  together do it once. A schema newer than this gateway is refused.
- **Failures** (PostgreSQL down, failing over, a timeout) raise StoreError: the route answers
  503 with Retry-After; the pool reconnects on its own at the next use.

Times are the caller's clock (epoch seconds), as with SQLite: replicas need synchronized clocks
(NTP), since leases and dedup holds are compared across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from ..config.model import PostgresUrl
from ..dedup.shared import SharedReservations
from .outbox import (
    DEAD,
    DELIVERED,
    MAX_KEPT_BODY,
    Availability,
    Delivery,
    DeliveryResult,
    DeliveryState,
    DeliverySummary,
    EventDetail,
    NewEvent,
    RouteStats,
    StoreError,
    StoreRefusedContent,
    postback_of,
    routes_stats,
)
from .postgres_keys import PostgresKeys

log = logging.getLogger("gateway.postgres")

CHANNEL = "monetag_gateway_work"
ADVISORY_LOCK = 0x6D67_7377_5F73_6368  # "mgsw_sch": one lock id for schema changes
CONNECT_TIMEOUT = 2.0  # connecting, or waiting for a pooled connection
COMMAND_TIMEOUT = 5.0  # one statement
MAX_BATCH = 256
Item = TypeVar("Item")
POOL_SIZE = 10  # connections per process
LISTEN_RETRY_SECONDS = 1.0
# what a lost or failing server raises (InternalClientError: a connection left mid-operation)
FAILURES = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)

# Each migration runs once, in order, in a transaction of its own; never edit a published one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE monetag_gateway_events (
        id BIGSERIAL PRIMARY KEY,
        route TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        fields TEXT NOT NULL,
        extras TEXT NOT NULL,
        request_id TEXT NOT NULL,
        client TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX monetag_gateway_events_route ON monetag_gateway_events (route);
    CREATE TABLE monetag_gateway_deliveries (
        event_id BIGINT NOT NULL REFERENCES monetag_gateway_events (id) ON DELETE CASCADE,
        upstream TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        last_status INTEGER,
        last_body TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        PRIMARY KEY (event_id, upstream)
    );
    CREATE INDEX monetag_gateway_deliveries_due
        ON monetag_gateway_deliveries (state, next_attempt_at);
    CREATE TABLE monetag_gateway_dedup_keys (
        key BYTEA PRIMARY KEY,
        state TEXT NOT NULL,
        token TEXT,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX monetag_gateway_dedup_expiry ON monetag_gateway_dedup_keys (expires_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_ENQUEUE = """
WITH input AS (
    SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::float8[], $8::float8[])
        AS i (key, route, fields, extras, request_id, client, accepted_at, expires_at)
),
claimed AS (
    INSERT INTO monetag_gateway_dedup_keys AS k (key, state, token, expires_at)
    SELECT key, 'delivered', NULL, expires_at FROM input
    ON CONFLICT (key) DO UPDATE
        SET state = 'delivered', token = NULL, expires_at = EXCLUDED.expires_at
        WHERE k.expires_at <= $9  -- only a key whose time is over is taken again
    RETURNING key
),
events AS (
    INSERT INTO monetag_gateway_events
        (route, idempotency_key, fields, extras, request_id, client, created_at)
    SELECT i.route, encode(i.key, 'hex'), i.fields, i.extras, i.request_id, i.client,
           i.accepted_at
    FROM input i JOIN claimed c ON c.key = i.key
    RETURNING id, idempotency_key, created_at
),
deliveries AS (
    INSERT INTO monetag_gateway_deliveries
        (event_id, upstream, state, next_attempt_at, since, updated_at)
    SELECT e.id, u.upstream, 'pending', e.created_at, e.created_at, e.created_at
    FROM events e JOIN unnest($10::bytea[], $11::text[]) AS u (key, upstream)
        ON encode(u.key, 'hex') = e.idempotency_key
)
SELECT key, pg_notify('monetag_gateway_work', '') FROM claimed
"""

_DUE = """
WITH due AS (
    SELECT d.event_id, d.upstream FROM monetag_gateway_deliveries d
    JOIN monetag_gateway_events e ON e.id = d.event_id
    WHERE d.state = 'pending' AND e.route = $1 AND d.upstream = $2 AND d.next_attempt_at <= $3
      AND (d.lease_until IS NULL OR d.lease_until <= $3) AND NOT (d.event_id = ANY ($5::bigint[]))
    ORDER BY d.next_attempt_at LIMIT $4
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE monetag_gateway_deliveries d SET lease_owner = $6, lease_until = $3 + $7
FROM due, monetag_gateway_events e
WHERE d.event_id = due.event_id AND d.upstream = due.upstream AND e.id = d.event_id
RETURNING d.event_id, e.route, d.upstream, d.attempts, d.since, e.fields, e.extras,
          e.request_id, e.client, e.idempotency_key, d.next_attempt_at
"""

# Results of many attempts in one statement; a row comes back for each whose lease still held.
_RECORD = """
UPDATE monetag_gateway_deliveries d SET
    state = r.state, attempts = d.attempts + r.sends, last_status = r.status,
    last_error = r.error, last_body = CASE WHEN r.state = 'dead' THEN r.body ELSE d.last_body END,
    next_attempt_at = COALESCE(r.retry_at, d.next_attempt_at), updated_at = r.now,
    lease_owner = NULL, lease_until = NULL
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
            $7::float8[], $8::float8[], $9::int[]) AS r (event_id, upstream, state, status,
                                                          error, body, retry_at, now, sends)
WHERE d.event_id = r.event_id AND d.upstream = r.upstream AND d.lease_owner = $10
RETURNING d.event_id, d.upstream
"""


@dataclass(frozen=True)
class _Result:
    """An attempt's result, waiting to be recorded with others."""

    delivery: Delivery
    attempt: DeliveryResult
    now: float


class PostgresOutbox:
    """The `Outbox` on PostgreSQL."""

    def __init__(
        self, url: PostgresUrl, on_commit: Callable[[bool], None] = lambda ok: None
    ) -> None:
        self._url = url
        self._on_commit = on_commit
        self._pool: asyncpg.Pool | None = None
        self._owner = f"gateway-{uuid.uuid4().hex[:12]}"  # this process, in leases
        self._batches = _Batches(self._enqueue_batch)
        self._results = _Batches(self._record_batch)
        self._listener: asyncio.Task[None] | None = None
        self._wake: Callable[[], None] | None = None
        self.availability = Availability()  # whether the last operation reached PostgreSQL

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema to this gateway's version (StoreError if either fails)."""
        try:
            self._pool = await asyncpg.create_pool(
                str(self._url),
                min_size=0,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,  # min_size 0: no floor re-dialled when down
            )
            await self._migrate()
        except FAILURES as error:
            await self.close()
            raise StoreError(
                f"cannot open the store at {self._url.shown}: {describe(error)}"
            ) from None
        except StoreError as error:
            await self.close()
            raise StoreError(f"cannot open the store at {self._url.shown}: {error}") from None

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._batches.drain()
        await self._results.drain()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*FAILURES):
                await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)

    async def ping(self) -> None:
        await self._fetchval("SELECT 1")

    def keys_for(self, hold: float) -> SharedReservations:
        return SharedReservations(PostgresKeys(self._connection), hold)

    def on_work(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    # -- the outbox -------------------------------------------------------------------------

    async def enqueue(self, event: NewEvent) -> bool:
        return await self._batches.submit(event)

    async def due(
        self,
        route: str,
        upstream: str,
        now: float,
        limit: int,
        busy: frozenset[int],
        lease: float,
    ) -> list[Delivery]:
        rows = await self._fetch(_DUE, route, upstream, now, limit, list(busy), self._owner, lease)
        rows = sorted(rows, key=lambda row: (row["next_attempt_at"], row["event_id"]))
        return [
            Delivery(
                row["event_id"],
                row["route"],
                row["upstream"],
                row["attempts"],
                row["since"],
                postback_of(row["fields"], row["extras"]),
                row["request_id"],
                row["client"],
                row["idempotency_key"],
            )
            for row in rows
        ]

    async def record(self, delivery: Delivery, attempt: DeliveryResult, now: float) -> bool:
        return await self._results.submit(_Result(delivery, attempt, now))

    async def bury_orphans(self, targets: Mapping[str, Sequence[str]], now: float) -> int:
        routes = [route for route, upstreams in targets.items() for _ in upstreams]
        upstreams = [upstream for labels in targets.values() for upstream in labels]
        result = await self._execute(
            "UPDATE monetag_gateway_deliveries d SET state = 'dead',"
            " last_error = 'route or upstream no longer in config', updated_at = $3,"
            " lease_owner = NULL, lease_until = NULL"
            " FROM monetag_gateway_events e WHERE e.id = d.event_id AND d.state = 'pending'"
            " AND NOT EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[]) AS t (route, upstream)"
            " WHERE t.route = e.route AND t.upstream = d.upstream)",
            routes,
            upstreams,
            now,
        )
        return _count(result)

    async def relabel(self, renames: Mapping[str, Mapping[str, str]]) -> int:
        routes = [route for route, labels in renames.items() for _ in labels]
        olds = [old for labels in renames.values() for old in labels]
        news = [new for labels in renames.values() for new in labels.values()]
        if not routes:
            return 0
        result = await self._execute(
            "UPDATE monetag_gateway_deliveries d SET upstream = r.new"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS r (route, old, new),"
            " monetag_gateway_events e"
            " WHERE e.id = d.event_id AND e.route = r.route AND d.upstream = r.old"
            " AND NOT EXISTS (SELECT 1 FROM monetag_gateway_deliveries taken"
            " WHERE taken.event_id = d.event_id AND taken.upstream = r.new)",
            routes,
            olds,
            news,
        )
        return _count(result)

    async def stats(self) -> list[RouteStats]:
        rows = await self._fetch(
            "SELECT e.route, d.state, COUNT(*),"
            " MIN(CASE WHEN d.state = 'pending' THEN e.created_at END)"
            " FROM monetag_gateway_deliveries d JOIN monetag_gateway_events e ON e.id = d.event_id"
            " GROUP BY e.route, d.state"
        )
        return routes_stats([(row[0], row[1], row[2], row[3]) for row in rows])

    async def redrive(
        self, now: float, event_id: int | None = None, route: str | None = None
    ) -> int:
        arguments: list[Any] = [now]
        conditions = ["state = 'dead'"]
        if event_id is not None:
            arguments.append(event_id)
            conditions = ["state <> 'delivered'", f"event_id = ${len(arguments)}"]
        if route is not None:
            arguments.append(route)
            routes = f"SELECT id FROM monetag_gateway_events WHERE route = ${len(arguments)}"
            conditions.append(f"event_id IN ({routes})")
        count = await self._fetchval(
            "WITH again AS (UPDATE monetag_gateway_deliveries SET state = 'pending', attempts = 0,"
            " next_attempt_at = $1, since = $1, updated_at = $1, lease_owner = NULL,"
            f" lease_until = NULL WHERE {' AND '.join(conditions)} RETURNING 1)"
            " SELECT COUNT(*) FROM again, LATERAL (SELECT pg_notify('monetag_gateway_work', '')) n",
            *arguments,
        )
        return int(count or 0)

    async def purge_delivered(self, older_than: float) -> int:
        result = await self._execute(
            "DELETE FROM monetag_gateway_events WHERE id IN (SELECT event_id"
            " FROM monetag_gateway_deliveries GROUP BY event_id"
            " HAVING bool_and(state = 'delivered') AND MAX(updated_at) < $1)",
            older_than,
        )
        return _count(result)

    async def purge_expired_keys(self, now: float) -> int:
        result = await self._execute(
            "DELETE FROM monetag_gateway_dedup_keys WHERE expires_at <= $1", now
        )
        return _count(result)

    async def count_keys(self) -> int:
        return int(await self._fetchval("SELECT COUNT(*) FROM monetag_gateway_dedup_keys") or 0)

    async def listing(
        self, state: str | None, route: str | None, limit: int
    ) -> list[DeliverySummary]:
        rows = await self._fetch(
            "SELECT e.id, e.created_at, e.route, d.upstream, d.state, d.attempts,"
            " d.last_status, d.last_error, e.fields"
            " FROM monetag_gateway_deliveries d JOIN monetag_gateway_events e ON e.id = d.event_id"
            " WHERE ($1::text IS NULL OR d.state = $1) AND ($2::text IS NULL OR e.route = $2)"
            " ORDER BY e.id DESC, d.upstream LIMIT $3",
            state,
            route,
            limit,
        )
        return [
            DeliverySummary(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                json.loads(row[8]).get("ymid"),
            )
            for row in rows
        ]

    async def show(self, event_id: int) -> EventDetail | None:
        async with self._connection() as connection:
            event = await connection.fetchrow(
                "SELECT route, idempotency_key, request_id, client, created_at, fields, extras"
                " FROM monetag_gateway_events WHERE id = $1",
                event_id,
            )
            if event is None:
                return None
            deliveries = await connection.fetch(
                "SELECT upstream, state, attempts, last_status, last_error, last_body,"
                " next_attempt_at FROM monetag_gateway_deliveries WHERE event_id = $1"
                " ORDER BY upstream",
                event_id,
            )
        return EventDetail(
            event_id,
            event["route"],
            event["idempotency_key"],
            event["request_id"],
            event["client"],
            event["created_at"],
            postback_of(event["fields"], event["extras"]),
            [DeliveryState(*row) for row in deliveries],
        )

    # -- the pieces -------------------------------------------------------------------------

    async def _enqueue_batch(self, events: Sequence[NewEvent]) -> list[bool]:
        """One statement for a batch: which events were accepted (their keys were new)."""
        first: dict[bytes, NewEvent] = {}
        for event in events:
            first.setdefault(event.dedup_key, event)  # a key twice in one batch: the first counts
        batch = list(first.values())
        pairs = [(event.dedup_key, upstream) for event in batch for upstream in event.upstreams]
        now = max(event.accepted_at for event in batch)
        try:
            rows = await self._fetch(
                _ENQUEUE,
                [event.dedup_key for event in batch],
                [event.route for event in batch],
                [json.dumps(event.postback.fields) for event in batch],
                [json.dumps(event.postback.extras) for event in batch],
                [event.request_id for event in batch],
                [event.client for event in batch],
                [event.accepted_at for event in batch],
                [event.dedup_expires_at for event in batch],
                now,
                [key for key, _ in pairs],
                [upstream for _, upstream in pairs],
            )
        except StoreError:
            self._on_commit(False)
            raise
        self._on_commit(True)
        accepted = {bytes(row["key"]) for row in rows}
        taken: set[bytes] = set()
        results = []
        for event in events:
            new = event.dedup_key in accepted and event.dedup_key not in taken
            taken.add(event.dedup_key)
            results.append(new)
        return results

    async def _record_batch(self, results: Sequence[_Result]) -> list[bool]:
        """One statement for a batch of attempt results: which were recorded (lease held).

        Texts are made storable before (`storable_text`); should PostgreSQL still refuse one,
        the batch is recorded row by row, and a row it refuses is recorded without its texts,
        so one odd answer never holds up the others, nor itself forever."""
        try:
            return await self._record_rows(results)
        except StoreRefusedContent:
            if len(results) == 1:
                log.error(
                    "the store refused a result's text; recorded without it",
                    extra={"event_id": results[0].delivery.event_id},
                )
                return await self._record_rows([_without_texts(results[0])])
        return [recorded for result in results for recorded in await self._record_batch([result])]

    async def _record_rows(self, results: Sequence[_Result]) -> list[bool]:
        columns: list[list[Any]] = [[] for _ in range(9)]
        for result in results:
            attempt = result.attempt
            state = attempt.state if attempt.state in (DELIVERED, DEAD) else "pending"
            row = (
                result.delivery.event_id,
                result.delivery.upstream,
                state,
                attempt.status,
                None if attempt.state == DELIVERED else attempt.error or "",
                attempt.body[:MAX_KEPT_BODY] if attempt.body else attempt.body,
                attempt.retry_at,
                result.now,
                attempt.sends,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        rows = await self._fetch(_RECORD, *columns, self._owner)
        recorded = {(row["event_id"], row["upstream"]) for row in rows}
        return [(r.delivery.event_id, r.delivery.upstream) in recorded for r in results]

    async def _migrate(self) -> None:
        async with self._connection() as connection:
            await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK)
            try:
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS monetag_gateway_schema (version INTEGER NOT NULL)"
                )
                version = await connection.fetchval(
                    "SELECT COALESCE(MAX(version), 0) FROM monetag_gateway_schema"
                )
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"the store's schema is version {version}; this gateway knows up to "
                        f"{SCHEMA_VERSION}: upgrade the gateway"
                    )
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    async with connection.transaction():
                        await connection.execute(MIGRATIONS[number - 1])
                        await connection.execute(
                            "INSERT INTO monetag_gateway_schema (version) VALUES ($1)", number
                        )
                    log.info("store schema upgraded", extra={"version": number})
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnect whenever it is lost."""
        while True:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(str(self._url), timeout=CONNECT_TIMEOUT)
            except FAILURES as error:
                log.warning("store listener cannot connect", extra={"detail": describe(error)})
                await asyncio.sleep(LISTEN_RETRY_SECONDS)
                continue
            try:
                connection.add_termination_listener(lambda _, done=lost: done.set())
                await connection.add_listener(CHANNEL, self._notified)
                self._notified()  # anything that became due while not listening
                await lost.wait()
            except FAILURES as error:
                log.warning("store listener lost", extra={"detail": describe(error)})
            finally:
                with contextlib.suppress(*FAILURES):
                    await connection.close(timeout=1)
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    def _notified(self, *_: object) -> None:
        if self._wake is not None:
            self._wake()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        if self._pool is None:
            raise StoreError("store is closed")
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as connection:
                yield connection
        except asyncpg.DataError as error:  # a value it cannot take: the server is fine
            raise StoreRefusedContent(describe(error)) from None
        except FAILURES as error:
            self.availability.set(False, describe(error))
            raise StoreError(describe(error)) from None
        self.availability.set(True)

    @property
    def available(self) -> bool:
        return self.availability.up

    async def _fetch(self, query: str, *arguments: Any) -> list[asyncpg.Record]:
        async with self._connection() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(query, *arguments)
            return rows

    async def _fetchval(self, query: str, *arguments: Any) -> Any:
        async with self._connection() as connection:
            return await connection.fetchval(query, *arguments)

    async def _execute(self, query: str, *arguments: Any) -> str:
        async with self._connection() as connection:
            status: str = await connection.execute(query, *arguments)
            return status


class _Batches(Generic[Item]):
    """Concurrent writes share one statement: while a batch is in flight the next gathers."""

    def __init__(self, run: Callable[[Sequence[Item]], Awaitable[list[bool]]]) -> None:
        self._run = run
        self._pending: list[tuple[Item, asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await asyncio.shield(future)

    async def drain(self) -> None:
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as error:  # StoreError, or a bug: every caller hears of it
                    failure = error if isinstance(error, StoreError) else StoreError(str(error))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                    continue
                for (_, future), accepted in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(accepted)
        finally:
            self._flushing = None


def _without_texts(result: _Result) -> _Result:
    attempt = dataclasses.replace(result.attempt, error="(text refused by the store)", body=None)
    return dataclasses.replace(result, attempt=attempt)


def _count(status: str) -> int:
    """The row count of a command status such as `UPDATE 3` or `DELETE 0`."""
    return int(status.rsplit(" ", 1)[-1]) if status and status[-1].isdigit() else 0


def describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]
