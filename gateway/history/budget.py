"""What postbacks nobody authenticated may cost the history.

A postback refused before its key was checked, or with a wrong key, comes from anyone: kept
in full, a flood would fill the disk. Each minute, each address (an IPv6 /64 counts as one)
may leave PER_ADDRESS full rows, and all of them together TOTAL; past that, refusals are
counted into one aggregate row per (address, route, reason) with `repeats`, at most
MAX_AGGREGATES of them a minute (the rest into a single aggregate for "other addresses").
So a flood costs at most TOTAL + MAX_AGGREGATES + 1 rows a minute, whatever its size, and
since retention is by age, it never pushes real records out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..record import RequestRecord

WINDOW_SECONDS = 60.0
PER_ADDRESS = 20
TOTAL = 300
MAX_AGGREGATES = 100
OTHER_ADDRESSES = "other addresses"

AggregateKey = tuple[str, str | None, str | None, str | None]  # client, route, outcome, reason


@dataclass
class Aggregate:
    """Refusals past the budget, kept as one row: how many, and the last one (its time,
    answer and latency), whose row stands for them all."""

    repeats: int
    last: RequestRecord
    status: int | None
    at: float
    latency_ms: float


class Budget:
    def __init__(self) -> None:
        self._window_start = 0.0
        self._spent: dict[str, int] = {}
        self._total = 0
        self._aggregates: dict[AggregateKey, Aggregate] = {}
        self._aggregating_since = 0.0  # when the first of `_aggregates` came

    def admit(
        self, record: RequestRecord, status: int | None, at: float, latency_ms: float
    ) -> bool:
        """Whether this unauthenticated postback may be kept in full; if not it is counted
        into its aggregate. `take_aggregates` at each flush takes those of a closed window."""
        client = record.client
        if at - self._window_start >= WINDOW_SECONDS:
            self._window_start, self._spent, self._total = at, {}, 0
        sender = _sender(client)
        spent = self._spent.get(sender, 0)
        if spent < PER_ADDRESS and self._total < TOTAL:
            self._spent[sender] = spent + 1
            self._total += 1
            return True
        key: AggregateKey = (client or "", record.route, record.outcome, record.reason)
        if key not in self._aggregates and len(self._aggregates) >= MAX_AGGREGATES:
            key = (OTHER_ADDRESSES, None, record.outcome, None)
        aggregate = self._aggregates.get(key)
        if not self._aggregates:
            self._aggregating_since = at
        if aggregate is None:
            self._aggregates[key] = Aggregate(1, record, status, at, latency_ms)
        else:
            aggregate.repeats += 1
            aggregate.last, aggregate.status, aggregate.at = record, status, at
            aggregate.latency_ms = latency_ms
        return False

    def take_aggregates(self, now: float, *, all_of_them: bool = False) -> list[Aggregate]:
        """The aggregates, once the first is a window old (or, at shutdown, all): written as
        rows, so a flood leaves at most MAX_AGGREGATES + 1 of them a minute."""
        if not self._aggregates:
            return []
        if not all_of_them and now - self._aggregating_since < WINDOW_SECONDS:
            return []
        taken, self._aggregates = list(self._aggregates.values()), {}
        return taken


def _sender(client: str | None) -> str:
    """Who pays: the address, or its /64 for IPv6 (one host holds a whole /64)."""
    if not client or ":" not in client:
        return client or ""
    try:
        return str(ipaddress.IPv6Network((client, 64), strict=False))
    except ValueError:
        return client
