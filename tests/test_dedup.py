"""Tests for gateway.dedup: the dedup key, and reserve / commit / release over a TTL memory."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from gateway.dedup import DedupKey, RouteDedup, dedup_key, key_fields
from gateway.errors import DuplicatePostback
from gateway.postback import Postback
from tests.support.clock import FakeClock

KEY_FIELDS = ["ymid", "zone_id"]
KEY: DedupKey = dedup_key("tapper", KEY_FIELDS, Postback({"ymid": "u1", "zone_id": "5"}))
OTHER_KEY: DedupKey = dedup_key("tapper", KEY_FIELDS, Postback({"ymid": "u2", "zone_id": "5"}))


async def _let_other_tasks_run() -> None:
    """Give every ready task many turns, so anything not truly blocked gets to run."""
    for _ in range(20):
        await asyncio.sleep(0)


# --- dedup_key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param(
            ("tapper", ["ymid", "zone_id"], {"ymid": "a", "zone_id": "bc"}),
            ("tapper", ["ymid", "zone_id"], {"ymid": "ab", "zone_id": "c"}),
            id="split-point-moves",
        ),
        pytest.param(
            ("tapper", ["ymid", "zone_id"], {"ymid": 'a", "b', "zone_id": "c"}),
            ("tapper", ["ymid", "zone_id"], {"ymid": "a", "zone_id": 'b", "c'}),
            id="quote-comma-inside-value",
        ),
        pytest.param(
            ("tapper", ["ymid", "zone_id"], {"ymid": "a|", "zone_id": "b"}),
            ("tapper", ["ymid", "zone_id"], {"ymid": "a", "zone_id": "|b"}),
            id="separator-like-character-moves",
        ),
        pytest.param(
            ("tapper", ["ymid", "zone_id"], {"ymid": "a"}),
            ("tapper", ["ymid", "zone_id"], {"ymid": "a", "zone_id": ""}),
            id="missing-vs-empty",
        ),
        pytest.param(
            ("tapper", ["ymid", "zone_id"], {"ymid": "a"}),
            ("tapper", ["ymid", "zone_id"], {"ymid": "a", "zone_id": "null"}),
            id="missing-vs-literal-null",
        ),
        pytest.param(
            ("tapper", ["ymid", "zone_id"], {"ymid": "a"}),
            ("tapper", ["ymid", "zone_id"], {"zone_id": "a"}),
            id="same-value-in-other-field",
        ),
        pytest.param(
            ("tapper", ["ymid"], {"ymid": "a"}),
            ("other", ["ymid"], {"ymid": "a"}),
            id="different-route",
        ),
        pytest.param(
            ("tapper", ["ymid"], {"ymid": "a"}),
            ("tappe", ["ymid"], {"ymid": "ra"}),
            id="route-and-value-split-point",
        ),
        pytest.param(
            ("tapper", ["ymid"], {"ymid": "a"}),
            ("tapper", ["ymid"], {"ymid": "A"}),
            id="case-matters",
        ),
        pytest.param(
            ("tapper", ["ymid"], {"ymid": "caf\u00e9"}),
            ("tapper", ["ymid"], {"ymid": "cafe\u0301"}),
            id="unicode-forms-differ",
        ),
    ],
)
def test_dedup_key_is_unambiguous(
    left: tuple[str, list[str], dict[str, str]], right: tuple[str, list[str], dict[str, str]]
) -> None:
    left_route, left_fields, left_values = left
    right_route, right_fields, right_values = right

    left_key = dedup_key(left_route, left_fields, Postback(left_values))
    right_key = dedup_key(right_route, right_fields, Postback(right_values))

    assert left_key != right_key


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param(
            Postback({"ymid": "u1", "zone_id": "5"}),
            Postback({"ymid": "u1", "zone_id": "5"}),
            id="same-values",
        ),
        pytest.param(
            Postback({"ymid": "u1", "zone_id": "5"}),
            Postback({"zone_id": "5", "ymid": "u1"}),
            id="field-insertion-order-irrelevant",
        ),
        pytest.param(
            Postback({"ymid": "u1", "zone_id": "5", "event_type": "click"}),
            Postback({"ymid": "u1", "zone_id": "5", "event_type": "impression"}),
            id="fields-outside-the-key-ignored",
        ),
        pytest.param(
            Postback({"ymid": "u1", "zone_id": "5"}, (("a", "1"),)),
            Postback({"ymid": "u1", "zone_id": "5"}, (("a", "2"),)),
            id="extras-ignored",
        ),
    ],
)
def test_dedup_key_is_equal_for_the_same_event(left: Postback, right: Postback) -> None:
    assert dedup_key("tapper", KEY_FIELDS, left) == dedup_key("tapper", KEY_FIELDS, right)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="all-missing"),
        pytest.param({"ymid": "u1", "zone_id": "5"}, id="short"),
        pytest.param({"ymid": "x" * 10_000}, id="long"),
        pytest.param({"ymid": "\u043a\u043b\u044e\u0447 \U0001f600"}, id="non-ascii"),
    ],
)
def test_dedup_key_is_16_bytes(values: dict[str, str]) -> None:
    key = dedup_key("tapper", KEY_FIELDS, Postback(values))

    assert isinstance(key, bytes)
    assert len(key) == 16


# --- reserve / commit / release -------------------------------------------------------------


async def test_committed_key_is_a_duplicate_next_time() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)

    async with memory.reserve(KEY) as reservation:
        reservation.commit()

    body_ran = False
    with pytest.raises(DuplicatePostback):
        async with memory.reserve(KEY):
            body_ran = True
    assert body_ran is False
    assert len(memory) == 1


async def test_commit_of_one_key_does_not_block_another() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)

    async with memory.reserve(KEY) as reservation:
        reservation.commit()

    async with memory.reserve(OTHER_KEY) as reservation:
        assert reservation.committed is False


async def test_different_keys_can_be_held_at_the_same_time() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)

    async with asyncio.timeout(1), memory.reserve(KEY), memory.reserve(OTHER_KEY) as other:
        other.commit()

    with pytest.raises(DuplicatePostback):
        async with memory.reserve(OTHER_KEY):
            pass


async def test_key_released_without_commit_can_be_reserved_again() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)

    async with memory.reserve(KEY):
        pass  # the first upstream did not accept: no commit

    async with memory.reserve(KEY) as reservation:
        assert reservation.committed is False
    assert len(memory) == 0


async def test_key_released_when_the_body_raises() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)

    with pytest.raises(ConnectionError, match="upstream down"):
        async with memory.reserve(KEY):
            raise ConnectionError("upstream down")

    async with memory.reserve(KEY) as reservation:
        reservation.commit()
    assert len(memory) == 1


async def test_commit_then_raise_still_remembers_the_delivery() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)

    with pytest.raises(RuntimeError):
        async with memory.reserve(KEY) as reservation:
            reservation.commit()
            raise RuntimeError("a later upstream failed")

    with pytest.raises(DuplicatePostback):
        async with memory.reserve(KEY):
            pass


# --- TTL --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "duplicate"),
    [
        pytest.param(0.0, True, id="immediately"),
        pytest.param(29.9, True, id="just-before-ttl"),
        pytest.param(30.1, False, id="just-after-ttl"),
        pytest.param(3600.0, False, id="long-after-ttl"),
    ],
)
async def test_delivered_key_is_forgotten_after_ttl(elapsed: float, duplicate: bool) -> None:
    clock = FakeClock()
    memory = RouteDedup(ttl=30, max_entries=100, clock=clock)
    async with memory.reserve(KEY) as reservation:
        reservation.commit()

    clock.advance(elapsed)

    if duplicate:
        with pytest.raises(DuplicatePostback):
            async with memory.reserve(KEY):
                pass
    else:
        async with memory.reserve(KEY) as again:
            again.commit()


async def test_ttl_counts_from_delivery_not_from_reservation() -> None:
    clock = FakeClock()
    memory = RouteDedup(ttl=30, max_entries=100, clock=clock)
    async with memory.reserve(KEY) as reservation:
        clock.advance(20)  # forwarding took a while
        reservation.commit()

    clock.advance(25)  # 45 s after the reservation, 25 s after delivery

    with pytest.raises(DuplicatePostback):
        async with memory.reserve(KEY):
            pass


async def test_recommitted_key_after_ttl_is_remembered_again() -> None:
    clock = FakeClock()
    memory = RouteDedup(ttl=30, max_entries=100, clock=clock)
    async with memory.reserve(KEY) as reservation:
        reservation.commit()
    clock.advance(31)
    async with memory.reserve(KEY) as reservation:
        reservation.commit()

    clock.advance(29)

    with pytest.raises(DuplicatePostback):
        async with memory.reserve(KEY):
            pass


# --- max_entries ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_entries", [pytest.param(1, id="one"), pytest.param(3, id="three")])
async def test_memory_never_holds_more_than_max_entries(max_entries: int) -> None:
    memory = RouteDedup(ttl=60, max_entries=max_entries)
    keys = [dedup_key("tapper", ["ymid"], Postback({"ymid": f"u{n}"})) for n in range(10)]

    sizes: list[int] = []
    for key in keys:
        async with memory.reserve(key) as reservation:
            reservation.commit()
        sizes.append(len(memory))

    assert max(sizes) <= max_entries
    assert len(memory) == max_entries
    with pytest.raises(DuplicatePostback):  # the newest delivery is still remembered
        async with memory.reserve(keys[-1]):
            pass


# --- concurrency ------------------------------------------------------------------------------


class Holder:
    """A task that reserves a key and holds it until told to finish (committing or not)."""

    def __init__(self, memory: RouteDedup, key: DedupKey = KEY) -> None:
        self.memory = memory
        self.key = key
        self.attempting = asyncio.Event()
        self.entered = asyncio.Event()
        self.finish = asyncio.Event()
        self.commit = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self.attempting.set()
        async with self.memory.reserve(self.key) as reservation:
            self.entered.set()
            await self.finish.wait()
            if self.commit:
                reservation.commit()

    def release(self, *, commit: bool) -> None:
        self.commit = commit
        self.finish.set()


async def _holding(memory: RouteDedup, key: DedupKey = KEY) -> Holder:
    holder = Holder(memory, key)
    await asyncio.wait_for(holder.entered.wait(), timeout=1)
    return holder


async def _blocked(memory: RouteDedup, key: DedupKey = KEY) -> Holder:
    """A second Holder of the same key, proven to be waiting rather than inside."""
    waiter = Holder(memory, key)
    await asyncio.wait_for(waiter.attempting.wait(), timeout=1)
    await _let_other_tasks_run()
    assert not waiter.entered.is_set()
    assert not waiter.task.done()
    return waiter


async def test_duplicate_during_inflight_waits_then_is_duplicate_if_first_committed() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first = await _holding(memory)
    second = await _blocked(memory)

    first.release(commit=True)
    await asyncio.wait_for(first.task, timeout=1)

    with pytest.raises(DuplicatePostback):
        await asyncio.wait_for(second.task, timeout=1)
    assert not second.entered.is_set()


async def test_duplicate_during_inflight_gets_its_own_turn_if_first_released() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first = await _holding(memory)
    second = await _blocked(memory)

    first.release(commit=False)
    await asyncio.wait_for(first.task, timeout=1)
    await asyncio.wait_for(second.entered.wait(), timeout=1)
    second.release(commit=True)
    await asyncio.wait_for(second.task, timeout=1)

    with pytest.raises(DuplicatePostback):
        async with memory.reserve(KEY):
            pass


async def test_waiter_gets_its_turn_if_first_raised() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first_entered = asyncio.Event()
    first_may_fail = asyncio.Event()

    async def failing_first() -> None:
        async with memory.reserve(KEY):
            first_entered.set()
            await first_may_fail.wait()
            raise ConnectionError("upstream down")

    first = asyncio.create_task(failing_first())
    await asyncio.wait_for(first_entered.wait(), timeout=1)
    second = await _blocked(memory)

    first_may_fail.set()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(first, timeout=1)

    await asyncio.wait_for(second.entered.wait(), timeout=1)
    second.release(commit=False)
    await asyncio.wait_for(second.task, timeout=1)


async def test_after_a_release_only_one_waiter_takes_the_turn() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first = await _holding(memory)
    waiters = [await _blocked(memory), await _blocked(memory)]

    first.release(commit=False)
    await asyncio.wait_for(first.task, timeout=1)
    await _let_other_tasks_run()

    inside = [waiter for waiter in waiters if waiter.entered.is_set()]
    assert len(inside) == 1
    (turn,) = inside
    (still_waiting,) = [waiter for waiter in waiters if waiter is not turn]
    assert not still_waiting.task.done()

    turn.release(commit=True)
    await asyncio.wait_for(turn.task, timeout=1)
    with pytest.raises(DuplicatePostback):
        await asyncio.wait_for(still_waiting.task, timeout=1)
    assert not still_waiting.entered.is_set()


async def test_cancelling_a_waiter_does_not_break_the_first_holder() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first = await _holding(memory)
    second = await _blocked(memory)

    second.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second.task
    await _let_other_tasks_run()
    assert not first.task.done()

    first.release(commit=True)
    await asyncio.wait_for(first.task, timeout=1)  # no InvalidStateError from a cancelled future

    assert first.task.exception() is None
    with pytest.raises(DuplicatePostback):
        async with memory.reserve(KEY):
            pass


async def test_cancelling_a_waiter_leaves_the_key_free_after_release() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first = await _holding(memory)
    second = await _blocked(memory)
    third = await _blocked(memory)

    second.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second.task
    first.release(commit=False)
    await asyncio.wait_for(first.task, timeout=1)

    await asyncio.wait_for(third.entered.wait(), timeout=1)
    third.release(commit=False)
    await asyncio.wait_for(third.task, timeout=1)
    async with memory.reserve(KEY):
        pass


async def test_cancelled_holder_releases_the_key_to_a_waiter() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first = await _holding(memory)
    second = await _blocked(memory)

    first.task.cancel()  # e.g. the sender hung up while forwarding
    with pytest.raises(asyncio.CancelledError):
        await first.task

    await asyncio.wait_for(second.entered.wait(), timeout=1)
    second.release(commit=True)
    await asyncio.wait_for(second.task, timeout=1)
    assert len(memory) == 1


async def test_waiter_for_another_key_is_not_blocked() -> None:
    memory = RouteDedup(ttl=60, max_entries=100)
    first = await _holding(memory, KEY)

    other = await _holding(memory, OTHER_KEY)

    other.release(commit=True)
    first.release(commit=True)
    await asyncio.wait_for(asyncio.gather(first.task, other.task), timeout=1)
    assert len(memory) == 2


# --- the event's identity: which config edits keep it --------------------------------------


@pytest.mark.parametrize(
    "listed",
    [
        pytest.param(["event_type", "ymid", "zone_id"], id="reordered"),
        pytest.param(["zone_id", "event_type", "ymid"], id="reversed"),
        pytest.param(["ymid", "event_type", "zone_id", "ymid"], id="a-field-twice"),
    ],
)
def test_key_fields_never_depend_on_the_order_a_config_lists_them(listed: list[str]) -> None:
    postback = Postback({"ymid": "u1", "event_type": "click", "zone_id": "5"})
    default = dedup_key("/p", key_fields(["ymid", "event_type", "zone_id"]), postback)
    assert dedup_key("/p", key_fields(listed), postback) == default


def test_a_key_written_by_an_earlier_version_is_the_same_key() -> None:
    """Earlier versions hashed [route name, ymid, event_type, zone_id] in the listed order;
    with `dedup.scope` set to that name, the key (and X-Idempotency-Key) is unchanged."""
    postback = Postback({"ymid": "u1", "event_type": "click", "zone_id": "5"})
    earlier = hashlib.blake2b(
        json.dumps(["tapper", "u1", "click", "5"], ensure_ascii=False).encode(), digest_size=16
    ).digest()
    assert dedup_key("tapper", key_fields(["zone_id", "ymid", "event_type"]), postback) == earlier
