"""A clock the test sets and moves by hand, for code that takes `clock=` (monotonic or wall)."""

from __future__ import annotations


class FakeClock:
    """Callable like `time.monotonic` or `time.time`; `now` is set by hand or by `advance`."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
