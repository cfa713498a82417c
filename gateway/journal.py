"""The journal of recent postbacks, kept by the runtime and read by the inspector: the last N
postbacks, and an hour of per-minute counts.

Both live in this process's memory only and are gone at restart. A postback's entry is its
`RequestRecord` (the query minus the key, the normalized fields, each check passed, each
upstream attempt) plus its answer; it stays until N newer ones push it out. The minute counts
are kept for every postback, whatever N is, so the overview's chart is complete even when the
list is off (`server.recent_postbacks: 0`).

`add` is on the hot path of every postback: a deque append, a dict insert and a few counter
increments, nothing that grows with N.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import OUTCOME_WHEN_UNSET
from .record import RequestRecord, UpstreamAttempt

MINUTES = 60  # the overview's window
# upper bounds (ms) of the latency buckets the overview estimates percentiles from
LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, float("inf"))


@dataclass(frozen=True)
class Filters:
    """The list's filters; an empty one matches everything. `text` is looked for in the
    ymid, the telegram_id and both request ids (in every value of the query, for a postback
    refused before its fields were normalized)."""

    route: str = ""
    outcome: str = ""
    reason: str = ""
    text: str = ""


@dataclass(slots=True)
class Entry:
    """One postback as the inspector shows it."""

    number: int  # this process's sequence number: the page asks for entries after one
    at: float  # epoch seconds, when it was answered
    record: RequestRecord
    status: int  # the gateway's answer
    latency_ms: float

    @property
    def attempts(self) -> list[UpstreamAttempt]:
        return self.record.attempts  # the sync path's, then the deliverer's

    def matches(self, filters: Filters) -> bool:
        record, text = self.record, filters.text
        if filters.route and record.route != filters.route:
            return False
        if filters.outcome and record.outcome != filters.outcome:
            return False
        if filters.reason and record.reason != filters.reason:
            return False
        if not text:
            return True
        fields = record.fields
        if fields is None:  # refused before normalizing: its values under the sender's names
            fields = {"query": " ".join(value for _, value in record.query or ())}
        searched = (
            fields.get("ymid"),
            fields.get("telegram_id"),
            fields.get("query"),
            record.request_id,
            record.caller_request_id,
        )
        return any(value is not None and text in value for value in searched)


def _buckets() -> list[int]:
    return [0] * len(LATENCY_BOUNDS_MS)


def _observe(buckets: list[int], latency_ms: float) -> None:
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            buckets[index] += 1
            return


@dataclass(slots=True)
class Minute:
    """One route's counts for one minute."""

    minute: int  # epoch minutes
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    app_statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "no answer"
    latency: list[int] = field(default_factory=_buckets)  # the gateway's answer, end to end
    app_latency: list[int] = field(default_factory=_buckets)  # each attempt at the app

    def app_attempt(self, attempt: UpstreamAttempt) -> None:
        self.app_statuses[_status_of(attempt)] += 1
        _observe(self.app_latency, attempt.latency_ms)


class Journal:
    def __init__(self, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # the wall clock its minutes and entries are timed by
        self._numbers = itertools.count(1)
        self._entries: deque[Entry] = deque(maxlen=capacity or 1)
        self._by_request: dict[str, Entry] = {}
        self._minutes: dict[str, deque[Minute]] = {}
        self.capacity = capacity

    # -- recording (the hot path) ------------------------------------------------------------

    def add(self, record: RequestRecord, status: int, seconds: float) -> None:
        now = self.clock()
        latency_ms = round(seconds * 1000, 2)
        self._count(record, now, latency_ms)
        if not self.capacity:
            return
        if len(self._entries) == self._entries.maxlen:
            oldest = self._entries[0]
            self._by_request.pop(oldest.record.request_id, None)
        entry = Entry(next(self._numbers), now, record, status, latency_ms)
        self._entries.append(entry)
        self._by_request[record.request_id] = entry

    def attempted(self, request_id: str, attempt: UpstreamAttempt) -> None:
        """A queued event's delivery attempt, made later by the deliverer (any event this
        process still remembers; a replica delivering another's event has none)."""
        entry = self._by_request.get(request_id)
        if entry is not None:
            entry.record.attempts.append(attempt)
        route = entry.record.route if entry is not None else None
        if route is not None:
            self._minute(route, int(attempt.at // 60)).app_attempt(attempt)

    def resize(self, capacity: int) -> None:
        """A reload changed `recent_postbacks`: keep the newest that still fit."""
        if capacity == self.capacity:
            return
        kept = list(self._entries)[-capacity:] if capacity else []
        self._entries = deque(kept, maxlen=capacity or 1)
        self._by_request = {entry.record.request_id: entry for entry in kept}
        self.capacity = capacity

    def _count(self, record: RequestRecord, now: float, latency_ms: float) -> None:
        minute = self._minute(record.route or "", int(now // 60))
        minute.outcomes[record.outcome or OUTCOME_WHEN_UNSET] += 1
        if record.reason:
            minute.reasons[record.reason] += 1
        for attempt in record.attempts:
            minute.app_attempt(attempt)
        _observe(minute.latency, latency_ms)

    def _minute(self, route: str, minute: int) -> Minute:
        minutes = self._minutes.get(route)
        if minutes is None:
            minutes = self._minutes[route] = deque(maxlen=MINUTES)
        if not minutes or minutes[-1].minute < minute:
            minutes.append(Minute(minute))
            return minutes[-1]
        for kept in reversed(minutes):  # a late attempt for an earlier minute
            if kept.minute <= minute:
                return kept
        return minutes[0]

    # -- reading (the pages) -----------------------------------------------------------------

    def recent(self, filters: Filters = Filters(), after: int = 0, limit: int = 100) -> list[Entry]:
        """The newest entries first, filtered, newer than `after`, at most `limit`."""
        found: list[Entry] = []
        for entry in reversed(self._entries):
            if entry.number <= after or len(found) >= limit:
                break
            if entry.matches(filters):
                found.append(entry)
        return found

    def get(self, number: int) -> Entry | None:
        for entry in reversed(self._entries):
            if entry.number == number:
                return entry
            if entry.number < number:
                break
        return None

    @property
    def newest(self) -> int:
        return self._entries[-1].number if self.capacity and self._entries else 0

    def last_hour(self, route: str, now: float | None = None) -> list[Minute]:
        """A Minute for each of the last 60 (empty ones included), oldest first."""
        current = int((now if now is not None else self.clock()) // 60)
        kept = {minute.minute: minute for minute in self._minutes.get(route, ())}
        return [
            kept.get(number) or Minute(number)
            for number in range(current - MINUTES + 1, current + 1)
        ]


def _status_of(attempt: UpstreamAttempt) -> str:
    return str(attempt.status) if attempt.status is not None else "no answer"
