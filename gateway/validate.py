"""Field rules for a canonical postback; every failure names the parameter and the problem."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import InvalidPostback, Problem
from .postback import (
    ESTIMATED_PRICE,
    EVENT_TYPE,
    EVENT_TYPES,
    INTEGER_FIELDS,
    REWARD_EVENT_TYPE,
    REWARD_EVENT_TYPES,
    Postback,
)

_DIGITS = re.compile(r"[0-9]{1,20}")
_NON_NEGATIVE_DECIMAL = re.compile(r"(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})")


def value_problem(name: str, value: str) -> str | None:
    """What is wrong with a non-empty value of a canonical field, if anything."""
    if name == EVENT_TYPE and value not in EVENT_TYPES:
        return f"must be one of {sorted(EVENT_TYPES)}"
    if name == REWARD_EVENT_TYPE and value not in REWARD_EVENT_TYPES:
        return f"must be one of {sorted(REWARD_EVENT_TYPES)}"
    if name in INTEGER_FIELDS and not _DIGITS.fullmatch(value):
        return "must be a whole number"
    if name == ESTIMATED_PRICE and not _NON_NEGATIVE_DECIMAL.fullmatch(value):
        return "must be a non-negative decimal number"
    return None


class Validator:
    def __init__(self, required: Iterable[str]) -> None:
        self._required = tuple(required)

    def validate(self, postback: Postback) -> None:
        """Raise InvalidPostback listing every problem; an empty optional field is fine."""
        problems = [
            Problem(name, "is required" if postback.get(name) is None else "must not be empty")
            for name in self._required
            if not postback.get(name)
        ]
        for name, value in postback.fields.items():
            problem = value_problem(name, value) if value else None
            if problem is not None:
                problems.append(Problem(name, problem))
        if problems:
            raise InvalidPostback(problems)
