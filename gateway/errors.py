"""The one family of errors the request path raises; `outcome.py` turns them into answers.

Each error class knows the HTTP status, the `X-Gateway-Outcome` value and its named `reason`
(`secret_missing`, `xff_unparseable`, ...), which goes to the log line and, for rejections,
to the `reason` label of `gateway_rejections_total`: `reasons_for()` derives that closed set
from the classes here, so a new reason is one new class. `Reason` names the few a request
carries with no error (a refusal passed back, a shutdown). Handlers never build error responses
by hand: they raise one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Outcome:
    """Values of the `X-Gateway-Outcome` response header."""

    FORWARDED = "forwarded"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    INVALID = "invalid"
    UPSTREAM_ERROR = "upstream_error"
    NOT_FOUND = "not_found"
    FILTERED = "filtered"
    OVERLOADED = "overloaded"
    QUEUED = "queued"
    STORE_ERROR = "store_error"
    CUT_OFF = "cut_off"  # never sent: the gateway stopped before it could answer (log only)


REJECTIONS = (Outcome.REJECTED, Outcome.INVALID, Outcome.FILTERED)  # counted by reason
# counted and shown for a request whose record names no outcome (every ending sets one: a bug)
OUTCOME_WHEN_UNSET = Outcome.UPSTREAM_ERROR


class Reason:
    """Reasons no error class carries: in the log line and the inspector, never a metric label
    (neither outcome is a rejection)."""

    UPSTREAM_REFUSED = "upstream_refused"  # forwarded: the app answered 4xx, passed back as is
    SHUTDOWN = "shutdown"  # cut_off: the gateway stopped before it could answer


class GatewayError(Exception):
    """A request stopped by a step of the pipeline, with the answer to give."""

    status: int = 500
    outcome: str = Outcome.UPSTREAM_ERROR
    reason: str = "internal_error"  # short, stable: logs and metric labels

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)
        self.detail = detail  # human explanation for the log line; never a secret
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "error": self.reason}


def reasons_for(outcomes: tuple[str, ...]) -> frozenset[str]:
    """Every reason an error with one of these outcomes can carry: a closed label set."""
    found: set[str] = set()
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        if kind.outcome in outcomes and "reason" in vars(kind):
            found.add(kind.reason)
    return frozenset(found)


# -- route -----------------------------------------------------------------------------------------


class RouteNotFound(GatewayError):
    status = 404
    outcome = Outcome.NOT_FOUND
    reason = "unknown_path"


class MethodNotAllowed(GatewayError):
    """Only GET carries a postback; HEAD or POST must never grant a reward."""

    status = 405
    outcome = Outcome.REJECTED
    reason = "method_not_allowed"

    def __init__(self, method: str) -> None:
        super().__init__(f"{method} is not GET")
        self.headers["Allow"] = "GET"


class QueryTooLong(GatewayError):
    status = 414
    outcome = Outcome.INVALID
    reason = "query_too_long"

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"{length} bytes, limit {limit}")


class MalformedRequest(GatewayError):
    """Not valid HTTP: refused by aiohttp's parser before routing. `problem` is from a closed set
    (see http_server.py); the request's bytes are never echoed or logged: they may hold a key."""

    outcome = Outcome.INVALID
    reason = "malformed_request"

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "error": "malformed request", "problem": self.problem}


# -- who is calling, and may they ------------------------------------------------------------------


class Forbidden(GatewayError):
    """Caller is not allowed. The body says only "forbidden"; the reason goes to the log."""

    status = 403
    outcome = Outcome.REJECTED

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "error": "forbidden"}


class NoPeer(Forbidden):
    reason = "no_peer"


class PeerUnparseable(Forbidden):
    reason = "peer_unparseable"


class ForwardedForUnparseable(Forbidden):
    """A trusted proxy sent an X-Forwarded-For hop that is not an address."""

    reason = "xff_unparseable"


class AddressNotAllowed(Forbidden):
    reason = "ip_not_allowed"


class SecretMissing(Forbidden):
    reason = "secret_missing"


class SecretRepeated(Forbidden):
    """The key given more than once: which one would count?"""

    reason = "secret_repeated"


class SecretWrong(Forbidden):
    reason = "secret_wrong"


