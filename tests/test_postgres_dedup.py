"""Dedup shared by replicas through the PostgreSQL store, without Redis: the same promise as
the Redis backend, on a real PostgreSQL server. The cases both backends share run on both in
test_shared_dedup.py; these are PostgreSQL's own.

Sync routes reserve a key in `monetag_gateway_dedup_keys` before forwarding, commit it once
delivered and release it on failure; a reservation whose holder died blocks only until its
hold runs out. The backend is also tested alone (`PostgresKeys`), against its own rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.config.model import PostgresUrl
from gateway.dedup import dedup_key
from gateway.dedup.backend import KNOWN
from gateway.durable.postgres_keys import PostgresUnavailable
from gateway.durable.postgres_outbox import PostgresOutbox
from gateway.postback import Postback
from tests.gatewayconfig import gateway_config, upstream
from tests.postgres import PostgresCluster
from tests.test_pipeline import CLICK, get
from tests.waiting import eventually_async

pytestmark = pytest.mark.postgres

KEY_FIELDS = ("ymid", "event_type", "zone_id")
CLICK_KEY = dedup_key("/postback/tapper", KEY_FIELDS, Postback(
    {"ymid": "user-1", "event_type": "click", "zone_id": "42"}
))  # fmt: skip


def shared_yaml(app: str | dict[str, object], url: str) -> str:
    """One sync route; its dedup is shared through the PostgreSQL store at `url`."""
    return gateway_config(app, store=url)


async def test_crashed_replicas_reservation_expires_by_itself(
    start_upstream, start_gateway, http, postgres_url
):
    """A reservation whose holder died (no commit, no release) blocks only until it expires."""
    app = start_upstream()
    config = shared_yaml(upstream(app.url, timeout="100ms", retries=0), postgres_url)
    gateway = await start_gateway(config)  # creates the tables
    connection = await asyncpg.connect(postgres_url)
    await connection.execute(
        "INSERT INTO monetag_gateway_dedup_keys (key, state, token, expires_at)"
        " VALUES ($1, 'reserved', 'token-of-a-dead-replica', $2)",
        CLICK_KEY, time.time() + 0.8,
    )  # fmt: skip
    started = time.monotonic()
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    assert time.monotonic() - started >= 0.5
    row = await connection.fetchrow(
        "SELECT state, token, expires_at FROM monetag_gateway_dedup_keys WHERE key = $1",
        CLICK_KEY,
    )
    assert (row["state"], row["token"]) == ("delivered", None)
    assert 0 < row["expires_at"] - time.time() <= 24 * 3600
    await connection.close()
    assert len(app.received) == 1


async def test_postgres_down_fails_closed_with_503(
    start_upstream, start_gateway, http, own_postgres: PostgresCluster
):
    app = start_upstream()
    gateway = await start_gateway(shared_yaml(app.url, own_postgres.create_database("gw")))
    own_postgres.stop()
    status, outcome, body = await get(http, gateway.postback_url(), CLICK)
    assert (status, outcome) == (503, "store_error")
    assert '"store_unavailable"' in body
    assert app.received == []  # not forwarded: nobody could tell whether it was new
    own_postgres.start()
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "forwarded")


# -- the backend alone -------------------------------------------------------------------------


@pytest.fixture
async def outbox(postgres_url: str) -> AsyncIterator[PostgresOutbox]:
    store = PostgresOutbox(PostgresUrl(postgres_url))
    await store.open()
    yield store
    await store.close()


async def test_claim_commit_then_known(outbox: PostgresOutbox) -> None:
    keys = outbox.keys_for(hold=5)
    claim = await keys.claim(CLICK_KEY)
    assert claim.token is not None and claim is not KNOWN
    await keys.commit(CLICK_KEY, claim, ttl=60)
    assert await keys.claim(CLICK_KEY) is KNOWN


async def test_a_second_claim_waits_for_the_first_holder(outbox: PostgresOutbox) -> None:
    keys, other = outbox.keys_for(hold=5), outbox.keys_for(hold=5)
    claim = await keys.claim(CLICK_KEY)
    waiting = asyncio.create_task(other.claim(CLICK_KEY))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # held: the other replica waits for the result
    await keys.release(CLICK_KEY, claim)  # the delivery failed
    second = await asyncio.wait_for(waiting, 2)
    assert second.token not in (None, claim.token)  # its own turn
    await other.commit(CLICK_KEY, second, ttl=60)
    assert await keys.claim(CLICK_KEY) is KNOWN


async def test_release_only_removes_the_holders_own_reservation(outbox: PostgresOutbox) -> None:
    keys = outbox.keys_for(hold=0.2)
    stale = await keys.claim(CLICK_KEY)
    await asyncio.sleep(0.3)  # its hold ran out: another holder takes the key over
    current = await keys.claim(CLICK_KEY)
    assert current.token != stale.token
    await keys.release(CLICK_KEY, stale)  # the first holder, late: changes nothing
    await keys.commit(CLICK_KEY, current, ttl=60)
    assert await keys.claim(CLICK_KEY) is KNOWN


async def test_a_delivered_key_is_new_again_after_its_ttl(outbox: PostgresOutbox) -> None:
    keys = outbox.keys_for(hold=5)
    await keys.commit(CLICK_KEY, await keys.claim(CLICK_KEY), ttl=0.2)
    assert await keys.claim(CLICK_KEY) is KNOWN
    await asyncio.sleep(0.3)
    assert (await keys.claim(CLICK_KEY)).token is not None


async def test_a_reservation_that_never_ends_is_reported_not_waited_on_forever(
    postgres_url: str, outbox: PostgresOutbox
) -> None:
    """A row held by someone else with a hold far in the future (a clock gone wrong): the
    claimant gives up after its own hold, as unavailable (503), rather than hanging."""
    connection = await asyncpg.connect(postgres_url)
    await connection.execute(
        "INSERT INTO monetag_gateway_dedup_keys VALUES ($1, 'reserved', 'x', $2)",
        CLICK_KEY, time.time() + 3600,
    )  # fmt: skip
    await connection.close()
    keys = outbox.keys_for(hold=0.3)
    with pytest.raises(PostgresUnavailable, match="never ends"):
        await asyncio.wait_for(keys.claim(CLICK_KEY), 5)


@pytest.mark.parametrize("delivery", ["sync", "queued"])
async def test_hostile_values_are_data_not_sql(
    delivery, start_upstream, start_gateway, http, postgres_url
):
    """Sender-controlled values reach PostgreSQL only as bound parameters."""
    app = start_upstream()
    config = gateway_config(app.url, store=postgres_url, delivery=delivery)
    gateway = await start_gateway(config)
    ymid = "x'); DROP TABLE monetag_gateway_events; -- \\ $1 \u2028 \U0001f600"
    first = await get(http, gateway.postback_url(), {**CLICK, "uid": ymid})
    assert first[:2] == (200, "forwarded" if delivery == "sync" else "queued")
    again = await get(http, gateway.postback_url(), {**CLICK, "uid": ymid})
    assert again[:2] == (200, "duplicate")
    connection = await asyncpg.connect(postgres_url)
    tables = await connection.fetchval(
        "SELECT COUNT(*) FROM pg_tables WHERE tablename LIKE 'monetag_gateway_%'"
    )
    await connection.close()
    assert tables == 4
    await eventually_async(lambda: app.received)
    assert app.received[0].query["ymid"] == ymid
