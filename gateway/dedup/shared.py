"""Dedup shared by replicas: one reservation algorithm over any store that offers its primitives.

A replica that wants to forward an event first *takes* its key with a random token and a hold
longer than the route's slowest delivery. Whoever takes it forwards; the others poll until the
key says delivered (a duplicate) or is free again (released after a failure, or its hold ran
out after a crash: they take it). Success makes the key delivered for the route's TTL; failure
frees it only if the token is still ours, so a late release never frees someone else's hold.

The drivers are the stores' primitives: `redis_reservations.py` (SET NX, a Lua
compare-and-delete) and `durable/postgres_keys.py` (one table, SQL).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from enum import Enum
from typing import Protocol

from .backend import KNOWN, BackendUnavailable, Claim
from .key import DedupKey

POLL_SECONDS = 0.025  # while another replica holds the key


class Taken(Enum):
    """What `try_take` found."""

    OURS = "ours"  # this replica holds the key now: it delivers
    DELIVERED = "delivered"  # a duplicate
    BUSY = "busy"  # another replica holds it (or it was freed as we looked): poll again


class SharedKeys(Protocol):
    """A store's primitives; each raises the driver's `unavailable` when the store fails."""

    name: str  # in logs
    in_store: bool  # as `Backend.in_store`

    @property
    def unavailable(self) -> type[BackendUnavailable]: ...

    def name_of(self, key: DedupKey) -> str:
        """The key as the store names it, in errors."""
        ...

    async def try_take(self, key: DedupKey, token: str, hold: float) -> Taken:
        """Hold the key for `token` for `hold` seconds if it is free or its hold ran out."""
        ...

    async def commit(self, key: DedupKey, ttl: float) -> None:
        """Make the key delivered for `ttl` seconds, whoever holds it."""
        ...

    async def release(self, key: DedupKey, token: str) -> None:
        """Free the key if `token` still holds it."""
        ...


class SharedReservations:
    """The `Backend` of one route over a store's `SharedKeys`; `hold` is the route's slowest
    delivery plus a margin."""

    def __init__(self, keys: SharedKeys, hold: float, *, fail_open: bool = False) -> None:
        self._keys = keys
        self._hold = hold
        self.name = keys.name
        self.in_store = keys.in_store
        self.fail_open = fail_open

    async def claim(self, key: DedupKey) -> Claim:
        """Our token if this replica may deliver the event; KNOWN if it was delivered."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self._hold + 1
        while True:
            taken = await self._keys.try_take(key, token, self._hold)
            if taken is Taken.OURS:
                return Claim(token=token)
            if taken is Taken.DELIVERED:
                return KNOWN
            if time.monotonic() > deadline:  # a hold that outlived itself: something is broken
                name = self._keys.name_of(key)
                raise self._keys.unavailable(f"reservation {name} never ends")
            await asyncio.sleep(POLL_SECONDS)

    async def commit(self, key: DedupKey, claim: Claim, ttl: float) -> None:
        await self._keys.commit(key, ttl)

    async def release(self, key: DedupKey, claim: Claim) -> None:
        await self._keys.release(key, claim.token)
