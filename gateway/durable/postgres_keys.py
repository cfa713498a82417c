"""The PostgreSQL driver of shared dedup (`dedup/shared.py`): a row per event in the store.

A key is a row of `monetag_gateway_dedup_keys`: state `reserved` with its token, or
`delivered`, until `expires_at`. Taking it inserts the row or takes over one whose time is up
(a delivered key past its TTL, or the hold of a replica that died); a commit makes it
`delivered` for the route's TTL; a release deletes it only while the token is still ours.
Queued routes write their keys in the transaction that stores the event (postgres_outbox.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ..dedup.backend import BackendUnavailable
from ..dedup.key import DedupKey
from ..dedup.shared import Taken
from .outbox import StoreError

_CLAIM = """
WITH taken AS (
    INSERT INTO monetag_gateway_dedup_keys AS k (key, state, token, expires_at)
    VALUES ($1, 'reserved', $2, $3::float8 + $4::float8)
    ON CONFLICT (key) DO UPDATE
        SET state = 'reserved', token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
        WHERE k.expires_at <= $3  -- a delivered key whose TTL is over, or an abandoned hold
    RETURNING state, token
)
SELECT state, token FROM taken
UNION ALL
SELECT state, token FROM monetag_gateway_dedup_keys
WHERE key = $1 AND expires_at > $3 AND NOT EXISTS (SELECT 1 FROM taken)
"""


class PostgresUnavailable(BackendUnavailable):
    reason = "store_unavailable"


Connections = Callable[[], AbstractAsyncContextManager[Any]]


class PostgresKeys:
    """The primitives on PostgreSQL; times come from `clock`, so tests can drive them."""

    name = "postgres"
    in_store = True
    unavailable = PostgresUnavailable

    def __init__(self, connection: Connections, clock: Callable[[], float] = time.time) -> None:
        self._connection = connection
        self._clock = clock

    def name_of(self, key: DedupKey) -> str:
        return key.hex()

    async def try_take(self, key: DedupKey, token: str, hold: float) -> Taken:
        row = await self._fetchrow(_CLAIM, key, token, self._clock(), hold)
        if row is not None and row["token"] == token:
            return Taken.OURS
        if row is not None and row["state"] == "delivered":
            return Taken.DELIVERED
        return Taken.BUSY  # held by another replica (or released as we looked)

    async def commit(self, key: DedupKey, ttl: float) -> None:
        await self._fetchrow(
            "UPDATE monetag_gateway_dedup_keys SET state = 'delivered', token = NULL,"
            " expires_at = $2 WHERE key = $1",
            key,
            self._clock() + ttl,
        )

    async def release(self, key: DedupKey, token: str) -> None:
        await self._fetchrow(
            "DELETE FROM monetag_gateway_dedup_keys"
            " WHERE key = $1 AND token = $2 AND state = 'reserved'",
            key,
            token,
        )

    async def _fetchrow(self, query: str, *arguments: Any) -> Any:
        try:
            async with self._connection() as connection:
                return await connection.fetchrow(query, *arguments)
        except StoreError as error:
            raise PostgresUnavailable(f"dedup: {error}") from None
