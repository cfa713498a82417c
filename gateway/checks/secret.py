"""The shared secret a postback URL carries, checked in constant time against every key.

Several keys may be valid at once so a key can be rotated: add the new one, change the URL
registered with Monetag, then drop the old one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDictProxy

from ..errors import SecretMissing, SecretRepeated, SecretWrong
from .paramnames import comparable_set, poses_as

Pairs = Sequence[tuple[str, str]]
HIDDEN = "**********"  # what a secret's repr shows in its place, whatever its type


class Secret:
    """A secret value that never shows itself in a repr, a log line or an exception: route
    keys and the admin token. (Secret URLs, which clients take as text, are `SecretUrl`s in
    config/model.py, hidden the same way.)"""

    __slots__ = ("_value", "digest")

    def __init__(self, value: str) -> None:
        self._value = value.encode()
        self.digest = hashlib.sha256(self._value).digest()

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{HIDDEN}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)


@dataclass(frozen=True, slots=True)
class Scrubbed:
    """Query pairs with every trace of the key removed, and the names of what was removed."""

    pairs: list[tuple[str, str]]
    removed: list[str]  # for the log: names only, and never a name that is itself a key


KEY_AS_NAME = "(a key)"  # how the log shows a parameter whose name is a key


@dataclass(frozen=True)
class SecretCheck:
    """Where the key travels (a query parameter or a header) and which keys are accepted."""

    keys: tuple[Secret, ...]
    query_param: str | None = None
    header: str | None = None
    # the secret parameter's name in every spelling an app could read it as (TOKEN, token[])
    _param_forms: frozenset[str] = field(init=False, repr=False, compare=False)
    # the keys as text, to find them in a query (see `scrub`)
    _texts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [self.query_param] if self.query_param is not None else []
        object.__setattr__(self, "_param_forms", comparable_set(names))
        object.__setattr__(self, "_texts", frozenset(key.reveal().decode() for key in self.keys))

    @property
    def location(self) -> str:
        if self.query_param is not None:
            return f"query parameter {self.query_param!r}"
        return f"header {self.header!r}"

    def verify(self, query: Pairs, headers: CIMultiDictProxy[str]) -> None:
        """Raise Forbidden unless the request carries one of the keys."""
        if self.query_param is not None:
            presented = [value for name, value in query if name == self.query_param]
        else:
            assert self.header is not None
            presented = headers.getall(self.header, [])
        if not presented:
            raise SecretMissing(f"missing from {self.location}")
        if len(presented) > 1:
            raise SecretRepeated(f"given {len(presented)} times in {self.location}")
        if not self._matches(presented[0]):
            raise SecretWrong(f"wrong key in {self.location}")

    def accepts(self, presented: str) -> bool:
        return self._matches(presented)

    def scrub(self, query: Pairs) -> Scrubbed:
        """`query` without the secret's parameter (in any spelling an app would read as it) and
        without any parameter whose name or value is one of the keys: what is left may be
        logged and forwarded. A header-secret route's key sent as `token=` is caught here too.

        The keys are found by membership in a set: Python's string hash is keyed per process
        (SipHash with a random seed), and strings are compared only when their 64-bit hashes
        are equal, so the time taken says nothing about a key's bytes. (`verify` hashes with
        SHA-256 instead: it also hides which key matched; at 1 µs per string it would cost
        tens of µs per postback here.)"""
        keys, param = self._texts, self.query_param
        pairs: list[tuple[str, str]] = []
        removed: list[str] = []
        for name, value in query:
            if name == param:
                continue  # the one expected spelling: not news
            if name in keys:
                removed.append(KEY_AS_NAME)
            elif value in keys or (self._param_forms and poses_as(name, self._param_forms)):
                removed.append(name)
            else:
                pairs.append((name, value))
        return Scrubbed(pairs, removed)

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
