"""The history in an SQLite file of its own, beside the store's (`gateway.db` ->
`gateway.history.db`), with its own writer thread.

Its own file, because at millions of rows a batch of a thousand postbacks takes a fifth to a
quarter of a second to commit (the ymid and telegram_id indexes put each row on a different
page; measured in bench/README.md): in the store's file it would hold the outbox's and the
dedup keys' writes for that long, and every postback on a store route would wait. Apart, the
history's commits never delay the store's, and its failures (a corrupt table, its own disk
quota) never mark the store unavailable. Reads use a connection of their own in a worker
thread (WAL lets them run beside the writer), so a search never waits behind a commit, nor a
commit behind a search.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..durable.outbox import StoreError
from ..durable.sqlite_writer import SqliteWriter
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

T = TypeVar("T")
DAY = "strftime('%Y-%m-%d', at, 'unixepoch')"
SQLITE_AMONG = "IN (SELECT value FROM json_each(?))"
SCHEMA = "".join(f"{statement};\n" for statement in sql.tables("INTEGER PRIMARY KEY", "REAL"))


def history_path(store_path: str) -> str:
    """Where the history of the store at `store_path` is kept: beside it, `.history` before
    its extension (`/var/lib/monetag-gateway/gateway.db` -> `.../gateway.history.db`)."""
    store = Path(store_path)
    return str(store.with_name(f"{store.stem}.history{store.suffix}"))


class SqliteHistory:
    def __init__(self, store_path: str) -> None:
        self.path = history_path(store_path)
        self._writer = SqliteWriter(self.path, SCHEMA)
        self._reader: sqlite3.Connection | None = None
        self._reading = threading.Lock()  # one connection, used by one worker at a time

    async def open(self) -> None:
        await self._writer.open()
        await self._writer.run(_create)  # a file from before a table was added

    async def close(self) -> None:
        await self._writer.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    async def write(
        self,
        rows: Sequence[Row],
        deliveries: Sequence[DeliveryRow],
        senders: Sequence[SenderRow] = (),
        sessions: Sequence[SessionRow] = (),
    ) -> None:
        await self._writer.run(partial(_write, rows, deliveries, senders, sessions))

    async def search(self, search: Search) -> list[Recorded]:
        statement = sql.select(search, sql.qmark)
        found = await self._read(
            lambda c: c.execute(statement.text, statement.arguments).fetchall()
        )
        return [_recorded(row) for row in found]

    async def get(self, request_id: str) -> Recorded | None:
        text = sql.by_request_id(sql.qmark)
        found = await self._read(lambda c: c.execute(text, (request_id,)).fetchone())
        return None if found is None else _recorded(found)

    async def deliveries(self, request_ids: Sequence[str]) -> list[LaterDelivery]:
        if not request_ids:
            return []
        text = sql.deliveries(len(request_ids), sql.qmark)
        found = await self._read(lambda c: c.execute(text, list(request_ids)).fetchall())
        return [LaterDelivery.of(dict(zip(DELIVERY_COLUMNS, row, strict=True))) for row in found]

    async def purge(self, *, telegram_id: str | None = None, ymid: str | None = None) -> int:
        column, value = user_key(telegram_id, ymid)
        return await self._writer.run(partial(_purge, column, value))

    async def expire(self, older_than: float, limit: int) -> int:
        return await self._writer.run(partial(_expire, older_than, limit))

    async def senders(self, since: float, route: str | None = None) -> list[Sender]:
        statement = sql.senders(since, route, sql.qmark)
        found = await self._read(lambda c: _all(statement, c))
        return [Sender(*row) for row in found]

    async def report(self, groups: Sequence[str], search: Search) -> list[ReportLine]:
        statement = sql.report(groups, DAY, "REAL", search, sql.qmark)
        found = await self._read(
            lambda c: c.execute(statement.text, statement.arguments).fetchall()
        )
        return [ReportLine.of(groups, row) for row in found]

    async def session_events(self, ymids: Sequence[str]) -> list[SessionEvent]:
        if not ymids:
            return []
        # the ymids as one JSON list parameter: one statement text whatever their count
        # (cached by sqlite3), no parameter limit to chunk under, and one ORDER BY across
        # all of them; SQLite probes history_ymid once per value of the list
        text, among = sql.session_events(SQLITE_AMONG), orjson.dumps(list(ymids)).decode()
        found = await self._read(lambda c: c.execute(text, (among,)).fetchall())
        return [SessionEvent(*row) for row in found]

    async def no_postback(
        self, route: str, issued_before: float, now: float, replica: str, limit: int
    ) -> list[Missed]:
        # WITH ... AS MATERIALIZED and UPDATE ... RETURNING need SQLite 3.35 or later
        # (Debian bookworm ships 3.40)
        statement = sql.no_postback(route, issued_before, now, limit, "", sql.qmark)
        return await self._writer.run(partial(_no_postback, statement, now, replica))

    async def fill_rates(self, since: float, route: str | None = None) -> list[FillRate]:
        statement = sql.fill_rates(since, route, sql.qmark)
        found = await self._read(lambda c: _all(statement, c))
        return [FillRate(*row) for row in found]

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run_read, query)

    def _run_read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        with self._reading:
            try:
                if self._reader is None:
                    self._reader = sqlite3.connect(
                        self._writer.path, isolation_level=None, check_same_thread=False
                    )
                    self._reader.execute("PRAGMA busy_timeout=5000")
                    self._reader.execute("PRAGMA query_only=ON")
                return query(self._reader)
            except sqlite3.Error as error:
                raise StoreError(f"cannot read the history: {error}") from None


def _all(statement: sql.Statement, connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return connection.execute(statement.text, statement.arguments).fetchall()


def _create(connection: sqlite3.Connection) -> None:
    for statement in sql.tables("INTEGER PRIMARY KEY", "REAL"):
        connection.execute(statement)


def _write(
    rows: Sequence[Row],
    deliveries: Sequence[DeliveryRow],
    senders: Sequence[SenderRow],
    sessions: Sequence[SessionRow],
    connection: sqlite3.Connection,
) -> None:
    _insert(connection, "history", COLUMNS, rows)
    _insert(connection, "history_deliveries", DELIVERY_COLUMNS, deliveries)
    if senders:
        connection.executemany(sql.add_senders(sql.qmark), senders)
    if sessions:
        connection.executemany(
            sql.add_sessions(sql.qmark), [session.values() for session in sessions]
        )


def _insert(
    connection: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Rows grouped by which of their values are set, each group inserted naming only those
    columns (the others are NULL by default). Python's sqlite3 binds a None through its
    adapter lookup, which costs about three times a string's (measured: 2.45 against 0.94
    us for a row of eight values); a postback's row has six to eight of them."""
    shapes: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        given = tuple(index for index, value in enumerate(row) if value is not None)
        shapes.setdefault(given, []).append(tuple(row[index] for index in given))
    for given, values in shapes.items():
        named = [columns[index] for index in given]
        connection.executemany(_statement(table, tuple(named)), values)


