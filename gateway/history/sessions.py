"""Reward sessions in the history: the ymids the gateway issued, whether a postback came for
each, and what the history holds about them.

A `SessionRow` is written twice for one ymid, once when it is issued and once when a postback
verified against it, by whichever replicas did each, in either order: the store merges them
(sql.add_sessions) so both orders leave the same row. A ymid issued and never answered in
time is `Missed`; the sweep marks it once, across replicas, and puts a `no_postback` line in
the history for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import orjson

from .rows import Row
from .search import COLUMNS

NO_POSTBACK = "no_postback"  # history.outcome of a missed ymid's line


@dataclass(frozen=True)
class SessionRow:
    """One upsert into history_sessions."""

    ymid: str
    route: str
    placement: str | None  # the request_var bound when issued (None: none)
    telegram_id: str
    replica: str
    expires: float
    issued_at: float | None  # set when written for an issue
    postback_at: float | None  # set when written for a postback that verified against it

    def values(self) -> tuple[Any, ...]:
        """In SESSION_COLUMNS order, as the statements bind them."""
        return tuple(getattr(self, name) for name in SESSION_COLUMNS)


SESSION_COLUMNS = tuple(field.name for field in fields(SessionRow))


@dataclass(frozen=True)
class SessionEvent:
    """What the history holds about a ymid, for the status endpoint."""

    ymid: str
    route: str | None
    at: float
    outcome: str  # history.outcome: forwarded, queued, rejected, duplicate, ...
    reason: str | None
    status: int | None
    event_type: str | None
    request_id: str
    # the latest history_deliveries.state for request_id (queued routes: delivered, dead,
    # retry...), else None
    delivery: str | None


@dataclass(frozen=True)
class Missed:
    """An issued ymid that got no postback in time."""

    ymid: str
    route: str
    placement: str | None
    telegram_id: str
    issued_at: float

    def history_row(self, at: float, replica: str) -> Row:
        """Its line in the history, so a search for the user or the ymid shows the miss.
        Built by column name: a column added to the history cannot be left out unseen."""
        values: dict[str, Any] = {
            "at": at,
            "replica": replica,
            "route": self.route,
            # the full ymid (46 or 51 characters): unique, so `get` finds this line alone
            "request_id": f"no-postback-{self.ymid}",
            "caller_request_id": None,
            "client": None,
            "outcome": NO_POSTBACK,
            "reason": None,
            "status": None,
            "ymid": self.ymid,
            "telegram_id": self.telegram_id,
            "zone_id": None,
            "sub_zone_id": None,
            "event_type": None,
            "reward_event_type": None,
            "estimated_price": None,
            "request_var": self.placement,
            "dedup_key": None,
            "repeats": 1,
            "detail": orjson.dumps({"issued_at": self.issued_at}).decode(),
        }
        assert values.keys() == set(COLUMNS), set(COLUMNS) ^ values.keys()
        return tuple(values[name] for name in COLUMNS)


MISSED_COLUMNS = tuple(field.name for field in fields(Missed))


def oldest_first(missed: Iterable[Missed]) -> list[Missed]:
    """The order the sweep answers in (UPDATE ... RETURNING promises none)."""
    return sorted(missed, key=lambda one: (one.issued_at, one.ymid))


@dataclass(frozen=True)
class FillRate:
    """How many ymids issued for a placement got a postback, and how many were missed."""

    route: str
    placement: str | None
    issued: int
    postbacks: int  # issued ones that received a postback (postback_at set)
    no_postback: int  # issued ones marked missed
