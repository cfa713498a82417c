"""Dedup shared by replicas through the PostgreSQL store, without Redis: the same promise as
the Redis backend, on a real PostgreSQL server. The cases both backends share (through
gateways and on the backend alone) run on both in test_shared_dedup.py; these are
PostgreSQL's own.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.support.gatewayconfig import gateway_config
from tests.support.postgres import PostgresCluster
from tests.support.waiting import eventually_async
from tests.test_pipeline import CLICK, get

pytestmark = pytest.mark.postgres


def shared_yaml(app: str | dict[str, object], url: str) -> str:
    """One sync route; its dedup is shared through the PostgreSQL store at `url`."""
    return gateway_config(app, store=url)


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
