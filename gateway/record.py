"""What the gateway learned about one postback, filled in step by step: the `RequestRecord`
(logged, counted and shown by the inspector at the end) and the `UpstreamAttempt`s it made."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

BODY_HEAD_BYTES = 200  # of the app's answer, kept with an attempt for the inspector


class UpstreamAttempt(NamedTuple):
    """One try at delivering a postback: what the app answered, or why nothing came.

    A tuple of plain values, so the garbage collector stops tracking it: the inspector keeps
    a thousand postbacks' attempts alive, and every tracked object they hold makes each
    collection longer."""

    upstream: str  # the upstream's label
    status: int | None  # None: no answer (timeout, connection error, bad response)
    error: str | None  # why no answer came, or with a status what was odd about the answer
    latency_ms: float
    body_head: str  # the answer's first bytes, undecodable ones replaced
    at: float

    @classmethod
    def answered(
        cls, upstream: str, status: int, body: bytes, seconds: float, note: str | None = None
    ) -> UpstreamAttempt:
        """An answer; `note` says what was odd about it (a body cut short), if anything."""
        head = body[:BODY_HEAD_BYTES].decode("utf-8", errors="replace")
        return cls(upstream, status, note, round(seconds * 1000, 2), head, time.time())

    @classmethod
    def failed(cls, upstream: str, error: str, seconds: float) -> UpstreamAttempt:
        return cls(upstream, None, error, round(seconds * 1000, 2), "", time.time())


@dataclass
class RequestRecord:
    """What the pipeline learned about one request, filled in step by step and logged at the end.

    `query` is set only once the route is known, with that route's secret parameter removed.
    """

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    peer: str | None = None  # the TCP peer, which the client address was resolved from
    client: str | None = None
    outcome: str | None = None
    reason: str | None = None
    detail: str | None = None
    fields: dict[str, str] | None = None
    query: list[tuple[str, str]] | None = None
    upstream_status: int | None = None
    caller_request_id: str | None = None  # the caller's X-Request-ID, for correlation only
    dropped: list[str] = field(default_factory=list)  # parameters not passed on (names only)
    passed: list[str] = field(default_factory=list)  # the checks passed (route.STEPS)
    failed_check: str | None = None  # the check that refused it, if one did
    dedup_key: bytes | None = None  # once verified: which event it is (a duplicate's link)
    outside_allowlist: bool = False  # its address is not in allow_ips (refused, or let in:)
    let_in_by_log_only: bool = False  # allow_ips would have refused it (allow_ips_mode: log_only)
    # it carried the route's key, checked (a route without a key never sets it); checked for
    # an address allow_ips refuses too, to tell Monetag's new addresses from a stranger's
    key_valid: bool = False
    # on a route with sessions: "verified", or why its ymid would not pay (reward_sessions.py)
    ymid_check: str | None = None
    ymid_check_enforced: bool = True  # sessions.mode enforce (False: log_only)
    ymid_expires: int | None = None  # a verified ymid's expiry (for the history's sessions)
    # where it went past the checks: "app" once forwarding began (a request may have been
    # written to it), "store" once a queued route began storing it
    handed_to: str | None = None
    attempts: list[UpstreamAttempt] = field(default_factory=list)  # the sync path's tries

    def log_fields(self, status: int | None) -> dict[str, Any]:
        fields = self.fields or {}
        return {
            "request_id": self.request_id,
            "route": self.route,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
            "status": status,
            "client": self.client,
            "ymid": fields.get("ymid"),
            "event_type": fields.get("event_type"),
            "zone_id": fields.get("zone_id"),
            "fields": self.fields,
            "upstream_status": self.upstream_status,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 2),
            "query": self.query,
            "dropped": self.dropped or None,
            "caller_request_id": self.caller_request_id,
        }
