"""The dedup key: which postbacks are the same event."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from ..postback import Postback

DedupKey = bytes  # 16 bytes of blake2b

_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps with options builds one per call


def dedup_key(route: str, fields: Sequence[str], postback: Postback) -> DedupKey:
    """A compact digest of the route and the key fields' values.

    JSON of the list is an unambiguous encoding: ("a", "bc") and ("ab", "c") differ, and a
    missing field (null) differs from an empty one (""); values are already canonical
    (normalize.py), so `042` and `42` are one key.
    """
    encoded = _ENCODER.encode([route, *(postback.get(name) for name in fields)])
    return hashlib.blake2b(encoded.encode(), digest_size=16).digest()
