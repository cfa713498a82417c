"""The one family of errors the request path raises; `outcome.py` turns them into answers.

Each error knows the HTTP status, the `X-Gateway-Outcome` value and a short machine reason
for the log. Handlers never build error responses by hand: they raise one of these.
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


class GatewayError(Exception):
    """A request stopped by a step of the pipeline, with the answer to give."""

    status: int = 500
    outcome: str = Outcome.UPSTREAM_ERROR

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.reason = reason  # short, stable, goes to logs (and later metric labels)
        self.detail = detail  # human explanation for the log line; never a secret
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "error": self.reason}


class RouteNotFound(GatewayError):
    status = 404
    outcome = Outcome.NOT_FOUND

    def __init__(self) -> None:
        super().__init__("unknown_path")


class MethodNotAllowed(GatewayError):
    """Only GET carries a postback; HEAD or POST must never grant a reward."""

    status = 405
    outcome = Outcome.REJECTED

    def __init__(self, method: str) -> None:
        super().__init__("method", f"{method} is not GET")
        self.headers["Allow"] = "GET"


class Forbidden(GatewayError):
    """Caller is not allowed. The body says only "forbidden"; the reason goes to the log."""

    status = 403
    outcome = Outcome.REJECTED

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "error": "forbidden"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one parameter of a postback."""

    parameter: str
    problem: str


class InvalidPostback(GatewayError):
    status = 400
    outcome = Outcome.INVALID

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        detail = "; ".join(f"{p.parameter}: {p.problem}" for p in problems)
        super().__init__("invalid", detail)

    def body(self) -> dict[str, Any]:
        first = self.problems[0]
        return {
            "outcome": self.outcome,
            "error": "invalid postback",
            "parameter": first.parameter,
            "problem": first.problem,
            "problems": [{"parameter": p.parameter, "problem": p.problem} for p in self.problems],
        }


class DuplicatePostback(GatewayError):
    """Already delivered within the TTL: answered 200 so the sender stops, never forwarded."""

    status = 200
    outcome = Outcome.DUPLICATE

    def __init__(self) -> None:
        super().__init__("duplicate")

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome}


class UpstreamUnavailable(GatewayError):
    """The first upstream could not be reached or kept failing: 502, or 504 on timeout."""

    outcome = Outcome.UPSTREAM_ERROR

    def __init__(self, reason: str, detail: str, *, timed_out: bool) -> None:
        super().__init__(reason, detail)
        self.status = 504 if timed_out else 502


class Filtered(GatewayError):
    """Verified and valid, but the route's `match` does not want it: 200, not forwarded."""

    status = 200
    outcome = Outcome.FILTERED

    def __init__(self, detail: str) -> None:
        super().__init__("filtered", detail)

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome}


class MalformedRequest(GatewayError):
    """Not valid HTTP: refused by aiohttp's parser before routing. `problem` is from a closed set
    (see http_server.py); the request's bytes are never echoed or logged: they may hold a key."""

    outcome = Outcome.INVALID

    def __init__(self, status: int, problem: str) -> None:
        super().__init__("malformed_request", problem)
        self.status = status
        self.problem = problem

    def body(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "error": "malformed request", "problem": self.problem}


class QueryTooLong(GatewayError):
    status = 414
    outcome = Outcome.INVALID

    def __init__(self, length: int, limit: int) -> None:
        super().__init__("query_too_long", f"{length} bytes, limit {limit}")


class Overloaded(GatewayError):
    """Too many requests in flight: the sender should come back rather than wait in a queue."""

    status = 503
    outcome = Outcome.OVERLOADED

    def __init__(self, limit: int) -> None:
        super().__init__("overloaded", f"{limit} requests already in flight")
        self.headers["Retry-After"] = "1"


class StoreUnavailable(GatewayError):
    """The durable store failed: nothing is acknowledged that was not written; retry later."""

    status = 503
    outcome = Outcome.STORE_ERROR

    def __init__(self, detail: str) -> None:
        super().__init__("store_unavailable", detail)
        self.headers["Retry-After"] = "5"


class DedupUnavailable(GatewayError):
    """A dedup backend (the store, Redis) cannot tell whether the event is new, and fails
    closed: better no reward now (the sender retries) than two. `reason` names the backend's
    failure (`store_unavailable`, `dedup_unavailable`)."""

    status = 503
    outcome = Outcome.STORE_ERROR

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.headers["Retry-After"] = "5"
