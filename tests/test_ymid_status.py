"""A ymid's status from its history lines (`status_of`), and the watch that answers every
status question of a replica with one store query per poll, over a real SQLite history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.config import StoreConfig
from gateway.history.sessions import SessionEvent
from gateway.history.store import HistoryStore, history_store
from gateway.ymid_status import POLL_SECONDS, Status, StatusWatch, status_of
from tests.test_history_sessions import postback_line

NOW = 1_700_000_000.0
LATER = NOW + 3600


def line(
    outcome: str, reason: str | None = None, delivery: str | None = None, at: float = NOW
) -> SessionEvent:
    return SessionEvent("y", "tapper", at, outcome, reason, 200, "impression", "r1", delivery)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], Status("pending")),
        ([line("forwarded")], Status("rewarded", "impression", NOW)),
        (
            [line("forwarded", reason="upstream_refused")],
            Status("refused", "impression", NOW, "app_refused"),
        ),
        ([line("queued")], Status("pending")),
        ([line("queued", delivery="retry")], Status("pending")),
        ([line("queued", delivery="delivered")], Status("rewarded", "impression", NOW)),
        ([line("queued", delivery="dead")], Status("refused", "impression", NOW, "app_refused")),
        (
            [line("rejected", "telegram_id_mismatch")],
            Status("refused", "impression", NOW, "telegram_id_mismatch"),
        ),
        # a stranger's refused postback does not hide the genuine one that came after it
        (
            [line("rejected", "telegram_id_mismatch"), line("forwarded", at=NOW + 1)],
            Status("rewarded", "impression", NOW + 1),
        ),
        ([line("duplicate"), line("no_postback")], Status("pending")),
    ],
)
def test_the_state_is_what_the_history_says(events: list[SessionEvent], expected: Status) -> None:
    assert status_of(events, "tapper", int(LATER), NOW) == expected


def test_nothing_accepted_by_the_expiry_is_expired_and_another_routes_lines_say_nothing() -> None:
    assert status_of([], "tapper", int(NOW - 1), NOW) == Status("expired")
    other = SessionEvent("y", "other", NOW, "forwarded", None, 200, "click", "r1", None)
    assert status_of([other], "tapper", int(LATER), NOW) == Status("pending")


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[HistoryStore]:
    store = history_store(StoreConfig(path=str(tmp_path / "gw.db")))
    await store.open()
    yield store
    await store.close()


class CountingReads:
    """The store's own session_events, counted: how many queries the watch made."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.calls: list[int] = []  # ymids asked for, per query

    async def __call__(self, ymids: Sequence[str]) -> list[SessionEvent]:
        self.calls.append(len(ymids))
        return await self.store.session_events(ymids)


async def test_a_thousand_status_questions_at_once_are_one_or_two_queries(
    history: HistoryStore,
) -> None:
    await history.write([postback_line("y-7", NOW, "forwarded", "r-7")], [])
    reads = CountingReads(history)
    watch = StatusWatch(reads, clock=lambda: NOW)
    answers = await asyncio.gather(
        *(watch.status(f"y-{n}", "tapper", int(LATER)) for n in range(1000))
    )
    assert answers[7].state == "rewarded"
    assert {answer.state for i, answer in enumerate(answers) if i != 7} == {"pending"}
    assert len(reads.calls) <= 2 and sum(reads.calls) == 1000
    await watch.close()


async def test_waiting_frontends_hear_their_own_change_and_only_theirs(
    history: HistoryStore,
) -> None:
    reads = CountingReads(history)
    counts: list[int] = []
    watch = StatusWatch(reads, on_waiting=counts.append, clock=lambda: NOW)
    pending = Status("pending")
    waiting = [
        asyncio.create_task(watch.changed(f"y-{n}", "tapper", int(LATER), pending, 20))
        for n in range(1000)
    ]
    while not counts or counts[-1] < 1000:
        await asyncio.sleep(0.01)
    polls_before = len(reads.calls)
    await history.write([postback_line("y-500", NOW, "forwarded", "r-500")], [])
    changed = await asyncio.wait_for(waiting[500], 5)
    assert changed.state == "rewarded"
    # one more poll after the one that woke it: any other waiter woken wrongly by either
    # would have finished by then
    polls_after = len(reads.calls)
    while len(reads.calls) <= polls_after:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0)
    # each poll asked for all thousand in one query; none of the others was woken
    assert all(calls >= 999 for calls in reads.calls[polls_before:])
    assert not any(task.done() for index, task in enumerate(waiting) if index != 500)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert counts[-1] == 0
    await watch.close()


async def test_a_wait_that_sees_no_change_ends_with_the_state_it_started_from(
    history: HistoryStore,
) -> None:
    watch = StatusWatch(CountingReads(history), clock=lambda: NOW)
    pending = Status("pending")
    assert await watch.changed("y-1", "tapper", int(LATER), pending, 3 * POLL_SECONDS) == pending
    await watch.close()
