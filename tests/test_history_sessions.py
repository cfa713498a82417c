"""Reward sessions in the history (gateway/history/sessions.py), on a real SQLite file and a
real PostgreSQL database: an issue and its postback merge into the same row in either order
and from either replica, the status endpoint's events come with their delivery state, the
sweep marks each unanswered ymid once across replicas and writes its history line, fill
rates add up, and retention and a user's purge reach the sessions too."""

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
from gateway.history.rows import delivery_row_of, row_of
from gateway.history.search import Search
from gateway.history.sessions import FillRate, Missed, SessionEvent, SessionRow
from gateway.history.sqlite_history import history_path
from gateway.history.store import HistoryStore, history_store
from gateway.record import RequestRecord, UpstreamAttempt

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


# -- the status endpoint's events ------------------------------------------------------------


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


def delivery(request_id: str, state: str, at: float) -> tuple[Any, ...]:
    attempt = UpstreamAttempt("app", 500 if state == "retry" else 200, None, 2.0, "", at)
    return delivery_row_of(request_id, "tapper", state, attempt, "replica-a", at)


def event(
    ymid: str, at: float, outcome: str, status: int, request_id: str, delivery: str | None
) -> SessionEvent:
    """An event of a postback_line's."""
    return SessionEvent(
        ymid, "tapper", at, outcome, None, status, "impression", request_id, delivery
    )


async def test_session_events_are_the_ymids_history_oldest_first_with_their_latest_delivery(
    history: HistoryStore,
):
    await history.write(
        [
            postback_line("y-queued", NOW - 50, "queued", "r-queued", 202),
            postback_line("y-sync", NOW - 80, "forwarded", "r-sync"),
            postback_line("y-sync", NOW - 20, "duplicate", "r-again"),
            postback_line("y-other", NOW - 60, "forwarded", "r-other"),
            postback_line(None, NOW - 70, "rejected", "r-no-ymid", 400),
        ],
        [  # the latest by time, whatever the order written
            delivery("r-queued", "delivered", NOW - 30),
            delivery("r-queued", "retry", NOW - 40),
            delivery("r-other", "dead", NOW - 50),
        ],
    )
    events = await history.session_events(["y-queued", "y-sync", "y-never-seen"])
    assert events == [
        event("y-sync", NOW - 80, "forwarded", 200, "r-sync", None),
        event("y-queued", NOW - 50, "queued", 202, "r-queued", "delivered"),
        event("y-sync", NOW - 20, "duplicate", 200, "r-again", None),
    ]
    assert await history.session_events([]) == []


async def test_session_events_answer_two_thousand_ymids_in_one_call(history: HistoryStore):
    ymids = [f"y-{number:04d}" for number in range(2100)]
    lines = [
        postback_line(ymid, NOW - 3000 + number, "forwarded", f"r-{number}")
        for number, ymid in enumerate(ymids)
    ]
    await history.write(lines, [delivery("r-2099", "delivered", NOW)])
    events = await asyncio.wait_for(history.session_events(ymids), PATIENCE)
    assert [event.ymid for event in events] == ymids  # oldest first: the order written
    assert [event.delivery for event in events[-2:]] == [None, "delivered"]


# -- the sweep ----------------------------------------------------------------------------------

CUTOFF = NOW - 300  # issued at or before it and unanswered: missed


async def test_the_sweep_marks_only_unanswered_ymids_issued_by_the_cutoff_and_each_once(
    history: HistoryStore, store_at: str | Path
):
    await write_sessions(
        history,
        issue("y-old", NOW - 900, placement="level-2"),
        issue("y-at-cutoff", CUTOFF),
        issue("y-answered", NOW - 900),
        postback("y-answered", NOW - 800),
        issue("y-recent", CUTOFF + 1),
        postback("y-never-issued", NOW - 900),
    )
    missed = await history.no_postback("tapper", CUTOFF, NOW, "replica-sweep", 100)
    assert missed == [
        Missed("y-old", "tapper", "level-2", USER, NOW - 900),
        Missed("y-at-cutoff", "tapper", None, USER, CUTOFF),
    ]
    assert await history.no_postback("tapper", CUTOFF, NOW + 60, "replica-sweep", 100) == []
    assert (await stored(store_at, "y-old") or {})["no_postback_at"] == NOW
    for unmarked in ("y-answered", "y-recent", "y-never-issued"):
        assert (await stored(store_at, unmarked) or {})["no_postback_at"] is None, unmarked


async def test_the_sweep_takes_at_most_its_limit_oldest_first(history: HistoryStore):
    await write_sessions(history, *(issue(f"y-{n}", NOW - 1000 + n) for n in range(5)))
    batches = [
        [one.ymid for one in await history.no_postback("tapper", CUTOFF, NOW, "r", 2)]
        for _ in range(3)
    ]
    assert batches == [["y-0", "y-1"], ["y-2", "y-3"], ["y-4"]]
    assert await history.no_postback("tapper", CUTOFF, NOW, "r", 2) == []


