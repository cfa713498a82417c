"""Senders seen: where the postbacks that carried a route's valid key came from.

Monetag publishes no list of its addresses; the gateway learns one. Every answered postback
that carried the route's key, verified (`RequestRecord.key_valid`), is noted here by its
network (the /24 of an IPv4 address, the /48 of an IPv6 one: a sender's addresses move within
its blocks), per route: first and last seen, how many, and how many of them came from an
address `allow_ips` does not list (refused; or let in, under `allow_ips_mode: log_only`).
A route without a key notes nothing: a postback there proves nothing about its sender.

Bounded: at most CAPACITY networks across routes; a postback from a network past that is not
noted (counted in `gateway_senders_untracked_total`, logged at most once a minute). Where the
history is kept, what was noted since the last batch goes into it with the batch
(`take_unwritten`), a row per hour and replica, so every replica's senders add up there
(allowlist.py reads them).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .checks.addresses import parse_ip
from .metrics import Metrics
from .record import RequestRecord

log = logging.getLogger("gateway.senders")
IPV4_PREFIX = 24
IPV6_PREFIX = 48
CAPACITY = 4096  # networks across routes: a few dozen is what a real allowlist holds
LOG_EVERY_SECONDS = 60.0
HOUR = 3600.0


@lru_cache(maxsize=4096)  # the same few senders, again and again
def network_of(client: str) -> str | None:
    """The network a client address is counted under, or None if it is not an address."""
    try:
        address = parse_ip(client)
    except ValueError:
        return None
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network((address, prefix), strict=False))


@dataclass
class Seen:
    """Postbacks with a valid key from one network to one route."""

    first: float
    last: float
    postbacks: int = 0
    outside: int = 0  # of them, from an address allow_ips does not list

    def note(self, at: float, outside: bool) -> None:
        self.last = at
        self.postbacks += 1
        self.outside += outside


@dataclass(frozen=True)
class Sender:
    """One network's postbacks to one route, from memory or from the history's rows of every
    replica (`replicas`: how many of them saw it)."""

    route: str
    network: str
    first: float
    last: float
    postbacks: int
    outside: int
    replicas: int = 1


# what the history keeps per hour and replica: route, network, replica, hour, first, last,
# postbacks, outside (the order of history/sql.py's SENDER_COLUMNS)
SenderRow = tuple[str, str, str, float, float, float, int, int]


class SendersSeen:
    def __init__(
        self, metrics: Metrics, capacity: int = CAPACITY, clock: Callable[[], float] = time.time
    ) -> None:
        self._metrics = metrics
        self._capacity = capacity
        self._clock = clock
        self._seen: dict[tuple[str, str], Seen] = {}
        # noted since the history's last batch; None where no history is kept
        self._unwritten: dict[tuple[str, str], Seen] | None = None
        self._untracked_count = 0  # postbacks from networks past the capacity, not noted
        self._last_logged = -LOG_EVERY_SECONDS

    def note(self, record: RequestRecord) -> None:
        """An answered request: noted if it carried its route's valid key."""
        if not record.key_valid or record.route is None or record.client is None:
            return
        network = network_of(record.client)
        if network is None:
            return
        key, at = (record.route, network), self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self._capacity:
                self._untracked(network)
                return
            seen = self._seen[key] = Seen(at, at)
        seen.note(at, record.outside_allowlist)
        if self._unwritten is not None:
            unwritten = self._unwritten.get(key)
            if unwritten is None:
                unwritten = self._unwritten[key] = Seen(at, at)
            unwritten.note(at, record.outside_allowlist)

    def senders(self, route: str | None = None) -> list[Sender]:
        """What this process noted since it started, by route and network."""
        return [
            Sender(name, network, seen.first, seen.last, seen.postbacks, seen.outside)
            for (name, network), seen in sorted(self._seen.items())
            if route is None or name == route
        ]

    # -- the history ---------------------------------------------------------------------------

    def keep_unwritten(self) -> None:
        """The history is kept: gather what it has not been given yet."""
        if self._unwritten is None:
            self._unwritten = {}

    def take_unwritten(self, replica: str) -> list[SenderRow]:
        """What was noted since the last call, as the history's rows of the current hour."""
        if not self._unwritten:
            return []
        unwritten, self._unwritten = self._unwritten, {}
        hour = self._clock() // HOUR * HOUR
        return [
            (route, network, replica, hour, seen.first, seen.last, seen.postbacks, seen.outside)
            for (route, network), seen in unwritten.items()
        ]

    def _untracked(self, network: str) -> None:
        self._untracked_count += 1
        self._metrics.senders_untracked.inc()
        now = time.monotonic()
        if now - self._last_logged >= LOG_EVERY_SECONDS:
            self._last_logged = now
            log.warning(
                "senders seen full: a network not noted",
                extra={
                    "detail": f"{network}: {self._untracked_count} postback(s) with a valid "
                    f"key from networks past the first {self._capacity} not noted so far"
                },
            )
