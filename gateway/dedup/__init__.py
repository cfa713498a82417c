"""Remembering delivered events, so a repeated postback never grants a second reward.

- `key.py`: the `DedupKey` of a postback (its route's scope and the values of `dedup.key`,
  in one fixed order).
- `delivered.py`: the keys this process knows were delivered, with their TTL (memory).
- `reservation.py`: `RouteDedup`, one route's dedup: the memory above, the table of keys in
  flight in this process, and the backends beyond it, asked in order.
- `backend.py`: what a backend beyond this process is (`Backend`: claim, commit, release) and
  how it fails (`BackendUnavailable`).
- `redis_reservations.py`: reservations and delivered keys on Redis (shared by replicas).

The store's own backend (delivered keys in the durable store) is `durable/keys.py`: what
lives in the store is the store's.
"""

from .backend import HELD, KNOWN, Backend, BackendUnavailable, Claim
from .key import DedupKey, dedup_key, key_fields
from .reservation import Reservation, RouteDedup

__all__ = [
    "HELD",
    "KNOWN",
    "Backend",
    "BackendUnavailable",
    "Claim",
    "DedupKey",
    "Reservation",
    "RouteDedup",
    "dedup_key",
    "key_fields",
]