class YmidRefused(Forbidden):
    """On a route with sessions: the ymid is not one the gateway issued to this user, for this
    placement, still valid. The key alone does not pay. (No reason of its own: each kind
    below names one.)"""


class YmidNotIssued(YmidRefused):
    reason = "ymid_not_issued"


class YmidForged(YmidRefused):
    reason = "ymid_forged"


class YmidExpired(YmidRefused):
    reason = "ymid_expired"


class TelegramIdMismatch(YmidRefused):
    """Monetag's telegram_id is not the user the ymid was issued to."""

    reason = "telegram_id_mismatch"


class PlacementMismatch(YmidRefused):
    """The postback's request_var is not the placement the ymid was issued for."""

    reason = "placement_mismatch"


YMID_REFUSALS: dict[str, type[YmidRefused]] = {
    kind.reason: kind
    for kind in (YmidNotIssued, YmidForged, YmidExpired, TelegramIdMismatch, PlacementMismatch)
}


# -- what the postback says ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one parameter of a postback."""

    parameter: str
    problem: str


class InvalidPostback(GatewayError):
    """400 naming every parameter and its problem."""

    status = 400
    outcome = Outcome.INVALID

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.parameter}: {p.problem}" for p in problems))

    def body(self) -> dict[str, Any]:
        first = self.problems[0]
        return {
            "outcome": self.outcome,
            "error": "invalid postback",
            "parameter": first.parameter,
            "problem": first.problem,
            "problems": [{"parameter": p.parameter, "problem": p.problem} for p in self.problems],
        }


class NotUtf8(InvalidPostback):
    """A parameter whose bytes are not UTF-8 text."""

    reason = "not_utf8"


class AmbiguousFields(InvalidPostback):
    """A field given twice with different values: which one did Monetag mean?"""

    reason = "ambiguous_fields"


class InvalidFields(InvalidPostback):
    """Fields missing, empty or with values outside their rules."""

    reason = "invalid_fields"


class Filtered(GatewayError):
    """Verified and valid, but the route's `match` does not want it: 200, not forwarded."""

    status = 200
    outcome = Outcome.FILTERED
    reason = "filtered"

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome}


# -- dedup -----------------------------------------------------------------------------------------


class DuplicatePostback(GatewayError):
    """Already delivered within the TTL: answered 200 so the sender stops, never forwarded."""

    status = 200
    outcome = Outcome.DUPLICATE
    reason = "duplicate"

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome}


class DedupUnavailable(GatewayError):
    """A dedup backend (the store, Redis) cannot tell whether the event is new, and fails
    closed: better no reward now (the sender retries) than two. Its reason is the backend's
    (`store_unavailable`, `dedup_unavailable`: `BackendUnavailable.reason`)."""

    status = 503
    outcome = Outcome.STORE_ERROR

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason  # the backend's own, not the class's
        super().__init__(detail)
        self.headers["Retry-After"] = "5"


# -- forward, or store -----------------------------------------------------------------------------


class UpstreamUnavailable(GatewayError):
    """The first upstream gave no usable answer: 502 (504 if it timed out)."""

    status = 502
    outcome = Outcome.UPSTREAM_ERROR


class UpstreamDown(UpstreamUnavailable):
    """Connection errors, or 502/503/504, on every attempt."""

    reason = "upstream_unavailable"


class UpstreamTimeout(UpstreamUnavailable):
    status = 504
    reason = "upstream_timeout"


class UpstreamStatus(UpstreamUnavailable):
    """The app answered something that is neither acceptance nor refusal (5xx, 3xx)."""

    reason = "upstream_status"


class UpstreamBadResponse(UpstreamUnavailable):
    """An answer that is not clean HTTP, or that belongs to another event."""

    reason = "upstream_bad_response"


class StoreUnavailable(GatewayError):
    """The durable store failed: nothing is acknowledged that was not written; retry later."""

    status = 503
    outcome = Outcome.STORE_ERROR
    reason = "store_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = "5"


class Overloaded(GatewayError):
    """Too many requests in flight: the sender should come back rather than wait in a queue."""

    status = 503
    outcome = Outcome.OVERLOADED
    reason = "overloaded"

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} requests already in flight")
        self.headers["Retry-After"] = "1"
