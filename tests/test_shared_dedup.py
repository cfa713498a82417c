"""Dedup shared by replicas: two gateways, one reward.

The promise is the same on both shared backends, so its tests run on each, for real: Redis
(`dedup: {backend: redis}`) and the PostgreSQL store (`store: {url: ...}`, no Redis). What
only Redis has (its failure policies, a restarted Redis) is tested on Redis below;
PostgreSQL's own cases are in test_postgres_dedup.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Callable

import pytest
import redis.asyncio as redis

from gateway.dedup import dedup_key
from gateway.dedup.redis_reservations import PREFIX
from gateway.postback import Postback
from tests.gatewayconfig import gateway_config, upstream
from tests.test_pipeline import CLICK, get
from tests.upstream import Answer
from tests.waiting import eventually_async


def shared_yaml(app: str | dict[str, object], redis_url: str, policy: str = "fail_closed") -> str:
    """One route whose dedup is shared through Redis at `redis_url`."""
    dedup = {"backend": "redis", "redis_url": redis_url, "on_redis_error": policy}
    return gateway_config(app, dedup=dedup)


SharedConfig = Callable[[str | dict[str, object]], str]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.process),  # a real redis-server
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_config(request: pytest.FixtureRequest) -> SharedConfig:
    """A config maker: one sync route whose dedup is shared by every replica on a backend."""
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_server").url
        return lambda app: shared_yaml(app, redis_url)
    store_url = request.getfixturevalue("postgres_url")
    return lambda app: gateway_config(app, store=store_url)


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
    start_upstream, start_gateway, http, redis_server
):
    """A reservation whose owner died (no commit, no release) blocks only until it expires."""
    app = start_upstream()
    config = shared_yaml(upstream(app.url, timeout="100ms", retries=0), redis_server.url)
    gateway = await start_gateway(config)
    key = dedup_key("/postback/tapper", ("ymid", "event_type", "zone_id"), Postback(
        {"ymid": "user-1", "event_type": "click", "zone_id": "42"}
    ))  # fmt: skip
    client = redis.Redis.from_url(redis_server.url)
    await client.set(PREFIX + key.hex(), "token-of-a-dead-replica", px=800)
    started = asyncio.get_running_loop().time()
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "forwarded"
    assert asyncio.get_running_loop().time() - started >= 0.5
    assert await client.get(PREFIX + key.hex()) == b"delivered"
    assert 0 < await client.pttl(PREFIX + key.hex()) <= 24 * 3600 * 1000
    await client.aclose()


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
        ["redis-server", "--port", "0", "--unixsocket", str(socket_path), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "SocketPw-31"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
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
