"""The shared secret a postback URL carries, checked in constant time against every key.

Several keys may be valid at once so a key can be rotated: add the new one, change the URL
registered with Monetag, then drop the old one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from multidict import CIMultiDictProxy, MultiMapping

from .errors import Forbidden


class Secret:
    """A secret value that never shows itself in a repr, a log line or an exception."""

    __slots__ = ("_value", "digest")

    def __init__(self, value: str) -> None:
        self._value = value.encode()
        self.digest = hashlib.sha256(self._value).digest()

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)


@dataclass(frozen=True)
class SecretCheck:
    """Where the key travels (a query parameter or a header) and which keys are accepted."""

    keys: tuple[Secret, ...]
    query_param: str | None = None
    header: str | None = None

    @property
    def location(self) -> str:
        if self.query_param is not None:
            return f"query parameter {self.query_param!r}"
        return f"header {self.header!r}"

    def verify(self, query: MultiMapping[str], headers: CIMultiDictProxy[str]) -> None:
        """Raise Forbidden unless the request carries one of the keys."""
        if self.query_param is not None:
            presented = query.getall(self.query_param, [])
        else:
            assert self.header is not None
            presented = headers.getall(self.header, [])
        if not presented:
            raise Forbidden("secret", f"missing from {self.location}")
        if len(presented) > 1:
            raise Forbidden("secret", f"given {len(presented)} times in {self.location}")
        if not self._matches(presented[0]):
            raise Forbidden("secret", f"wrong key in {self.location}")

    def accepts(self, presented: str) -> bool:
        return self._matches(presented)

    def _matches(self, presented: str) -> bool:
        try:
            candidate = presented.encode("ascii")
        except UnicodeEncodeError:
            return False  # compare_digest refuses non-ASCII str; such a key is simply wrong
        # Digests of equal length, so not even the key's length leaks through timing.
        presented_digest = hashlib.sha256(candidate).digest()
        matched = False
        for key in self.keys:  # no early exit: the time taken does not tell which key matched
            matched |= hmac.compare_digest(presented_digest, key.digest)
        return matched and bool(candidate)