async def test_a_missed_ymid_has_its_line_in_the_history_for_the_user_and_the_ymid(
    history: HistoryStore,
):
    await write_sessions(history, issue("y-missed", NOW - 900, placement="level-2"))
    await history.no_postback("tapper", CUTOFF, NOW, "replica-sweep", 10)
    (line,) = await history.search(Search(ymid="y-missed"))
    assert await history.search(Search(telegram_id=USER)) == [line]
    assert await history.get(line.request_id) == line
    assert (line.at, line.replica, line.route, line.outcome, line.reason, line.status) == (
        NOW,
        "replica-sweep",
        "tapper",
        "no_postback",
        None,
        None,
    )
    assert line.fields == {"ymid": "y-missed", "telegram_id": USER, "request_var": "level-2"}
    assert (line.dedup_key, line.repeats, line.detail) == (None, 1, {"issued_at": NOW - 900})
    (event,) = await history.session_events(["y-missed"])
    assert (event.outcome, event.request_id, event.delivery) == (
        "no_postback",
        line.request_id,
        None,
    )


async def test_two_replicas_sweeping_at_once_mark_each_ymid_exactly_once(
    open_history: OpenHistory,
):
    replicas = [await open_history(), await open_history()]
    issued = {f"y-{number:03d}" for number in range(120)}
    await write_sessions(replicas[0], *(issue(ymid, NOW - 900) for ymid in sorted(issued)))

    async def sweep(store: HistoryStore, replica: str) -> list[str]:
        taken: list[str] = []
        while batch := await store.no_postback("tapper", CUTOFF, NOW, replica, 7):
            taken.extend(one.ymid for one in batch)
        return taken

    first, second = await asyncio.wait_for(
        asyncio.gather(sweep(replicas[0], "replica-a"), sweep(replicas[1], "replica-b")),
        PATIENCE * 3,
    )
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(issued)  # and none twice within one replica
    lines = await replicas[1].search(Search(outcome="no_postback", limit=1000))
    assert sorted(line.fields["ymid"] for line in lines) == sorted(issued)


@pytest.mark.postgres
async def test_a_sweep_on_postgresql_skips_rows_another_sweep_holds_without_waiting(
    postgres_url: str,
):
    history = history_store(config_of(postgres_url))
    await asyncio.wait_for(history.open(), PATIENCE)
    try:
        await sweep_past_the_held_rows(history, postgres_url)
    finally:
        await history.close()


async def sweep_past_the_held_rows(history: HistoryStore, postgres_url: str) -> None:
    await write_sessions(history, *(issue(f"y-{n}", NOW - 1000 + n) for n in range(4)))
    holder = await asyncpg.connect(postgres_url)
    try:
        async with holder.transaction():  # another replica's sweep, mid-transaction
            await holder.execute(
                "SELECT ymid FROM history_sessions WHERE ymid = ANY($1) FOR UPDATE",
                ["y-0", "y-1"],
            )
            missed = await asyncio.wait_for(
                history.no_postback("tapper", CUTOFF, NOW, "r", 10), PATIENCE
            )
            assert [one.ymid for one in missed] == ["y-2", "y-3"]
    finally:
        await holder.close()
    assert [one.ymid for one in await history.no_postback("tapper", CUTOFF, NOW, "r", 10)] == [
        "y-0",
        "y-1",
    ]


# -- fill rates ---------------------------------------------------------------------------------


async def test_fill_rates_count_each_placements_issues_postbacks_and_misses(
    history: HistoryStore,
):
    since = NOW - 2 * HOUR
    await write_sessions(
        history,
        issue("t-answered", NOW - 900),
        postback("t-answered", NOW - 850),
        issue("t-missed", NOW - 900),
        issue("t-waiting", NOW - 10),
        issue("t-l2-a", NOW - 900, placement="level-2"),
        postback("t-l2-a", NOW - 800),
        issue("t-l2-b", NOW - 900, placement="level-2"),
        postback("t-l2-b", NOW - 800),
        issue("o-1", NOW - 900, route="other"),
        issue("t-before-since", since - 1),
        postback("t-never-issued", NOW - 900),
    )
    # each route is swept with its own window: sweeping one marks none of another's
    swept = await history.no_postback("tapper", CUTOFF, NOW, "r", 100)
    assert [one.ymid for one in swept] == ["t-before-since", "t-missed"]
    await history.no_postback("other", CUTOFF, NOW, "r", 100)
    assert await history.fill_rates(since) == [
        FillRate("other", None, issued=1, postbacks=0, no_postback=1),
        FillRate("tapper", None, issued=3, postbacks=1, no_postback=1),
        FillRate("tapper", "level-2", issued=2, postbacks=2, no_postback=0),
    ]
    assert await history.fill_rates(since, route="other") == [
        FillRate("other", None, issued=1, postbacks=0, no_postback=1)
    ]
    assert await history.fill_rates(NOW) == []


async def test_a_postback_after_the_sweep_counts_as_a_postback_and_stays_missed(
    history: HistoryStore, store_at: str | Path
):
    await write_sessions(history, issue("y-late", NOW - 900))
    await history.no_postback("tapper", CUTOFF, NOW, "r", 10)
    await write_sessions(history, postback("y-late", NOW + 5))
    row = await stored(store_at, "y-late") or {}
    assert (row["postback_at"], row["no_postback_at"]) == (NOW + 5, NOW)
    assert await history.fill_rates(0) == [FillRate("tapper", None, 1, 1, 1)]


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
