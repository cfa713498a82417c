"""Dedup keys kept in the store with their expiry, so a restart still recognises an event."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from .dedup import DedupKey
from .store import Store


class StoredKeys:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def contains(self, key: DedupKey) -> bool:
        now = self._clock()

        def lookup(connection: sqlite3.Connection) -> bool:
            row = connection.execute(
                "SELECT 1 FROM dedup_keys WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
            return row is not None

        return await self._store.run(lookup)

    async def remember(self, key: DedupKey, ttl: float) -> None:
        expires_at = self._clock() + ttl
        await self._store.run(
            lambda connection: connection.execute(
                "INSERT OR REPLACE INTO dedup_keys (key, expires_at) VALUES (?, ?)",
                (key, expires_at),
            )
        )

    async def purge_expired(self) -> int:
        now = self._clock()
        return await self._store.run(
            lambda connection: (
                connection.execute("DELETE FROM dedup_keys WHERE expires_at <= ?", (now,)).rowcount
            )
        )
