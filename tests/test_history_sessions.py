"""Reward sessions in the history (gateway/history/sessions.py), on a real SQLite file and a
real PostgreSQL database: an issue and its postback merge into the same row in either order
and from either replica, and retention and a user's purge reach the sessions too."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.config import StoreConfig
from gateway.config.model import PostgresUrl
from gateway.history.rows import row_of
from gateway.history.sessions import SessionRow
from gateway.history.sqlite_history import history_path
from gateway.history.store import HistoryStore, history_store
from gateway.record import RequestRecord

NOW = 1_700_000_000.0
HOUR = 3600.0
USER = "123456"
PATIENCE = 10.0  # seconds a store operation may take before the test calls it stuck

OpenHistory = Callable[[], Awaitable[HistoryStore]]


def config_of(store_at: str | Path) -> StoreConfig:
    if isinstance(store_at, str):
        return StoreConfig(url=PostgresUrl(store_at))
    return StoreConfig(path=str(store_at))


@pytest.fixture
async def open_history(store_at: str | Path) -> AsyncIterator[OpenHistory]:
    """Open a history store on the test's store: each call another instance (a replica) on
    the same file or database; all closed after the test."""
    opened: list[HistoryStore] = []

    async def open_one() -> HistoryStore:
        store = history_store(config_of(store_at))
        await asyncio.wait_for(store.open(), PATIENCE)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def history(open_history: OpenHistory) -> HistoryStore:
    return await open_history()


async def stored(store_at: str | Path, ymid: str) -> dict[str, Any] | None:
    """The history_sessions row of a ymid, every column, as the store keeps it."""
    query = "SELECT * FROM history_sessions WHERE ymid = "
    if isinstance(store_at, str):
        connection = await asyncpg.connect(store_at)
        try:
            found = await connection.fetchrow(query + "$1", ymid)
        finally:
            await connection.close()
        return None if found is None else dict(found)
    with sqlite3.connect(history_path(str(store_at))) as reader:
        reader.row_factory = sqlite3.Row
        row = reader.execute(query + "?", (ymid,)).fetchone()
    return None if row is None else dict(row)


def issue(
    ymid: str,
    issued_at: float = NOW - HOUR,
    *,
    route: str = "tapper",
    placement: str | None = None,
    telegram_id: str = USER,
    expires: float | None = None,
) -> SessionRow:
    expires = issued_at + 600 if expires is None else expires
    return SessionRow(ymid, route, placement, telegram_id, "replica-a", expires, issued_at, None)


def postback(ymid: str, at: float, placement: str | None = None) -> SessionRow:
    """What a postback that verified against the ymid writes: its own replica, and what the
    ymid and the postback said (which may differ from the issue's in what it cannot know)."""
    return SessionRow(ymid, "tapper-from-postback", placement, "999", "replica-b", NOW, None, at)


async def write_sessions(store: HistoryStore, *sessions: SessionRow) -> None:
    await store.write([], [], [], sessions)


# -- the upsert ---------------------------------------------------------------------------------

ISSUED = issue("y-merged", NOW - HOUR, placement=None, expires=NOW - HOUR + 600)
EARLY_POSTBACK = postback("y-merged", NOW - HOUR + 30, placement="level-2")
LATE_POSTBACK = postback("y-merged", NOW - HOUR + 90, placement="level-3")
MERGED = {
    "ymid": "y-merged",
    "route": "tapper",
    "placement": None,  # the issue's "none bound" holds against the postbacks' request_var
    "telegram_id": USER,
    "replica": "replica-a",
    "expires": NOW - HOUR + 600,
    "issued_at": NOW - HOUR,
    "postback_at": NOW - HOUR + 30,
    "no_postback_at": None,
}
ORDERS = list(itertools.permutations([ISSUED, EARLY_POSTBACK, LATE_POSTBACK]))


def named(order: tuple[SessionRow, ...]) -> str:
    names = {id(ISSUED): "issue", id(EARLY_POSTBACK): "early", id(LATE_POSTBACK): "late"}
    return "-".join(names[id(row)] for row in order)


@pytest.mark.parametrize("order", ORDERS, ids=named)
async def test_an_issue_and_its_postbacks_merge_into_the_same_row_in_any_order(
    open_history: OpenHistory, store_at: str | Path, order: tuple[SessionRow, ...]
):
    replicas = [await open_history(), await open_history()]
    for number, row in enumerate(order):  # one write each, from alternating replicas
        await write_sessions(replicas[number % 2], row)
    assert await stored(store_at, "y-merged") == MERGED


@pytest.mark.parametrize("order", ORDERS, ids=named)
async def test_an_issue_and_its_postbacks_merge_within_one_batch_in_any_order(
    history: HistoryStore, store_at: str | Path, order: tuple[SessionRow, ...]
):
    await write_sessions(history, *order)
    assert await stored(store_at, "y-merged") == MERGED


async def test_a_postback_before_any_issue_keeps_what_it_knew_until_the_issue_comes(
    history: HistoryStore, store_at: str | Path
):
    await write_sessions(history, postback("y-early", NOW - 10, placement="level-2"))
    assert await stored(store_at, "y-early") == {
        "ymid": "y-early",
        "route": "tapper-from-postback",
        "placement": "level-2",
        "telegram_id": "999",
        "replica": "replica-b",
        "expires": NOW,
        "issued_at": None,
        "postback_at": NOW - 10,
        "no_postback_at": None,
    }


def postback_line(
    ymid: str | None, at: float, outcome: str, request_id: str, status: int | None = 200
) -> tuple[Any, ...]:
    fields = {"telegram_id": USER, "event_type": "impression", "zone_id": "42"}
    record = RequestRecord(
        request_id=request_id,
        route="tapper",
        client="127.0.0.1",
        outcome=outcome,
        fields={**fields, "ymid": ymid} if ymid is not None else fields,
    )
    return row_of(record, status, at, 1.0, "replica-a", lambda route: {})


# -- retention and purge --------------------------------------------------------------------


async def test_retention_deletes_expired_sessions_in_batches(
    history: HistoryStore, store_at: str | Path
):
    expired = [
        issue(f"y-expired-{n}", NOW - 5 * HOUR, expires=NOW - 4 * HOUR + n) for n in range(3)
    ]
    answered_only = postback("y-answered-only", NOW - 5 * HOUR)  # no issue: by its expires
    await write_sessions(history, *expired, issue("y-current", NOW - 60, expires=NOW + 600))
    await write_sessions(history, answered_only)
    cutoff = NOW + 1  # answered_only expires at NOW
    assert await history.expire(cutoff - 2 * HOUR, 10) == 3
    assert await history.expire(cutoff, 10) == 1
    assert await history.expire(cutoff, 10) == 0
    assert await stored(store_at, "y-current") is not None
    await write_sessions(history, *(issue(f"y-{n}", NOW, expires=NOW - HOUR) for n in range(5)))
    assert [await history.expire(cutoff, 2) for _ in range(4)] == [2, 2, 1, 0]


async def test_purge_deletes_the_users_sessions_or_the_ymids(
    history: HistoryStore, store_at: str | Path
):
    await history.write(
        [postback_line("y-mine-1", NOW - 50, "forwarded", "r-mine")],
        [],
        [],
        [
            issue("y-mine-1"),
            issue("y-mine-2"),
            issue("y-theirs-1", telegram_id="777"),
            issue("y-theirs-2", telegram_id="777"),
        ],
    )
    assert await history.purge(telegram_id=USER) == 1  # the postbacks, as before
    assert await stored(store_at, "y-mine-1") is None
    assert await stored(store_at, "y-mine-2") is None
    assert await history.purge(ymid="y-theirs-1") == 0
    assert await stored(store_at, "y-theirs-1") is None
    assert await stored(store_at, "y-theirs-2") is not None
