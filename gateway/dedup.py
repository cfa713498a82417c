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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from .delivered_keys import DeliveredKeys
from .errors import DedupUnavailable, DuplicatePostback, StoreUnavailable
from .postback import Postback
from .store import StoreError

log = logging.getLogger("gateway.dedup")

DedupKey = bytes


def dedup_key(route: str, fields: Sequence[str], postback: Postback) -> DedupKey:
    """A compact digest of the route and the key fields' values.

    JSON of the list is an unambiguous encoding: ("a", "bc") and ("ab", "c") differ, and a
    missing field (null) differs from an empty one ("").
    """
    encoded = _ENCODER.encode([route, *(postback.get(name) for name in fields)])
    return hashlib.blake2b(encoded.encode(), digest_size=16).digest()


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps with options builds one per call


class DurableKeys(Protocol):
    """Where delivered keys are also kept so a restart still knows them (the store)."""

    async def contains(self, key: DedupKey) -> bool: ...

    async def remember(self, key: DedupKey, ttl: float) -> None: ...


class SharedUnavailable(Exception):
    """The shared dedup backend (Redis) did not answer."""


class SharedReservations(Protocol):
    """Dedup shared between replicas: whoever reserves a key forwards the event."""

    async def reserve(self, key: DedupKey) -> str | None: ...

    async def commit(self, key: DedupKey, ttl: float) -> None: ...

    async def release(self, key: DedupKey, token: str) -> None: ...


@dataclass(frozen=True)
class Sharing:
    """A route's shared backend and what to do when it fails."""

    reservations: SharedReservations
    fail_open: bool  # fall back to this replica's memory instead of answering 503
    on_fallback: Callable[[], None] = lambda: None


class Reservation:
    """The right to forward one event; `commit()` once it was delivered or durably queued."""

    __slots__ = ("committed", "stored")

    def __init__(self) -> None:
        self.committed = False
        self.stored = False

    def commit(self, *, stored: bool = False) -> None:
        """`stored`: the key was already written durably along with the event."""
        self.committed = True
        self.stored = stored


class DedupMemory:
    """In-process dedup for one route: a TTL cache of delivered keys plus in-flight reservations."""

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[int], object] = lambda count: None,
        durable: DurableKeys | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        self._delivered = DeliveredKeys(max_entries, ttl, clock, on_evict)
        self._in_flight: dict[DedupKey, asyncio.Future[bool]] = {}
        self._durable = durable
        self.sharing = sharing  # replaced on reload; reservations already taken keep theirs

    def __len__(self) -> int:
        return len(self._delivered)

    def reconfigure(self, ttl: float, max_entries: int) -> None:
        """Apply a reloaded ttl/max_entries, keeping what is remembered and what is in flight
        (in place, so reservations taken before the reload commit into the same memory)."""
        self._delivered.reconfigure(ttl, max_entries)

    @asynccontextmanager
    async def reserve(
        self, key: DedupKey, *, consult_durable: bool = True
    ) -> AsyncIterator[Reservation]:
        """Hold `key` while the body forwards; raise DuplicatePostback if already delivered.

        `consult_durable=False`: the caller checks the durable keys itself, atomically with
        its own write (queued routes do, in the transaction that stores the event)."""
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
        sharing, token = self.sharing, None
        try:
            if consult_durable and await self._known_durably(key):
                reservation.commit(stored=True)
                raise DuplicatePostback()
            token = await self._reserve_shared(sharing, key, reservation)
            yield reservation
        finally:
            try:
                await self._settle(key, reservation, sharing, token)
            finally:
                del self._in_flight[key]
                finished.set_result(reservation.committed)

    async def _settle(
        self, key: DedupKey, reservation: Reservation, sharing: Sharing | None, token: str | None
    ) -> None:
        """Remember a committed key everywhere it belongs; give back a shared reservation."""
        if reservation.committed:
            self._delivered.add(key)
            if self._durable is not None and not reservation.stored:
                await self._remember_durably(key)
            if sharing is not None and token is not None:
                await self._shared_step("commit", sharing.reservations.commit(key, self.ttl))
        elif sharing is not None and token is not None:
            await self._shared_step("release", sharing.reservations.release(key, token))

    @property
    def ttl(self) -> float:
        return self._delivered.ttl

    async def _reserve_shared(
        self, sharing: Sharing | None, key: DedupKey, reservation: Reservation
    ) -> str | None:
        """Our token, or DuplicatePostback if another replica delivered it; on a Redis failure
        503 (fail_closed) or None, carrying on with this replica's memory (fail_open)."""
        if sharing is None:
            return None
        try:
            token = await sharing.reservations.reserve(key)
        except SharedUnavailable as error:
            if not sharing.fail_open:
                raise DedupUnavailable(str(error)) from None
            sharing.on_fallback()
            log.warning(
                "shared dedup unavailable; using local memory", extra={"detail": str(error)}
            )
            return None
        if token is None:
            reservation.commit(stored=True)  # known elsewhere: remember it here too, nothing more
            raise DuplicatePostback()
        return token

    async def _shared_step(self, step: str, command: Awaitable[None]) -> None:
        try:
            await command
        except SharedUnavailable as error:
            # commit lost: other replicas may forward a repeat; release lost: the reservation
            # expires by itself. Either way the answer to this request stands.
            log.error(f"shared dedup {step} failed", extra={"detail": str(error)})

    async def _known_durably(self, key: DedupKey) -> bool:
        """Delivered before a restart? Unknown (store failing) is not "no": fail closed."""
        if self._durable is None:
            return False
        try:
            return await self._durable.contains(key)
        except StoreError as error:
            raise StoreUnavailable(f"dedup lookup: {error}") from None

    async def _remember_durably(self, key: DedupKey) -> None:
        assert self._durable is not None
        try:
            await self._durable.remember(key, self.ttl)
        except StoreError as error:
            # Delivered already; only a restart within the TTL could now forward it again.
            log.error("dedup key not stored", extra={"detail": str(error)})
