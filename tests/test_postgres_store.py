"""The PostgreSQL store as operators meet it: its schema (created, versioned, upgraded once
under a lock, only its own tables), wake-ups by LISTEN/NOTIFY, and a URL whose password is
never shown. A real PostgreSQL server throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import asyncpg
import pytest

from gateway.config.model import PostgresUrl
from gateway.dedup import dedup_key
from gateway.durable.outbox import NewEvent, StoreError
from gateway.durable.postgres_outbox import SCHEMA_VERSION, PostgresOutbox
from gateway.postback import Postback
from tests.support.gatewayconfig import gateway_config
from tests.support.metrics import metric_sum
from tests.support.postgres import PostgresCluster
from tests.support.processes import command_env, free_port, gateway_command
from tests.support.queuedgateway import Harness, durable_route
from tests.support.waiting import eventually, eventually_async

pytestmark = pytest.mark.postgres

PASSWORD = "pw-Zq81-never-shown"
OURS = {
    "monetag_gateway_events",
    "monetag_gateway_deliveries",
    "monetag_gateway_dedup_keys",
    "monetag_gateway_schema",
}


def event(ymid: str, now: float = 1000.0) -> NewEvent:
    postback = Postback({"ymid": ymid, "event_type": "click", "zone_id": "42"})
    return NewEvent(
        route="tapper",
        upstreams=["app"],
        postback=postback,
        dedup_key=dedup_key("tapper", ("ymid", "event_type", "zone_id"), postback),
        dedup_expires_at=now + 3600,
        request_id=f"request-{ymid}",
        client="127.0.0.1",
        accepted_at=now,
    )


@pytest.fixture
async def opened(postgres_url: str) -> AsyncIterator[list[PostgresOutbox]]:
    """Outboxes a test opens (`open_outbox`), all closed after it."""
    outboxes: list[PostgresOutbox] = []
    yield outboxes
    for outbox in outboxes:
        await outbox.close()


async def open_outbox(url: str, opened: list[PostgresOutbox]) -> PostgresOutbox:
    outbox = PostgresOutbox(PostgresUrl(url))
    opened.append(outbox)
    await outbox.open()
    return outbox


async def query(url: str, statement: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(statement)
        return rows
    finally:
        await connection.close()


async def execute(url: str, statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statements)
    finally:
        await connection.close()


# -- the schema ---------------------------------------------------------------------------------


async def test_a_new_database_gets_the_tables_and_the_schema_version(
    postgres_url: str, opened: list[PostgresOutbox]
) -> None:
    await open_outbox(postgres_url, opened)
    tables = await query(
        postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    assert {row[0] for row in tables} == OURS
    versions = await query(postgres_url, "SELECT version FROM monetag_gateway_schema")
    assert [row[0] for row in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_replicas_starting_together_create_the_schema_once(
    postgres_url: str, opened: list[PostgresOutbox]
) -> None:
    starting: list[Awaitable[PostgresOutbox]] = [
        open_outbox(postgres_url, opened) for _ in range(6)
    ]
    await asyncio.gather(*starting)  # each would fail on CREATE TABLE if it ran twice
    versions = await query(postgres_url, "SELECT version FROM monetag_gateway_schema")
    assert [row[0] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
    assert await opened[0].enqueue(event("after-start"))


async def test_reopening_keeps_what_was_stored(
    postgres_url: str, opened: list[PostgresOutbox]
) -> None:
    first = await open_outbox(postgres_url, opened)
    assert await first.enqueue(event("kept"))
    second = await open_outbox(postgres_url, opened)
    assert not await second.enqueue(event("kept"))  # the key is still known
    assert [row.ymid for row in await second.listing(None, None, 10)] == ["kept"]


async def test_a_schema_newer_than_the_gateway_is_refused(
    postgres_url: str, opened: list[PostgresOutbox]
) -> None:
    await open_outbox(postgres_url, opened)
    await execute(postgres_url, f"INSERT INTO monetag_gateway_schema VALUES ({SCHEMA_VERSION + 1})")
    with pytest.raises(StoreError, match="upgrade the gateway"):
        await open_outbox(postgres_url, opened)


async def test_tables_the_gateway_did_not_create_are_never_touched(
    postgres_url: str, opened: list[PostgresOutbox]
) -> None:
    """The app's own tables may share the database, even with the names SQLite uses."""
    for table in ("events", "deliveries", "dedup_keys", "schema"):
        await execute(
            postgres_url, f"CREATE TABLE {table} (id INT); INSERT INTO {table} VALUES (7)"
        )
    outbox = await open_outbox(postgres_url, opened)
    assert await outbox.enqueue(event("ours"))
    await outbox.purge_delivered(older_than=10**12)
    await outbox.purge_expired_keys(now=10**12)
    for table in ("events", "deliveries", "dedup_keys", "schema"):
        assert [tuple(row) for row in await query(postgres_url, f"SELECT * FROM {table}")] == [(7,)]


