"""IP addresses and compiled address sets (allowlists, trusted proxies).

Parsing is strict: ports, brackets, whitespace and leading-zero octets are not addresses.
IPv6 zone suffixes are dropped and IPv4-mapped IPv6 (`::ffff:1.2.3.4`) becomes the IPv4
address, because Python's `ipaddress` does not match a mapped address against an IPv4 network.

An `AddressSet` is compiled once into sorted, merged integer ranges per IP version, so a
membership test is one binary search whatever the size of the list.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from ..shown import quoted

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=4096)  # the same few senders and proxies call again and again
def parse_ip(text: str) -> IPAddress:
    """Parse one address as it appears in a socket peer or header. Raises ValueError."""
    if ":" in text and "%" in text:
        text = text.split("%", 1)[0]  # fe80::1%eth0: the zone names a local interface
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)
def address_text(address: IPAddress) -> str:
    """str(address), remembered: formatting an address costs about a microsecond."""
    return str(address)


def _range_of_entry(entry: str) -> tuple[int, int, int]:
    """(version, first, last) of one allowlist entry: an IP, a CIDR or "first-last"."""
    if "-" in entry:
        return _range_of_first_last(entry)
    if "/" in entry:
        return _range_of_network(entry)
    try:
        address = parse_ip(entry)
    except ValueError:  # ipaddress's own message would quote the entry whole
        raise ValueError(f"{quoted(entry)} does not appear to be an IPv4 or IPv6 address") from None
    return address.version, int(address), int(address)


def _range_of_first_last(entry: str) -> tuple[int, int, int]:
    try:
        first_text, _, last_text = entry.partition("-")
        first, last = parse_ip(first_text.strip()), parse_ip(last_text.strip())
    except ValueError:
        raise ValueError(f"{quoted(entry)} is not an IP, a CIDR or a first-last range") from None
    if first.version != last.version:
        raise ValueError(f"range {quoted(entry)} mixes IPv4 and IPv6")
    if int(first) > int(last):
        raise ValueError(f"range {quoted(entry)} ends before it starts")
    return first.version, int(first), int(last)


def _range_of_network(entry: str) -> tuple[int, int, int]:
    try:
        network = ipaddress.ip_network(entry, strict=True)
    except ValueError:
        try:
            widened = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{quoted(entry)} is not an IP network") from None
        raise ValueError(
            f"{quoted(entry)} has host bits set; write {widened} if that whole network is meant"
        ) from None
    first_address = network.network_address
    if isinstance(first_address, ipaddress.IPv6Address) and first_address.ipv4_mapped:
        v4 = ipaddress.ip_network(f"{first_address.ipv4_mapped}/{network.prefixlen - 96}")
        return 4, int(v4.network_address), int(v4.broadcast_address)
    return network.version, int(first_address), int(network.broadcast_address)


@dataclass(frozen=True)
class _Ranges:
    """Disjoint, sorted [first, last] integer ranges of one IP version."""

    firsts: tuple[int, ...] = ()
    lasts: tuple[int, ...] = ()

    @classmethod
    def merged(cls, ranges: list[tuple[int, int]]) -> _Ranges:
        firsts: list[int] = []
        lasts: list[int] = []
        for first, last in sorted(ranges):
            if lasts and first <= lasts[-1] + 1:
                lasts[-1] = max(lasts[-1], last)
            else:
                firsts.append(first)
                lasts.append(last)
        return cls(tuple(firsts), tuple(lasts))

    def contains(self, value: int) -> bool:
        index = bisect_right(self.firsts, value) - 1
        return index >= 0 and value <= self.lasts[index]

    def covers(self, first: int, last: int) -> bool:
        """Whether every value from `first` to `last` is in these ranges."""
        index = bisect_right(self.firsts, first) - 1
        return index >= 0 and last <= self.lasts[index]

    def overlaps(self, first: int, last: int) -> bool:
        """Whether any value from `first` to `last` is in these ranges."""
        index = bisect_right(self.firsts, last) - 1  # the last range starting by `last`
        return index >= 0 and self.lasts[index] >= first


# Addresses no sender on the internet has: private, loopback, link-local, shared (CGNAT) and
# unique-local blocks. A proxy outside them is a public one.
_NOT_PUBLIC = {
    4: (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
    ),
    6: ("::1/128", "fc00::/7", "fe80::/10"),
}
_EVERY = {4: (0, 2**32 - 1), 6: (0, 2**128 - 1)}


@dataclass(frozen=True)
class AddressSet:
    """A compiled list of IPs, CIDRs and ranges; answers `address in set`."""

    entries: tuple[str, ...] = ()
    _v4: _Ranges = field(default_factory=_Ranges, repr=False)
    _v6: _Ranges = field(default_factory=_Ranges, repr=False)

    @classmethod
    def compile(cls, entries: Iterable[str]) -> AddressSet:
        """Build the set; raises ValueError naming the index of the first bad entry."""
        entries = tuple(entries)
        by_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for index, entry in enumerate(entries):
            try:
                version, first, last = _range_of_entry(entry)
            except ValueError as error:
                raise IndexedValueError(index, str(error)) from None
            by_version[version].append((first, last))
        return cls(entries, _Ranges.merged(by_version[4]), _Ranges.merged(by_version[6]))

    def __contains__(self, address: object) -> bool:
        if isinstance(address, ipaddress.IPv4Address):
            return self._v4.contains(int(address))
        if isinstance(address, ipaddress.IPv6Address):
            return self._v6.contains(int(address))
        return False

    def __len__(self) -> int:
        return len(self.entries)

    def lists(self, network: IPNetwork) -> str:
        """How much of a network the set lists: "all", "part" or "none"."""
        ranges = self._v4 if network.version == 4 else self._v6
        first, last = int(network.network_address), int(network.broadcast_address)
        if ranges.covers(first, last):
            return "all"
        return "part" if ranges.overlaps(first, last) else "none"

    @property
    def covers_every_address(self) -> bool:
        """Every IPv4 or every IPv6 address is in the set (0.0.0.0/0, ::/0, 0.0.0.0-...):
        as good as no list at all for whoever sends from that family."""
        return self._v4.covers(*_EVERY[4]) or self._v6.covers(*_EVERY[6])

    def public_entries(self) -> list[int]:
        """The indexes of entries that take in an address outside the private, loopback,
        link-local and shared blocks: a public address."""
        private = {
            version: _Ranges.merged([_range_of_network(block)[1:] for block in blocks])
            for version, blocks in _NOT_PUBLIC.items()
        }
        public = []
        for index, entry in enumerate(self.entries):
            version, first, last = _range_of_entry(entry)
            if not private[version].covers(first, last):
                public.append(index)
        return public


class IndexedValueError(ValueError):
    """A bad entry in a list, with its position so config errors can name `key[i]`."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
