"""How often one Telegram user, or one address, may ask for a ymid: a token bucket per key.

Each key may take `per_minute` at once, then one every 60/per_minute seconds. The buckets
are kept for at most `keys` keys, the least recently seen forgotten first (a forgotten key
starts full again: an attacker who rotates through more keys than that only resets buckets,
and the per-address limit beside the per-user one still holds). Per process: each replica
limits on its own, so N replicas allow N times the rate.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_KEYS = 100_000


class RateLimit:
    def __init__(self, per_minute: int, keys: int = MAX_KEYS) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.per_minute = per_minute
        self._burst = float(per_minute)
        self._per_second = per_minute / 60.0
        self._keys = keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: str, now: float) -> float | None:
        """Take one for `key`: None when allowed, else the seconds until one is (Retry-After)."""
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - at) * self._per_second)
        if tokens >= 1.0:
            self._remember(key, tokens - 1.0, now)
            return None
        self._remember(key, tokens, now)
        return (1.0 - tokens) / self._per_second

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
