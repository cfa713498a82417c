"""The query string exactly as sent, decoded strictly.

aiohttp's `request.query` decodes bytes that are not UTF-8 to U+FFFD, so `uid=%FF%FEabc` and
`uid=%FE%FFabc` would both become the same text and collide in dedup. Here each name and value
is percent-decoded to bytes and then decoded as UTF-8; a parameter that is not UTF-8 is set
aside (and answered 400 by normalization) instead of being guessed at. `+` is a space, as in
every HTML form; `&` separates parameters; a part without `=` has an empty value.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

MAX_SHOWN_NAME = 64  # an undecodable name is shown (percent-encoded) up to this length


@dataclass(frozen=True, slots=True)
class Query:
    """Decoded (name, value) pairs in order, and the raw names of parameters that are not UTF-8."""

    pairs: tuple[tuple[str, str], ...]
    undecodable: tuple[str, ...] = ()


def parse_query(raw: str) -> Query:
    """Split and decode a raw query string (without the `?`)."""
    if not raw:
        return _EMPTY
    pairs: list[tuple[str, str]] = []
    undecodable: list[str] = []
    for part in raw.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        try:
            pairs.append((_decode(raw_name), _decode(raw_value)))
        except UnicodeError:  # not UTF-8 (or, from a lenient parser, not even bytes)
            undecodable.append(raw_name[:MAX_SHOWN_NAME])
    return Query(tuple(pairs), tuple(undecodable))


def _decode(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text and text.isascii():
        return text  # nothing escaped: the common case, no bytes round trip
    return unquote_to_bytes(text).decode("utf-8")


_EMPTY = Query(())
