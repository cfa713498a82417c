"""One moment by which something must be done, shared by every stage that works towards it.

At SIGTERM the gateway sets one `Deadline` (`drain_delay + shutdown_grace`): draining, the
requests in flight, the copies, the deliverer and the store each get what is left of it,
never a full grace of their own, so the process exits when the operator was told it would.
"""

from __future__ import annotations

import time


class Deadline:
    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds until the deadline, 0 once it passed."""
        return max(0.0, self._at - time.monotonic())
