"""One route's dedup: reserve a key before forwarding, commit it once delivered, else release.

A key is *reserved* before forwarding starts, *committed* (remembered for `ttl`) only when the
first upstream accepted the event (or a queued route stored it), and *released* otherwise so
Monetag's retry can go through. In this process a second identical postback that arrives while
the first is in flight waits for the first's result: if the first was delivered it is a
duplicate, if not it takes its own turn. Then the route's backends beyond this process are
claimed in order (the store, then Redis): any of them may know the key (a duplicate: it is
remembered here too, and every claim taken is committed, so what one backend knows the others
learn).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from ..errors import DedupUnavailable, DuplicatePostback
from .backend import Backend, BackendUnavailable, Claim
from .delivered import DeliveredKeys
from .key import DedupKey

log = logging.getLogger("gateway.dedup")

Held = list[tuple[Backend, Claim]]


class Reservation:
    """The right to deliver one event: `async with dedup.reserve(key) as reservation:` the key
    is this request's inside; `reservation.commit()` once it was delivered (or durably queued).
    """

    __slots__ = ("_dedup", "_finished", "_held", "_key", "_queued", "committed")

    def __init__(self, dedup: RouteDedup, key: DedupKey, queued: bool) -> None:
        self._dedup, self._key, self._queued = dedup, key, queued
        self._held: Held = []
        self.committed = False

    def commit(self) -> None:
        self.committed = True

    async def __aenter__(self) -> Reservation:
        dedup, key = self._dedup, self._key
        self._finished = await dedup._take(key)
        try:
            backends = [b for b in dedup._backends if not (self._queued and b.in_store)]
            if await dedup._known_beyond(key, backends, self._held):
                self.commit()  # known elsewhere: remember it here and where held
                raise DuplicatePostback()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._dedup._let_go(self._key, self._finished, self.committed, self._held)


class RouteDedup:
    """The memory of delivered keys, the keys in flight here, and the backends beyond."""

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[int], object] = lambda count: None,
        on_fallback: Callable[[], object] = lambda: None,
    ) -> None:
        self._delivered = DeliveredKeys(max_entries, ttl, clock, on_evict)
        self._in_flight: dict[DedupKey, asyncio.Future[bool]] = {}
        self._backends: tuple[Backend, ...] = ()
        self._on_fallback = on_fallback  # a fail_open backend failed: dedup is local only

    def __len__(self) -> int:
        return len(self._delivered)

    @property
    def ttl(self) -> float:
        return self._delivered.ttl

    @property
    def in_flight(self) -> bool:
        """Whether a postback holds a key here now."""
        return bool(self._in_flight)

    def reconfigure(self, ttl: float, max_entries: int, backends: Sequence[Backend] = ()) -> None:
        """Apply a (re)loaded config, keeping what is remembered and what is in flight (in
        place, so reservations taken before a reload commit into the same memory; they keep the
        backends they started with)."""
        self._delivered.reconfigure(ttl, max_entries)
        self._backends = tuple(backends)

    def reserve(self, key: DedupKey, *, queued: bool = False) -> Reservation:
        """Hold `key` while the body of `async with` delivers; DuplicatePostback if it was
        delivered. (A class rather than @asynccontextmanager: it runs for every postback,
        and the generator machinery cost a few percent of the gateway's instructions.)

        `queued`: the caller stores the event and checks and writes its key in the store in
        one transaction, so backends that live in the store are not claimed here."""
        return Reservation(self, key, queued)

    async def _take(self, key: DedupKey) -> asyncio.Future[bool]:
        """Wait for an identical postback in flight here; mark this one in flight."""
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
        return finished

    async def _let_go(
        self, key: DedupKey, finished: asyncio.Future[bool], committed: bool, held: Held
    ) -> None:
        try:
            await self._settle(key, committed, held)
        finally:
            del self._in_flight[key]
            finished.set_result(committed)

    async def _known_beyond(self, key: DedupKey, backends: Sequence[Backend], held: Held) -> bool:
        """Claim the key from each backend in order (adding to `held`); True if one knows it.

        A backend that cannot tell fails closed (503) unless it is fail_open."""
        for backend in backends:
            try:
                claim = await backend.claim(key)
            except BackendUnavailable as error:
                if not backend.fail_open:
                    raise DedupUnavailable(error.reason, str(error)) from None
                self._on_fallback()
                log.warning(
                    "dedup backend unavailable; carrying on without it",
                    extra={"backend": backend.name, "detail": str(error)},
                )
                continue
            if claim.known:
                return True
            held.append((backend, claim))
        return False

    async def _settle(self, key: DedupKey, delivered: bool, held: Held) -> None:
        """Commit every claim and remember the key here if delivered; else release them."""
        if delivered:
            self._delivered.add(key)
        for backend, claim in held:
            step = "commit" if delivered else "release"
            try:
                if delivered:
                    await backend.commit(key, claim, self.ttl)
                else:
                    await backend.release(key, claim)
            except BackendUnavailable as error:
                # commit lost: a restart or another replica may forward a repeat; release lost:
                # the claim expires by itself. Either way the answer to this request stands.
                log.error(
                    f"dedup {step} failed",
                    extra={"backend": backend.name, "detail": str(error)},
                )
