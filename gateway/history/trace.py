"""The reward trace: one user's postbacks (by telegram_id or ymid) as a timeline, and the one
sentence support reads first, e.g. "rewarded once at 12:01:07 (click, zone 8790478); 2 later
copies were duplicates".

The postbacks of one *event* (its ymid, event type and zone: Monetag's retries and copies)
are judged together: rewarded if the app took one of them (forwarded and answered 2xx, or
queued and later delivered); else what went wrong last, the app's fault or the gateway's
refusal, with a hint at the usual cause. "Rewarded" is all the gateway knows: the app
accepted the event, not that it granted the user something for it (which event types earn a
reward is the app's rule). So the headline is the latest ad view's, every event of its ymid
(an impression and a click of one ad), each named by its event type when there are several,
so a click is never hidden behind the impression that came after it; then a count of the
earlier ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import Outcome, Reason
from .search import MAX_LIMIT, LaterDelivery, Recorded, Search, user_key
from .sessions import NO_POSTBACK
from .store import HistoryStore

HINTS = {
    "secret_wrong": "the key may have been rotated: compare the URL registered with Monetag",
    "secret_missing": "the URL registered with Monetag carries no key",
    "secret_repeated": "the key parameter came twice",
    "ip_not_allowed": "sent from {client}, not in allow_ips: Monetag's ranges may have changed",
    "unknown_path": "the path is not a route's",
    "store_unavailable": "the store was unavailable; Monetag retries",
    "overloaded": "the gateway was at max_in_flight; Monetag retries",
    "filtered": "a route's match rule left it out",
    "ymid_not_issued": "not a ymid the gateway issued: a frontend without sessions, or a forgery",
    "ymid_forged": "an altered ymid",
    "ymid_expired": "its ymid expired before the postback came (sessions.ttl)",
    "telegram_id_mismatch": "Monetag's telegram_id is not the user the ymid was issued to",
    "placement_mismatch": "not the placement the ymid was issued for",
}
TIMES = {1: "once", 2: "twice"}
REFUSALS = (Outcome.REJECTED, Outcome.INVALID, Outcome.FILTERED, Outcome.NOT_FOUND)


@dataclass(frozen=True)
class Moment:
    """One line of the timeline: a postback answered, or a later delivery of a queued one."""

    at: float
    text: str
    request_id: str
    good: bool | None  # True: rewarded; False: something failed; None: neither (a duplicate)


@dataclass(frozen=True)
class EventVerdict:
    ymid: str | None
    event_type: str | None
    zone_id: str | None
    rewarded: bool
    sentence: str
    first_at: float


@dataclass(frozen=True)
class Trace:
    verdict: str
    events: list[EventVerdict] = field(default_factory=list)  # newest first
    timeline: list[Moment] = field(default_factory=list)  # oldest first
    rewarded: bool = False  # the app took an event of the ad view the verdict is about


async def user_trace(
    store: HistoryStore,
    *,
    telegram_id: str | None = None,
    ymid: str | None = None,
    since: float,
    window: str,
) -> Trace:
    """The trace of the user with this telegram_id (or of this ymid) since then."""
    user_key(telegram_id, ymid)  # exactly one of them
    rows = await store.search(
        Search(telegram_id=telegram_id, ymid=ymid, since=since, limit=MAX_LIMIT)
    )
    if not rows and telegram_id is not None:
        as_ymid = await store.search(Search(ymid=telegram_id, since=since, limit=1))
        if as_ymid:
            return Trace(
                f"no postback with this telegram_id arrived in the last {window}, but some "
                "carry it as their ymid (an app that passes the user's id as ymid): trace "
                "the ymid instead"
            )
    queued = [row.request_id for row in rows if row.outcome == Outcome.QUEUED]
    return trace(rows, await store.deliveries(queued) if queued else [], window)


def trace(
    rows: Sequence[Recorded],
    deliveries: Sequence[LaterDelivery],
    window: str,
    now: float | None = None,
) -> Trace:
    """The trace of one user's rows (any order) within `window` (how it is said: "7 days")."""
    if not rows:
        return Trace(f"no postback arrived for this user in the last {window}")
    today = time.gmtime(now if now is not None else time.time())[:3]
    later: dict[str, list[LaterDelivery]] = {}
    for delivery in deliveries:
        later.setdefault(delivery.request_id, []).append(delivery)
    groups: dict[object, list[Recorded]] = {}
    for row in sorted(rows, key=lambda r: (r.at, r.id)):
        groups.setdefault(_event_of(row), []).append(row)
    judged = sorted(
        ((_judge(group, later, today), group) for group in groups.values()),
        key=lambda pair: pair[0].first_at,
        reverse=True,
    )
    headline, rewarded = _headline(judged, later, today)
    events = [event for event, _ in judged]
    return Trace(headline, events, _timeline(rows, later, today), rewarded)


