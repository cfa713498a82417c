"""A ymid's status for the Mini App's frontend, from what the history holds about it, and the
watch that holds `?wait=` requests until it changes.

The states: `pending` (issued, still valid, no postback accepted yet), `rewarded` (the app
accepted a postback for it: forwarded and answered 2xx, or queued and delivered), `refused`
(a postback for it was refused, by the gateway or the app, and none was accepted) and
`expired` (past its expiry with no postback accepted). Read from the store, so any replica
answers for any ymid; the history is written every half second, so a state shows within
about a second of the postback.

The watch asks the store once per POLL_SECONDS for every ymid some frontend asks about or
waits on, in one query, however many there are: a thousand waiting frontends cost one query
per poll, not a thousand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .durable.outbox import StoreError
from .errors import Outcome
from .history.sessions import SessionEvent

log = logging.getLogger("gateway.sessions")
POLL_SECONDS = 0.5
MAX_WAIT_SECONDS = 30.0  # the longest `?wait=` honoured: below common proxy read timeouts
MAX_WAITING = 10_000  # frontends waiting at once per replica; past it, 503
_REFUSED_OUTCOMES = frozenset({Outcome.REJECTED, Outcome.INVALID})
_DELIVERED, _DEAD = "delivered", "dead"


@dataclass(frozen=True)
class Status:
    state: str  # pending, rewarded, refused, expired
    event_type: str | None = None
    at: float | None = None
    reason: str | None = None

    def body(self, ymid: str, expires: int) -> dict[str, object]:
        shown: dict[str, object] = {"ymid": ymid, "state": self.state, "expires": expires}
        if self.event_type is not None:
            shown["event_type"] = self.event_type
        if self.at is not None:
            shown["at"] = round(self.at, 3)
        if self.reason is not None:
            shown["reason"] = self.reason
        return shown


def status_of(events: Sequence[SessionEvent], route: str, expires: int, now: float) -> Status:
    """What the history's lines for one ymid (oldest first) say. Accepted wins over refused
    (a stranger's forged postback for the ymid must not hide Monetag's genuine one), and a
    duplicate says nothing new."""
    refused: Status | None = None
    waiting = False  # queued, not delivered yet
    for event in events:
        if event.route != route:
            continue
        if event.outcome == Outcome.FORWARDED and event.reason is None:
            return Status("rewarded", event.event_type, event.at)
        if event.outcome == Outcome.QUEUED:
            if event.delivery == _DELIVERED:
                return Status("rewarded", event.event_type, event.at)
            if event.delivery == _DEAD:
                refused = refused or Status("refused", event.event_type, event.at, "app_refused")
            else:
                waiting = True
        elif event.outcome == Outcome.FORWARDED:  # the app answered 4xx: its refusal
            refused = refused or Status("refused", event.event_type, event.at, "app_refused")
        elif event.outcome in _REFUSED_OUTCOMES:
            refused = refused or Status("refused", event.event_type, event.at, event.reason)
    if waiting:
        return Status("pending")
    if refused is not None:
        return refused
    return Status("expired") if expires < now else Status("pending")


@dataclass
class _Waiter:
    route: str
    expires: int
    seen: Status
    changed: asyncio.Future[Status]


Read = Callable[[Sequence[str]], Awaitable[list[SessionEvent]]]


class StatusWatch:
    """Every status question of a replica goes through one poll of the store, at most one
    per POLL_SECONDS: a status asked now joins the next poll (at once if none ran lately), a
    `?wait=` request is answered by the first poll that sees its state change. However many
    frontends ask or wait, the store sees one query per half second, and a flood of status
    requests cannot become a flood of queries."""

    def __init__(
        self,
        read: Read,
        on_waiting: Callable[[int], None] = lambda count: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read = read
        self._on_waiting = on_waiting
        self._clock = clock
        self._asked: dict[str, list[asyncio.Future[list[SessionEvent]]]] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._count = 0
        self._last_poll = -POLL_SECONDS
        self._poller: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        return self._count >= MAX_WAITING

    async def status(self, ymid: str, route: str, expires: int) -> Status:
        """The status now (as of the next poll); StoreError if the store failed."""
        asked: asyncio.Future[list[SessionEvent]] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(ymid, []).append(asked)
        self._start_polling()
        events = await asked
        return status_of(events, route, expires, self._clock())

    async def changed(
        self, ymid: str, route: str, expires: int, seen: Status, wait: float
    ) -> Status:
        """The status once it is no longer `seen`, or `seen` again when `wait` has passed."""
        changed: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(route, expires, seen, changed)
        self._waiters.setdefault(ymid, []).append(waiter)
        self._count += 1
        self._on_waiting(self._count)
        self._start_polling()
        try:
            return await asyncio.wait_for(asyncio.shield(changed), wait)
        except TimeoutError:
            return seen
        finally:
            self._forget(ymid, waiter)

    def _start_polling(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())

    def _forget(self, ymid: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(ymid, [])
        if waiter in waiters:
            waiters.remove(waiter)
            self._count -= 1
            self._on_waiting(self._count)
        if not waiters:
            self._waiters.pop(ymid, None)

    async def _poll(self) -> None:
        while self._asked or self._waiters:
            await asyncio.sleep(max(0.0, self._last_poll + POLL_SECONDS - time.monotonic()))
            self._last_poll = time.monotonic()
            asked, self._asked = self._asked, {}
            ymids = list(dict.fromkeys([*asked, *self._waiters]))
            try:
                events = await self._read(ymids)
            except StoreError as error:
                log.warning("ymid status not read", extra={"detail": str(error)})
                for futures in asked.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(error)
                continue
            by_ymid: dict[str, list[SessionEvent]] = {}
            for event in events:
                by_ymid.setdefault(event.ymid, []).append(event)
            for ymid, futures in asked.items():
                for future in futures:
                    if not future.done():
                        future.set_result(by_ymid.get(ymid, []))
            now = self._clock()
            for ymid, waiters in self._waiters.items():
                for waiter in waiters:
                    found = status_of(by_ymid.get(ymid, []), waiter.route, waiter.expires, now)
                    if found != waiter.seen and not waiter.changed.done():
                        waiter.changed.set_result(found)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
