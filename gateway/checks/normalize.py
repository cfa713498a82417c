"""Incoming query pairs -> a canonical `Postback`: canonical names, canonical values.

Names: aliases map the names a publisher chose (`event`, `uid`) to Monetag's macro names
(`event_type`, `ymid`). An unknown parameter that an app would read as a name the gateway writes
itself (a canonical field, a `rename` target, a static or URL parameter of an upstream, the
secret's parameter; compared as `paramnames.py` explains) is dropped and reported, so the app
never sees a second, unverified `user_id` or `API_KEY` beside ours.

Values: equal values must look equal, or dedup could be walked around (`zone=042` after
`zone=42`) and the app would see two spellings of one event:
- an empty value, or a literal macro (`{ymid}`) the sender never filled in, counts as missing;
- `event_type` and `reward_event_type` are lower-cased;
- whole-number fields lose leading zeros (`042` -> `42`, `000` -> `0`);
- `estimated_price` is written plainly: no leading zeros, no trailing fractional zeros
  (`00.50` -> `0.5`, `.5` -> `0.5`, `2.000` -> `2`);
- `ymid` and `request_var` are put in Unicode's composed form (NFC): `café` typed as `e` plus a
  combining accent is the same id as `café` typed with `é` (validation refuses invisible
  format characters, such as a zero-width space, which no normal form removes).
Text that is not a valid value is left as it came for validation to refuse. The same field
given twice with different (canonical) values is ambiguous: which one did Monetag mean?
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..errors import AmbiguousFields, NotUtf8, Problem
from ..postback import (
    CANONICAL_FIELDS,
    ESTIMATED_PRICE,
    INTEGER_FIELDS,
    LOWERCASED_FIELDS,
    TEXT_FIELDS,
    Postback,
)
from .paramnames import comparable_set, poses_as

_UNEXPANDED_MACRO = re.compile(r"\{[A-Za-z_]+\}")
_DECIMAL = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
AMBIGUOUS = "given more than once with different values"
NOT_UTF8 = "is not UTF-8 text"


def _plain_integer(value: str) -> str:
    return (value.lstrip("0") or "0") if value.isascii() and value.isdigit() else value


def _composed(value: str) -> str:
    """NFC: one spelling of the same text (ASCII, nearly every id, is its own)."""
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def _plain_decimal(value: str) -> str:
    match = _DECIMAL.fullmatch(value)
    if match is None or value in ("", "."):
        return value
    whole = match.group(1).lstrip("0") or "0"
    fraction = (match.group(2) or "").rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


# field -> how its canonical spelling is made
_CANONICAL_SPELLING: dict[str, Callable[[str], str]] = {
    **dict.fromkeys(LOWERCASED_FIELDS, str.lower),
    **dict.fromkeys(INTEGER_FIELDS, _plain_integer),
    **dict.fromkeys(TEXT_FIELDS, _composed),
    ESTIMATED_PRICE: _plain_decimal,
}
_NONE: frozenset[str] = frozenset()


def canonical_names(aliases: Mapping[str, str]) -> dict[str, str]:
    """Every incoming name that denotes a canonical field, with the field it denotes: the
    aliases, and each canonical name no alias takes the place of."""
    names = {name: name for name in CANONICAL_FIELDS if name not in aliases}
    names.update(aliases)
    return names


class Normalizer:
    def __init__(
        self,
        aliases: Mapping[str, str],
        written_names: Iterable[str] = (),
        drop_unknown: bool = False,
    ) -> None:
        self._canonical_name_of = canonical_names(aliases)  # decided once at config load
        self._written = comparable_set([*CANONICAL_FIELDS, *written_names])
        self._drop_unknown = drop_unknown

    def normalize(
        self, pairs: Iterable[tuple[str, str]], undecodable: Sequence[str] = ()
    ) -> Postback:
        """`pairs`: the query without the secret (`SecretCheck.scrub`); `undecodable`: names of
        parameters that were not UTF-8 (`query.Query`), refused here."""
        if undecodable:
            raise NotUtf8([Problem(name, NOT_UTF8) for name in undecodable])
        fields: dict[str, str] = {}
        extras: list[tuple[str, str]] = []
        empty: set[str] = set()
        dropped: list[str] = []
        ambiguous: dict[str, None] = {}  # an ordered set: each field reported once
        spelling = _CANONICAL_SPELLING
        for name, value in pairs:
            canonical = self._canonical_name_of.get(name)
            if canonical is None:
                if self._drop_unknown:
                    continue
                if poses_as(name, self._written):
                    dropped.append(name)
                else:
                    extras.append((name, value))
                continue
            if not value:
                empty.add(canonical)
                continue
            if _UNEXPANDED_MACRO.fullmatch(value):
                continue
            spell = spelling.get(canonical)
            if spell is not None:
                value = spell(value)
            if fields.setdefault(canonical, value) != value:
                ambiguous[canonical] = None
        if ambiguous:
            raise AmbiguousFields([Problem(name, AMBIGUOUS) for name in ambiguous])
        sent_empty = frozenset(empty - fields.keys()) if empty else _NONE
        return Postback(fields, tuple(extras), sent_empty, tuple(dropped))