def _headline(
    judged: list[tuple[EventVerdict, list[Recorded]]],
    later: dict[str, list[LaterDelivery]],
    today: tuple[int, ...],
) -> tuple[str, bool]:
    """The verdict of the latest ad view, every event of its ymid (one ad's impression and
    click, oldest first), each led by its event type when there are several, then a count of
    the earlier events; and whether the app took any of the view's events. `judged`: every
    event with its postbacks, newest first."""
    latest = judged[0][0]
    view = sorted(
        (
            (event, group)
            for event, group in judged
            if event is latest or (latest.ymid is not None and event.ymid == latest.ymid)
        ),
        key=lambda pair: pair[1][0].at,
    )
    if len(view) == 1:
        headline = latest.sentence
    else:  # which of them the app rewards is the app's rule: each is said
        headline = "; ".join(
            f"{event.event_type or 'no event_type'}: "
            + _judge(group, later, today, typed=False).sentence
            for event, group in view
        )
    shown = {id(event) for event, _ in view}
    earlier = [event for event, _ in judged if id(event) not in shown]
    if earlier:
        rewarded = sum(event.rewarded for event in earlier)
        headline += (
            f" ({_count(len(earlier), 'earlier event')}: {rewarded} rewarded, "
            f"{len(earlier) - rewarded} not)"
        )
    return headline, any(event.rewarded for event, _ in view)


def _event_of(row: Recorded) -> object:
    """Which event a postback is about: its ymid, event type and zone, normalized or as
    sent (a refused copy of a rewarded click belongs to that click)."""
    fields = row.fields
    event_type = fields.get("event_type")
    return (fields.get("ymid"), event_type.lower() if event_type else None, fields.get("zone_id"))


def _judge(
    group: list[Recorded],
    later: dict[str, list[LaterDelivery]],
    today: tuple[int, ...],
    typed: bool = True,
) -> EventVerdict:
    """The verdict of one event's postbacks (`typed`: its sentence names the event type)."""
    first = group[0]
    what = _what(first, typed)
    duplicates = sum(row.repeats for row in group if row.outcome == Outcome.DUPLICATE)
    taken = [row for row in group if _took(row, later)]
    if taken:
        row = taken[0]
        at = _delivered_at(row, later)
        if len(taken) == 1:
            sentence = f"rewarded once at {_when(at, today)}{what}"
        else:  # the same event again after dedup.ttl: an app whose ymid is the user's id
            last_at = _delivered_at(taken[-1], later)
            sentence = (
                f"rewarded {len(taken)} times{what}, the first at {_when(at, today)}, the last "
                f"at {_when(last_at, today)} (each after the dedup window of the one before)"
            )
        if row.outcome == Outcome.QUEUED:
            sentence += f", queued at {_when(row.at, today)}"
        if duplicates:
            sentence += f"; {_count(duplicates, 'later copy', 'later copies')} "
            sentence += "were duplicates" if duplicates > 1 else "was a duplicate"
        refused = [r for r in group if r.outcome in REFUSALS]
        if refused:
            reasons = ", ".join(sorted({str(r.reason) for r in refused}))
            sentence += f"; {_count(sum(r.repeats for r in refused), 'copy', 'copies')} refused "
            sentence += f"({reasons})"
        return EventVerdict(*_keys(first), True, sentence, first.at)
    last = group[-1]
    if duplicates and all(row.outcome == Outcome.DUPLICATE for row in group):
        sentence = (
            f"only duplicates arrived{what}, the first at {_when(first.at, today)}: the event "
            "was delivered before this window"
        )
    else:
        failing = [row for row in group if row.outcome != Outcome.DUPLICATE][-1]
        sentence = _failure(failing, later.get(failing.request_id, []), what, today)
        if len(group) > 1:
            sentence += f" ({_count(sum(r.repeats for r in group), 'postback')} for this event)"
    return EventVerdict(*_keys(first), False, sentence, last.at)


