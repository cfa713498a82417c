"""Incoming query parameters -> a canonical `Postback`.

Aliases map the names a publisher chose (`event`, `uid`) to Monetag's macro names
(`event_type`, `ymid`). A value that is still a literal macro (`{ymid}`) was never filled in
by the sender and counts as missing. The same field given twice with different values is
ambiguous: the gateway cannot know which one Monetag meant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .errors import InvalidPostback, Problem
from .postback import CANONICAL_FIELDS, LOWERCASED_FIELDS, Postback

_UNEXPANDED_MACRO = re.compile(r"\{[A-Za-z_]+\}")


class Normalizer:
    def __init__(
        self, aliases: Mapping[str, str], secret_param: str | None, drop_unknown: bool = False
    ) -> None:
        # Every incoming name that denotes a canonical field, decided once at config load.
        names = {name: name for name in CANONICAL_FIELDS if name not in aliases}
        names.update(aliases)
        self._canonical_name_of = names
        self._secret_param = secret_param
        self._drop_unknown = drop_unknown

    def normalize(self, pairs: Iterable[tuple[str, str]]) -> Postback:
        fields: dict[str, str] = {}
        extras: list[tuple[str, str]] = []
        ambiguous: dict[str, None] = {}  # an ordered set: each field reported once
        for name, value in pairs:
            if name == self._secret_param:
                continue
            canonical = self._canonical_name_of.get(name)
            if canonical is None:
                if not self._drop_unknown:
                    extras.append((name, value))
                continue
            if _UNEXPANDED_MACRO.fullmatch(value):
                continue
            if canonical in LOWERCASED_FIELDS:
                value = value.lower()
            if fields.setdefault(canonical, value) != value:
                ambiguous[canonical] = None
        if ambiguous:
            problem = "given more than once with different values"
            raise InvalidPostback([Problem(name, problem) for name in ambiguous])
        return Postback(fields, tuple(extras))
