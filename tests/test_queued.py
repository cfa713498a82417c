"""`delivery: queued` in one process: acknowledge once stored, deliver in the background."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.config.model import PostgresUrl, StoreConfig
from gateway.deadline import Deadline
from gateway.durable.deliverer import Deliverer
from gateway.durable.outbox import DEAD, DELIVERED, DeliverySummary, NewEvent
from gateway.durable.service import open_outbox
from gateway.durable.sqlite_outbox import SqliteOutbox
from gateway.forwarding.forward import Forwarder
from gateway.forwarding.upstream_client import UpstreamClient
from gateway.metrics import Metrics
from gateway.postback import Postback
from tests.conftest import RunningGateway
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.upstream import DROP, Answer, RecordingUpstream
from tests.support.waiting import eventually_async
from tests.test_pipeline import CLICK, get

FAST_RETRIES = {"retry_base": "50ms", "retry_cap": "200ms"}


def queued_yaml(upstreams: list[str], store: str | Path, **queue: object) -> str:
    """One queued route in front of `upstreams`, retrying fast, its queue kept in `store`."""
    return gateway_config(
        *(upstream(url, timeout="300ms") for url in upstreams),
        store=store,
        delivery="queued",
        queue={**FAST_RETRIES, **queue},
    )


def keys_of(app: RecordingUpstream) -> list[str]:
    return [received.key for received in app.received]


async def all_final(gateway: RunningGateway, deliveries: int) -> list[DeliverySummary]:
    """The store's deliveries once there are `deliveries` and each is delivered or dead: none
    is picked up again after that, so what the app has received by then is all it will get."""
    store = gateway.runtime.store
    assert store is not None
    seen: list[DeliverySummary] = []

    async def final() -> list[DeliverySummary] | None:
        seen[:] = await store.outbox.listing(None, None, deliveries + 10)
        done = len(seen) == deliveries and all(item.state in (DELIVERED, DEAD) for item in seen)
        return list(seen) if done else None

    def states() -> str:
        return (
            f"deliveries (ymid, state, attempts): {[(i.ymid, i.state, i.attempts) for i in seen]}"
        )

    return await eventually_async(final, explain=states)


async def test_queued_postback_is_acknowledged_then_delivered_everywhere(
    start_upstream, start_gateway, http, store_at
):
    app = start_upstream()
    analytics = start_upstream()
    gateway = await start_gateway(queued_yaml([app.url, analytics.url], store_at))
    assert await get(http, gateway.postback_url(), CLICK) == (
        200,
        "queued",
        '{"outcome": "queued"}',
    )
    await eventually_async(lambda: app.received and analytics.received)
    assert app.received[0].query["ymid"] == "user-1"
    assert keys_of(app) == keys_of(analytics)  # one key per event, for every upstream
    assert len(keys_of(app)[0]) == 32
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "duplicate"


@pytest.mark.process
@pytest.mark.slow
async def test_app_down_then_up_receives_every_event_once_by_key(
    start_upstream, start_gateway, http, store_at
):
    app = start_upstream(default=503)
    gateway = await start_gateway(queued_yaml([app.url], store_at))
    for number in range(20):
        params = {**CLICK, "uid": f"user-{number}"}
        assert (await get(http, gateway.postback_url(), params))[:2] == (200, "queued")
    await eventually_async(lambda: len(app.received) >= 40)  # each event failed at least twice
    app.default = 200
    await eventually_async(lambda: len(app.accepted_per_key()) == 20)
    await all_final(gateway, 20)
    accepted = [r.key for r in app.received if r.answered == 200]
    assert len(accepted) == 20  # each event accepted exactly once
    assert app.ymids() == {f"user-{n}" for n in range(20)}


@pytest.mark.process
@pytest.mark.slow
async def test_one_upstream_down_does_not_hold_back_another(
    start_upstream, start_gateway, http, store_at
):
    concurrency = 4
    down = start_upstream(default=Answer(delay=1.0))  # each attempt times out (300 ms)
    up = start_upstream()
    gateway = await start_gateway(
        queued_yaml([down.url, up.url], store_at, concurrency=concurrency)
    )
    for number in range(30):
        await get(http, gateway.postback_url(), {**CLICK, "uid": f"user-{number}"})
    await eventually_async(lambda: len(up.received) == 30, timeout=3)
    assert up.ymids() == {f"user-{number}" for number in range(30)}
    # the slow upstream fills its own slots only, time out after time out
    await eventually_async(lambda: down.count() >= 2 * concurrency)
    assert down.most_at_once <= concurrency


@pytest.mark.slow
async def test_refused_event_is_dead_lettered_with_status_and_body(
    start_upstream, start_gateway, http, store_at
):
    app = start_upstream(default=400, body="unknown user")
    gateway = await start_gateway(queued_yaml([app.url], store_at))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "queued"
    await eventually_async(lambda: len(app.received) == 1)
    (listed,) = await all_final(gateway, 1)
    assert (listed.state, listed.attempts) == ("dead", 1)
    assert len(app.received) == 1  # a 400 is final: not retried
    # counted once the store has the result, which the listing above may already see
    dead = {"route": "tapper", "upstream": app.label, "result": "dead"}
    registry = gateway.runtime.metrics.registry
    await eventually_async(lambda: registry.get_sample_value("gateway_deliveries_total", dead))
    assert registry.get_sample_value("gateway_deliveries_total", dead) == 1


@pytest.mark.process
@pytest.mark.slow
async def test_408_429_and_5xx_are_retried_until_delivered(
    start_upstream, start_gateway, http, store_at
):
    app = start_upstream(script=[408, 429, 500, 503, DROP])
    gateway = await start_gateway(queued_yaml([app.url], store_at))
    assert (await get(http, gateway.postback_url(), CLICK))[1] == "queued"
    await eventually_async(lambda: len(app.received) == 6)
    (listed,) = await all_final(gateway, 1)
    assert listed.state == "delivered"
    assert len(app.received) == 6
    assert len(set(keys_of(app))) == 1


@pytest.mark.process
@pytest.mark.slow
async def test_gives_up_after_max_attempts(start_upstream, start_gateway, http, store_at):
    app = start_upstream(default=503)
    gateway = await start_gateway(queued_yaml([app.url], store_at, max_attempts=3))
    await get(http, gateway.postback_url(), CLICK)
    await eventually_async(lambda: len(app.received) == 3)
    (listed,) = await all_final(gateway, 1)
    assert (listed.state, listed.attempts) == ("dead", 3)
    assert len(app.received) == 3


async def test_restart_remembers_delivered_events(start_upstream, start_gateway, http, store_at):
    """A new process on the same store: both sync and queued routes still know the event."""
    app = start_upstream()
    sync_config = gateway_config(app.url, store=store_at)
    first = await start_gateway(sync_config)
    assert (await get(http, first.postback_url(), CLICK))[1] == "forwarded"
    await first.runtime.close(Deadline(1))
    second = await start_gateway(sync_config)
    assert (await get(http, second.postback_url(), CLICK))[1] == "duplicate"
    assert len(app.received) == 1
    # a sync route also sends the event's idempotency key
    assert len(app.received[0].key) == 32
    await second.runtime.close(Deadline(1))
    queued = await start_gateway(queued_yaml([app.url], store_at))
    assert (await get(http, queued.postback_url(), CLICK))[1] == "duplicate"


@pytest.mark.slow
async def test_concurrent_identical_queued_postbacks_are_stored_once(
    start_upstream, start_gateway, http, store_at
):
    app = start_upstream()
    gateway = await start_gateway(queued_yaml([app.url], store_at))
    answers = await asyncio.gather(*(get(http, gateway.postback_url(), CLICK) for _ in range(20)))
    assert Counter(outcome for _, outcome, _ in answers) == {"queued": 1, "duplicate": 19}
    await eventually_async(lambda: len(app.received) == 1)
    (listed,) = await all_final(gateway, 1)  # one event stored, delivered
    assert listed.state == "delivered"
    assert len(app.received) == 1


@pytest.mark.slow
async def test_acknowledgements_share_commits(start_upstream, start_gateway, http, store_at):
    app = start_upstream()
    gateway = await start_gateway(queued_yaml([app.url], store_at))
    before = commits(gateway)
    answers = await asyncio.gather(
        *(get(http, gateway.postback_url(), {**CLICK, "uid": f"u{n}"}) for n in range(100))
    )
    assert {outcome for _, outcome, _ in answers} == {"queued"}
    # each acknowledgement is at least one store operation, so fewer commits than postbacks
    # means several operations shared a commit
    assert commits(gateway) - before < 100


def commits(gateway: RunningGateway) -> float:
    """The store's commits so far, as the gateway_store_commits_total metric counts them."""
    value = gateway.runtime.metrics.registry.get_sample_value("gateway_store_commits_total")
    return value or 0.0


