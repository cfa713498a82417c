"""What the history's pages were asked, read from their query strings: the search form and
the trace's user. A value that cannot be meant raises `BadParameter` naming the parameter
(the pages answer it 400); nothing is cut short or guessed, so a search never quietly
answers another question than the one asked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import DURATION_EXAMPLES, parse_duration
from ..errors import Outcome
from ..history.export import LAST_ID
from ..history.rows import MAX_VALUE_CHARS
from ..history.search import Search
from .present import OUTCOMES

DEFAULT_SINCE = "7d"
DEFAULT_PAGE = 50  # rows on a page of the search
MAX_PAGE = 500
FILTERS = ("telegram_id", "ymid", "request_id", "route", "outcome", "reason")
USER_KEYS = ("telegram_id", "ymid")
KNOWN_OUTCOMES = frozenset((*OUTCOMES, Outcome.CUT_OFF))


class BadParameter(ValueError):
    """A query parameter that means nothing the page can do: `name: what is wrong`."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


@dataclass(frozen=True)
class SearchAsked:
    """The search form as filled in (shown back in it), and the Search it means: one row
    more than a page, to know whether there is an older page."""

    values: dict[str, str]  # every filter ("" when not given), `since` and `limit`
    search: Search
    page: int  # rows shown


def search_asked(query: Mapping[str, str], now: float) -> SearchAsked:
    """The search form's filters, `since`, `limit` (a page) and `before` (an id: the rows
    written before it, the next page)."""
    values = {name: _text(query, name) for name in FILTERS}
    if values["outcome"] and values["outcome"] not in KNOWN_OUTCOMES:
        raise BadParameter("outcome", f"one of {', '.join(sorted(KNOWN_OUTCOMES))}")
    since_text, seconds = since_asked(query)
    page = _whole(query, "limit", DEFAULT_PAGE, MAX_PAGE)
    before = _whole(query, "before", LAST_ID, LAST_ID)
    search = Search(
        telegram_id=values["telegram_id"] or None,
        ymid=values["ymid"] or None,
        request_id=values["request_id"] or None,
        route=values["route"] or None,
        outcome=values["outcome"] or None,
        reason=values["reason"] or None,
        since=now - seconds,
        limit=page + 1,
        before_id=before,  # always: pages go by id, as the history is written
    )
    shown = {**values, "since": since_text, "limit": str(page) if query.get("limit") else ""}
    return SearchAsked(shown, search, page)


def since_asked(query: Mapping[str, str]) -> tuple[str, float]:
    """`since`: a duration back from now (7d when not given), as given and in seconds."""
    text = query.get("since", "").strip() or DEFAULT_SINCE
    seconds = parse_duration(text) if len(text) <= 20 else None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise BadParameter("since", f"a duration back from now, such as {DURATION_EXAMPLES}")
    return text, seconds


def user_asked(query: Mapping[str, str]) -> tuple[str, str] | None:
    """The trace's user: (telegram_id or ymid, its value), from `telegram_id=` or `ymid=`
    (links) or from `by=` and `user=` (the search boxes, which let one field be either).
    None when nobody was asked for yet."""
    given = {name: _text(query, name) for name in USER_KEYS}
    user = _text(query, "user")
    if user:
        by = query.get("by", "telegram_id")
        if by not in USER_KEYS:
            raise BadParameter("by", "telegram_id or ymid")
        if given[by] and given[by] != user:
            raise BadParameter(by, "given twice, with different values")
        given[by] = user
    asked = [(name, value) for name, value in given.items() if value]
    if len(asked) > 1:
        raise BadParameter("telegram_id", "give one of telegram_id and ymid, not both")
    return asked[0] if asked else None


def _text(query: Mapping[str, str], name: str) -> str:
    value = query.get(name, "").strip()
    if len(value) > MAX_VALUE_CHARS:  # longer than any value the history keeps
        raise BadParameter(name, f"at most {MAX_VALUE_CHARS} characters")
    return value


def _whole(query: Mapping[str, str], name: str, default: int, most: int) -> int:
    text = query.get(name, "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not 0 < int(text) <= most:
        raise BadParameter(name, f"a whole number from 1 to {most}")
    return int(text)
