"""Remembering delivered events, so a repeated postback never grants a second reward.

- `key.py`: the `DedupKey` of a postback (its route's scope and the values of `dedup.key`,
  in one fixed order).
- `delivered.py`: the keys this process knows were delivered, with their TTL (memory).
- `reservation.py`: `RouteDedup`, one route's dedup: the memory above, the table of keys in
  flight in this process, and the backends beyond it, asked in order.
- `backend.py`: what a backend beyond this process is (`Backend`: claim, commit, release) and
  how it fails (`BackendUnavailable`).
- `shared.py`: dedup shared by replicas (`SharedReservations`: take a key with a token and a
  hold, poll while another replica holds it), over a store's few primitives.
- `redis_reservations.py`: those primitives on Redis.

The stores' own backends are in `durable/`: `keys.py` (delivered keys in SQLite) and
`postgres_keys.py` (the primitives on PostgreSQL): what lives in the store is the store's.
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
