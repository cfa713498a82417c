"""The ymid the gateway issues: short, signed, and bound to one Telegram user.

A ymid is base64url (no padding) of

    version (1 byte: 1, +128 when a placement is bound)
    key id  (1 byte: the first byte of SHA-256 of the signing key, so keys can rotate)
    user    (8 bytes: the Telegram user id)
    nonce   (8 bytes, random: one ymid per ad call, which dedup needs)
    expires (4 bytes: Unix seconds)
    [placement (4 bytes: the first of SHA-256 of request_var), when bound]
    mac     (12 bytes: HMAC-SHA256 over everything before it, keyed by the signing key)

46 characters, 51 with a placement. 96 bits of MAC: guessing one takes 2^95 tries on
average, each a request. Signing keys are secrets: several verify (rotation), the first
signs; a ymid signed by a key no longer listed is refused as not issued by us.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = 1
PLACED = 0x80  # the version byte's flag: a placement hash follows the expiry
MAC_BYTES = 12
_BODY = struct.Struct(">BBQ8sI")  # version, key id, user, nonce, expires
_PLACEMENT = struct.Struct(">4s")
DOMAIN = b"monetag-gateway ymid\x00"  # what the MAC covers starts with this: no other use
LENGTH = len(base64.urlsafe_b64encode(bytes(_BODY.size + MAC_BYTES)).rstrip(b"="))
PLACED_LENGTH = len(
    base64.urlsafe_b64encode(bytes(_BODY.size + _PLACEMENT.size + MAC_BYTES)).rstrip(b"=")
)


@dataclass(frozen=True)
class Claims:
    """What a verified ymid says."""

    user_id: int
    nonce: bytes
    expires: int
    placement: bytes | None  # the hash of the request_var it was issued for, if bound


class YmidRefused(Exception):
    """A ymid the gateway will not pay: `reason` names why (logs, metrics, the status)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def placement_hash(request_var: str) -> bytes:
    return hashlib.sha256(request_var.encode()).digest()[: _PLACEMENT.size]


def key_id(key: bytes) -> int:
    return hashlib.sha256(key).digest()[0]


class YmidSigner:
    """Issues and verifies ymids under `keys` (the first signs, all verify) for one `context`
    (the route): the MAC covers it, so a ymid issued for one route never verifies on another,
    even where both routes have the same key (a postback for it there would pay again, under
    that route's own dedup)."""

    def __init__(self, keys: Sequence[bytes], context: str = "") -> None:
        if not keys:
            raise ValueError("at least one signing key")
        encoded = context.encode()
        self._domain = DOMAIN + len(encoded).to_bytes(2, "big") + encoded
        self._signing = keys[0]
        self._by_id: dict[int, list[bytes]] = {}
        for key in keys:
            self._by_id.setdefault(key_id(key), []).append(key)

    def issue(self, user_id: int, *, expires: int, request_var: str | None = None) -> str:
        version = VERSION | (PLACED if request_var is not None else 0)
        body = _BODY.pack(version, key_id(self._signing), user_id, secrets.token_bytes(8), expires)
        if request_var is not None:
            body += placement_hash(request_var)
        return _text(body + self._mac(self._signing, body))

    def verify(self, ymid: str, *, now: float) -> Claims:
        """The claims of a ymid this gateway issued and that has not expired, or YmidRefused:
        `ymid_not_issued` (not one of ours: another shape, or a key not listed),
        `ymid_forged` (our shape, a wrong MAC), `ymid_expired`."""
        if len(ymid) not in (LENGTH, PLACED_LENGTH) or not ymid.isascii():
            raise YmidRefused("ymid_not_issued", "not a ymid this gateway issued")
        try:
            raw = base64.urlsafe_b64decode(ymid + "=" * (-len(ymid) % 4))
        except (binascii.Error, ValueError):
            raise YmidRefused("ymid_not_issued", "not a ymid this gateway issued") from None
        # one text per ymid: the decoder skips characters outside the alphabet, and the last
        # character's spare bits are not read, so another text could carry the same bytes
        # (and be paid again under a dedup key of its own)
        if _text(raw) != ymid:
            raise YmidRefused("ymid_not_issued", "not a ymid this gateway issued")
        version, kid, user_id, nonce, expires = _BODY.unpack_from(raw)
        placed = bool(version & PLACED)
        body_size = _BODY.size + (_PLACEMENT.size if placed else 0)
        if version & ~PLACED != VERSION or len(raw) != body_size + MAC_BYTES:
            raise YmidRefused("ymid_not_issued", "not a ymid this gateway issued")
        body, mac = raw[:body_size], raw[body_size:]
        keys = self._by_id.get(kid)
        if keys is None:
            raise YmidRefused(
                "ymid_not_issued", "signed with a key this gateway does not have (rotated out?)"
            )
        if not any(hmac.compare_digest(self._mac(key, body), mac) for key in keys):
            raise YmidRefused(
                "ymid_forged", "its signature is wrong: altered, not ours, or another route's"
            )
        if expires < now:
            raise YmidRefused("ymid_expired", "it expired: the ad was shown too late")
        placement = body[_BODY.size :] if placed else None
        return Claims(user_id, nonce, expires, placement)

    def _mac(self, key: bytes, body: bytes) -> bytes:
        return hmac.digest(key, self._domain + body, hashlib.sha256)[:MAC_BYTES]


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
