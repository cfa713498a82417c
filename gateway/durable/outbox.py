"""The outbox of `delivery: queued` routes: what it holds, and what every store offers it.

One event per accepted postback, one delivery per (event, upstream) with its own state:
`pending` (to send, at `next_attempt_at`), `delivered`, or `dead` (given up; re-drivable). An
event, its deliveries and its dedup key are written in one transaction: the acknowledgement
promises all three. `Outbox` is the interface: the embedded SQLite file (`sqlite_outbox.py`)
and PostgreSQL shared by replicas (`postgres_outbox.py`) each implement it, and the service,
the deliverer and the `queue` command use nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..dedup import Backend, DedupKey
from ..postback import Postback

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
RETRY = "retry"  # an attempt's result, not a state: the delivery stays pending
STATES = (PENDING, DELIVERED, DEAD)
MAX_KEPT_BODY = 2000  # of an app's answer kept with a dead letter


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A verified postback a queued route accepts, with what its acknowledgement promises."""

    route: str
    upstreams: Sequence[str]  # labels of the route's upstreams: one delivery each
    postback: Postback
    dedup_key: DedupKey
    dedup_expires_at: float
    request_id: str
    client: str
    accepted_at: float

    @property
    def idempotency_key(self) -> str:
        return self.dedup_key.hex()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to send to one upstream."""

    event_id: int
    route: str
    upstream: str
    attempts: int
    since: float  # accepted, or re-driven: queue.max_age counts from here
    postback: Postback
    request_id: str
    client: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one delivery attempt came to: DELIVERED, DEAD (with why), or RETRY at `retry_at`."""

    state: str
    error: str | None = None
    status: int | None = None
    body: str | None = None  # the app's answer, kept with a dead letter
    retry_at: float | None = None
    sends: int = 1  # requests written to the app: 2 when a stale connection made it resend


@dataclass(frozen=True, slots=True)
class RouteStats:
    route: str
    counts: dict[str, int]  # state -> deliveries
    oldest_pending_at: float | None


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    """One delivery in `queue list`."""

    event_id: int
    accepted_at: float
    route: str
    upstream: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    ymid: str | None


@dataclass(frozen=True, slots=True)
class DeliveryState:
    upstream: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    last_body: str | None
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One event in `queue show`, with each of its deliveries."""

    event_id: int
    route: str
    idempotency_key: str
    request_id: str
    client: str
    accepted_at: float
    postback: Postback
    deliveries: list[DeliveryState] = field(default_factory=list)


def storable_text(value: bytes | str) -> str:
    """Text taken from the app (a body, an error naming its bytes) as both stores keep it:
    valid UTF-8 (undecodable bytes replaced) without NUL, which PostgreSQL's text refuses."""
    if isinstance(value, str):
        value = value.encode("utf-8", errors="replace")  # a lone surrogate, if any
    return value.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def postback_of(fields: str, extras: str) -> Postback:
    """A postback as the outbox keeps it: its fields and extras as JSON text."""
    return Postback(json.loads(fields), tuple((name, value) for name, value in json.loads(extras)))


def routes_stats(rows: Sequence[tuple[str, str, int, float | None]]) -> list[RouteStats]:
    """(route, state, count, oldest pending acceptance) rows -> one RouteStats per route."""
    by_route: dict[str, RouteStats] = {}
    for route, state, count, oldest in rows:
        current = by_route.setdefault(route, RouteStats(route, {}, None))
        current.counts[state] = count
        if oldest is not None:
            by_route[route] = RouteStats(route, current.counts, oldest)
    return sorted(by_route.values(), key=lambda item: item.route)


class StoreError(Exception):
    """The store could not do what was asked (disk full, unreachable, failing over...)."""


class StoreRefusedContent(StoreError):
    """The store is up but refused what it was given (text it cannot hold): trying the same
    again would fail again."""


class Availability:
    """Whether the store takes writes now, told to a watcher at each change (not each use):
    an outage is logged once when it starts and once when it ends, whichever operation
    noticed. Set from the event loop's thread only."""

    __slots__ = ("_on_change", "up")

    def __init__(self) -> None:
        self.up = True
        self._on_change: Callable[[bool, str], None] = lambda up, detail: None

    def watch(self, on_change: Callable[[bool, str], None]) -> None:
        self._on_change = on_change

    def set(self, up: bool, detail: str = "") -> None:
        if up != self.up:
            self.up = up
            self._on_change(up, detail)


class Outbox(Protocol):
    """A durable store of queued events. Every method raises StoreError when the store fails."""

    @property
    def availability(self) -> Availability:
        """SQLite: whether writes commit; PostgreSQL: whether it answers."""
        ...

    @property
    def available(self) -> bool:
        """`availability.up`: False from a failure until the store works again."""
        ...

    def keys_for(self, hold: float) -> Backend:
        """The dedup backend that lives in this store, for a route whose deliveries take at
        most `hold` seconds (where replicas share the store, a reservation outlives that only
        if its holder died)."""
        ...

    async def open(self) -> None:
        """Connect, and create or upgrade the schema."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """The cheapest round trip to the store: StoreError if it cannot be reached."""
        ...

    async def enqueue(self, event: NewEvent) -> bool:
        """Store the event, its deliveries and its dedup key in one transaction; False (and
        nothing written) if the key is already known: a duplicate."""
        ...

    async def due(
        self,
        route: str,
        upstream: str,
        now: float,
        limit: int,
        busy: frozenset[int],
        lease: float,
    ) -> list[Delivery]:
        """Claim pending deliveries to this upstream whose time has come, oldest first, minus
        `busy` (those this process is attempting already). A claimed delivery is this
        process's for `lease` seconds or until recorded: where several processes share the
        store, no other one gets it meanwhile, and if this one dies the lease runs out and
        another takes it over. (One process alone: SQLite needs no lease.)"""
        ...

    async def record(self, delivery: Delivery, attempt: DeliveryResult, now: float) -> bool:
        """Record an attempt's result on its delivery; False, and nothing recorded, if the
        delivery was no longer this process's (its lease ran out and another took it)."""
        ...

    async def bury_orphans(self, targets: Mapping[str, Sequence[str]], now: float) -> int:
        """Dead-letter pending deliveries whose route or upstream (`targets`: route -> upstream
        labels) is no longer configured; they stay re-drivable."""
        ...

    async def relabel(self, renames: Mapping[str, Mapping[str, str]]) -> int:
        """Move deliveries from an upstream's old label to its new one (`renames`: route ->
        {old: new}), where the new one has none for the event yet. How many moved."""
        ...

    async def stats(self) -> list[RouteStats]: ...

    async def redrive(
        self, now: float, event_id: int | None = None, route: str | None = None
    ) -> int:
        """Dead deliveries (or one event's undelivered ones) back to pending, fresh budget."""
        ...

    async def purge_delivered(self, older_than: float) -> int:
        """Forget events delivered to every upstream before `older_than`; how many."""
        ...

    async def purge_expired_keys(self, now: float) -> int: ...

    async def count_keys(self) -> int: ...

    async def listing(
        self, state: str | None, route: str | None, limit: int
    ) -> list[DeliverySummary]:
        """Deliveries, newest event first."""
        ...

    async def show(self, event_id: int) -> EventDetail | None: ...

    def on_work(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever another process may have made work due (PostgreSQL: NOTIFY);
        within this process the service wakes the deliverer itself."""
        ...
