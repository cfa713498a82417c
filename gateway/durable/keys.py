"""Delivered keys kept in the durable store, so a restart still recognises an event.

The `dedup_keys` table: its schema and every statement on it are here (the outbox writes a
queued event's key through `remember` inside the transaction that stores the event; the queue
command counts them with `count`). `StoreKeys` is the dedup backend over it: a claim is a
lookup (nothing to hold: one process writes this store), a commit writes the key.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from ..dedup.backend import HELD, KNOWN, BackendUnavailable, Claim
from ..dedup.key import DedupKey
from .outbox import StoreError
from .sqlite_writer import SqliteWriter

SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup_keys (
    key BLOB PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dedup_expiry ON dedup_keys(expires_at);
"""


def known(connection: sqlite3.Connection, key: DedupKey, now: float) -> bool:
    row = connection.execute(
        "SELECT 1 FROM dedup_keys WHERE key = ? AND expires_at > ?", (key, now)
    ).fetchone()
    return row is not None


def remember(connection: sqlite3.Connection, key: DedupKey, expires_at: float) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO dedup_keys (key, expires_at) VALUES (?, ?)", (key, expires_at)
    )


def purge_expired(connection: sqlite3.Connection, now: float) -> int:
    return connection.execute("DELETE FROM dedup_keys WHERE expires_at <= ?", (now,)).rowcount


def count(connection: sqlite3.Connection) -> int:
    (keys,) = connection.execute("SELECT COUNT(*) FROM dedup_keys").fetchone()
    return int(keys)


class StoreKeysUnavailable(BackendUnavailable):
    reason = "store_unavailable"


class StoreKeys:
    """The dedup backend of the store: fails closed (an unknown answer is not "new")."""

    name = "store"
    fail_open = False
    in_store = True

    def __init__(self, store: SqliteWriter, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def claim(self, key: DedupKey) -> Claim:
        now = self._clock()
        try:
            found = await self._store.run(lambda connection: known(connection, key, now))
        except StoreError as error:
            raise StoreKeysUnavailable(f"dedup lookup: {error}") from None
        return KNOWN if found else HELD

    async def commit(self, key: DedupKey, claim: Claim, ttl: float) -> None:
        expires_at = self._clock() + ttl
        try:
            await self._store.run(lambda connection: remember(connection, key, expires_at))
        except StoreError as error:
            raise StoreKeysUnavailable(f"dedup key not stored: {error}") from None

    async def release(self, key: DedupKey, claim: Claim) -> None:
        """Nothing was written by the claim."""

    async def purge_expired(self) -> int:
        now = self._clock()
        return await self._store.run(lambda connection: purge_expired(connection, now))