@functools.lru_cache(maxsize=256)
def _statement(table: str, columns: tuple[str, ...]) -> str:
    return sql.insert(table, columns, sql.qmark)


def _purge(column: str, value: str, connection: sqlite3.Connection) -> int:
    deliveries, sessions, postbacks = sql.purge(column, sql.qmark)
    connection.execute(deliveries, (value,))
    connection.execute(sessions, (value,))
    return connection.execute(postbacks, (value,)).rowcount


def _expire(older_than: float, limit: int, connection: sqlite3.Connection) -> int:
    deleted = [
        connection.execute(sql.expire(table, sql.qmark), (older_than, limit)).rowcount
        for table in ("history", "history_deliveries")
    ]
    connection.execute(sql.expire_senders(sql.qmark), (older_than,))
    sessions = connection.execute(sql.expire_sessions(sql.qmark), (older_than, limit))
    return max(*deleted, sessions.rowcount)


def _no_postback(
    statement: sql.Statement, now: float, replica: str, connection: sqlite3.Connection
) -> list[Missed]:
    """The sweep and its history lines, in the writer's one transaction."""
    missed = oldest_first(Missed(*row) for row in _all(statement, connection))
    _insert(connection, "history", COLUMNS, [one.history_row(now, replica) for one in missed])
    return missed


def _recorded(row: tuple[Any, ...]) -> Recorded:
    values = dict(zip(COLUMNS, row[1:], strict=True))
    return Recorded.of(row[0], values, orjson.loads(values["detail"]))
