"""The history in the PostgreSQL database the replicas share, beside the outbox.

A small pool of its own: a slow or failing history write never holds a connection the outbox
needs, and never changes the outbox's availability (readiness). Tables are created at open,
under the schema's advisory lock, so replicas starting together do not race. Rows are written
with COPY, one round trip per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import orjson

from ..config.model import PostgresUrl
from ..durable.outbox import StoreError
from ..durable.postgres_outbox import ADVISORY_LOCK, CONNECT_TIMEOUT, FAILURES, describe
from ..senders import Sender, SenderRow
from . import sql
from .rows import DeliveryRow, Row
from .search import (
    COLUMNS,
    DELIVERY_COLUMNS,
    LaterDelivery,
    Recorded,
    ReportLine,
    Search,
    user_key,
)
from .sessions import FillRate, Missed, SessionEvent, SessionRow, oldest_first

POOL_SIZE = 2  # the recorder's batches and the pages' searches
# a report or an export reads every row of its window: at 10 million postbacks a month's report
# takes longer than the outbox's 5 s (bench/README.md), and no postback waits on it
HISTORY_COMMAND_TIMEOUT = 120.0
CLOSE_SECONDS = 5.0
DAY = "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
REAL = "DOUBLE PRECISION"
IDENTITY = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
# the ymids as one text[] parameter: one prepared statement whatever their count
AMONG = "= ANY($1::text[])"
# each replica's sweep takes rows no other sweep holds, without waiting for them
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"


class PostgresHistory:
    def __init__(self, url: PostgresUrl) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                str(self._url),
                min_size=0,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=HISTORY_COMMAND_TIMEOUT,
            )
        except FAILURES as error:
            raise StoreError(f"cannot open the history at {self._url.shown}: {error}") from None
        async with self._connection() as connection:
            await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK)
            try:
                for statement in sql.tables(IDENTITY, REAL):
                    await connection.execute(statement)
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(CLOSE_SECONDS):  # a report may still be running
                    await pool.close()
            except (*FAILURES, TimeoutError):
                pool.terminate()

    async def write(
        self,
        rows: Sequence[Row],
        deliveries: Sequence[DeliveryRow],
        senders: Sequence[SenderRow] = (),
        sessions: Sequence[SessionRow] = (),
    ) -> None:
        async with self._connection() as connection, connection.transaction():
            if rows:
                await connection.copy_records_to_table("history", records=rows, columns=COLUMNS)
            if deliveries:
                await connection.copy_records_to_table(
                    "history_deliveries", records=deliveries, columns=DELIVERY_COLUMNS
                )
            if senders:
                await connection.executemany(sql.add_senders(sql.dollar), senders)
            if sessions:
                await connection.executemany(
                    sql.add_sessions(sql.dollar), [session.values() for session in sessions]
                )

    async def search(self, search: Search) -> list[Recorded]:
        statement = sql.select(search, sql.dollar)
        return [_recorded(row) for row in await self._fetch(statement.text, *statement.arguments)]

    async def get(self, request_id: str) -> Recorded | None:
        found = await self._fetch(sql.by_request_id(sql.dollar), request_id)
        return _recorded(found[0]) if found else None

    async def deliveries(self, request_ids: Sequence[str]) -> list[LaterDelivery]:
        if not request_ids:
            return []
        found = await self._fetch(sql.deliveries(len(request_ids), sql.dollar), *request_ids)
        return [LaterDelivery.of(dict(row)) for row in found]

    async def purge(self, *, telegram_id: str | None = None, ymid: str | None = None) -> int:
        column, value = user_key(telegram_id, ymid)
        deliveries, sessions, postbacks = sql.purge(column, sql.dollar)
        async with self._connection() as connection, connection.transaction():
            await connection.execute(deliveries, value)
            await connection.execute(sessions, value)
            status: str = await connection.execute(postbacks, value)
        return int(status.split()[-1])

    async def expire(self, older_than: float, limit: int) -> int:
        deleted = []
        async with self._connection() as connection:
            for table in ("history", "history_deliveries"):
                status = await connection.execute(sql.expire(table, sql.dollar), older_than, limit)
                deleted.append(int(status.split()[-1]))
            await connection.execute(sql.expire_senders(sql.dollar), older_than)
            status = await connection.execute(sql.expire_sessions(sql.dollar), older_than, limit)
            deleted.append(int(status.split()[-1]))
        return max(deleted)

    async def senders(self, since: float, route: str | None = None) -> list[Sender]:
        statement = sql.senders(since, route, sql.dollar)
        found = await self._fetch(statement.text, *statement.arguments)
        return [Sender(*row) for row in found]

    async def report(self, groups: Sequence[str], search: Search) -> list[ReportLine]:
        statement = sql.report(groups, DAY, REAL, search, sql.dollar)
        found = await self._fetch(statement.text, *statement.arguments)
        return [ReportLine.of(groups, tuple(row)) for row in found]

    async def session_events(self, ymids: Sequence[str]) -> list[SessionEvent]:
        if not ymids:
            return []
        found = await self._fetch(sql.session_events(AMONG), list(ymids))
        return [SessionEvent(*row) for row in found]

    async def no_postback(
        self, route: str, issued_before: float, now: float, replica: str, limit: int
    ) -> list[Missed]:
        statement = sql.no_postback(route, issued_before, now, limit, SKIP_LOCKED, sql.dollar)
        async with self._connection() as connection, connection.transaction():
            marked = await connection.fetch(statement.text, *statement.arguments)
            missed = oldest_first(Missed(*row) for row in marked)
            if missed:
                lines = [one.history_row(now, replica) for one in missed]
                await connection.copy_records_to_table("history", records=lines, columns=COLUMNS)
        return missed

    async def fill_rates(self, since: float, route: str | None = None) -> list[FillRate]:
        statement = sql.fill_rates(since, route, sql.dollar)
        found = await self._fetch(statement.text, *statement.arguments)
        return [FillRate(*row) for row in found]

    async def _fetch(self, query: str, *arguments: Any) -> list[asyncpg.Record]:
        async with self._connection() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(query, *arguments)
            return rows

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        if self._pool is None:
            raise StoreError("the history is closed")
        try:
            async with self._pool.acquire(timeout=CONNECT_TIMEOUT) as connection:
                yield connection
        except (*FAILURES, TimeoutError, OSError) as error:
            raise StoreError(f"history: {describe(error)}") from None


def _recorded(row: asyncpg.Record) -> Recorded:
    values = dict(row)
    return Recorded.of(values.pop("id"), values, orjson.loads(values["detail"]))
