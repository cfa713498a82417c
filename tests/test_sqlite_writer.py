"""gateway.durable.sqlite_writer: the SQLite file, its settings, and group commit on real files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.durable.outbox import StoreRefusedContent
from gateway.durable.sqlite_outbox import STORE_SCHEMA
from gateway.durable.sqlite_writer import SCHEMA_VERSION, SqliteWriter, StoreError, connect
from tests.conftest import Commits

CREATE_ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE)"
CREATE_BLOBS = "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)"
# Bounds every await on the store: a hang fails the test instead of freezing the run.
PATIENCE = 10.0


def _execute(sql: str, *args: object) -> Callable[[sqlite3.Connection], None]:
    def operation(connection: sqlite3.Connection) -> None:
        connection.execute(sql, args)

    return operation


def _insert_item(item_id: int, label: str) -> Callable[[sqlite3.Connection], None]:
    return _execute("INSERT INTO items (id, label) VALUES (?, ?)", item_id, label)


def _item_ids(connection: sqlite3.Connection) -> list[int]:
    return [row[0] for row in connection.execute("SELECT id FROM items ORDER BY id")]


def _ids_on_disk(path: Path, table: str) -> set[int]:
    """Read the table with a fresh connection: what a restarted gateway would see."""
    connection = sqlite3.connect(path)
    try:
        return {row[0] for row in connection.execute(f"SELECT id FROM {table}")}
    finally:
        connection.close()


async def _run(store: SqliteWriter, operation: Callable[[sqlite3.Connection], Any]) -> Any:
    return await asyncio.wait_for(store.run(operation), PATIENCE)


async def _run_in_one_batch(
    store: SqliteWriter, commits: Commits, operations: list[Callable[[sqlite3.Connection], Any]]
) -> list[Any]:
    """Queue `operations` while the writer is held by another one, so they form one batch.

    Returns each operation's result, or the exception its caller got.
    """
    entered, gate = threading.Event(), threading.Event()
    commits_before = len(commits)

    def hold_the_writer(connection: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(PATIENCE)

    holder = asyncio.ensure_future(store.run(hold_the_writer))
    assert await asyncio.to_thread(entered.wait, PATIENCE)
    callers = [asyncio.ensure_future(store.run(operation)) for operation in operations]
    for _ in range(5):
        await asyncio.sleep(0)  # every caller queues its operation
    gate.set()
    await asyncio.wait_for(holder, PATIENCE)
    results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), PATIENCE)
    # one commit for the holder alone, one for every operation queued behind it
    assert len(commits) - commits_before == 2, "not one batch"
    return results


# --- opening the file -----------------------------------------------------------------------


async def test_open_creates_the_file_and_its_directories(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    store = SqliteWriter(str(path), STORE_SCHEMA)

    await store.open()
    await store.close()

    assert path.is_file()
    connection = sqlite3.connect(path)
    try:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    finally:
        connection.close()
    assert version == SCHEMA_VERSION
    assert {"events", "deliveries", "dedup_keys"} <= tables


async def test_a_new_store_and_its_companions_are_the_owners_alone(tmp_path: Path) -> None:
    """The file holds ymids, user ids and client addresses: 0600 whatever the umask, and so
    are the write-ahead log, its index and the lock beside them."""
    path = tmp_path / "gateway.db"
    previous = os.umask(0o022)  # the usual umask, which would make the files world-readable
    try:
        store = SqliteWriter(str(path), STORE_SCHEMA, exclusive=True)
        await asyncio.wait_for(store.open(), PATIENCE)
        await _run(store, _execute("INSERT INTO dedup_keys (key, expires_at) VALUES ('k', 1)"))
        companions = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
        modes = {file.name: oct(file.stat().st_mode & 0o777) for file in companions}
        await asyncio.wait_for(store.close(), PATIENCE)
    finally:
        os.umask(previous)
    assert modes == {file.name: "0o600" for file in companions}


async def test_an_existing_store_keeps_the_mode_its_operator_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.touch(mode=0o640)  # e.g. readable by a backup group
    path.chmod(0o640)
    store = SqliteWriter(str(path), STORE_SCHEMA)
    await asyncio.wait_for(store.open(), PATIENCE)
    await asyncio.wait_for(store.close(), PATIENCE)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("pragma", "expected"),
    [
        pytest.param("journal_mode", "wal", id="write-ahead-log"),
        pytest.param("synchronous", 2, id="synchronous-full"),
        pytest.param("foreign_keys", 1, id="foreign-keys-enforced"),
    ],
)
def test_connect_applies_durability_settings(db_path: Path, pragma: str, expected: object) -> None:
    connection = connect(str(db_path), STORE_SCHEMA)
    try:
        (value,) = connection.execute(f"PRAGMA {pragma}").fetchone()
    finally:
        connection.close()

    assert value == expected


async def test_committed_data_survives_close_and_reopen(db_path: Path) -> None:
    first = SqliteWriter(str(db_path), STORE_SCHEMA)
    await first.open()
    await _run(first, _execute(CREATE_ITEMS))
    await _run(first, _insert_item(1, "one"))
    await _run(first, _insert_item(2, "two"))
    await first.close()

    second = SqliteWriter(str(db_path), STORE_SCHEMA)
    await second.open()
    try:
        ids = await _run(second, _item_ids)
    finally:
        await second.close()

    assert ids == [1, 2]
    assert _ids_on_disk(db_path, "items") == {1, 2}


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(SCHEMA_VERSION + 1, id="newer-gateway"),
        pytest.param(7, id="unknown-version"),
        pytest.param(0, id="unversioned-foreign-database"),
    ],
)
async def test_open_refuses_a_file_with_another_schema_version(db_path: Path, version: int) -> None:
    foreign = sqlite3.connect(db_path)
    foreign.execute("CREATE TABLE somebody_elses (x INTEGER)")
    foreign.execute(f"PRAGMA user_version = {version}")
    foreign.commit()
    foreign.close()
    store = SqliteWriter(str(db_path), STORE_SCHEMA)

    with pytest.raises(StoreError) as raised:
        await asyncio.wait_for(store.open(), PATIENCE)
    await store.close()

    message = str(raised.value)
    assert f"schema version {version}" in message
    assert f"version {SCHEMA_VERSION}" in message


async def test_refused_file_is_left_as_it_was(db_path: Path) -> None:
    foreign = sqlite3.connect(db_path)
    foreign.execute("CREATE TABLE somebody_elses (x INTEGER)")
    foreign.execute("PRAGMA user_version = 7")
    foreign.commit()
    foreign.close()
    store = SqliteWriter(str(db_path), STORE_SCHEMA)

    with pytest.raises(StoreError):
        await asyncio.wait_for(store.open(), PATIENCE)
    await store.close()

    check = sqlite3.connect(db_path)
    try:
        (journal_mode,) = check.execute("PRAGMA journal_mode").fetchone()
        tables = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
        (version,) = check.execute("PRAGMA user_version").fetchone()
    finally:
        check.close()
    assert (journal_mode, tables, version) == ("delete", {"somebody_elses"}, 7)


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param("regular-file/gateway.db", id="parent-is-a-regular-file"),
        pytest.param("regular-file/sub/gateway.db", id="ancestor-is-a-regular-file"),
        pytest.param("a-directory", id="path-is-a-directory"),
    ],
)
async def test_open_on_an_impossible_path_raises_store_error(tmp_path: Path, relative: str) -> None:
    (tmp_path / "regular-file").write_text("not a directory")
    (tmp_path / "a-directory").mkdir()
    store = SqliteWriter(str(tmp_path / relative), STORE_SCHEMA)

    with pytest.raises(StoreError):
        await asyncio.wait_for(store.open(), PATIENCE)
    await store.close()


async def test_run_on_a_closed_store_raises_store_error(store: SqliteWriter) -> None:
    await store.close()

    with pytest.raises(StoreError):
        await asyncio.wait_for(store.run(lambda connection: 1), 2.0)


# --- group commit ---------------------------------------------------------------------------


async def test_concurrent_operations_share_commits(
    store: SqliteWriter, db_path: Path, commits: Commits
) -> None:
    await _run(store, _execute(CREATE_ITEMS))
    commits_before = len(commits)
    runs: Counter[int] = Counter()

    def insert(item_id: int) -> Callable[[sqlite3.Connection], None]:
        def operation(connection: sqlite3.Connection) -> None:
            runs[item_id] += 1
            _insert_item(item_id, f"item-{item_id}")(connection)

        return operation

    await asyncio.wait_for(asyncio.gather(*(store.run(insert(n)) for n in range(200))), PATIENCE)

    assert runs == Counter(range(200))  # each of the 200 inserts ran once
    assert len(commits) - commits_before <= 20
    assert commits.failed == 0
    assert _ids_on_disk(db_path, "items") == set(range(200))


def _violate_unique_label(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO items (id, label) VALUES (?, ?)", (100, "taken"))


def _write_then_raise_value_error(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO items (id, label) VALUES (?, ?)", (100, "half-done"))
    raise ValueError("the operation changed its mind")


def _write_then_fail_in_sql(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO items (id, label) VALUES (?, ?)", (100, "half-done"))
    connection.execute("INSERT INTO no_such_table VALUES (1)")


@pytest.mark.parametrize(
    ("failing", "expected"),
    [
        pytest.param(_violate_unique_label, StoreError, id="constraint-violation"),
        pytest.param(_write_then_raise_value_error, ValueError, id="python-exception"),
        pytest.param(_write_then_fail_in_sql, StoreError, id="sql-error-after-a-write"),
    ],
)
async def test_failing_operation_fails_only_its_caller(
    store: SqliteWriter,
    db_path: Path,
    failing: Callable[[sqlite3.Connection], None],
    expected: type[Exception],
    commits: Commits,
) -> None:
    await _run(store, _execute(CREATE_ITEMS))
    await _run(store, _insert_item(0, "taken"))

    results = await _run_in_one_batch(
        store, commits, [_insert_item(1, "before"), failing, _insert_item(2, "after")]
    )

    assert results[0] is None
    assert isinstance(results[1], expected)
    assert results[2] is None
    assert commits.failed == 0
    # the failing operation's own writes are rolled back with it, the others are on disk
    assert _ids_on_disk(db_path, "items") == {0, 1, 2}


async def test_constraint_violation_is_reported_as_store_error_with_sqlite_reason(
    store: SqliteWriter,
) -> None:
    await _run(store, _execute(CREATE_ITEMS))
    await _run(store, _insert_item(1, "one"))

    with pytest.raises(StoreError, match="IntegrityError: UNIQUE constraint failed"):
        await _run(store, _insert_item(1, "one again"))


async def test_operation_result_is_returned_to_its_caller(
    store: SqliteWriter, commits: Commits
) -> None:
    await _run(store, _execute(CREATE_ITEMS))
    await _run(store, _insert_item(7, "seven"))

    operations = [_item_ids, lambda connection: "plain value"]
    results = await _run_in_one_batch(store, commits, operations)

    assert results == [[7], "plain value"]


# --- a full disk ----------------------------------------------------------------------------


async def _fill_until_full(store: SqliteWriter) -> tuple[list[int], int, StoreError]:
    """Cap the file a couple of pages above its size, then insert blobs until one fails.

    Returns the ids reported written, the id reported failed, and the error.
    """
    await _run(store, _execute(CREATE_BLOBS))
    page_count = await _run(
        store, lambda connection: connection.execute("PRAGMA page_count").fetchone()[0]
    )
    await _run(store, _execute(f"PRAGMA max_page_count = {page_count + 2}"))
    written: list[int] = []
    for blob_id in range(50):
        try:
            await _run(store, _execute("INSERT INTO blobs VALUES (?, ?)", blob_id, b"x" * 3000))
        except StoreError as error:
            return written, blob_id, error
        written.append(blob_id)
    raise AssertionError("the capped file never filled up")


async def test_full_disk_raises_store_error_saying_full(store: SqliteWriter) -> None:
    written, _, error = await _fill_until_full(store)

    assert written, "the cap left no room for even one blob"
    assert "full" in str(error)


async def test_full_disk_reports_written_exactly_what_is_on_disk(
    store: SqliteWriter, db_path: Path
) -> None:
    written, failed, _ = await _fill_until_full(store)
    await store.close()

    on_disk = _ids_on_disk(db_path, "blobs")

    assert failed not in on_disk
    assert on_disk == set(written)


def _count_blobs(connection: sqlite3.Connection) -> int:
    (count,) = connection.execute("SELECT COUNT(*) FROM blobs").fetchone()
    return int(count)


async def test_store_keeps_serving_after_a_full_disk(store: SqliteWriter) -> None:
    written, _, _ = await _fill_until_full(store)

    count = await _run(store, _count_blobs)
    await _run(store, _execute("DELETE FROM blobs"))
    count_after_delete = await _run(store, _count_blobs)

    assert count == len(written)
    assert count_after_delete == 0


# --- one gateway per file; available only while writes commit ------------------------------


async def test_an_exclusive_store_is_held_by_one_opener_and_free_after_close(
    db_path: Path,
) -> None:
    gateway = SqliteWriter(str(db_path), STORE_SCHEMA, exclusive=True)
    await asyncio.wait_for(gateway.open(), PATIENCE)
    second = SqliteWriter(str(db_path), STORE_SCHEMA, exclusive=True)
    with pytest.raises(StoreError, match=rf"is in use by another gateway \(pid {os.getpid()} on "):
        await asyncio.wait_for(second.open(), PATIENCE)
    beside = SqliteWriter(str(db_path), STORE_SCHEMA)  # the `queue` command, beside the gateway
    await asyncio.wait_for(beside.open(), PATIENCE)
    await asyncio.wait_for(beside.close(), PATIENCE)

    await asyncio.wait_for(gateway.close(), PATIENCE)
    await asyncio.wait_for(second.open(), PATIENCE)
    await asyncio.wait_for(second.close(), PATIENCE)


async def test_a_read_never_makes_a_failing_store_available_a_committed_write_does(
    store: SqliteWriter,
) -> None:
    await _run(store, _execute(CREATE_ITEMS))
    with pytest.raises(StoreError):
        await _run(store, _execute("INSERT INTO no_such_table VALUES (1)"))
    assert not store.availability.up

    await _run(store, _item_ids)  # a read that succeeds, as `SELECT 1` would on a full disk
    assert not store.availability.up
    await _run(store, _insert_item(1, "written"))
    assert store.availability.up


async def test_a_refused_value_says_nothing_about_the_store(store: SqliteWriter) -> None:
    await _run(store, _execute(CREATE_ITEMS))
    await _run(store, _insert_item(1, "taken"))
    with pytest.raises(StoreRefusedContent):
        await _run(store, _insert_item(2, "taken"))  # UNIQUE: the value, not the disk
    assert store.availability.up
