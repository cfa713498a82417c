"""What the history can be asked (`Search`), and what it answers: `Recorded` postbacks and
the `LaterDelivery` rows of queued ones. Both stores answer the same questions the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000

# the columns of a postback's row, in the stores' order; the normalized fields among them
FIELD_COLUMNS = (
    "ymid",
    "telegram_id",
    "zone_id",
    "sub_zone_id",
    "event_type",
    "reward_event_type",
    "estimated_price",
    "request_var",
)
COLUMNS = (
    "at",
    "replica",
    "route",
    "request_id",
    "caller_request_id",
    "client",
    "outcome",
    "reason",
    "status",
    *FIELD_COLUMNS,
    "dedup_key",
    "repeats",
    "detail",
)
DELIVERY_COLUMNS = (
    "at",
    "replica",
    "request_id",
    "route",
    "upstream",
    "state",
    "status",
    "error",
    "latency_ms",
    "body_head",
)


@dataclass(frozen=True)
class Search:
    """Every filter given must match; `request_id` matches ours or the caller's. Newest
    first, from `until` back to `since` (epoch seconds), at most `limit`."""

    telegram_id: str | None = None
    ymid: str | None = None
    request_id: str | None = None
    route: str | None = None
    outcome: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    before_id: int | None = None  # the next page: rows older than the last one shown

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")

    def conditions(self) -> list[tuple[str, Any]]:
        """(column, value) for each equality filter given (request_id aside)."""
        pairs = (
            ("telegram_id", self.telegram_id),
            ("ymid", self.ymid),
            ("route", self.route),
            ("outcome", self.outcome),
            ("reason", self.reason),
        )
        return [(column, value) for column, value in pairs if value]


@dataclass(frozen=True)
class Recorded:
    """One postback as the history kept it. `fields` are the normalized values, or for a
    postback refused before normalizing, the values as sent under the route's names
    (`detail["as_sent"]`). `repeats` > 1: an aggregate of that many unauthenticated refusals
    from one address (budget.py)."""

    id: int
    at: float
    replica: str
    route: str | None
    request_id: str
    caller_request_id: str | None
    client: str | None
    outcome: str
    reason: str | None
    status: int | None
    fields: dict[str, str]
    dedup_key: str | None
    repeats: int
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row_id: int, values: dict[str, Any], detail: dict[str, Any]) -> Recorded:
        return cls(
            id=row_id,
            at=values["at"],
            replica=values["replica"],
            route=values["route"],
            request_id=values["request_id"],
            caller_request_id=values["caller_request_id"],
            client=values["client"],
            outcome=values["outcome"],
            reason=values["reason"],
            status=values["status"],
            fields={name: values[name] for name in FIELD_COLUMNS if values[name] is not None},
            dedup_key=values["dedup_key"],
            repeats=values["repeats"],
            detail=detail,
        )

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """The sync path's tries at the app: upstream, status, error, latency_ms, body_head, at."""
        attempts: list[dict[str, Any]] = self.detail.get("attempts", [])
        return attempts

    @property
    def as_sent(self) -> bool:
        return bool(self.detail.get("as_sent"))


@dataclass(frozen=True)
class ReportLine:
    """One group of `history report`: its keys (day, zone, route as asked), then counts."""

    groups: dict[str, str | None]
    outcome: str
    event_type: str | None
    count: int
    revenue: float

    @classmethod
    def of(cls, groups: Sequence[str], row: Sequence[Any]) -> ReportLine:
        """From a report row: the groups' values, outcome, event_type, count, revenue."""
        named = zip(groups, row[: len(groups)], strict=True)
        keys = {name: None if value is None else str(value) for name, value in named}
        outcome, event_type, count, revenue = row[len(groups) :]
        return cls(keys, outcome, event_type, int(count), round(float(revenue or 0), 6))


@dataclass(frozen=True)
class LaterDelivery:
    """A queued event's delivery attempt made after its postback was answered, with the state
    it left the delivery in (delivered, retry, dead); or a re-drive (state `redriven`)."""

    at: float
    replica: str
    request_id: str
    route: str | None
    upstream: str
    state: str
    status: int | None
    error: str | None
    latency_ms: float | None
    body_head: str | None

    @classmethod
    def of(cls, values: dict[str, Any]) -> LaterDelivery:
        return cls(**{name: values[name] for name in DELIVERY_COLUMNS})


def user_key(telegram_id: str | None, ymid: str | None) -> tuple[str, str]:
    """The one user key a purge or a trace is for: (column, value). ValueError if not one."""
    if (telegram_id is None) == (ymid is None):
        raise ValueError("give one of --telegram-id or --ymid")
    return ("telegram_id", telegram_id) if telegram_id is not None else ("ymid", ymid or "")