async def test_deliverer_stops_when_cancelled_as_it_is_woken(tmp_path: Path) -> None:
    """On Python 3.11 `asyncio.wait_for` swallows a cancellation that lands in the same tick as
    the event it waits for; the deliverer's loop then never ended and the gateway hung after
    SIGTERM (seen under CPU load, when that tick is crowded)."""
    client = UpstreamClient()
    outbox = SqliteOutbox(str(tmp_path / "gw.db"))  # never opened: there are no routes
    deliverer = Deliverer(outbox, Forwarder(client, Metrics()), Metrics())
    running = asyncio.create_task(deliverer.run())
    await asyncio.sleep(0)  # it runs to its wait for work: with no routes there is none

    deliverer.wake()
    running.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
    await client.close()


async def test_deliverer_stop_ends_its_loop(tmp_path: Path) -> None:
    client = UpstreamClient()
    outbox = SqliteOutbox(str(tmp_path / "gw.db"))  # never opened: there are no routes
    deliverer = Deliverer(outbox, Forwarder(client, Metrics()), Metrics())
    running = asyncio.create_task(deliverer.run())
    await asyncio.sleep(0)  # it runs to its wait for work

    deliverer.stop()

    await asyncio.wait_for(running, 5)
    await client.close()


async def test_an_answer_with_a_nul_byte_is_kept_storable_and_blocks_nothing(
    start_upstream, start_gateway, http, store_at
):
    # On PostgreSQL the raw body could never be recorded: the delivery stuck at "pending,
    # attempts 0", its result retried every 0.5 s forever, /readyz flapping.
    app = start_upstream(default=Answer(400, "bad\x00body"))
    gateway = await start_gateway(queued_yaml([app.url], store_at))
    store = gateway.runtime.store
    assert store is not None

    assert (await get(http, gateway.postback_url(), CLICK))[:2] == (200, "queued")
    other = {**CLICK, "uid": "user-2"}
    assert (await get(http, gateway.postback_url(), other))[:2] == (200, "queued")

    async def both_dead() -> bool:
        listed = await store.outbox.listing(None, None, 10)
        return [item.state for item in listed] == ["dead", "dead"]

    await eventually_async(both_dead)
    for item in await store.outbox.listing(None, None, 10):
        shown = await store.outbox.show(item.event_id)
        assert shown is not None
        (delivery,) = shown.deliveries
        assert (delivery.attempts, delivery.last_status) == (1, 400)
        assert delivery.last_body is not None and delivery.last_body.startswith("bad\ufffdbody")
        assert "\x00" not in delivery.last_body
    assert store.available


