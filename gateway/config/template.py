"""The postback URL an operator registered with Monetag, read back into an alias map.

`https://gw.example.com/postback/tapper?uid={ymid}&event={event_type}&token=...` says that
Monetag will send `uid` holding the ymid and `event` holding the event type, and nothing else:
so the gateway can derive `aliases` and tell which canonical fields can never arrive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from yarl import URL

from ..postback import CANONICAL_FIELDS
from ..shown import quoted

_MACRO = re.compile(r"\{([A-Za-z_]+)\}")


@dataclass(frozen=True)
class PostbackTemplate:
    path: str
    aliases: dict[str, str]  # parameter name -> canonical field it carries
    fixed: dict[str, str] = field(repr=False)  # parameters with a literal value (the secret)

    @property
    def delivers(self) -> frozenset[str]:
        return frozenset(self.aliases.values())


def parse_template(text: str) -> PostbackTemplate:
    """Raises ValueError saying what is wrong (never quoting the URL: it holds the secret)."""
    try:
        url = URL(text)
    except ValueError:
        raise ValueError("is not a URL") from None
    if not url.path.startswith("/") or not url.query:
        raise ValueError("must be the full postback URL with its query, e.g. /postback?uid={ymid}")
    aliases: dict[str, str] = {}
    fixed: dict[str, str] = {}
    for name, value in url.query.items():
        if name in aliases or name in fixed:
            raise ValueError(f"names parameter {quoted(name)} twice")
        macro = _MACRO.fullmatch(value)
        if macro is None:
            fixed[name] = value
        elif macro.group(1) not in CANONICAL_FIELDS:
            # the value is not echoed: it may be the secret, written in braces
            raise ValueError(
                f"parameter {quoted(name)} does not hold a Monetag macro "
                f"({', '.join(CANONICAL_FIELDS)})"
            )
        elif macro.group(1) in aliases.values():
            raise ValueError(f"carries {{{macro.group(1)}}} twice")
        else:
            aliases[name] = macro.group(1)
    return PostbackTemplate(url.path, aliases, fixed)
