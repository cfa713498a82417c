"""Tests for gateway.durable.outbox: events and their deliveries in a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.durable import outbox
from gateway.durable.outbox import DEAD, DELIVERED, MAX_KEPT_BODY, PENDING, Delivery, RouteStats
from gateway.durable.service import STORE_SCHEMA
from gateway.durable.store import connect
from gateway.postback import Postback

POSTBACK = Postback(
    {"ymid": "u1", "zone_id": "5", "event_type": "impression"}, (("custom", "a b"), ("x", "1"))
)


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(str(tmp_path / "x.db"), STORE_SCHEMA)
    yield connection
    connection.close()


def _enqueue(
    connection: sqlite3.Connection,
    *,
    now: float,
    route: str = "tapper",
    upstreams: tuple[str, ...] = ("app",),
    key: bytes | None = None,
) -> int:
    event_id = outbox.enqueue(
        connection,
        route=route,
        upstreams=list(upstreams),
        postback=POSTBACK,
        idempotency_key=f"idem-{route}-{now}",
        request_id=f"req-{now}",
        client="203.0.113.7",
        now=now,
        dedup_key=key if key is not None else f"{route}-{now}".encode(),
        dedup_expires_at=now + 3600,
    )
    assert event_id is not None
    return event_id


def _delivery_row(connection: sqlite3.Connection, event_id: int, upstream: str) -> dict[str, Any]:
    cursor = connection.execute(
        "SELECT * FROM deliveries WHERE event_id = ? AND upstream = ?", (event_id, upstream)
    )
    row = cursor.fetchone()
    assert row is not None, f"no delivery ({event_id}, {upstream})"
    return dict(zip([column[0] for column in cursor.description], row, strict=True))


def _states(connection: sqlite3.Connection) -> dict[tuple[int, str], str]:
    rows = connection.execute("SELECT event_id, upstream, state FROM deliveries")
    return {(event_id, upstream): state for event_id, upstream, state in rows}


def _delivery(
    connection: sqlite3.Connection, event_id: int, upstream: str = "app", route: str = "tapper"
) -> Delivery:
    """The Delivery the deliverer would hold for this row (as `due` builds it)."""
    found = [
        delivery
        for delivery in outbox.due(connection, route, upstream, float("inf"), 1000, frozenset())
        if delivery.event_id == event_id
    ]
    assert found, f"({event_id}, {upstream}) is not pending"
    return found[0]


def _due_ids(
    connection: sqlite3.Connection,
    now: float,
    *,
    limit: int = 100,
    busy: frozenset[int] = frozenset(),
    route: str = "tapper",
    upstream: str = "app",
) -> list[int]:
    return [d.event_id for d in outbox.due(connection, route, upstream, now, limit, busy)]


# --- enqueue --------------------------------------------------------------------------------


def test_enqueue_stores_event_deliveries_and_dedup_key(connection: sqlite3.Connection) -> None:
    event_id = outbox.enqueue(
        connection,
        route="tapper",
        upstreams=["app", "analytics"],
        postback=POSTBACK,
        idempotency_key="abc123",
        request_id="req-1",
        client="203.0.113.7",
        now=100.0,
        dedup_key=b"\x01key",
        dedup_expires_at=160.0,
    )

    events = connection.execute(
        "SELECT id, route, idempotency_key, request_id, client, created_at FROM events"
    ).fetchall()
    assert events == [(event_id, "tapper", "abc123", "req-1", "203.0.113.7", 100.0)]
    for upstream in ("app", "analytics"):
        row = _delivery_row(connection, event_id, upstream)
        assert (row["state"], row["attempts"], row["next_attempt_at"], row["since"]) == (
            PENDING,
            0,
            100.0,
            100.0,
        )
        assert (row["last_error"], row["last_status"], row["last_body"]) == (None, None, None)
    assert connection.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (2,)
    assert connection.execute("SELECT key, expires_at FROM dedup_keys").fetchall() == [
        (b"\x01key", 160.0)
    ]


def test_enqueued_event_comes_back_unchanged_from_due(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=100.0)

    (delivery,) = outbox.due(connection, "tapper", "app", 100.0, 10, frozenset())

    assert delivery == Delivery(
        event_id=event_id,
        route="tapper",
        upstream="app",
        attempts=0,
        since=100.0,
        postback=POSTBACK,
        request_id="req-100.0",
        client="203.0.113.7",
        idempotency_key="idem-tapper-100.0",
    )


def test_enqueue_gives_each_event_its_own_id(connection: sqlite3.Connection) -> None:
    first = _enqueue(connection, now=100.0)
    second = _enqueue(connection, now=101.0)

    assert first != second
    assert connection.execute("SELECT COUNT(*) FROM events").fetchone() == (2,)


# --- due ------------------------------------------------------------------------------------


def test_due_returns_oldest_first(connection: sqlite3.Connection) -> None:
    newest = _enqueue(connection, now=100.0)
    oldest = _enqueue(connection, now=50.0)
    middle = _enqueue(connection, now=75.0)

    assert _due_ids(connection, 200.0) == [oldest, middle, newest]


def test_due_respects_limit(connection: sqlite3.Connection) -> None:
    ids = [_enqueue(connection, now=float(n)) for n in range(5)]

    assert _due_ids(connection, 200.0, limit=2) == ids[:2]


@pytest.mark.parametrize(
    ("busy_positions", "limit", "expected_positions"),
    [
        pytest.param([0], 10, [1, 2, 3], id="one-busy"),
        pytest.param([0, 1], 2, [2, 3], id="busy-oldest-do-not-use-up-the-limit"),
        pytest.param([1, 3], 10, [0, 2], id="busy-in-between"),
        pytest.param([0, 1, 2, 3], 10, [], id="all-busy"),
    ],
)
def test_due_skips_busy_events(
    connection: sqlite3.Connection,
    busy_positions: list[int],
    limit: int,
    expected_positions: list[int],
) -> None:
    ids = [_enqueue(connection, now=float(n)) for n in range(4)]
    busy = frozenset(ids[position] for position in busy_positions)

    due = _due_ids(connection, 200.0, limit=limit, busy=busy)

    assert due == [ids[position] for position in expected_positions]


def test_due_busy_ids_of_other_upstreams_do_not_shrink_the_batch(
    connection: sqlite3.Connection,
) -> None:
    ids = [_enqueue(connection, now=float(n)) for n in range(3)]
    elsewhere = _enqueue(connection, now=10.0, upstreams=("analytics",))

    due = _due_ids(connection, 200.0, limit=3, busy=frozenset({elsewhere}))

    assert due == ids


def _retry_later(connection: sqlite3.Connection, event_id: int) -> None:
    outbox.mark_retry(connection, _delivery(connection, event_id), "timeout", None, 500.0, 150.0)


def _deliver(connection: sqlite3.Connection, event_id: int) -> None:
    outbox.mark_delivered(connection, _delivery(connection, event_id), 200, 150.0)


def _kill(connection: sqlite3.Connection, event_id: int) -> None:
    outbox.mark_dead(connection, _delivery(connection, event_id), "HTTP 400", 400, "no", 150.0)


@pytest.mark.parametrize(
    "make_not_due",
    [
        pytest.param(_retry_later, id="retry-not-yet-due"),
        pytest.param(_deliver, id="delivered"),
        pytest.param(_kill, id="dead"),
    ],
)
def test_due_skips_deliveries_not_due(
    connection: sqlite3.Connection, make_not_due: Callable[[sqlite3.Connection, int], None]
) -> None:
    skipped = _enqueue(connection, now=100.0)
    kept = _enqueue(connection, now=101.0)

    make_not_due(connection, skipped)

    assert _due_ids(connection, 200.0) == [kept]


def test_due_skips_events_accepted_after_now(connection: sqlite3.Connection) -> None:
    now_due = _enqueue(connection, now=100.0)
    _enqueue(connection, now=300.0)

    assert _due_ids(connection, 200.0) == [now_due]


def test_due_is_inclusive_at_the_due_time(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=100.0)

    assert _due_ids(connection, 100.0) == [event_id]


@pytest.mark.parametrize(
    ("route", "upstream"),
    [
        pytest.param("other", "app", id="other-route"),
        pytest.param("tapper", "analytics", id="other-upstream"),
    ],
)
def test_due_returns_only_the_asked_route_and_upstream(
    connection: sqlite3.Connection, route: str, upstream: str
) -> None:
    _enqueue(connection, now=100.0, route="tapper", upstreams=("app",))

    assert _due_ids(connection, 200.0, route=route, upstream=upstream) == []


def test_retried_delivery_is_due_again_at_its_next_attempt(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=100.0)
    _retry_later(connection, event_id)  # next attempt at 500

    assert _due_ids(connection, 499.0) == []
    (delivery,) = outbox.due(connection, "tapper", "app", 500.0, 10, frozenset())
    assert (delivery.event_id, delivery.attempts, delivery.since) == (event_id, 1, 100.0)


# --- marking the result of an attempt -------------------------------------------------------


def test_mark_delivered_records_success(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=100.0)
    outbox.mark_retry(connection, _delivery(connection, event_id), "timeout", 504, 110.0, 105.0)

    outbox.mark_delivered(connection, _delivery(connection, event_id), 200, 120.0)

    row = _delivery_row(connection, event_id, "app")
    assert (row["state"], row["attempts"], row["last_status"], row["last_error"]) == (
        DELIVERED,
        2,
        200,
        None,
    )
    assert row["updated_at"] == 120.0


@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param("HTTP 503", 503, id="upstream-answered"),
        pytest.param("connection refused", None, id="no-answer"),
    ],
)
def test_mark_retry_keeps_pending_and_records_the_failure(
    connection: sqlite3.Connection, error: str, status: int | None
) -> None:
    event_id = _enqueue(connection, now=100.0)

    outbox.mark_retry(connection, _delivery(connection, event_id), error, status, 130.0, 110.0)

    row = _delivery_row(connection, event_id, "app")
    assert row["state"] == PENDING
    assert row["attempts"] == 1
    assert (row["last_error"], row["last_status"]) == (error, status)
    assert (row["next_attempt_at"], row["updated_at"], row["since"]) == (130.0, 110.0, 100.0)


def test_mark_retry_counts_every_attempt(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=100.0)

    for attempt in range(3):
        outbox.mark_retry(
            connection, _delivery(connection, event_id), f"try {attempt}", 500, 100.0, 100.0
        )

    row = _delivery_row(connection, event_id, "app")
    assert (row["attempts"], row["last_error"]) == (3, "try 2")


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        pytest.param(None, None, id="no-body"),
        pytest.param("", "", id="empty-body"),
        pytest.param("bad request", "bad request", id="short-body"),
        pytest.param("b" * MAX_KEPT_BODY, "b" * MAX_KEPT_BODY, id="exactly-the-limit"),
        pytest.param("c" * MAX_KEPT_BODY + "tail", "c" * MAX_KEPT_BODY, id="truncated"),
        pytest.param("\u00e9" * (MAX_KEPT_BODY + 5), "\u00e9" * MAX_KEPT_BODY, id="non-ascii"),
    ],
)
def test_mark_dead_records_the_failure_and_keeps_a_bounded_body(
    connection: sqlite3.Connection, body: str | None, kept: str | None
) -> None:
    event_id = _enqueue(connection, now=100.0)

    outbox.mark_dead(connection, _delivery(connection, event_id), "HTTP 400", 400, body, 140.0)

    row = _delivery_row(connection, event_id, "app")
    assert (row["state"], row["attempts"], row["last_error"], row["last_status"]) == (
        DEAD,
        1,
        "HTTP 400",
        400,
    )
    assert row["last_body"] == kept
    assert row["updated_at"] == 140.0


def test_marking_one_upstream_leaves_the_others(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=100.0, upstreams=("app", "analytics"))
    other = _enqueue(connection, now=101.0, upstreams=("app",))

    outbox.mark_dead(connection, _delivery(connection, event_id), "HTTP 400", 400, None, 110.0)

    assert _states(connection) == {
        (event_id, "app"): DEAD,
        (event_id, "analytics"): PENDING,
        (other, "app"): PENDING,
    }


# --- redrive --------------------------------------------------------------------------------


@pytest.fixture
def dead_letters(connection: sqlite3.Connection) -> dict[str, int]:
    """Route tapper: `two_dead` (app dead, analytics dead), `mixed` (app dead, analytics
    delivered), `retrying` (app pending after 2 attempts). Route other: `elsewhere` (dead)."""
    ids = {
        "two_dead": _enqueue(connection, now=10.0, upstreams=("app", "analytics")),
        "mixed": _enqueue(connection, now=11.0, upstreams=("app", "analytics")),
        "retrying": _enqueue(connection, now=12.0),
        "elsewhere": _enqueue(connection, now=13.0, route="other"),
    }
    for upstream in ("app", "analytics"):
        outbox.mark_dead(
            connection, _delivery(connection, ids["two_dead"], upstream), "e", 500, "b", 20.0
        )
    outbox.mark_dead(connection, _delivery(connection, ids["mixed"]), "e", 500, "b", 20.0)
    outbox.mark_delivered(connection, _delivery(connection, ids["mixed"], "analytics"), 200, 20.0)
    for _ in range(2):
        outbox.mark_retry(connection, _delivery(connection, ids["retrying"]), "e", 500, 900.0, 20.0)
    outbox.mark_dead(
        connection, _delivery(connection, ids["elsewhere"], route="other"), "e", 500, "b", 20.0
    )
    return ids


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param(
            {},
            {("two_dead", "app"), ("two_dead", "analytics"), ("mixed", "app"),
             ("elsewhere", "app")},
            id="all-dead-letters",
        ),
        pytest.param(
            {"route": "tapper"},
            {("two_dead", "app"), ("two_dead", "analytics"), ("mixed", "app")},
            id="by-route",
        ),
        pytest.param({"route": "other"}, {("elsewhere", "app")}, id="by-other-route"),
        pytest.param({"event": "mixed"}, {("mixed", "app")}, id="by-event-skips-delivered"),
        pytest.param({"event": "retrying"}, {("retrying", "app")}, id="by-event-resets-pending"),
        pytest.param({"route": "nope"}, set(), id="unknown-route"),
    ],
)  # fmt: skip
def test_redrive_resets_the_selected_deliveries(
    connection: sqlite3.Connection,
    dead_letters: dict[str, int],
    selector: dict[str, str],
    expected: set[tuple[str, str]],
) -> None:
    names = {event_id: name for name, event_id in dead_letters.items()}
    before = {
        (names[event_id], upstream): _delivery_row(connection, event_id, upstream)
        for event_id, upstream in _states(connection)
    }
    event_id = dead_letters[selector["event"]] if "event" in selector else None

    count = outbox.redrive(connection, 1000.0, event_id=event_id, route=selector.get("route"))

    assert count == len(expected)
    for (name, upstream), old in before.items():
        row = _delivery_row(connection, dead_letters[name], upstream)
        if (name, upstream) in expected:
            assert (row["state"], row["attempts"]) == (PENDING, 0)
            assert (row["since"], row["next_attempt_at"], row["updated_at"]) == (1000.0,) * 3
        else:
            assert row == old, f"{name}/{upstream} changed"


def test_redriven_dead_letters_are_due_with_a_fresh_budget(
    connection: sqlite3.Connection, dead_letters: dict[str, int]
) -> None:
    assert _due_ids(connection, 1000.0) == [dead_letters["retrying"]]

    outbox.redrive(connection, 1000.0)

    due = outbox.due(connection, "tapper", "app", 1000.0, 10, frozenset())
    assert {(d.event_id, d.attempts, d.since) for d in due} == {
        (dead_letters["two_dead"], 0, 1000.0),
        (dead_letters["mixed"], 0, 1000.0),
        (dead_letters["retrying"], 2, 12.0),
    }


def test_redrive_keeps_last_error_for_the_record(
    connection: sqlite3.Connection, dead_letters: dict[str, int]
) -> None:
    outbox.redrive(connection, 1000.0, event_id=dead_letters["two_dead"])

    row = _delivery_row(connection, dead_letters["two_dead"], "app")
    assert row["last_error"] == "e"


# --- purge_delivered ------------------------------------------------------------------------


def test_purge_delivered_removes_only_old_fully_delivered_events(
    connection: sqlite3.Connection,
) -> None:
    old_done = _enqueue(connection, now=10.0, upstreams=("app", "analytics"))
    new_done = _enqueue(connection, now=11.0, upstreams=("app", "analytics"))
    half_done = _enqueue(connection, now=12.0, upstreams=("app", "analytics"))
    done_and_dead = _enqueue(connection, now=13.0, upstreams=("app", "analytics"))
    untouched = _enqueue(connection, now=14.0)
    for upstream in ("app", "analytics"):
        outbox.mark_delivered(connection, _delivery(connection, old_done, upstream), 200, 50.0)
    outbox.mark_delivered(connection, _delivery(connection, new_done, "app"), 200, 50.0)
    outbox.mark_delivered(connection, _delivery(connection, new_done, "analytics"), 200, 300.0)
    outbox.mark_delivered(connection, _delivery(connection, half_done, "app"), 200, 50.0)
    outbox.mark_delivered(connection, _delivery(connection, done_and_dead, "app"), 200, 50.0)
    outbox.mark_dead(
        connection, _delivery(connection, done_and_dead, "analytics"), "e", 400, None, 50.0
    )

    removed = outbox.purge_delivered(connection, older_than=200.0)

    assert removed == 1
    events = {row[0] for row in connection.execute("SELECT id FROM events")}
    assert events == {new_done, half_done, done_and_dead, untouched}
    delivery_events = {event_id for event_id, _ in _states(connection)}
    assert old_done not in delivery_events, "the purged event's deliveries were left behind"
    assert delivery_events == events


def test_purge_delivered_cutoff_is_exclusive(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=10.0)
    outbox.mark_delivered(connection, _delivery(connection, event_id), 200, 200.0)

    assert outbox.purge_delivered(connection, older_than=200.0) == 0
    assert outbox.purge_delivered(connection, older_than=200.5) == 1


# --- bury_orphans ---------------------------------------------------------------------------


def test_bury_orphans_dead_letters_deliveries_without_a_configured_target(
    connection: sqlite3.Connection,
) -> None:
    kept = _enqueue(connection, now=10.0, route="tapper", upstreams=("app", "retired"))
    gone_route = _enqueue(connection, now=11.0, route="removed", upstreams=("app",))
    delivered = _enqueue(connection, now=12.0, route="removed", upstreams=("done",))
    outbox.mark_delivered(
        connection, _delivery(connection, delivered, "done", route="removed"), 200, 20.0
    )
    dead = _enqueue(connection, now=13.0, route="removed", upstreams=("failed",))
    outbox.mark_dead(
        connection, _delivery(connection, dead, "failed", route="removed"), "HTTP 400", 400, "", 20
    )

    buried = outbox.bury_orphans(connection, {"tapper": ["app"], "other": ["retired"]}, now=30.0)

    assert buried == 2
    assert _states(connection) == {
        (kept, "app"): PENDING,
        (kept, "retired"): DEAD,
        (gone_route, "app"): DEAD,
        (delivered, "done"): DELIVERED,
        (dead, "failed"): DEAD,
    }
    for event_id, upstream in [(kept, "retired"), (gone_route, "app")]:
        row = _delivery_row(connection, event_id, upstream)
        assert "no longer in config" in row["last_error"]
        assert row["updated_at"] == 30.0
    assert _delivery_row(connection, dead, "failed")["last_error"] == "HTTP 400"


def test_bury_orphans_leaves_everything_when_all_targets_are_configured(
    connection: sqlite3.Connection,
) -> None:
    first = _enqueue(connection, now=10.0, route="tapper", upstreams=("app", "analytics"))
    second = _enqueue(connection, now=11.0, route="other", upstreams=("app",))
    before = {
        key: _delivery_row(connection, *key)
        for key in [(first, "app"), (first, "analytics"), (second, "app")]
    }

    buried = outbox.bury_orphans(
        connection, {"tapper": ["app", "analytics"], "other": ["app"]}, now=30.0
    )

    assert buried == 0
    assert {key: _delivery_row(connection, *key) for key in before} == before


def test_buried_orphans_can_be_redriven(connection: sqlite3.Connection) -> None:
    event_id = _enqueue(connection, now=10.0, route="tapper", upstreams=("app",))
    outbox.bury_orphans(connection, {}, now=30.0)

    assert outbox.redrive(connection, 40.0, route="tapper") == 1
    assert _due_ids(connection, 40.0) == [event_id]


# --- stats ----------------------------------------------------------------------------------


def test_stats_counts_by_route_and_state_with_oldest_pending(
    connection: sqlite3.Connection,
) -> None:
    delivered_oldest = _enqueue(connection, now=10.0, route="tapper")
    dead_old = _enqueue(connection, now=5.0, route="tapper")
    _enqueue(connection, now=50.0, route="tapper", upstreams=("app", "analytics"))
    _enqueue(connection, now=100.0, route="tapper")
    only_delivered = _enqueue(connection, now=1.0, route="other")
    outbox.mark_delivered(connection, _delivery(connection, delivered_oldest), 200, 20.0)
    outbox.mark_dead(connection, _delivery(connection, dead_old), "e", 400, None, 20.0)
    outbox.mark_delivered(
        connection, _delivery(connection, only_delivered, route="other"), 200, 20.0
    )

    assert outbox.stats(connection) == [
        RouteStats("other", {DELIVERED: 1}, None),
        RouteStats("tapper", {DELIVERED: 1, DEAD: 1, PENDING: 3}, 50.0),
    ]


def test_stats_oldest_pending_counts_from_acceptance_not_from_retries(
    connection: sqlite3.Connection,
) -> None:
    event_id = _enqueue(connection, now=10.0)
    outbox.mark_retry(connection, _delivery(connection, event_id), "e", 500, 90.0, 80.0)

    (only,) = outbox.stats(connection)

    assert only.oldest_pending_at == 10.0


def test_stats_of_an_empty_outbox_is_empty(connection: sqlite3.Connection) -> None:
    assert outbox.stats(connection) == []


def test_enqueue_of_a_stored_key_writes_nothing_and_says_so(
    connection: sqlite3.Connection,
) -> None:
    _enqueue(connection, now=100.0, key=b"same-event")
    again = outbox.enqueue(
        connection, route="tapper", upstreams=["app"], postback=POSTBACK,
        idempotency_key="idem-again", request_id="req-again", client="203.0.113.7",
        now=200.0, dedup_key=b"same-event", dedup_expires_at=3800.0,
    )  # fmt: skip
    assert again is None
    assert connection.execute("SELECT COUNT(*) FROM events").fetchone() == (1,)
    # once the key has expired, the same event is accepted again
    later = outbox.enqueue(
        connection, route="tapper", upstreams=["app"], postback=POSTBACK,
        idempotency_key="idem-later", request_id="req-later", client="203.0.113.7",
        now=5000.0, dedup_key=b"same-event", dedup_expires_at=8600.0,
    )  # fmt: skip
    assert later is not None
