"""gateway.durable.keys (delivered keys in the store), and a route's dedup backed by them."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.dedup import HELD, Claim, DedupKey, RouteDedup, dedup_key
from gateway.durable import sqlite_outbox
from gateway.durable.keys import StoreKeys, StoreKeysUnavailable
from gateway.durable.outbox import NewEvent
from gateway.durable.sqlite_outbox import STORE_SCHEMA
from gateway.durable.sqlite_writer import SqliteWriter
from gateway.errors import DedupUnavailable, DuplicatePostback, Outcome
from gateway.postback import Postback
from tests.support.clock import FakeClock

KEY_FIELDS = ["ymid", "zone_id"]
KEY: DedupKey = dedup_key("tapper", KEY_FIELDS, Postback({"ymid": "u1", "zone_id": "5"}))
OTHER_KEY: DedupKey = dedup_key("tapper", KEY_FIELDS, Postback({"ymid": "u2", "zone_id": "5"}))
THIRD_KEY: DedupKey = dedup_key("tapper", KEY_FIELDS, Postback({"ymid": "u3", "zone_id": "5"}))
TTL = 60.0
# Bounds every await on the store: a hang fails the test instead of freezing the run.
PATIENCE = 5.0


class SwitchableKeys(StoreKeys):
    """Real StoreKeys whose store can be declared broken: then every call fails as StoreKeys
    does when its SQLite writer fails."""

    def __init__(self, keys: StoreKeys) -> None:
        self.keys = keys
        self.broken_lookup = False
        self.broken_write = False

    async def claim(self, key: DedupKey) -> Claim:
        if self.broken_lookup:
            raise StoreKeysUnavailable("dedup lookup: OperationalError: disk I/O error")
        return await self.keys.claim(key)

    async def commit(self, key: DedupKey, claim: Claim, ttl: float) -> None:
        if self.broken_write:
            raise StoreKeysUnavailable("OperationalError: database or disk is full")
        await self.keys.commit(key, claim, ttl)


def backed_by(keys: StoreKeys) -> RouteDedup:
    """A route's dedup (a fresh memory, as after a restart) backed by `keys`."""
    dedup = RouteDedup(TTL, 100)
    dedup.reconfigure(TTL, 100, [keys])
    return dedup


async def remember(keys: StoreKeys, key: DedupKey, ttl: float) -> None:
    await keys.commit(key, HELD, ttl)


async def contains(keys: StoreKeys, key: DedupKey) -> bool:
    return (await keys.claim(key)).known


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys(store: SqliteWriter, clock: FakeClock) -> StoreKeys:
    return StoreKeys(store, clock=clock)


async def _stored_rows(store: SqliteWriter) -> list[tuple[bytes, float]]:
    def read(connection: sqlite3.Connection) -> list[tuple[bytes, float]]:
        return connection.execute("SELECT key, expires_at FROM dedup_keys ORDER BY key").fetchall()

    return await asyncio.wait_for(store.run(read), PATIENCE)


async def _deliver(memory: RouteDedup, key: DedupKey = KEY) -> None:
    """One postback forwarded and accepted upstream: reserve, then commit."""
    async with memory.reserve(key) as reservation:
        reservation.commit()


async def _is_new(memory: RouteDedup, key: DedupKey = KEY) -> bool:
    """Would this postback be forwarded? (reserves and releases without committing)"""
    try:
        async with asyncio.timeout(PATIENCE), memory.reserve(key):
            return True
    except DuplicatePostback:
        return False


# --- StoreKeys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "known"),
    [
        pytest.param(0.0, True, id="just-remembered"),
        pytest.param(TTL - 0.001, True, id="just-before-expiry"),
        pytest.param(TTL, False, id="at-expiry"),
        pytest.param(TTL * 10, False, id="long-after-expiry"),
    ],
)
async def test_remembered_key_is_known_until_its_ttl_runs_out(
    keys: StoreKeys, clock: FakeClock, elapsed: float, known: bool
) -> None:
    await remember(keys, KEY, TTL)
    clock.advance(elapsed)

    assert await contains(keys, KEY) is known


async def test_unknown_key_is_not_contained(keys: StoreKeys) -> None:
    await remember(keys, KEY, TTL)

    assert await contains(keys, OTHER_KEY) is False


async def test_remembering_again_extends_the_expiry(keys: StoreKeys, clock: FakeClock) -> None:
    await remember(keys, KEY, TTL)
    clock.advance(TTL / 2)
    await remember(keys, KEY, TTL)
    clock.advance(TTL * 0.9)

    assert await contains(keys, KEY) is True


