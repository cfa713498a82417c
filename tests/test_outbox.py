"""The outbox contract (gateway.durable.outbox.Outbox), through the interface, on every store.

Each case runs on the SQLite file and on PostgreSQL (`outbox` is parametrized), and reads
state back through the interface too (`listing`, `show`, `stats`, `count_keys`): what holds
here holds for the service, the deliverer and the `queue` command whichever store they use.

Two rules keep the cases valid on both stores:
- Leases: on PostgreSQL a delivery `due` returns is leased (`lease` seconds from its `now`) and
  not returned again until recorded or until `now` passes the lease. No case counts on getting
  a delivery twice from `due` without recording it, unless it asks past the lease.
- Time is the caller's: both stores compare the times passed in (`accepted_at`, `now`), never
  their own clock, so the cases use small round numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.model import PostgresUrl, StoreConfig
from gateway.durable.outbox import (
    DEAD,
    DELIVERED,
    MAX_KEPT_BODY,
    PENDING,
    RETRY,
    Delivery,
    DeliveryResult,
    DeliveryState,
    NewEvent,
    Outbox,
    RouteStats,
)
from gateway.durable.service import open_outbox
from gateway.postback import Postback

POSTBACK = Postback(
    {"ymid": "u1", "zone_id": "5", "event_type": "impression"}, (("custom", "a b"), ("x", "1"))
)
KEY_TTL = 3600.0
LEASE = 30.0
FAR_FUTURE = 1e12  # a `now` at which every pending delivery is due
EVERYTHING = 10_000  # a `limit` above what any case stores
PATIENCE = 10.0  # bounds opening and closing a store: a hang fails instead of freezing the run


@contextlib.asynccontextmanager
async def opened(config: StoreConfig) -> AsyncIterator[Outbox]:
    """The store `open_outbox` builds, opened, and closed after use."""
    outbox = open_outbox(config)
    await asyncio.wait_for(outbox.open(), PATIENCE)
    try:
        yield outbox
    finally:
        await asyncio.wait_for(outbox.close(), PATIENCE)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Outbox]:
    """An opened, empty outbox: an SQLite file in tmp_path, or a PostgreSQL database."""
    if request.param == "sqlite":
        config = StoreConfig(path=str(tmp_path / "outbox.db"))
    else:
        config = StoreConfig(url=PostgresUrl(request.getfixturevalue("postgres_url")))
    async with opened(config) as store:
        yield store


@pytest.fixture
async def postgres_outbox(postgres_url: str) -> AsyncIterator[Outbox]:
    """An opened, empty outbox on PostgreSQL, for what only a shared store promises."""
    async with opened(StoreConfig(url=PostgresUrl(postgres_url))) as store:
        yield store


def new_event(
    now: float,
    *,
    route: str = "tapper",
    upstreams: tuple[str, ...] = ("app",),
    key: bytes | None = None,
) -> NewEvent:
    """An event accepted at `now`, its dedup key kept KEY_TTL seconds."""
    return NewEvent(
        route=route,
        upstreams=list(upstreams),
        postback=POSTBACK,
        dedup_key=key if key is not None else f"{route}-{now}".encode(),
        dedup_expires_at=now + KEY_TTL,
        request_id=f"req-{now}",
        client="203.0.113.7",
        accepted_at=now,
    )


async def enqueue(
    outbox: Outbox,
    now: float,
    *,
    route: str = "tapper",
    upstreams: tuple[str, ...] = ("app",),
    key: bytes | None = None,
) -> int:
    """Enqueue a new event; its id (the newest event `listing` shows)."""
    assert await outbox.enqueue(new_event(now, route=route, upstreams=upstreams, key=key))
    (newest, *_) = await outbox.listing(None, None, 1)
    return newest.event_id


async def claim(
    outbox: Outbox, event_id: int, upstream: str = "app", route: str = "tapper"
) -> Delivery:
    """This one delivery from `due`, whenever it is due. Every other event is passed as busy,
    so that no other delivery is leased on the way."""
    others = frozenset(item.event_id for item in await outbox.listing(None, None, EVERYTHING))
    found = await outbox.due(route, upstream, FAR_FUTURE, 1, others - {event_id}, lease=LEASE)
    assert [delivery.event_id for delivery in found] == [event_id], (
        f"({event_id}, {upstream}) is not pending"
    )
    return found[0]


async def attempt(
    outbox: Outbox,
    event_id: int,
    result: DeliveryResult,
    now: float,
    upstream: str = "app",
    route: str = "tapper",
) -> None:
    """Claim the delivery and record `result` at `now`, as the deliverer would."""
    delivery = await claim(outbox, event_id, upstream, route)
    assert await outbox.record(delivery, result, now), "a claimed delivery was not the caller's"


def delivered(status: int = 200) -> DeliveryResult:
    return DeliveryResult(DELIVERED, status=status)


def retry(at: float, error: str = "timeout", status: int | None = None) -> DeliveryResult:
    return DeliveryResult(RETRY, error=error, status=status, retry_at=at)


def dead(
    error: str = "HTTP 400", status: int | None = 400, body: str | None = None
) -> DeliveryResult:
    return DeliveryResult(DEAD, error=error, status=status, body=body)


async def state_of(outbox: Outbox, event_id: int, upstream: str = "app") -> DeliveryState:
    shown = await outbox.show(event_id)
    assert shown is not None, f"no event {event_id}"
    (found,) = [delivery for delivery in shown.deliveries if delivery.upstream == upstream]
    return found


async def states(outbox: Outbox) -> dict[tuple[int, str], str]:
    """(event, upstream) -> state of every delivery."""
    listed = await outbox.listing(None, None, EVERYTHING)
    return {(item.event_id, item.upstream): item.state for item in listed}


async def due_ids(
    outbox: Outbox,
    now: float,
    *,
    limit: int = 100,
    busy: frozenset[int] = frozenset(),
    route: str = "tapper",
    upstream: str = "app",
) -> list[int]:
    due = await outbox.due(route, upstream, now, limit, busy, lease=LEASE)
    return [delivery.event_id for delivery in due]


# --- enqueue --------------------------------------------------------------------------------


async def test_enqueue_stores_event_deliveries_and_dedup_key(outbox: Outbox) -> None:
    event = new_event(100.0, upstreams=("app", "analytics"), key=b"\x01key")

    assert await outbox.enqueue(event) is True

    (event_id,) = {item.event_id for item in await outbox.listing(None, None, EVERYTHING)}
    shown = await outbox.show(event_id)
    assert shown is not None
    assert (shown.route, shown.idempotency_key, shown.request_id, shown.client) == (
        "tapper",
        b"\x01key".hex(),
        "req-100.0",
        "203.0.113.7",
    )
    assert (shown.accepted_at, shown.postback) == (100.0, POSTBACK)
    assert shown.deliveries == [
        DeliveryState(upstream, PENDING, 0, None, None, None, 100.0)
        for upstream in ("analytics", "app")
    ]
    assert await outbox.count_keys() == 1
    assert await outbox.purge_expired_keys(100.0 + KEY_TTL - 1) == 0, "key kept too briefly"
    assert await outbox.purge_expired_keys(100.0 + KEY_TTL) == 1, "key kept too long"


async def test_enqueued_event_comes_back_unchanged_from_due(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 100.0)

    (delivery,) = await outbox.due("tapper", "app", 100.0, 10, frozenset(), lease=LEASE)

    assert delivery == Delivery(
        event_id=event_id,
        route="tapper",
        upstream="app",
        attempts=0,
        since=100.0,
        postback=POSTBACK,
        request_id="req-100.0",
        client="203.0.113.7",
        idempotency_key=b"tapper-100.0".hex(),
    )


async def test_enqueue_gives_each_event_its_own_id(outbox: Outbox) -> None:
    first = await enqueue(outbox, 100.0)
    second = await enqueue(outbox, 101.0)

    assert first != second
    assert {event_id for event_id, _ in await states(outbox)} == {first, second}


@pytest.mark.parametrize(
    ("again_at", "accepted"),
    [
        pytest.param(200.0, False, id="while-the-key-is-kept"),
        pytest.param(100.0 + KEY_TTL - 0.5, False, id="just-before-the-key-expires"),
        pytest.param(100.0 + KEY_TTL, True, id="when-the-key-expires"),
        pytest.param(5000.0, True, id="long-after-the-key-expired"),
    ],
)
async def test_enqueue_of_a_known_key_writes_nothing_and_says_so(
    outbox: Outbox, again_at: float, accepted: bool
) -> None:
    first = await enqueue(outbox, 100.0, key=b"same-event")

    again = await outbox.enqueue(new_event(again_at, key=b"same-event"))

    assert again is accepted
    events = {event_id for event_id, _ in await states(outbox)}
    assert len(events - {first}) == (1 if accepted else 0)
    assert await outbox.count_keys() == 1
    if not accepted:  # nothing written: not even a later expiry for the known key
        assert await outbox.purge_expired_keys(100.0 + KEY_TTL) == 1


# --- due ------------------------------------------------------------------------------------


async def test_due_returns_oldest_first(outbox: Outbox) -> None:
    newest = await enqueue(outbox, 100.0)
    oldest = await enqueue(outbox, 50.0)
    middle = await enqueue(outbox, 75.0)

    assert await due_ids(outbox, 200.0) == [oldest, middle, newest]


async def test_due_respects_limit(outbox: Outbox) -> None:
    ids = [await enqueue(outbox, float(n)) for n in range(5)]

    assert await due_ids(outbox, 200.0, limit=2) == ids[:2]


@pytest.mark.parametrize(
    ("busy_positions", "limit", "expected_positions"),
    [
        pytest.param([0], 10, [1, 2, 3], id="one-busy"),
        pytest.param([0, 1], 2, [2, 3], id="busy-oldest-do-not-use-up-the-limit"),
        pytest.param([1, 3], 10, [0, 2], id="busy-in-between"),
        pytest.param([0, 1, 2, 3], 10, [], id="all-busy"),
    ],
)
async def test_due_skips_busy_events(
    outbox: Outbox, busy_positions: list[int], limit: int, expected_positions: list[int]
) -> None:
    ids = [await enqueue(outbox, float(n)) for n in range(4)]
    busy = frozenset(ids[position] for position in busy_positions)

    due = await due_ids(outbox, 200.0, limit=limit, busy=busy)

    assert due == [ids[position] for position in expected_positions]


async def test_due_busy_ids_of_other_upstreams_do_not_shrink_the_batch(outbox: Outbox) -> None:
    ids = [await enqueue(outbox, float(n)) for n in range(3)]
    elsewhere = await enqueue(outbox, 10.0, upstreams=("analytics",))

    due = await due_ids(outbox, 200.0, limit=3, busy=frozenset({elsewhere}))

    assert due == ids


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(retry(at=500.0), id="retry-not-yet-due"),
        pytest.param(delivered(), id="delivered"),
        pytest.param(dead(), id="dead"),
    ],
)
async def test_due_skips_deliveries_not_due(outbox: Outbox, result: DeliveryResult) -> None:
    skipped = await enqueue(outbox, 100.0)
    kept = await enqueue(outbox, 101.0)

    await attempt(outbox, skipped, result, now=150.0)

    assert await due_ids(outbox, 200.0) == [kept]


async def test_due_skips_events_accepted_after_now(outbox: Outbox) -> None:
    now_due = await enqueue(outbox, 100.0)
    await enqueue(outbox, 300.0)

    assert await due_ids(outbox, 200.0) == [now_due]


async def test_due_is_inclusive_at_the_due_time(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 100.0)

    assert await due_ids(outbox, 99.5) == []
    assert await due_ids(outbox, 100.0) == [event_id]


@pytest.mark.parametrize(
    ("route", "upstream"),
    [
        pytest.param("other", "app", id="other-route"),
        pytest.param("tapper", "analytics", id="other-upstream"),
    ],
)
async def test_due_returns_only_the_asked_route_and_upstream(
    outbox: Outbox, route: str, upstream: str
) -> None:
    await enqueue(outbox, 100.0, route="tapper", upstreams=("app",))

    assert await due_ids(outbox, 200.0, route=route, upstream=upstream) == []


async def test_retried_delivery_is_due_again_at_its_next_attempt(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 100.0)
    await attempt(outbox, event_id, retry(at=500.0), now=150.0)

    assert await due_ids(outbox, 499.0) == []
    (delivery,) = await outbox.due("tapper", "app", 500.0, 10, frozenset(), lease=LEASE)
    assert (delivery.event_id, delivery.attempts, delivery.since) == (event_id, 1, 100.0)


# --- recording the result of an attempt -----------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(delivered(), id="delivered"),
        pytest.param(retry(at=500.0), id="retry"),
        pytest.param(dead(), id="dead"),
    ],
)
async def test_record_of_the_callers_delivery_says_it_was_recorded(
    outbox: Outbox, result: DeliveryResult
) -> None:
    await enqueue(outbox, 100.0)
    (delivery,) = await outbox.due("tapper", "app", 100.0, 10, frozenset(), lease=LEASE)

    assert await outbox.record(delivery, result, 110.0) is True


async def test_record_delivered_records_success(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 100.0)
    await attempt(outbox, event_id, retry(at=110.0, error="timeout", status=504), now=105.0)

    await attempt(outbox, event_id, delivered(200), now=120.0)

    state = await state_of(outbox, event_id)
    assert (state.state, state.attempts, state.last_status, state.last_error) == (
        DELIVERED,
        2,
        200,
        None,
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param("HTTP 503", 503, id="upstream-answered"),
        pytest.param("connection refused", None, id="no-answer"),
    ],
)
async def test_record_retry_keeps_pending_and_records_the_failure(
    outbox: Outbox, error: str, status: int | None
) -> None:
    event_id = await enqueue(outbox, 100.0)

    await attempt(outbox, event_id, retry(at=130.0, error=error, status=status), now=110.0)

    state = await state_of(outbox, event_id)
    assert (state.state, state.attempts, state.next_attempt_at) == (PENDING, 1, 130.0)
    assert (state.last_error, state.last_status) == (error, status)
    (again,) = await outbox.due("tapper", "app", 130.0, 10, frozenset(), lease=LEASE)
    assert again.since == 100.0, "a retry must not restart the age of the delivery"


async def test_record_retry_counts_every_attempt(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 100.0)

    for number in range(3):
        await attempt(outbox, event_id, retry(at=100.0, error=f"try {number}"), now=100.0)

    state = await state_of(outbox, event_id)
    assert (state.attempts, state.last_error) == (3, "try 2")


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
async def test_record_dead_records_the_failure_and_keeps_a_bounded_body(
    outbox: Outbox, body: str | None, kept: str | None
) -> None:
    event_id = await enqueue(outbox, 100.0)

    await attempt(outbox, event_id, dead("HTTP 400", 400, body), now=140.0)

    state = await state_of(outbox, event_id)
    assert (state.state, state.attempts, state.last_error, state.last_status) == (
        DEAD,
        1,
        "HTTP 400",
        400,
    )
    assert state.last_body == kept


async def test_recording_one_upstream_leaves_the_others(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 100.0, upstreams=("app", "analytics"))
    other = await enqueue(outbox, 101.0, upstreams=("app",))

    await attempt(outbox, event_id, dead(), now=110.0)

    assert await states(outbox) == {
        (event_id, "app"): DEAD,
        (event_id, "analytics"): PENDING,
        (other, "app"): PENDING,
    }


# --- redrive --------------------------------------------------------------------------------


@pytest.fixture
async def dead_letters(outbox: Outbox) -> dict[str, int]:
    """Route tapper: `two_dead` (app dead, analytics dead), `mixed` (app dead, analytics
    delivered), `retrying` (app pending after 2 attempts, next at 900). Route other:
    `elsewhere` (dead)."""
    ids = {
        "two_dead": await enqueue(outbox, 10.0, upstreams=("app", "analytics")),
        "mixed": await enqueue(outbox, 11.0, upstreams=("app", "analytics")),
        "retrying": await enqueue(outbox, 12.0),
        "elsewhere": await enqueue(outbox, 13.0, route="other"),
    }
    for upstream in ("app", "analytics"):
        await attempt(outbox, ids["two_dead"], dead("e", 500, "b"), 20.0, upstream)
    await attempt(outbox, ids["mixed"], dead("e", 500, "b"), 20.0)
    await attempt(outbox, ids["mixed"], delivered(), 20.0, "analytics")
    for _ in range(2):
        await attempt(outbox, ids["retrying"], retry(at=900.0, error="e", status=500), 20.0)
    await attempt(outbox, ids["elsewhere"], dead("e", 500, "b"), 20.0, route="other")
    return ids


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param(
            {},
            {
                ("two_dead", "app"),
                ("two_dead", "analytics"),
                ("mixed", "app"),
                ("elsewhere", "app"),
            },
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
)
async def test_redrive_resets_the_selected_deliveries(
    outbox: Outbox,
    dead_letters: dict[str, int],
    selector: dict[str, str],
    expected: set[tuple[str, str]],
) -> None:
    before = {name: await outbox.show(event_id) for name, event_id in dead_letters.items()}
    event_id = dead_letters[selector["event"]] if "event" in selector else None

    count = await outbox.redrive(1000.0, event_id=event_id, route=selector.get("route"))

    assert count == len(expected)
    for name, old in before.items():
        assert old is not None
        for old_state in old.deliveries:
            state = await state_of(outbox, dead_letters[name], old_state.upstream)
            if (name, old_state.upstream) in expected:
                assert (state.state, state.attempts, state.next_attempt_at) == (PENDING, 0, 1000.0)
            else:
                assert state == old_state, f"{name}/{old_state.upstream} changed"


async def test_redriven_dead_letters_are_due_with_a_fresh_budget(
    outbox: Outbox, dead_letters: dict[str, int]
) -> None:
    assert await due_ids(outbox, 1000.0) == [dead_letters["retrying"]]

    await outbox.redrive(1000.0)

    # past the lease the first `due` took on `retrying`, so that it is due again too
    due = await outbox.due("tapper", "app", 1000.0 + LEASE, 10, frozenset(), lease=LEASE)
    assert {(d.event_id, d.attempts, d.since) for d in due} == {
        (dead_letters["two_dead"], 0, 1000.0),
        (dead_letters["mixed"], 0, 1000.0),
        (dead_letters["retrying"], 2, 12.0),
    }


async def test_redrive_keeps_last_error_for_the_record(
    outbox: Outbox, dead_letters: dict[str, int]
) -> None:
    await outbox.redrive(1000.0, event_id=dead_letters["two_dead"])

    state = await state_of(outbox, dead_letters["two_dead"], "app")
    assert (state.state, state.last_error) == (PENDING, "e")


# --- purge_delivered ------------------------------------------------------------------------


async def test_purge_delivered_removes_only_old_fully_delivered_events(outbox: Outbox) -> None:
    both = ("app", "analytics")
    old_done = await enqueue(outbox, 10.0, upstreams=both)
    new_done = await enqueue(outbox, 11.0, upstreams=both)
    half_done = await enqueue(outbox, 12.0, upstreams=both)
    done_and_dead = await enqueue(outbox, 13.0, upstreams=both)
    untouched = await enqueue(outbox, 14.0)
    for upstream in both:
        await attempt(outbox, old_done, delivered(), 50.0, upstream)
    await attempt(outbox, new_done, delivered(), 50.0, "app")
    await attempt(outbox, new_done, delivered(), 300.0, "analytics")
    await attempt(outbox, half_done, delivered(), 50.0, "app")
    await attempt(outbox, done_and_dead, delivered(), 50.0, "app")
    await attempt(outbox, done_and_dead, dead("e", 400), 50.0, "analytics")

    removed = await outbox.purge_delivered(older_than=200.0)

    assert removed == 1
    assert await outbox.show(old_done) is None
    remaining = {new_done, half_done, done_and_dead, untouched}
    assert all([await outbox.show(event_id) is not None for event_id in remaining])
    delivery_events = {event_id for event_id, _ in await states(outbox)}
    assert old_done not in delivery_events, "the purged event's deliveries were left behind"
    assert delivery_events == remaining


async def test_purge_delivered_cutoff_is_exclusive(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 10.0)
    await attempt(outbox, event_id, delivered(), 200.0)

    assert await outbox.purge_delivered(older_than=200.0) == 0
    assert await outbox.purge_delivered(older_than=200.5) == 1


# --- bury_orphans ---------------------------------------------------------------------------


async def test_bury_orphans_dead_letters_deliveries_without_a_configured_target(
    outbox: Outbox,
) -> None:
    kept = await enqueue(outbox, 10.0, route="tapper", upstreams=("app", "retired"))
    gone_route = await enqueue(outbox, 11.0, route="removed", upstreams=("app",))
    done = await enqueue(outbox, 12.0, route="removed", upstreams=("done",))
    await attempt(outbox, done, delivered(), 20.0, "done", route="removed")
    failed = await enqueue(outbox, 13.0, route="removed", upstreams=("failed",))
    await attempt(outbox, failed, dead("HTTP 400", 400, ""), 20.0, "failed", route="removed")

    buried = await outbox.bury_orphans({"tapper": ["app"], "other": ["retired"]}, now=30.0)

    assert buried == 2
    assert await states(outbox) == {
        (kept, "app"): PENDING,
        (kept, "retired"): DEAD,
        (gone_route, "app"): DEAD,
        (done, "done"): DELIVERED,
        (failed, "failed"): DEAD,
    }
    for event_id, upstream in [(kept, "retired"), (gone_route, "app")]:
        error = (await state_of(outbox, event_id, upstream)).last_error
        assert error is not None
        assert "no longer in config" in error
    assert (await state_of(outbox, failed, "failed")).last_error == "HTTP 400"


async def test_bury_orphans_leaves_everything_when_all_targets_are_configured(
    outbox: Outbox,
) -> None:
    first = await enqueue(outbox, 10.0, route="tapper", upstreams=("app", "analytics"))
    second = await enqueue(outbox, 11.0, route="other", upstreams=("app",))
    before = [await outbox.show(first), await outbox.show(second)]

    buried = await outbox.bury_orphans({"tapper": ["app", "analytics"], "other": ["app"]}, 30.0)

    assert buried == 0
    assert [await outbox.show(first), await outbox.show(second)] == before


async def test_buried_orphans_can_be_redriven(outbox: Outbox) -> None:
    event_id = await enqueue(outbox, 10.0, route="tapper", upstreams=("app",))
    await outbox.bury_orphans({}, now=30.0)

    assert await outbox.redrive(40.0, route="tapper") == 1
    assert await due_ids(outbox, 40.0) == [event_id]


# --- stats ----------------------------------------------------------------------------------


async def test_stats_counts_by_route_and_state_with_oldest_pending(outbox: Outbox) -> None:
    delivered_oldest = await enqueue(outbox, 10.0, route="tapper")
    dead_old = await enqueue(outbox, 5.0, route="tapper")
    await enqueue(outbox, 50.0, route="tapper", upstreams=("app", "analytics"))
    await enqueue(outbox, 100.0, route="tapper")
    only_delivered = await enqueue(outbox, 1.0, route="other")
    await attempt(outbox, delivered_oldest, delivered(), 20.0)
    await attempt(outbox, dead_old, dead("e", 400), 20.0)
    await attempt(outbox, only_delivered, delivered(), 20.0, route="other")

    assert await outbox.stats() == [
        RouteStats("other", {DELIVERED: 1}, None),
        RouteStats("tapper", {DELIVERED: 1, DEAD: 1, PENDING: 3}, 50.0),
    ]


async def test_stats_oldest_pending_counts_from_acceptance_not_from_retries(
    outbox: Outbox,
) -> None:
    event_id = await enqueue(outbox, 10.0)
    await attempt(outbox, event_id, retry(at=90.0, error="e", status=500), now=80.0)

    (only,) = await outbox.stats()

    assert only.oldest_pending_at == 10.0


async def test_stats_of_an_empty_outbox_is_empty(outbox: Outbox) -> None:
    assert await outbox.stats() == []


# --- dedup keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "purged"),
    [
        pytest.param(100.0, 0, id="none-expired"),
        pytest.param(100.0 + KEY_TTL - 0.5, 0, id="just-before-the-first-expiry"),
        pytest.param(100.0 + KEY_TTL, 1, id="at-its-expiry-a-key-is-purged"),
        pytest.param(102.0 + KEY_TTL, 3, id="all-expired"),
    ],
)
async def test_purge_expired_keys_removes_keys_past_their_expiry(
    outbox: Outbox, now: float, purged: int
) -> None:
    """Keys expire at 100, 101 and 102 + KEY_TTL; purging them leaves the events."""
    ids = [await enqueue(outbox, accepted) for accepted in (100.0, 101.0, 102.0)]

    assert await outbox.purge_expired_keys(now) == purged

    assert await outbox.count_keys() == 3 - purged
    assert {event_id for event_id, _ in await states(outbox)} == set(ids)


async def test_count_keys_counts_one_per_event_whatever_its_upstreams(outbox: Outbox) -> None:
    assert await outbox.count_keys() == 0

    await enqueue(outbox, 100.0, upstreams=("app", "analytics"))
    await enqueue(outbox, 101.0)

    assert await outbox.count_keys() == 2


# --- leases (PostgreSQL: several processes share the store) ---------------------------------


@pytest.mark.postgres
async def test_a_leased_delivery_is_not_claimed_again_until_its_lease_ends(
    postgres_outbox: Outbox,
) -> None:
    """Only where processes share the store: SQLite does not promise it (its one process
    keeps track of its attempts with `busy`)."""
    event_id = await enqueue(postgres_outbox, 100.0)
    assert await due_ids(postgres_outbox, 100.0) == [event_id]

    assert await due_ids(postgres_outbox, 100.0) == [], "claimed twice at the same time"
    assert await due_ids(postgres_outbox, 100.0 + LEASE - 0.5) == [], "lease ended early"

    assert await due_ids(postgres_outbox, 100.0 + LEASE) == [event_id], "lease never ended"


@pytest.mark.postgres
async def test_a_record_after_another_process_took_the_delivery_over_is_refused(
    postgres_outbox: Outbox, postgres_url: str
) -> None:
    """A process whose lease ran out (it hung) records nothing over the one that took over."""
    event_id = await enqueue(postgres_outbox, 100.0)
    (late,) = await postgres_outbox.due("tapper", "app", 100.0, 10, frozenset(), lease=LEASE)
    async with opened(StoreConfig(url=PostgresUrl(postgres_url))) as other:
        (current,) = await other.due("tapper", "app", 100.0 + LEASE, 10, frozenset(), lease=LEASE)

        assert await postgres_outbox.record(late, delivered(), 140.0) is False
        assert (await state_of(other, event_id)).state == PENDING, "the stale record was written"
        assert await other.record(current, delivered(), 150.0) is True
    assert (await state_of(postgres_outbox, event_id)).state == DELIVERED


@pytest.mark.postgres
async def test_a_result_whose_text_postgresql_refuses_is_recorded_without_it_and_blocks_nothing(
    postgres_outbox: Outbox,
) -> None:
    """PostgreSQL's text holds no NUL. The deliverer makes the app's texts storable first;
    should one still reach the store, the batch it came in is recorded all the same, and the
    odd result once, without its text, never retried forever."""
    odd, plain = await enqueue(postgres_outbox, 100.0), await enqueue(postgres_outbox, 101.0)
    deliveries = [await claim(postgres_outbox, event_id) for event_id in (odd, plain)]

    recorded = await asyncio.wait_for(
        asyncio.gather(
            postgres_outbox.record(deliveries[0], dead("refused: 400", 400, "bad\x00body"), 140.0),
            postgres_outbox.record(deliveries[1], delivered(), 140.0),
        ),
        PATIENCE,
    )

    assert recorded == [True, True]
    odd_state = await state_of(postgres_outbox, odd)
    assert (odd_state.state, odd_state.last_status, odd_state.last_body) == (DEAD, 400, None)
    assert (await state_of(postgres_outbox, plain)).state == DELIVERED
    assert postgres_outbox.available  # the server was fine all along
