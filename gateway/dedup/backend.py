"""A backend beyond this process that knows delivered events: the one shape they all have.

A postback is forwarded only once every backend of its route has *claimed* its key for this
process; when the app accepted it, each claim is *committed* (the key is delivered, for the
route's TTL); otherwise it is *released*, so a retry can go through. A backend that already
knows the key answers `KNOWN`: the postback is a duplicate. A backend that cannot answer raises
its own `BackendUnavailable`; the route then fails closed (503) or, if the backend says
`fail_open`, carries on without it.

A new backend is one module with one class of this shape (see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .key import DedupKey


@dataclass(frozen=True, slots=True)
class Claim:
    """A backend's answer to `claim`: the key is known there (a duplicate), or now held."""

    known: bool = False
    token: str = ""  # what the backend needs to commit or release its hold, if anything


KNOWN = Claim(known=True)
HELD = Claim()  # held, with nothing to remember (a lookup that found nothing)


class BackendUnavailable(Exception):
    """A backend did not answer. `reason` names it in the 503's log line and metrics."""

    reason = "dedup_unavailable"


class Backend(Protocol):
    """A place beyond this process that knows which events were delivered."""

    name: str  # in logs
    fail_open: bool  # on failure, carry on without it (True) or answer 503 (False)
    # its keys live in the durable store, where a queued route writes them in the same
    # transaction as the event itself: such a route does not claim them separately
    in_store: bool

    async def claim(self, key: DedupKey) -> Claim:
        """KNOWN, or a claim this process now holds; BackendUnavailable if it cannot tell."""
        ...

    async def commit(self, key: DedupKey, claim: Claim, ttl: float) -> None:
        """Remember the key as delivered for `ttl` seconds."""
        ...

    async def release(self, key: DedupKey, claim: Claim) -> None:
        """Give the claim back: the event was not delivered."""
        ...
