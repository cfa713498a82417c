"""A postback read from the history, as the inspector shows it: a row of the search, the
journal entry its steps and replay line are told from (`present.py`, as for a live one), and
the delivery a duplicate repeats. Data for the templates, which escape it; nothing here
builds HTML, and every link is a path of ours with its values quoted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import Outcome
from ..history.search import Recorded
from ..journal import Entry
from ..record import RequestRecord, UpstreamAttempt

AS_SENT_PAIRS = 8  # of a refused postback's query, shown in its row
AS_SENT_CHARS = 300


def page_of(request_id: str) -> str:
    return f"/history/{quote(request_id, safe='')}"


def trace_of(row: Recorded) -> str | None:
    """The link to the trace of this postback's user: by telegram_id, else by ymid."""
    for name in ("telegram_id", "ymid"):
        if value := row.fields.get(name):
            return "/trace?" + urlencode({name: value})
    return None


def row_of(row: Recorded) -> dict[str, Any]:
    """One line of the search's table."""
    fields = row.fields
    return {
        "id": row.id,
        "at": row.at,
        "replica": row.replica,
        "route": row.route or "",
        "outcome": row.outcome,
        "reason": row.reason or "",
        "status": "" if row.status is None else row.status,
        "ymid": fields.get("ymid", ""),
        "telegram_id": fields.get("telegram_id", ""),
        "event_type": fields.get("event_type", ""),
        "zone_id": fields.get("zone_id", ""),
        "as_sent": as_sent(row) if row.as_sent else None,
        "repeats": row.repeats,
        "client": row.client or "",
        "request_id": row.request_id,
        "page": page_of(row.request_id),
        "trace": trace_of(row),
    }


def as_sent(row: Recorded) -> str:
    """A postback refused before normalizing, as the sender wrote it: `uid=... event=...`
    (its query, the key already removed)."""
    pairs = query_of(row)
    shown = " ".join(f"{name}={value}" for name, value in pairs[:AS_SENT_PAIRS])
    if len(pairs) > AS_SENT_PAIRS or len(shown) > AS_SENT_CHARS:
        shown = shown[:AS_SENT_CHARS] + " …"
    return shown


def query_of(row: Recorded) -> list[tuple[str, str]]:
    return [(str(name), str(value)) for name, value in row.detail.get("query") or []]


def entry_of(row: Recorded) -> Entry:
    """The journal entry this row was made from, as far as the history keeps it: enough for
    the steps and the replay line, which are told the same way for both."""
    detail = row.detail
    passed = list(detail.get("passed") or [])
    record = RequestRecord(
        row.request_id,
        route=row.route,
        peer=detail.get("peer"),
        client=row.client,
        outcome=row.outcome,
        reason=row.reason,
        detail=detail.get("detail"),
        # the values as sent are no canonical fields: the normalize step never ran on them
        fields=dict(row.fields) if "normalize" in passed else None,
        query=query_of(row) if "query" in detail else None,
        upstream_status=detail.get("upstream_status"),
        caller_request_id=row.caller_request_id,
        dropped=list(detail.get("dropped") or []),
        passed=passed,
        failed_check=detail.get("failed_check"),
        dedup_key=bytes.fromhex(row.dedup_key) if row.dedup_key else None,
        let_in_by_log_only=bool(detail.get("let_in_by_log_only")),
        key_valid=bool(detail.get("key_valid")),
        ymid_check=detail.get("ymid_check"),
        attempts=[_attempt(attempt) for attempt in row.attempts],
    )
    status = row.status if row.status is not None else 0
    return Entry(0, row.at, record, status, float(detail.get("latency_ms") or 0.0))


def _attempt(kept: dict[str, Any]) -> UpstreamAttempt:
    return UpstreamAttempt(
        str(kept.get("upstream", "")),
        kept.get("status"),
        kept.get("error"),
        float(kept.get("latency_ms") or 0.0),
        str(kept.get("body_head") or ""),
        float(kept.get("at") or 0.0),
    )


def delivered(row: Recorded) -> bool:
    """Whether this postback committed its event's key: the app took it (forwarded, not
    refused) or the store did (queued). Only such a postback makes later copies duplicates."""
    return row.outcome == Outcome.QUEUED or (row.outcome == Outcome.FORWARDED and not row.reason)


def original_of(duplicate: Recorded, rows: Sequence[Recorded]) -> Recorded | None:
    """The delivery a duplicate repeats, among `rows` (its user's): the same event (dedup
    key), delivered, the latest before it. Replicas' clocks differ a little, so if every such
    delivery is stamped after the duplicate, the nearest one."""
    if duplicate.dedup_key is None:
        return None
    taken = [
        row
        for row in rows
        if row.id != duplicate.id and row.dedup_key == duplicate.dedup_key and delivered(row)
    ]
    before = [row for row in taken if row.at <= duplicate.at]
    if before:
        return max(before, key=lambda row: (row.at, row.id))
    return min(taken, key=lambda row: row.at, default=None)


def clock_ms(at: float) -> str:
    """UTC to the millisecond: the history's rows from two replicas can share a second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"
