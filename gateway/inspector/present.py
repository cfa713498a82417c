"""One postback as the inspector tells it: each step's verdict, and the curl line to replay it.

Everything here is data for the templates, which escape it; nothing here builds HTML. The
checks' verdicts come from `verdicts.py` (shared with `fire`); the curl line leaves the key
to the shell as `$MONETAG_SECRET`, and is offered only for a postback that authenticated
(`replay`): the live page and the recorded one decide it here, from the record's steps.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from urllib.parse import urlencode

from .. import verdicts
from ..config import GatewayConfig, RouteConfig
from ..errors import Outcome
from ..journal import Entry
from ..record import RequestRecord
from ..route import STEPS

PASSED, FAILED, SKIPPED, NOTED = "passed", "failed", "skipped", "noted"
# the outcomes the pages name, in the chart's order (cut_off is in the log and the history)
OUTCOMES = (
    Outcome.FORWARDED,
    Outcome.QUEUED,
    Outcome.DUPLICATE,
    Outcome.REJECTED,
    Outcome.INVALID,
    Outcome.FILTERED,
    Outcome.UPSTREAM_ERROR,
    Outcome.STORE_ERROR,
    Outcome.NOT_FOUND,
    Outcome.OVERLOADED,
)


@dataclass(frozen=True)
class Step:
    name: str
    state: str  # PASSED, FAILED, SKIPPED or NOTED
    verdict: str


def steps(entry: Entry, config: GatewayConfig, later_attempts: int | None = None) -> list[Step]:
    """Every step's verdict, in the order the gateway took them. `later_attempts`: for a
    postback read from the history, how many later deliveries it recorded (None: the live
    view, which counts the attempts this process saw)."""
    record = entry.record
    route = _route_of(entry, config)
    if record.route is None:
        return [Step("route", FAILED, record.detail or f"{record.outcome}: {record.reason}")]
    told = [
        Step("route", PASSED, f"{record.route} ({route.path if route else 'no longer in config'})")
    ]
    for step in STEPS:
        if step in record.passed:
            told.append(Step(step, PASSED, verdicts.passed(step, record, route)))
        elif step == record.failed_check:
            told.append(Step(step, FAILED, verdicts.failed(record)))
        else:
            told.append(Step(step, SKIPPED, "not reached"))
    if len(record.passed) < len(STEPS):
        return told
    told.append(_dedup(entry))
    told.append(_delivery(entry, later_attempts))
    return told


def _dedup(entry: Entry) -> Step:
    record = entry.record
    if record.outcome == Outcome.DUPLICATE:  # the gateway working, not a failure
        return Step(
            "dedup",
            NOTED,
            f"a duplicate: {record.detail or 'this event was delivered before'}; "
            "answered 200 so the sender stops, and not forwarded again",
        )
    return Step("dedup", PASSED, "new: not delivered before")


def _delivery(entry: Entry, later_attempts: int | None) -> Step:
    record = entry.record
    if record.outcome == Outcome.DUPLICATE:
        return Step("deliver", SKIPPED, "duplicates are not forwarded")
    if record.outcome == Outcome.QUEUED:
        seen = (
            f"{len(entry.attempts)} attempt(s) seen here"
            if later_attempts is None
            else f"{later_attempts} later attempt(s) recorded"
        )
        return Step("deliver", PASSED, f"stored, then delivered in the background ({seen})")
    if record.outcome == Outcome.FORWARDED:
        status = record.upstream_status
        state = PASSED if status is not None and 200 <= status < 300 else NOTED
        return Step("deliver", state, f"the app answered {status}")
    return Step("deliver", FAILED, verdicts.failed(record))


def _route_of(entry: Entry, config: GatewayConfig) -> RouteConfig | None:
    """The entry's route in the running config (None if a reload removed it)."""
    return next((r for r in config.routes if r.name == entry.record.route), None)


NOT_REPLAYABLE = (
    "not replayable: nobody authenticated this postback; replaying it with the key would "
    "grant what a stranger asked for"
)


@dataclass(frozen=True)
class Replay:
    """A postback page's replay section: the curl line, or why there is none."""

    curl: str | None
    withheld: str | None = None  # NOT_REPLAYABLE, when the postback never authenticated


def replay(entry: Entry, config: GatewayConfig) -> Replay | None:
    """The replay section of this postback's page (None: nothing to replay, e.g. no route)."""
    if not authenticated(entry.record):
        return Replay(None, NOT_REPLAYABLE)
    line = curl_line(entry, config)
    return Replay(line) if line is not None else None


def authenticated(record: RequestRecord) -> bool:
    """Whether someone with the right to send this postback sent it: its address passed the
    allowlist (or, let in by `allow_ips_mode: log_only`, it held the key), the key passed, and
    on a route with reward sessions its ymid was not refused (a refusal `sessions.mode:
    log_only` let in counts as one). Replayed with the key from the operator's shell, any
    other postback would turn a stranger's request into a real reward."""
    if "allowlist" not in record.passed or "secret" not in record.passed:
        return False  # refused by the client address, the allowlist or the key
    if record.let_in_by_log_only and not record.key_valid:
        return False  # an address allow_ips refuses, and no key to vouch for it
    # ymid_check: None on a route without sessions, "verified" for a ymid that pays
    return record.failed_check != "session" and record.ymid_check in (None, "verified")


def curl_line(entry: Entry, config: GatewayConfig) -> str | None:
    """The command that sends this postback to the gateway again, the key from the shell
    (https when the gateway serves TLS); None for a postback that never `authenticated`."""
    if not authenticated(entry.record):
        return None
    record = entry.record
    route = _route_of(entry, config)
    if route is None or record.query is None:
        return None
    scheme = "https" if config.server.tls else "http"
    url = f"{scheme}://{config.server.listen.from_here}{route.path}?{urlencode(record.query)}"
    words = ["curl", "-sS"]
    secret = route.secret
    if secret is not None and secret.query_param is not None:
        joiner = "&" if record.query else ""
        return " ".join(
            [
                *words,
                shlex.quote(f"{url}{joiner}{urlencode({secret.query_param: ''})}")
                + '"$MONETAG_SECRET"',
            ]
        )
    if secret is not None and secret.header is not None:
        words += ["-H", shlex.quote(f"{secret.header}: ") + '"$MONETAG_SECRET"']
    return " ".join([*words, shlex.quote(url)])