def _failure(row: Recorded, later: list[LaterDelivery], what: str, today: tuple[int, ...]) -> str:
    if row.outcome == Outcome.QUEUED:
        statuses = _answers(d.status for d in later if d.state != "redriven")
        if later and later[-1].state == "dead":
            return (
                f"queued at {_when(row.at, today)}{what}; the app {statuses}; "
                f"dead letter since {_when(later[-1].at, today)} (re-drive it: queue retry)"
            )
        tried = f"; the app {statuses} so far" if later else ""
        return f"queued at {_when(row.at, today)}{what}{tried}; delivery pending"
    if row.outcome == Outcome.FORWARDED and row.reason == Reason.UPSTREAM_REFUSED:
        return (
            f"forwarded at {_when(row.at, today)}{what}; the app refused it "
            f"(answered {row.status}): see the app's log"
        )
    if row.outcome == Outcome.UPSTREAM_ERROR:
        statuses = _answers(attempt.get("status") for attempt in row.attempts)
        return (
            f"forwarded at {_when(row.at, today)}{what}; the app {statuses}: "
            "not rewarded (Monetag may send it again)"
        )
    if row.outcome == NO_POSTBACK:  # reward sessions: an ad asked for, nothing came
        issued = row.detail.get("issued_at")
        since = f" issued at {_when(issued, today)}" if isinstance(issued, float | int) else ""
        return (
            f"no postback came for the ymid{since}{what}, by {_when(row.at, today)}: the ad "
            "was not shown or not paid, or Monetag's postback never reached the gateway"
        )
    reason = row.reason or row.outcome
    hint = HINTS.get(reason, "").format(client=row.client or "an unknown address")
    detail = hint or str(row.detail.get("detail") or "")
    repeated = f", {_count(row.repeats, 'time')} from {row.client}" if row.repeats > 1 else ""
    return (
        f"refused: {reason}{f' ({detail})' if detail else ''}{what}, "
        f"at {_when(row.at, today)}{repeated}"
    )


def _took(row: Recorded, later: dict[str, list[LaterDelivery]]) -> bool:
    if row.outcome == Outcome.FORWARDED:
        return row.reason is None
    if row.outcome == Outcome.QUEUED:
        return any(d.state == "delivered" for d in later.get(row.request_id, []))
    return False


def _delivered_at(row: Recorded, later: dict[str, list[LaterDelivery]]) -> float:
    if row.outcome == Outcome.QUEUED:
        return next(d.at for d in later[row.request_id] if d.state == "delivered")
    return row.at


def _timeline(
    rows: Sequence[Recorded], later: dict[str, list[LaterDelivery]], today: tuple[int, ...]
) -> list[Moment]:
    moments = []
    for row in rows:
        good = (
            True
            if row.outcome == Outcome.FORWARDED and row.reason is None
            else None
            if row.outcome in (Outcome.DUPLICATE, Outcome.QUEUED)
            else False
        )
        why = f" ({row.reason})" if row.reason and row.reason != row.outcome else ""
        text = f"{row.outcome}{why}{_what(row)}"
        if row.repeats > 1:
            text += f", {row.repeats} times from {row.client}"
        moments.append(Moment(row.at, text, row.request_id, good))
        for delivery in later.get(row.request_id, []):
            answer = delivery.status if delivery.status is not None else delivery.error
            moments.append(
                Moment(
                    delivery.at,
                    f"delivery to {delivery.upstream}: {delivery.state} ({answer})",
                    row.request_id,
                    delivery.state == "delivered" or (None if delivery.state != "dead" else False),
                )
            )
    return sorted(moments, key=lambda moment: moment.at)


def _keys(row: Recorded) -> tuple[str | None, str | None, str | None]:
    return row.fields.get("ymid"), row.fields.get("event_type"), row.fields.get("zone_id")


def _what(row: Recorded, typed: bool = True) -> str:
    """ " (click, zone 8790478)": what the postback was about, as far as known (`typed`:
    with its event type)."""
    parts = [(row.fields.get("event_type") or "") if typed else ""]
    if zone := row.fields.get("zone_id"):
        parts.append(f"zone {zone}")
    shown = ", ".join(part for part in parts if part)
    return f" ({shown})" if shown else ""


def _when(at: float, today: tuple[int, ...]) -> str:
    moment = time.gmtime(at)
    clock = time.strftime("%H:%M:%S", moment)
    return clock if moment[:3] == today else f"{time.strftime('%Y-%m-%d', moment)} {clock}"


def _answers(statuses: Iterable[int | None]) -> str:
    """What the app did: "answered 500 three times", "gave no answer twice", "answered 503,
    then gave no answer"."""
    said = ["gave no answer" if status is None else f"answered {status}" for status in statuses]
    if not said:
        return "has not been tried yet"
    if len(set(said)) == 1:
        return f"{said[0]} {_times(len(said))}"
    return ", then ".join(said[:1] + [part.removeprefix("answered ") for part in said[1:]])


def _times(count: int) -> str:
    words = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
    return TIMES.get(count) or f"{words.get(count, str(count))} times"


def _count(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"
