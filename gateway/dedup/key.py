"""The dedup key: which postbacks are the same event.

An event's identity is its route's dedup *scope* (`dedup.scope`, by default the route's path)
and the values of the `dedup.key` fields. The fields are taken in one fixed order (`KEY_ORDER`),
never in the order a config lists them: reordering `dedup.key` must not forget every delivered
event, nor change the `X-Idempotency-Key` an app dedups on. The route's name is a label and
takes no part: renaming a route keeps its events known.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

from ..postback import (
    CANONICAL_FIELDS,
    ESTIMATED_PRICE,
    EVENT_TYPE,
    REQUEST_VAR,
    REWARD_EVENT_TYPE,
    SUB_ZONE_ID,
    TELEGRAM_ID,
    YMID,
    ZONE_ID,
    Postback,
)

DedupKey = bytes  # 16 bytes of blake2b

# The order of the fields in a key. The default key's three come first, in the order earlier
# versions hashed them, so a key written before field order stopped mattering is the same key
# (with `dedup.scope` set to the route's name, which earlier versions hashed).
KEY_ORDER: tuple[str, ...] = (
    YMID,
    EVENT_TYPE,
    ZONE_ID,
    SUB_ZONE_ID,
    TELEGRAM_ID,
    REWARD_EVENT_TYPE,
    REQUEST_VAR,
    ESTIMATED_PRICE,
)
assert sorted(KEY_ORDER) == sorted(CANONICAL_FIELDS)

_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps with options builds one per call


def key_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """The fields of a `dedup.key`, each once, in KEY_ORDER: what identifies an event."""
    chosen = set(fields)
    return tuple(name for name in KEY_ORDER if name in chosen)


def dedup_key(scope: str, fields: Sequence[str], postback: Postback) -> DedupKey:
    """A compact digest of the scope and the key fields' values (`fields` from `key_fields`).

    JSON of the list is an unambiguous encoding: ("a", "bc") and ("ab", "c") differ, and a
    missing field (null) differs from an empty one (""); values are already canonical
    (normalize.py), so `042` and `42` are one key.
    """
    encoded = _ENCODER.encode([scope, *(postback.get(name) for name in fields)])
    return hashlib.blake2b(encoded.encode(), digest_size=16).digest()
