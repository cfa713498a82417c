"""The PostgreSQL dedup backend: reservations and delivered keys shared by every replica.

The same promise as the Redis backend, in the store itself: a replica that wants to forward
an event first *claims* its key (a row in `monetag_gateway_dedup_keys`: state `reserved`, its
token, a hold longer than the route's slowest delivery). Whoever inserts the row forwards;
another replica sees a reservation and waits until it says `delivered` (a duplicate) or is
gone (released after a failure: it tries again). Success turns the row into `delivered` for
the route's TTL; failure deletes it only if the token is still ours. A replica that dies
mid-delivery leaves a reservation that any replica may take over once its hold has run out.
Queued routes write their keys in the transaction that stores the event (postgres_outbox.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ..dedup.backend import KNOWN, BackendUnavailable, Claim
from ..dedup.key import DedupKey
from .outbox import StoreError

POLL_SECONDS = 0.025  # while another replica holds the key

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
    """The backend for one route: `hold` is its slowest delivery plus a margin. Fails closed."""

    name = "postgres"
    fail_open = False
    in_store = True

    def __init__(
        self, connection: Connections, hold: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._connection = connection
        self._hold = hold
        self._clock = clock

    async def claim(self, key: DedupKey) -> Claim:
        """Our token if this replica may deliver the event; KNOWN if it was delivered."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self._hold + 1
        while True:
            row = await self._fetchrow(_CLAIM, key, token, self._clock(), self._hold)
            if row is not None and row["token"] == token:
                return Claim(token=token)
            if row is not None and row["state"] == "delivered":
                return KNOWN
            # held by another replica (or released as we looked): wait for its result
            if time.monotonic() > deadline:  # a hold that outlived itself: something is broken
                raise PostgresUnavailable(f"reservation {key.hex()} never ends")
            await asyncio.sleep(POLL_SECONDS)

    async def commit(self, key: DedupKey, claim: Claim, ttl: float) -> None:
        await self._fetchrow(
            "UPDATE monetag_gateway_dedup_keys SET state = 'delivered', token = NULL,"
            " expires_at = $2 WHERE key = $1",
            key, self._clock() + ttl,
        )  # fmt: skip

    async def release(self, key: DedupKey, claim: Claim) -> None:
        await self._fetchrow(
            "DELETE FROM monetag_gateway_dedup_keys"
            " WHERE key = $1 AND token = $2 AND state = 'reserved'",
            key, claim.token,
        )  # fmt: skip

    async def _fetchrow(self, query: str, *arguments: Any) -> Any:
        try:
            async with self._connection() as connection:
                return await connection.fetchrow(query, *arguments)
        except StoreError as error:
            raise PostgresUnavailable(f"dedup: {error}") from None
