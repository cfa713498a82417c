"""What an upstream's answer means, and how long to wait before asking again.

The two paths judge the same answers differently, on purpose. A sync postback has a sender
waiting (Monetag), which retries by itself when we answer 5xx: within the route's deadline we
retry only what may pass at once (502/503/504, connect errors, timeouts) and pass any other
answer back, 2xx or 4xx as the app's, anything else as our 502. A queued event was already
acknowledged and has only us: everything but a delivery or the app's final refusal is retried,
until `max_attempts` or `max_age` (the deliverer's decision) make it a dead letter.
"""

from __future__ import annotations

import enum
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # forward.py asks this module: no import cycle at run time
    from .forward import AttemptFailure

# sync: what the app may answer differently a moment later (a proxy or a restart in between)
SYNC_RETRYABLE_STATUSES = frozenset({502, 503, 504})
# queued: the 4xx that mean "not now" rather than "no"
QUEUED_RETRYABLE_4XX = frozenset({408, 429})

# the sync path's backoff: 0.2 s before the first retry, doubling, at most 2 s (written
# `0.1 * 2**attempt` before `backoff` was shared: the same delays)
SYNC_BACKOFF_BASE = 0.2
SYNC_BACKOFF_CAP = 2.0


class Verdict(enum.Enum):
    """What one attempt's result means for the event."""

    DELIVERED = "delivered"  # 2xx: the app has it
    REFUSED = "refused"  # the app's final no: passed back (sync) or dead-lettered (queued)
    RETRY = "retry"  # ask again after a backoff
    UNUSABLE = "unusable"  # sync only: no answer worth passing back or retrying; our 502


def delivered(status: int) -> bool:
    """2xx, on either path: the app has the event."""
    return 200 <= status < 300


# -- sync: a sender is waiting --------------------------------------------------------------


def sync_answer(status: int) -> Verdict:
    """The app's status on a sync postback: retried within the deadline, or the answer."""
    if delivered(status):
        return Verdict.DELIVERED
    if 400 <= status < 500:
        return Verdict.REFUSED
    if status in SYNC_RETRYABLE_STATUSES:
        return Verdict.RETRY
    return Verdict.UNUSABLE  # 1xx, 3xx, 500, 501, 505...: neither acceptance nor refusal


def sync_failure(failure: AttemptFailure) -> Verdict:
    """Connect errors, timeouts and another event's answer are retried; an answer that is not
    clean HTTP is not: the sender gets 502 (`upstream_bad_response`) at once, and retries."""
    return Verdict.UNUSABLE if failure.malformed else Verdict.RETRY


# -- queued: only we can deliver it ---------------------------------------------------------


def queued_answer(status: int) -> Verdict:
    """The app's status on a queued delivery: delivered, refused for good, or retried."""
    if delivered(status):
        return Verdict.DELIVERED
    if 400 <= status < 500 and status not in QUEUED_RETRYABLE_4XX:
        return Verdict.REFUSED
    return Verdict.RETRY


def queued_failure(failure: AttemptFailure) -> Verdict:
    """Every failure is retried, a malformed answer too: the app may be fixed meanwhile."""
    return Verdict.RETRY


def backoff(retry: int, base: float, cap: float) -> float:
    """The pause before the `retry`-th retry (1: the first), with full jitter: uniform in
    [0, min(cap, base * 2**(retry - 1))]."""
    return random.uniform(0, min(cap, base * 2 ** (retry - 1)))
