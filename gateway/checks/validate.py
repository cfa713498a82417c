"""Field rules for a canonical postback; every failure names the parameter and the problem."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from decimal import Decimal

from ..errors import InvalidFields, Problem
from ..postback import (
    ESTIMATED_PRICE,
    EVENT_TYPE,
    EVENT_TYPES,
    INTEGER_FIELDS,
    REWARD_EVENT_TYPE,
    REWARD_EVENT_TYPES,
    TEXT_FIELDS,
    Postback,
)

_DIGITS = re.compile(r"[0-9]{1,20}")
_NON_NEGATIVE_DECIMAL = re.compile(r"(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})")
# C0 and C1 control characters: no app expects them in an id, and they corrupt logs and CSVs
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
DEFAULT_MAX_ESTIMATED_PRICE = Decimal(10)  # USD for one event: a $10,000 eCPM


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
    if name in TEXT_FIELDS and _CONTROL.search(value):
        return "must not contain control characters"
    if name in TEXT_FIELDS and not value.isascii() and _has_format_character(value):
        return "must not contain invisible format characters (Unicode Cf: zero-width, bidi)"
    return None


def _has_format_character(value: str) -> bool:
    """Zero-width spaces and joiners, bidi controls, soft hyphens...: they make two ids that
    look the same, and that no normal form makes one."""
    return any(unicodedata.category(character) == "Cf" for character in value)


class Validator:
    def __init__(
        self, required: Iterable[str], max_price: Decimal = DEFAULT_MAX_ESTIMATED_PRICE
    ) -> None:
        self._required = tuple(required)
        self._max_price = max_price

    def validate(self, postback: Postback) -> None:
        """Raise InvalidPostback listing every problem; a missing optional field is fine."""
        problems = [
            Problem(name, "must not be empty" if name in postback.empty else "is required")
            for name in self._required
            if name not in postback.fields
        ]
        for name, value in postback.fields.items():
            problem = value_problem(name, value)
            if problem is not None:
                problems.append(Problem(name, problem))
            elif name == ESTIMATED_PRICE and Decimal(value) > self._max_price:
                problems.append(
                    Problem(name, f"must be at most {self._max_price} (max_estimated_price)")
                )
        if problems:
            raise InvalidFields(problems)
