"""Tests for tests/postgres.py and its fixtures: the throwaway PostgreSQL the store tests use."""

from __future__ import annotations

import asyncpg
import pytest

from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.postgres


async def query(url: str, statement: str) -> list[asyncpg.Record]:
    """The rows of one statement, on a connection of its own."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return await connection.fetch(statement)
    finally:
        await connection.close()


async def execute(url: str, script: str) -> None:
    """Run statements (several, `;`-separated), on a connection of their own."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(script)
    finally:
        await connection.close()


async def test_a_test_database_answers_queries(postgres_url: str) -> None:
    (row,) = await query(postgres_url, "SELECT current_database() AS name, 6 * 7 AS answer")

    assert row["name"].startswith("t_")
    assert row["answer"] == 42


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param("fsync", "on", id="durable-writes"),
        pytest.param("listen_addresses", "127.0.0.1", id="loopback-only"),
        pytest.param("max_connections", "200", id="room-for-several-gateways"),
    ],
)
async def test_the_server_runs_with_the_settings_the_tests_rely_on(
    postgres_url: str, setting: str, expected: str
) -> None:
    (row,) = await query(postgres_url, f"SHOW {setting}")

    assert row[0] == expected


@pytest.mark.parametrize("test", ["first", "second"])
async def test_each_test_gets_a_database_of_its_own(postgres_url: str, test: str) -> None:
    """Both cases create the same table: whichever runs second fails if they share one."""
    await execute(
        postgres_url, f"CREATE TABLE marker (test text); INSERT INTO marker VALUES ('{test}')"
    )

    assert [row["test"] for row in await query(postgres_url, "SELECT test FROM marker")] == [test]


async def test_a_stopped_server_refuses_connections_and_serves_the_same_data_once_started(
    own_postgres: PostgresCluster,
) -> None:
    url = own_postgres.create_database("kept")
    await execute(url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2)")

    own_postgres.stop()
    with pytest.raises(OSError):
        await query(url, "SELECT 1")
    own_postgres.start()

    assert [row["n"] for row in await query(url, "SELECT n FROM kept ORDER BY n")] == [1, 2]


async def test_a_killed_server_recovers_what_was_committed(own_postgres: PostgresCluster) -> None:
    """SIGKILL leaves no checkpoint behind: the next start replays the write-ahead log."""
    url = own_postgres.create_database("crashed")
    await execute(url, "CREATE TABLE committed (n int); INSERT INTO committed VALUES (7)")
    connection = await asyncpg.connect(url, timeout=10)
    try:
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            async with connection.transaction():
                await connection.execute("INSERT INTO committed VALUES (8)")
                own_postgres.kill()  # before the commit, which fails
    finally:
        connection.terminate()

    assert not own_postgres.running()
    own_postgres.start()
    assert [row["n"] for row in await query(url, "SELECT n FROM committed")] == [7]