async def test_remember_stores_the_expiry_time(
    keys: StoreKeys, clock: FakeClock, store: SqliteWriter
) -> None:
    await remember(keys, KEY, TTL)

    assert await _stored_rows(store) == [(KEY, clock.now + TTL)]


async def test_purge_expired_deletes_only_expired_keys(
    keys: StoreKeys, clock: FakeClock, store: SqliteWriter
) -> None:
    await remember(keys, KEY, 10.0)
    await remember(keys, OTHER_KEY, 20.0)
    await remember(keys, THIRD_KEY, 30.0)
    clock.advance(20.0)  # KEY expired, OTHER_KEY expires exactly now, THIRD_KEY still live

    purged = await keys.purge_expired()

    assert purged == 2
    assert [key for key, _ in await _stored_rows(store)] == [THIRD_KEY]
    assert await contains(keys, THIRD_KEY) is True


async def test_purge_expired_with_nothing_expired_deletes_nothing(
    keys: StoreKeys, store: SqliteWriter
) -> None:
    await remember(keys, KEY, TTL)

    assert await keys.purge_expired() == 0
    assert len(await _stored_rows(store)) == 1


async def test_remembered_key_survives_reopening_the_store(db_path: Path, clock: FakeClock) -> None:
    first = SqliteWriter(str(db_path), STORE_SCHEMA)
    await first.open()
    await remember(StoreKeys(first, clock=clock), KEY, TTL)
    await first.close()

    second = SqliteWriter(str(db_path), STORE_SCHEMA)
    await second.open()
    try:
        assert await contains(StoreKeys(second, clock=clock), KEY) is True
    finally:
        await second.close()


# --- RouteDedup with durable keys ----------------------------------------------------------


async def test_delivered_key_is_a_duplicate_for_a_new_memory_on_the_same_store(
    keys: StoreKeys,
) -> None:
    await _deliver(backed_by(keys))

    restarted = backed_by(keys)

    with pytest.raises(DuplicatePostback):
        async with restarted.reserve(KEY):
            pytest.fail("a delivered postback was let through after a restart")


async def test_dedup_survives_closing_and_reopening_the_store(db_path: Path) -> None:
    before = SqliteWriter(str(db_path), STORE_SCHEMA)
    await before.open()
    await _deliver(backed_by(StoreKeys(before)))
    await before.close()

    after = SqliteWriter(str(db_path), STORE_SCHEMA)
    await after.open()
    try:
        restarted = backed_by(StoreKeys(after))
        assert await _is_new(restarted) is False
        assert await _is_new(restarted, OTHER_KEY) is True
    finally:
        await after.close()


async def test_durable_key_is_remembered_for_the_memory_ttl(
    keys: StoreKeys, clock: FakeClock, store: SqliteWriter
) -> None:
    await _deliver(backed_by(keys))

    assert await _stored_rows(store) == [(KEY, clock.now + TTL)]


async def test_durable_key_expires_with_its_ttl(keys: StoreKeys, clock: FakeClock) -> None:
    await _deliver(backed_by(keys))
    clock.advance(TTL)

    assert await _is_new(backed_by(keys)) is True


async def test_key_stored_with_a_queued_event_is_a_duplicate_after_restart(
    keys: StoreKeys, clock: FakeClock, store: SqliteWriter
) -> None:
    memory = backed_by(keys)
    async with memory.reserve(KEY, queued=True) as reservation:
        event = NewEvent(
            route="tapper",
            upstreams=["app"],
            postback=Postback({"ymid": "u1", "zone_id": "5"}),
            dedup_key=KEY,
            dedup_expires_at=clock.now + TTL,
            request_id="req-1",
            client="203.0.113.7",
            accepted_at=clock.now,
        )
        await store.run(lambda connection: sqlite_outbox.enqueue(connection, event))
        reservation.commit()

    assert await _is_new(backed_by(keys)) is False


async def _return_without_commit(memory: RouteDedup) -> None:
    async with memory.reserve(KEY):
        pass


async def _raise_inside(memory: RouteDedup) -> None:
    async with memory.reserve(KEY):
        raise ConnectionError("upstream went away")


