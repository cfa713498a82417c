"""How an app reads a query parameter's name, so no incoming parameter can pose as one we write.

The gateway writes some names itself (canonical fields, an upstream's `rename` targets, its
`static_params` and URL parameters, the secret's parameter). An app behind it may look names up
case-insensitively, and PHP rewrites names before the app sees them (`user.id` and `user id`
become `user_id`, `user_id[x]` an array under `user_id`), Rails reads `user_id[]` as `user_id`.
So names are compared in the form those frameworks reduce them to: case-folded, leading blanks
dropped, everything from the first `[` cut off (or `[` read as `_`), ` ` and `.` read as `_`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

_AS_UNDERSCORE = str.maketrans({" ": "_", ".": "_"})


@lru_cache(maxsize=4096)  # the same few names arrive on every postback
def comparable_forms(name: str) -> tuple[str, ...]:
    """Every form an app framework may read `name` as (usually just one)."""
    folded = name.casefold().lstrip(" \t").translate(_AS_UNDERSCORE)
    if "[" not in folded:
        return (folded,)
    return (folded.partition("[")[0], folded.replace("[", "_"))


def comparable_set(names: Iterable[str]) -> frozenset[str]:
    """The names we write, in comparable form, to test incoming names against."""
    return frozenset(form for name in names for form in comparable_forms(name))


def poses_as(name: str, written: frozenset[str]) -> bool:
    """Would an app read incoming `name` as one of the names in `written`?"""
    forms = comparable_forms(name)
    return forms[0] in written or (len(forms) > 1 and forms[1] in written)
