"""Dedup shared by replicas: two gateways, one reward.

The promise is the same on both shared backends (one algorithm, `dedup/shared.py`, over two
drivers), so its tests run on each, for real: Redis (`dedup: {backend: redis}`) and the
PostgreSQL store (`store: {url: ...}`, no Redis), through gateways and on the backend alone.
What only Redis has (its failure policies, a restarted Redis) is tested on Redis below;
PostgreSQL's own cases are in test_postgres_dedup.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from gateway.config.model import PostgresUrl
from gateway.dedup import KNOWN, Backend, BackendUnavailable, DedupKey, dedup_key
from gateway.dedup.redis_reservations import (
    PREFIX,
    RedisReservations,
    RedisUnavailable,
    redis_client,
)
from gateway.dedup.shared import SharedReservations
from gateway.durable.postgres_keys import PostgresUnavailable
from gateway.durable.postgres_outbox import PostgresOutbox
from gateway.metrics import Metrics
from gateway.postback import Postback
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.upstream import Answer
from tests.support.waiting import eventually_async
from tests.test_pipeline import CLICK, get

CLICK_KEY = dedup_key(
    "/postback/tapper",
    ("ymid", "event_type", "zone_id"),
    Postback({"ymid": "user-1", "event_type": "click", "zone_id": "42"}),
)


def shared_yaml(app: str | dict[str, object], redis_url: str, policy: str = "fail_closed") -> str:
    """One route whose dedup is shared through Redis at `redis_url`."""
    dedup = {"backend": "redis", "redis_url": redis_url, "on_redis_error": policy}
    return gateway_config(app, dedup=dedup)


SharedConfig = Callable[[str | dict[str, object]], str]


@dataclass
class Shared:
    """One shared backend: gateways on it, the backend alone, and its rows seen directly."""

    config: SharedConfig  # one sync route whose dedup is shared by every replica
    keys_for: Callable[[float], Backend]  # the backend alone, for a hold in seconds
    unavailable: type[BackendUnavailable]
    # a hold of another replica's `token` on a key, for `seconds`
    hold_elsewhere: Callable[[DedupKey, str, float], Awaitable[None]]
    # the key as stored: (state, token, seconds until it expires)
    stored: Callable[[DedupKey], Awaitable[tuple[str, str | None, float]]]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.process),  # a real redis-server
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_server").url
        client = redis_client(redis_url)

        async def hold_on_redis(key: DedupKey, token: str, seconds: float) -> None:
            await client.set(PREFIX + key.hex(), token, px=int(seconds * 1000))

        async def stored_on_redis(key: DedupKey) -> tuple[str, str | None, float]:
            value = await client.get(PREFIX + key.hex())
            left = await client.pttl(PREFIX + key.hex()) / 1000
            if value == b"delivered":
                return "delivered", None, left
            return "not delivered", repr(value), left

        yield Shared(
            lambda app: shared_yaml(app, redis_url),
            lambda hold: SharedReservations(RedisReservations(client, Metrics()), hold),
            RedisUnavailable,
            hold_on_redis,
            stored_on_redis,
        )
        await client.aclose()
        return
    store_url = request.getfixturevalue("postgres_url")
    outbox = PostgresOutbox(PostgresUrl(store_url))
    await outbox.open()  # creates the tables

    async def hold_on_postgres(key: DedupKey, token: str, seconds: float) -> None:
        connection = await asyncpg.connect(store_url)
        await connection.execute(
            "INSERT INTO monetag_gateway_dedup_keys (key, state, token, expires_at)"
            " VALUES ($1, 'reserved', $2, $3)",
            key,
            token,
            time.time() + seconds,
        )
        await connection.close()

    async def stored_on_postgres(key: DedupKey) -> tuple[str, str | None, float]:
        connection = await asyncpg.connect(store_url)
        row = await connection.fetchrow(
            "SELECT state, token, expires_at FROM monetag_gateway_dedup_keys WHERE key = $1", key
        )
        await connection.close()
        return row["state"], row["token"], row["expires_at"] - time.time()

    yield Shared(
        lambda app: gateway_config(app, store=store_url),
        outbox.keys_for,
        PostgresUnavailable,
        hold_on_postgres,
        stored_on_postgres,
    )
    await outbox.close()


@pytest.fixture
def shared_config(shared: Shared) -> SharedConfig:
    """A config maker: one sync route whose dedup is shared by every replica on a backend."""
    return shared.config


async def test_two_replicas_forward_each_event_once(
    start_upstream, start_gateway, http, shared_config: SharedConfig
):
    app = start_upstream(default=Answer(delay=0.05))
    config = shared_config(app.url)
    replicas = [await start_gateway(config), await start_gateway(config)]
    sends = [
        get(http, replicas[n % 2].postback_url(), {**CLICK, "uid": f"user-{event}"})
        for event in range(10)
        for n in range(6)
    ]
    answers = await asyncio.gather(*sends)
    assert {status for status, _, _ in answers} == {200}
    assert Counter(outcome for _, outcome, _ in answers) == {"forwarded": 10, "duplicate": 50}
    assert sorted(r.query["ymid"] for r in app.received) == sorted(f"user-{n}" for n in range(10))


async def test_delivered_on_one_replica_is_a_duplicate_on_the_other(
    start_upstream, start_gateway, http, shared_config: SharedConfig
):
    app = start_upstream()
    config = shared_config(app.url)
    first, second = await start_gateway(config), await start_gateway(config)
    assert (await get(http, first.postback_url(), CLICK))[1] == "forwarded"
    assert (await get(http, second.postback_url(), CLICK))[1] == "duplicate"
    assert len(app.received) == 1


async def test_failed_delivery_releases_the_reservation_for_any_replica(
    start_upstream, start_gateway, http, shared_config: SharedConfig
):
    app = start_upstream(script=[500])
    config = shared_config(app.url)
    first, second = await start_gateway(config), await start_gateway(config)
    assert (await get(http, first.postback_url(), CLICK))[:2] == (502, "upstream_error")
    assert (await get(http, second.postback_url(), CLICK))[:2] == (200, "forwarded")
    assert len(app.received) == 2


@pytest.mark.process
async def test_crashed_replicas_reservation_expires_by_itself(
    start_upstream, start_gateway, http, shared: Shared
):
    """A reservation whose holder died (no commit, no release) blocks only until it expires."""
    app = start_upstream()
    gateway = await start_gateway(shared.config(upstream(app.url, timeout="100ms", retries=0)))
    await shared.hold_elsewhere(CLICK_KEY, "token-of-a-dead-replica", 0.8)
    started = time.monotonic()
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    assert time.monotonic() - started >= 0.5
    state, token, left = await shared.stored(CLICK_KEY)
    assert (state, token) == ("delivered", None)
    assert 0 < left <= 24 * 3600
    assert len(app.received) == 1


@pytest.mark.process
async def test_redis_down_fail_closed_answers_503(
    start_upstream, start_gateway, http, redis_server
):
    app = start_upstream()
    gateway = await start_gateway(shared_yaml(app.url, redis_server.url))
    redis_server.stop()
    status, outcome, body = await get(http, gateway.postback_url(), CLICK)
    assert (status, outcome) == (503, "store_error")
    assert "dedup_unavailable" in body
    assert app.received == []
    errors = gateway.runtime.metrics.registry.get_sample_value(
        "gateway_redis_errors_total", {"operation": "reserve"}
    )
    assert errors and errors >= 1
    redis_server.start()  # Redis back: the same postback goes through, once
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"
    assert len(app.received) == 1


@pytest.mark.process
async def test_redis_down_fail_open_falls_back_to_local_memory(
    start_upstream, start_gateway, http, redis_server
):
    app = start_upstream()
    gateway = await start_gateway(shared_yaml(app.url, redis_server.url, policy="fail_open"))
    redis_server.stop()
    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "forwarded")
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"  # local memory
    fallbacks = gateway.runtime.metrics.registry.get_sample_value(
        "gateway_dedup_fallbacks_total", {"route": "tapper"}
    )
    assert fallbacks == 1
    assert len(app.received) == 1


@pytest.mark.process
async def test_restarted_redis_forgets_but_local_cache_still_knows(
    start_upstream, start_gateway, http, redis_server
):
    """Redis without persistence loses keys on restart; the replica's own cache still
    answers for events it delivered itself."""
    app = start_upstream()
    gateway = await start_gateway(shared_yaml(app.url, redis_server.url))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    redis_server.stop()
    redis_server.start()
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"
    other = {**CLICK, "uid": "user-2"}
    assert (await get(http, gateway.postback_url(), other))[1] == "forwarded"
    assert len(app.received) == 2


@pytest.mark.process
async def test_redis_on_a_unix_socket_with_its_password_in_the_query_works(
    start_upstream, start_gateway, http, tmp_path
):
    """The documented `unix://` form: before, `check` and `run` crashed (yarl's ValueError)."""
    socket_path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--requirepass",
            "SocketPw-31",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually_async(socket_path.exists, timeout=10)
        app = start_upstream()
        url = f"unix://{socket_path}?db=0&password=SocketPw-31"
        gateways = [await start_gateway(shared_yaml(app.url, url)) for _ in range(2)]
        assert (await get(http, gateways[0].postback_url(), CLICK))[1] == "forwarded"
        assert (await get(http, gateways[1].postback_url(), CLICK))[1] == "duplicate"
        route = gateways[0].config.routes[0]
        assert route.dedup.redis_url is not None
        assert "SocketPw-31" not in route.dedup.redis_url.shown
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- the backend alone -------------------------------------------------------------------------


async def test_claim_commit_then_known(shared: Shared) -> None:
    keys = shared.keys_for(5)
    claim = await keys.claim(CLICK_KEY)
    assert claim.token is not None and claim is not KNOWN
    await keys.commit(CLICK_KEY, claim, ttl=60)
    assert await keys.claim(CLICK_KEY) is KNOWN


async def test_a_second_claim_waits_for_the_first_holder(shared: Shared) -> None:
    keys, other = shared.keys_for(5), shared.keys_for(5)
    claim = await keys.claim(CLICK_KEY)
    waiting = asyncio.create_task(other.claim(CLICK_KEY))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # held: the other replica waits for the result
    await keys.release(CLICK_KEY, claim)  # the delivery failed
    second = await asyncio.wait_for(waiting, 2)
    assert second.token not in (None, claim.token)  # its own turn
    await other.commit(CLICK_KEY, second, ttl=60)
    assert await keys.claim(CLICK_KEY) is KNOWN


async def test_release_only_removes_the_holders_own_reservation(shared: Shared) -> None:
    keys = shared.keys_for(0.2)
    stale = await keys.claim(CLICK_KEY)
    await asyncio.sleep(0.3)  # its hold ran out: another holder takes the key over
    current = await keys.claim(CLICK_KEY)
    assert current.token != stale.token
    await keys.release(CLICK_KEY, stale)  # the first holder, late: changes nothing
    await keys.commit(CLICK_KEY, current, ttl=60)
    assert await keys.claim(CLICK_KEY) is KNOWN


async def test_a_delivered_key_is_new_again_after_its_ttl(shared: Shared) -> None:
    keys = shared.keys_for(5)
    await keys.commit(CLICK_KEY, await keys.claim(CLICK_KEY), ttl=0.2)
    assert await keys.claim(CLICK_KEY) is KNOWN
    await asyncio.sleep(0.3)
    assert (await keys.claim(CLICK_KEY)).token is not None


async def test_a_reservation_that_never_ends_is_reported_not_waited_on_forever(
    shared: Shared,
) -> None:
    """A key held by someone else with a hold far in the future (a clock gone wrong): the
    claimant gives up after its own hold, as unavailable (503), rather than hanging."""
    await shared.hold_elsewhere(CLICK_KEY, "x", 3600)
    keys = shared.keys_for(0.3)
    with pytest.raises(shared.unavailable, match="never ends"):
        await asyncio.wait_for(keys.claim(CLICK_KEY), 5)
