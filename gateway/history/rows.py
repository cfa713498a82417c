"""A finished postback (`RequestRecord`) as the row the history keeps, and a later delivery's.

Built off the serving path, in the recorder's flush. What a row holds is what the inspector
shows: the query already without the route's key parameter (the pipeline removes it before
the record sees it), never a header, so never the admin token either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..postback import CANONICAL_FIELDS
from ..record import RequestRecord, UpstreamAttempt
from .search import COLUMNS, DELIVERY_COLUMNS, FIELD_COLUMNS

Row = tuple[Any, ...]  # values in search.COLUMNS order
DeliveryRow = tuple[Any, ...]  # values in search.DELIVERY_COLUMNS order
MAX_VALUE_CHARS = 512  # a sent value kept in a column; the query in `detail` is bounded too
NamesOf = Callable[[str], Mapping[str, str]]  # a route's aliases: sent name -> canonical

_CANONICAL = frozenset(CANONICAL_FIELDS)


def row_of(
    record: RequestRecord,
    status: int | None,
    at: float,
    latency_ms: float,
    replica: str,
    names_of: NamesOf,
    repeats: int = 1,
) -> Row:
    fields = record.fields
    as_sent = fields is None and record.query is not None and record.route is not None
    if fields is None:
        fields = _as_sent(record, names_of) if as_sent else {}
    detail: dict[str, Any] = {
        "query": record.query,
        "dropped": record.dropped or None,
        "passed": record.passed,
        "failed_check": record.failed_check,
        "detail": record.detail,
        "peer": record.peer,
        "upstream_status": record.upstream_status,
        "latency_ms": latency_ms,
        "attempts": [attempt._asdict() for attempt in record.attempts],
    }
    if as_sent:
        detail["as_sent"] = True
    if record.let_in_by_log_only:
        detail["let_in_by_log_only"] = True
    if record.key_valid:  # with the two below: whether the inspector may offer a replay
        detail["key_valid"] = True
    if record.ymid_check is not None:
        detail["ymid_check"] = record.ymid_check
    values: list[Any] = [
        at,
        replica,
        record.route,
        record.request_id,
        record.caller_request_id,
        record.client,
        record.outcome,
        record.reason,
        status,
        *(fields.get(name) for name in FIELD_COLUMNS),
        record.dedup_key.hex() if record.dedup_key is not None else None,
        repeats,
        orjson.dumps({k: v for k, v in detail.items() if v is not None}).decode(),
    ]
    assert len(values) == len(COLUMNS)
    return tuple(values)


def delivery_row_of(
    request_id: str,
    route: str | None,
    state: str,
    attempt: UpstreamAttempt | None,
    replica: str,
    at: float,
    upstream: str = "",
) -> DeliveryRow:
    """A later delivery attempt and the state it left the delivery in; `attempt` None: a
    state change without a try (a re-drive)."""
    values = (
        attempt.at if attempt is not None else at,
        replica,
        request_id,
        route,
        attempt.upstream if attempt is not None else upstream,
        state,
        attempt.status if attempt is not None else None,
        attempt.error if attempt is not None else None,
        attempt.latency_ms if attempt is not None else None,
        attempt.body_head if attempt is not None else None,
    )
    assert len(values) == len(DELIVERY_COLUMNS)
    return values


def _as_sent(record: RequestRecord, names_of: NamesOf) -> dict[str, str]:
    """A postback refused before normalizing: the canonical fields found under the route's
    names, as sent (cut to MAX_VALUE_CHARS), so a search for the user finds the refusal."""
    assert record.query is not None and record.route is not None
    aliases = names_of(record.route)
    found: dict[str, str] = {}
    for name, value in record.query:
        canonical = aliases.get(name, name if name in _CANONICAL else None)
        if canonical is not None and value and canonical not in found:
            found[canonical] = value[:MAX_VALUE_CHARS]
    return found
