"""Remembering delivered events so a repeated postback never grants a second reward.

A key is *reserved* before forwarding starts, *committed* (remembered for `ttl`) only when
the first upstream accepted the event, and *released* otherwise so Monetag's retry can go
through. A second identical postback that arrives while the first is in flight waits for the
first's result: if the first was delivered it is a duplicate, if not it takes its own turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from cachetools import TTLCache

from .errors import DuplicatePostback
from .postback import Postback

DedupKey = bytes


def dedup_key(route: str, fields: Sequence[str], postback: Postback) -> DedupKey:
    """A compact digest of the route and the key fields' values.

    JSON of the list is an unambiguous encoding: ("a", "bc") and ("ab", "c") differ, and a
    missing field (null) differs from an empty one ("").
    """
    encoded = json.dumps([route, *(postback.get(name) for name in fields)], ensure_ascii=False)
    return hashlib.blake2b(encoded.encode(), digest_size=16).digest()


class Reservation:
    """The right to forward one event; `commit()` once the first upstream accepted it."""

    __slots__ = ("committed",)

    def __init__(self) -> None:
        self.committed = False

    def commit(self) -> None:
        self.committed = True


class _DeliveredKeys(TTLCache[DedupKey, bool]):
    """A TTL cache that reports when it must drop a live key because it is full."""

    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float], on_evict: Callable[[], None]
    ) -> None:
        super().__init__(max_entries, ttl, timer=clock)
        self.clock = clock
        self.on_evict = on_evict

    def popitem(self) -> tuple[DedupKey, bool]:
        # TTLCache expires dead keys itself; popitem runs only to make room among live ones.
        item = super().popitem()
        self.on_evict()
        return item


class DedupMemory:
    """In-process dedup for one route: a TTL cache of delivered keys plus in-flight reservations."""

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[], None] = lambda: None,
    ) -> None:
        self._delivered = _DeliveredKeys(max_entries, ttl, clock, on_evict)
        self._in_flight: dict[DedupKey, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._delivered)

    def reconfigure(self, ttl: float, max_entries: int) -> None:
        """Apply a reloaded ttl/max_entries, keeping what is remembered and what is in flight.

        Remembered keys start a fresh TTL: remembering an event a little longer is the safe
        side. Done in place so reservations taken before the reload commit into the new cache.
        """
        old = self._delivered
        if (old.ttl, old.maxsize) == (ttl, max_entries):
            return
        self._delivered = _DeliveredKeys(max_entries, ttl, old.clock, old.on_evict)
        for key in list(old.keys()):
            self._delivered[key] = True

    @asynccontextmanager
    async def reserve(self, key: DedupKey) -> AsyncIterator[Reservation]:
        """Hold `key` while the body forwards; raise DuplicatePostback if already delivered."""
        while True:
            if key in self._delivered:
                raise DuplicatePostback()
            earlier = self._in_flight.get(key)
            if earlier is None:
                break
            # shield: a waiter that gives up must not cancel the first request's future
            await asyncio.shield(earlier)
        finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = finished
        reservation = Reservation()
        try:
            yield reservation
        finally:
            del self._in_flight[key]
            if reservation.committed:
                self._delivered[key] = True
            finished.set_result(reservation.committed)