async def test_two_upstreams_differing_only_in_their_query_each_get_every_event(
    start_upstream, start_gateway, http, store_at
):
    app = start_upstream()
    config = gateway_config(
        upstream(f"{app.url}/q?dest=app", timeout="300ms", name="app"),
        upstream(f"{app.url}/q?dest=analytics", timeout="300ms", name="analytics"),
        store=store_at,
        delivery="queued",
        queue=FAST_RETRIES,
    )
    gateway = await start_gateway(config)
    for number in range(3):
        params = {**CLICK, "uid": f"user-{number}"}
        assert (await get(http, gateway.postback_url(), params))[:2] == (200, "queued")
    await eventually_async(lambda: len(app.received) == 6)
    assert Counter(received.query["dest"] for received in app.received) == {
        "app": 3,
        "analytics": 3,
    }
    assert gateway.runtime.store is not None and gateway.runtime.store.available


async def test_deliveries_stored_under_an_upstreams_earlier_label_are_still_delivered(
    start_upstream, start_gateway, http, store_at
):
    """Labels were the URL without its query; they are host:port now (a path can hold a key).
    Deliveries an earlier version left pending under the old label are moved, not buried."""
    app = start_upstream()
    earlier = f"{app.url}/postback"  # what an upstream of this URL was called before
    outbox = open_outbox(_store_config(store_at))
    await outbox.open()
    try:
        event = NewEvent(
            route="tapper",
            upstreams=[earlier],
            postback=Postback({"ymid": "left-1"}),
            dedup_key=b"left-behind-key!",
            dedup_expires_at=time.time() + 3600,
            request_id="r-1",
            client="127.0.0.1",
            accepted_at=time.time(),
        )
        assert await outbox.enqueue(event)
    finally:
        await outbox.close()

    gateway = await start_gateway(queued_yaml([f"{app.url}/postback"], store_at))

    store = gateway.runtime.store
    assert store is not None

    async def delivered() -> bool:
        (listed,) = await store.outbox.listing(None, None, 10)
        return (listed.upstream, listed.state) == (app.label, "delivered")

    await eventually_async(delivered)
    assert app.ymids() == {"left-1"}


def _store_config(store_at: str | Path) -> StoreConfig:
    if str(store_at).startswith("postgresql://"):
        return StoreConfig(url=PostgresUrl(str(store_at)))
    return StoreConfig(path=str(store_at))