# -- wake-ups -----------------------------------------------------------------------------------


async def test_an_event_accepted_by_one_replica_wakes_the_others_at_once(
    postgres_url: str, opened: list[PostgresOutbox]
) -> None:
    accepting = await open_outbox(postgres_url, opened)
    listening = await open_outbox(postgres_url, opened)
    woken = asyncio.Event()
    listening.on_work(woken.set)
    await asyncio.wait_for(woken.wait(), 5)  # once at start: what became due meanwhile
    woken.clear()
    assert await accepting.enqueue(event("notify-1"))
    await asyncio.wait_for(woken.wait(), 0.5)  # well under the deliverer's 1 s poll


async def test_the_listener_reconnects_after_postgres_restarts(
    own_postgres: PostgresCluster, opened: list[PostgresOutbox]
) -> None:
    url = own_postgres.create_database("wake")
    listening = await open_outbox(url, opened)
    woken = asyncio.Event()
    listening.on_work(woken.set)
    await asyncio.wait_for(woken.wait(), 5)
    own_postgres.stop()
    own_postgres.start()
    woken.clear()
    await asyncio.wait_for(woken.wait(), 10)  # reconnected: it wakes for what it missed
    woken.clear()
    accepting = await open_outbox(url, opened)
    assert await accepting.enqueue(event("after-restart"))
    await asyncio.wait_for(woken.wait(), 2)


async def test_an_unreachable_store_is_reported_and_its_return_noticed(
    own_postgres: PostgresCluster, opened: list[PostgresOutbox]
) -> None:
    outbox = await open_outbox(own_postgres.create_database("health"), opened)
    await outbox.ping()
    assert outbox.available
    own_postgres.stop()
    with pytest.raises(StoreError):
        await outbox.enqueue(event("while-down"))
    assert not outbox.available
    own_postgres.start()
    await eventually_async(lambda: _pinged(outbox), 10)
    assert outbox.available and await outbox.enqueue(event("back"))


async def _pinged(outbox: PostgresOutbox) -> bool:
    try:
        await outbox.ping()
    except StoreError:
        return False
    return True


# -- the password -------------------------------------------------------------------------------


def test_a_store_that_cannot_be_reached_stops_run_with_a_clear_message(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "config.yaml"
    url = f"postgresql://gateway:{PASSWORD}@127.0.0.1:{port}/gateway"
    config.write_text(gateway_config("http://127.0.0.1:9/postback", store=url))
    result = gateway_command("run", "--config", str(config), env=command_env())
    assert result.returncode == 1
    assert f"cannot open the store at postgresql://***@127.0.0.1:{port}/gateway" in result.stderr
    assert "ConnectionRefusedError" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_the_password_is_never_shown(
    tmp_path: Path, postgres: PostgresCluster, start_upstream
) -> None:
    """Trust authentication ignores the password, so the URL works and carries it everywhere
    the gateway could print it: check, logs, metrics, readiness, the queue command."""
    postgres.create_database("secretive")
    url = postgres.url("secretive").replace("postgres@", f"postgres:{PASSWORD}@")
    app = start_upstream(default=503)
    harness = Harness(tmp_path)
    try:
        setup = harness.setup({"tapper": durable_route(app.postback_url)}, store=url)
        gateway = harness.start(setup)
        assert gateway.postback("tapper", "secret-1").status == 200
        eventually(lambda: app.received, 10)
        shown = [
            gateway_command("check", "--config", str(setup.config), env=command_env()).stdout,
            gateway_command(
                "queue", "--config", str(setup.config), "stats", env=command_env()
            ).stdout,
            gateway.admin("/readyz").body.decode(),
            gateway.metrics(),
        ]
        assert f"PostgreSQL postgresql://***@127.0.0.1:{postgres.port}/secretive" in shown[0]
        assert metric_sum(shown[3], "gateway_store_up") == 1
        gateway.stop()
        shown += [gateway.output(), gateway.stderr.read_text()]
        assert not [text for text in shown if PASSWORD in text]
    finally:
        harness.close()
        postgres.drop_database("secretive")
