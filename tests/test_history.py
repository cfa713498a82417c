"""The history: every postback answered, in the store, searchable per user, on SQLite and
PostgreSQL; the serving path never waits on it and a failing history drops, counted."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from gateway.config import parse_config
from gateway.deadline import Deadline
from gateway.history.budget import PER_ADDRESS
from gateway.history.recorder import Recorder
from gateway.history.search import Recorded, Search
from gateway.history.sqlite_history import history_path
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.serving.app import public_runner
from tests.conftest import GatewayFactory, RunningGateway
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.metrics import Scrape
from tests.support.processes import SECRET
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually_async
from tests.test_pipeline import CLICK, get

USER = {**CLICK, "telegram_id": "123456"}


def history_of(gateway: RunningGateway) -> Recorder:
    assert gateway.runtime.history is not None
    return gateway.runtime.history


async def search(gateway: RunningGateway, **filters: object) -> list[Recorded]:
    history = history_of(gateway)
    await history.flush()
    return await history.store.search(Search(**filters))  # type: ignore[arg-type]


def two_routes(app: RecordingUpstream, store: str | Path) -> str:
    app_route = upstream(app.url, timeout="500ms", retries=0)
    return gateway_config(
        routes={
            "tapper": route([app_route]),
            "queued": route([app_route], delivery="queued", queue={"retry_base": "50ms"}),
        },
        store=store,
    )


async def test_every_outcome_is_recorded_and_found_by_each_key(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    app = start_upstream(script=[200, 200, 500, 404])
    gateway = await start_gateway(two_routes(app, store_at))
    url = gateway.postback_url()
    sent = [
        (USER, "forwarded"),
        (USER, "duplicate"),
        ({**USER, "token": "wrong" * 5}, "rejected"),
        ({**USER, "event": "view"}, "invalid"),
        ({**USER, "uid": "user-2"}, "forwarded"),  # the app answers 200
        ({**USER, "uid": "user-3"}, "upstream_error"),  # 500
        ({**USER, "uid": "user-4"}, "forwarded"),  # 404: refused by the app, passed back
    ]
    for params, outcome in sent:
        assert (await get(http, url, params))[1] == outcome
    status, outcome, _ = await get(
        http, gateway.postback_url("/postback/queued"), {**USER, "uid": "queued-1"}
    )
    assert (status, outcome) == (200, "queued")

    everything = await search(gateway, limit=100)
    assert [row.outcome for row in reversed(everything)] == [o for _, o in sent] + ["queued"]
    newest_first = [row.at for row in everything]
    assert newest_first == sorted(newest_first, reverse=True)

    by_user = await search(gateway, telegram_id="123456")
    assert len(by_user) == 8
    rejected = await search(gateway, reason="secret_wrong")
    assert [row.outcome for row in rejected] == ["rejected"]
    assert rejected[0].fields["ymid"] == "user-1"  # as sent, under the route's `uid`
    assert rejected[0].as_sent
    assert (await search(gateway, ymid="user-3"))[0].status == 502
    refused = (await search(gateway, ymid="user-4"))[0]
    assert (refused.reason, refused.status, refused.attempts[0]["status"]) == (
        "upstream_refused",
        404,
        404,
    )
    first = everything[-1]
    assert first.fields == {
        "ymid": "user-1",
        "event_type": "click",
        "zone_id": "42",
        "telegram_id": "123456",
    }
    assert first.attempts[0]["status"] == 200 and first.detail["passed"][-1] == "match"
    assert [r.request_id for r in await search(gateway, request_id=first.request_id)] == [
        first.request_id
    ]
    duplicate = everything[-2]
    assert duplicate.dedup_key == first.dedup_key is not None
    assert {r.route for r in await search(gateway, route="queued")} == {"queued"}
    assert len(await search(gateway, outcome="forwarded")) == 3
    assert await search(gateway, since=time.time() + 60) == []


async def test_a_queued_events_later_deliveries_are_recorded(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    app = start_upstream(script=[503, 503])
    gateway = await start_gateway(two_routes(app, store_at))
    await get(http, gateway.postback_url("/postback/queued"), USER)
    (queued,) = await search(gateway, ymid="user-1")
    history = history_of(gateway)

    async def delivered() -> list[str] | None:
        await history.flush()
        states = [d.state for d in await history.store.deliveries([queued.request_id])]
        return states if "delivered" in states else None

    states = await eventually_async(delivered)
    assert states == ["retry", "retry", "delivered"]
    later = await history.store.deliveries([queued.request_id])
    assert [d.status for d in later] == [503, 503, 200]
    assert all(d.route == "queued" and d.upstream for d in later)


async def test_the_key_is_never_recorded(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
):
    app = start_upstream()
    gateway = await start_gateway(two_routes(app, tmp_path / "gw.db"))
    url = gateway.postback_url()
    await get(http, url, USER)
    await get(http, url, {**USER, "uid": "u2", "echo": SECRET})  # posing as another parameter
    await get(http, url, {**USER, "event": "nope"})
    await get(http, url, {"token": SECRET[:-1] + "x", "uid": "u3"})
    assert len(await search(gateway)) == 4
    for file in (tmp_path / "gw.db", history_path(str(tmp_path / "gw.db"))):
        dump = "\n".join(sqlite3.connect(file).iterdump())
        assert SECRET not in dump and SECRET[:-1] not in dump


async def test_a_flood_of_unauthenticated_postbacks_is_aggregated(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
):
    app = start_upstream()
    gateway = await start_gateway(two_routes(app, tmp_path / "gw.db"))
    url = gateway.postback_url()
    flood = 3 * PER_ADDRESS
    for number in range(flood):
        await get(http, url, {**USER, "uid": f"x{number}", "token": "w" * 20})
    await get(http, url, USER)  # a real one, kept whatever the flood
    history = history_of(gateway)
    await history.flush(final=True)  # the aggregates too, as at shutdown
    rows = await history.store.search(Search(limit=1000))
    refused = [row for row in rows if row.outcome == "rejected"]
    assert len(refused) == PER_ADDRESS + 1
    (aggregate,) = [row for row in refused if row.repeats > 1]
    assert aggregate.repeats == flood - PER_ADDRESS
    assert aggregate.reason == "secret_wrong" and aggregate.client == "127.0.0.1"
    assert sum(row.repeats for row in refused) == flood
    assert [row.outcome for row in rows if row.outcome != "rejected"] == ["forwarded"]


async def test_a_failing_history_drops_counted_and_postbacks_flow(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    app = start_upstream()
    gateway = await start_gateway(two_routes(app, store_at))
    history = history_of(gateway)
    await drop_history_table(store_at)
    for number in range(5):
        status, outcome, _ = await get(http, gateway.postback_url(), {**USER, "uid": f"u{number}"})
        assert (status, outcome) == (200, "forwarded")
    await history.flush()
    assert gateway.runtime.ready
    assert gateway.runtime.store is not None and gateway.runtime.store.available
    scrape = Scrape.parse(generate_latest(gateway.runtime.metrics.registry).decode())
    assert scrape.value("gateway_history_dropped_total", why="store_failed") == 5
    assert scrape.value("gateway_history_dropped_total", why="buffer_full") == 0


async def drop_history_table(store_at: str | Path) -> None:
    if isinstance(store_at, Path):
        with sqlite3.connect(history_path(str(store_at))) as connection:
            connection.execute("DROP TABLE history")
        return
    connection = await asyncpg.connect(store_at)
    try:
        await connection.execute("DROP TABLE history")
    finally:
        await connection.close()


async def test_what_is_buffered_at_shutdown_is_written(
    start_upstream, http: aiohttp.ClientSession, tmp_path: Path
):
    app = start_upstream()
    config = parse_config(two_routes(app, tmp_path / "gw.db"), {"MONETAG_SECRET": SECRET})
    runtime = Runtime(config, Metrics())
    await runtime.start()
    runner = public_runner(runtime)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/postback/tapper"
    for number in range(3):
        await get(http, url, {**USER, "uid": f"u{number}"})
    await runner.cleanup()
    await runtime.close(Deadline(5))
    with sqlite3.connect(history_path(str(tmp_path / "gw.db"))) as connection:
        assert connection.execute("SELECT COUNT(*) FROM history").fetchone() == (3,)


async def test_retention_deletes_old_rows_in_batches_and_purge_a_users(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    app = start_upstream()
    gateway = await start_gateway(two_routes(app, store_at))
    for number in range(4):
        await get(http, gateway.postback_url(), {**USER, "uid": f"u{number}"})
    await get(http, gateway.postback_url(), {**USER, "uid": "other", "telegram_id": "999"})
    history = history_of(gateway)
    await history.flush()
    assert await history.store.purge(telegram_id="999") == 1
    assert await history.store.search(Search(telegram_id="999")) == []
    assert await history.store.expire(time.time() - 3600, 2) == 0  # nothing that old
    assert await history.store.expire(time.time() + 1, 3) == 3  # one batch at most
    assert len(await history.store.search(Search())) == 1
    history.retention = -10.0  # everything is older than that
    assert await history.expire() == 1


@pytest.mark.postgres
async def test_two_replicas_write_and_either_finds_both(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, postgres_url: str
):
    app = start_upstream()
    replicas = [await start_gateway(two_routes(app, postgres_url)) for _ in range(2)]
    for name, gateway in zip("ab", replicas, strict=True):
        history_of(gateway).replica = f"replica-{name}"
        await get(http, gateway.postback_url(), {**USER, "uid": f"from-{name}"})
        await history_of(gateway).flush()
    for gateway in replicas:
        found = await history_of(gateway).store.search(Search(telegram_id="123456"))
        assert {(row.replica, row.fields["ymid"]) for row in found} == {
            ("replica-a", "from-a"),
            ("replica-b", "from-b"),
        }


class _StuckStore:
    """A history store whose writes never finish: the buffer only fills."""

    async def write(self, rows: object, deliveries: object) -> None:
        raise AssertionError("not flushed in this test")


def test_a_full_buffer_drops_counted_and_never_grows() -> None:
    from gateway.record import RequestRecord

    metrics = Metrics()
    recorder = Recorder(
        _StuckStore(),  # type: ignore[arg-type]
        metrics,
        retention=60.0,
        names_of=lambda route: {},
        capacity=3,
    )
    for number in range(5):
        recorder.add(RequestRecord(f"r{number}"), 200, 0.001)
    scrape = Scrape.parse(generate_latest(metrics.registry).decode())
    assert scrape.value("gateway_history_dropped_total", why="buffer_full") == 2
    assert len(recorder._pending) == 3


async def test_a_reload_applies_retention_and_enabled_false_keeps_none(
    start_upstream, start_gateway: GatewayFactory, tmp_path: Path
):
    app = start_upstream()
    gateway = await start_gateway(two_routes(app, tmp_path / "gw.db"))
    text = two_routes(app, tmp_path / "gw.db")
    reloaded = parse_config("history: {retention: 2h}\n" + text, {"MONETAG_SECRET": SECRET})
    await gateway.runtime.apply(reloaded)
    assert history_of(gateway).retention == 7200
    off = parse_config(
        "history: {enabled: false}\n" + two_routes(app, tmp_path / "off.db"),
        {"MONETAG_SECRET": SECRET},
    )
    await gateway.runtime.apply(off)
    assert gateway.runtime.restart_pending == ["store", "history.enabled"]
    runtime = Runtime(off, Metrics())
    await runtime.start()
    try:
        assert runtime.history is None and runtime.store is not None
    finally:
        await runtime.close(Deadline(1))


async def test_the_callers_request_id_finds_the_postback(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    gateway = await start_gateway(two_routes(start_upstream(), store_at))
    await get(http, gateway.postback_url(), USER, headers={"X-Request-ID": "lb-7f3a.1"})
    await get(http, gateway.postback_url(), {**USER, "uid": "u2"})
    (found,) = await search(gateway, request_id="lb-7f3a.1")
    assert (found.caller_request_id, found.fields["ymid"]) == ("lb-7f3a.1", "user-1")


async def test_get_finds_a_postback_by_our_request_id_never_by_the_callers(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
):
    """A sender chooses its X-Request-ID, so it could name another postback's id: `get`
    (the inspector's page of one postback) reads ours only."""
    app = start_upstream()
    gateway = await start_gateway(two_routes(app, store_at))
    async with http.get(gateway.postback_url(), params=USER) as answer:
        ours = answer.headers["X-Request-ID"]
    posing = {"X-Request-ID": ours}
    assert (await get(http, gateway.postback_url(), {**USER, "uid": "u2"}, headers=posing))[1] == (
        "forwarded"
    )
    history = history_of(gateway)
    await history.flush()
    found = await history.store.get(ours)
    assert found is not None and (found.request_id, found.fields["ymid"]) == (ours, "user-1")
    assert len(await history.store.search(Search(request_id=ours))) == 2  # the search: both
    assert await history.store.get("0" * 20) is None


def test_the_history_is_kept_beside_the_store_file() -> None:
    assert history_path("/var/lib/monetag-gateway/gateway.db") == (
        "/var/lib/monetag-gateway/gateway.history.db"
    )
    assert history_path("state/gw") == "state/gw.history"


async def test_a_history_commit_never_holds_the_stores_writes(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
):
    """The history's SQLite writer is busy (a batch that does not end until released): a
    postback on a store route, whose dedup key the store writes, is answered all the same."""
    gateway = await start_gateway(two_routes(start_upstream(), tmp_path / "gw.db"))
    released = threading.Event()
    history = history_of(gateway)
    writer = history.store._writer  # type: ignore[attr-defined]
    held = asyncio.create_task(writer.run(lambda connection: released.wait(30)))
    try:
        answered = await asyncio.wait_for(get(http, gateway.postback_url(), USER), 10)
        queued = await asyncio.wait_for(
            get(http, gateway.postback_url("/postback/queued"), {**USER, "uid": "q"}), 10
        )
    finally:
        released.set()
        await held
    assert answered[:2] == (200, "forwarded") and queued[:2] == (200, "queued")
    assert len(await search(gateway)) == 2  # and both are recorded once it is free