@pytest.mark.parametrize(
    "release",
    [
        pytest.param(_return_without_commit, id="finished-without-commit"),
        pytest.param(_raise_inside, id="forwarding-raised"),
    ],
)
async def test_released_reservation_writes_nothing(
    keys: StoreKeys, store: SqliteWriter, release: Callable[[RouteDedup], Awaitable[None]]
) -> None:
    memory = backed_by(keys)

    with contextlib.suppress(ConnectionError):
        await release(memory)

    assert await _stored_rows(store) == []
    assert await _is_new(backed_by(keys)) is True
    assert await _is_new(memory) is True


async def test_a_queued_commit_leaves_the_store_to_the_outbox(
    keys: StoreKeys, store: SqliteWriter
) -> None:
    """A queued route writes the key in the transaction that stores the event (outbox.enqueue):
    its reservation neither looks the key up in the store nor writes it there again."""
    memory = backed_by(keys)

    async with memory.reserve(KEY, queued=True) as reservation:
        reservation.commit()

    assert await _stored_rows(store) == []
    assert await _is_new(memory) is False  # still remembered in memory


async def test_memory_hit_does_not_consult_the_store(keys: StoreKeys) -> None:
    durable = SwitchableKeys(keys)
    memory = backed_by(durable)
    await _deliver(memory)
    durable.broken_lookup = True

    assert await _is_new(memory) is False


async def test_failed_durable_lookup_fails_closed_with_503(keys: StoreKeys) -> None:
    durable = SwitchableKeys(keys)
    durable.broken_lookup = True
    memory = backed_by(durable)

    with pytest.raises(DedupUnavailable) as raised:
        async with memory.reserve(KEY):
            pytest.fail("forwarded although the store could not say whether it is a duplicate")

    assert raised.value.status == 503
    assert raised.value.outcome == Outcome.STORE_ERROR
    assert raised.value.reason == "store_unavailable"
    assert "disk I/O error" in str(raised.value)


async def test_failed_durable_lookup_does_not_leave_the_key_in_flight(
    keys: StoreKeys, store: SqliteWriter
) -> None:
    durable = SwitchableKeys(keys)
    durable.broken_lookup = True
    memory = backed_by(durable)
    with pytest.raises(DedupUnavailable):
        async with memory.reserve(KEY):
            pass
    durable.broken_lookup = False

    async with asyncio.timeout(PATIENCE), memory.reserve(KEY) as reservation:
        reservation.commit()

    assert [key for key, _ in await _stored_rows(store)] == [KEY]


class StalledBrokenKeys(StoreKeys):
    """A store backend that answers only when told to, and then that it failed."""

    def __init__(self) -> None:
        self.lookups = 0
        self.answer = asyncio.Event()

    async def claim(self, key: DedupKey) -> Claim:
        self.lookups += 1
        await self.answer.wait()
        raise StoreKeysUnavailable("dedup lookup: OperationalError: disk I/O error")

    async def commit(self, key: DedupKey, claim: Claim, ttl: float) -> None:
        raise AssertionError("nothing may be remembered when every lookup fails")


async def test_waiter_behind_a_failed_durable_lookup_also_fails_closed() -> None:
    durable = StalledBrokenKeys()
    memory = backed_by(durable)

    async def forward() -> None:
        async with memory.reserve(KEY):
            pytest.fail("forwarded although the store could not say whether it is a duplicate")

    first = asyncio.ensure_future(forward())
    second = asyncio.ensure_future(forward())
    for _ in range(10):
        await asyncio.sleep(0)
    assert durable.lookups == 1, "the second postback did not wait for the first"
    durable.answer.set()

    results = await asyncio.wait_for(
        asyncio.gather(first, second, return_exceptions=True), PATIENCE
    )

    assert [type(result) for result in results] == [DedupUnavailable, DedupUnavailable]
    assert durable.lookups == 2  # the waiter asked the store itself, it did not guess


async def test_failed_durable_write_still_remembers_the_key_in_memory(
    keys: StoreKeys, store: SqliteWriter
) -> None:
    durable = SwitchableKeys(keys)
    durable.broken_write = True
    memory = backed_by(durable)

    await _deliver(memory)  # the postback was delivered: the caller must not see an error

    assert await _is_new(memory) is False
    assert await _stored_rows(store) == []


async def test_closed_store_fails_the_dedup_lookup_with_503(db_path: Path) -> None:
    store = SqliteWriter(str(db_path), STORE_SCHEMA)
    await store.open()
    await store.close()
    memory = backed_by(StoreKeys(store))

    with pytest.raises(DedupUnavailable):
        async with asyncio.timeout(PATIENCE), memory.reserve(KEY):
            pytest.fail("forwarded although the store is closed")
