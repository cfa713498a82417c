"""What each check made of one postback, in words: the one renderer `fire` and the inspector
share. The key's value is never at hand (the record holds the query without it): where it
travelled is said, never what it was."""

from __future__ import annotations

from collections.abc import Callable

from .config import RouteConfig
from .record import RequestRecord


def passed(step: str, record: RequestRecord, route: RouteConfig | None) -> str:
    """What a check the postback passed found (`route`: its config, None if a reload removed
    it)."""
    return _PASSED.get(step, _ok)(record, route)


def failed(record: RequestRecord) -> str:
    """Why the postback was refused where it was."""
    return f"{record.outcome} ({record.reason}): {record.detail or 'no detail'}"


def _client(record: RequestRecord, route: RouteConfig | None) -> str:
    if record.peer and record.peer != record.client:
        return f"{record.client}, from X-Forwarded-For: the peer {record.peer} is a trusted proxy"
    return f"{record.client}, the TCP peer (no X-Forwarded-For from a trusted proxy)"


def _allowlist(record: RequestRecord, route: RouteConfig | None) -> str:
    if record.let_in_by_log_only:
        return f"{record.client} is not allowed, let in by allow_ips_mode: log_only"
    if route is not None and route.allow_ips is None:
        return "no allow_ips on this route: any address"
    return f"{record.client} is allowed"


def _secret(record: RequestRecord, route: RouteConfig | None) -> str:
    if route is None or route.secret is None:
        return "no secret on this route"
    return f"a valid key in the {route.secret.location} (its value is never kept)"


def _normalize(record: RequestRecord, route: RouteConfig | None) -> str:
    dropped = f"; not passed on: {', '.join(record.dropped)}" if record.dropped else ""
    return f"{len(record.fields or {})} canonical field(s){dropped}"


def _session(record: RequestRecord, route: RouteConfig | None) -> str:
    if route is None or route.sessions is None:
        return "no sessions on this route"
    user = (record.fields or {}).get("telegram_id")
    if record.ymid_check == "verified":
        return f"a ymid the gateway issued to user {user}, still valid: forwarded as that user"
    return f"{record.detail or record.ymid_check}"


def _ok(record: RequestRecord, route: RouteConfig | None) -> str:
    return "ok"


# by check name (route.STEPS); a check without an entry passed with nothing more to say
_PASSED: dict[str, Callable[[RequestRecord, RouteConfig | None], str]] = {
    "client": _client,
    "allowlist": _allowlist,
    "secret": _secret,
    "normalize": _normalize,
    "session": _session,
}
