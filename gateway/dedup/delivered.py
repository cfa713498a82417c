"""The set of delivered dedup keys of one route, with a TTL, in about 120 bytes per key.

cachetools' TTLCache keeps a linked-list node and an ordered-dict entry per key, hundreds of
bytes each: at the default of a million remembered events, hundreds of MB.
Here keys live in time slices: per 1/16 of the TTL, one dict (key as int -> delivery time) and
a list of the keys in delivery order. A lookup checks the exact delivery time, so an event is
forgotten exactly `ttl` after it was delivered; a whole slice is freed once everything in it
has expired. When `max_entries` is reached, the oldest deliveries are evicted first (each
eviction is reported: it weakens dedup before the TTL).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

SLICES = 16


class _Slice:
    __slots__ = ("evicted", "keys", "order", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.keys: dict[int, float] = {}
        self.order: list[int] = []
        self.evicted = 0  # how many of `order` have been evicted (oldest first)


class DeliveredKeys:
    def __init__(
        self,
        max_entries: int,
        ttl: float,
        clock: Callable[[], float],
        on_evict: Callable[[int], object],
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.on_evict = on_evict
        self._slices: deque[_Slice] = deque()  # oldest first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: bytes) -> bool:
        number = int.from_bytes(key, "big")
        for piece in reversed(self._slices):  # recent deliveries are asked about most
            delivered_at = piece.keys.get(number)
            if delivered_at is not None:
                return self.clock() - delivered_at < self.ttl
        return False

    def add(self, key: bytes) -> None:
        now = self.clock()
        self._forget_expired(now)
        number = int.from_bytes(key, "big")
        if self._size >= self.max_entries:
            self._evict_oldest()
        if not self._slices or now - self._slices[-1].start >= self.ttl / SLICES:
            self._slices.append(_Slice(now))
        newest = self._slices[-1]
        if number not in newest.keys:
            self._size += 1
            newest.order.append(number)
        newest.keys[number] = now

    def reconfigure(self, ttl: float, max_entries: int) -> None:
        """A reloaded ttl/max_entries; what is remembered stays (evicted down if smaller)."""
        self.ttl, self.max_entries = ttl, max_entries
        while self._size > self.max_entries:
            self._evict_oldest()

    def _forget_expired(self, now: float) -> None:
        # a slice that started more than ttl + its own span ago holds only expired keys
        while self._slices and now - self._slices[0].start >= self.ttl * (1 + 1 / SLICES):
            self._size -= len(self._slices.popleft().keys)

    def _evict_oldest(self) -> None:
        oldest = self._slices[0]
        del oldest.keys[oldest.order[oldest.evicted]]
        oldest.evicted += 1
        self._size -= 1
        self.on_evict(1)
        if oldest.evicted == len(oldest.order):
            self._slices.popleft()
