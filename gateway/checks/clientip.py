"""Who is calling: the TCP peer, or the first untrusted hop of X-Forwarded-For.

Only a peer in `trusted_proxies` is believed about X-Forwarded-For. Its header lines are
joined in order and walked from the right, skipping trusted proxies; the first untrusted
address is the client. The left-most value is whatever the original sender wrote and is
never believed on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import ForwardedForUnparseable, NoPeer, PeerUnparseable
from .addresses import AddressSet, IPAddress, parse_ip


class ClientAddressResolver:
    def __init__(self, trusted_proxies: AddressSet) -> None:
        self._trusted = trusted_proxies

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> IPAddress:
        """The client address of one request. Unparseable addresses raise Forbidden."""
        if not peer:
            raise NoPeer("no peer address on the connection")
        try:
            address = parse_ip(peer)
        except ValueError:
            raise PeerUnparseable(f"unparseable peer address {peer!r}") from None
        if address not in self._trusted or not forwarded_for:
            return address
        hops = ",".join(forwarded_for).split(",")
        for hop in reversed(hops):
            text = hop.strip()
            try:
                address = parse_hop(text)
            except ValueError:
                detail = f"unparseable X-Forwarded-For hop {text[:64]!r}"
                raise ForwardedForUnparseable(detail) from None
            if address not in self._trusted:
                return address
        return address  # every hop is a trusted proxy: the farthest one is the caller


_IPV4_WITH_PORT = re.compile(r"([0-9.]+):[0-9]{1,5}")
_BRACKETED_IPV6 = re.compile(r"\[([^\]]+)\](?::[0-9]{1,5})?")


def parse_hop(text: str) -> IPAddress:
    """One X-Forwarded-For hop. Some cloud load balancers append the client's port
    (`203.0.113.5:4711`, `[2001:db8::1]:443`): the port is dropped, the address kept.
    A bare IPv6 address has colons too, so only these two shapes are read as having a port."""
    try:
        return parse_ip(text)
    except ValueError:
        shape = _IPV4_WITH_PORT.fullmatch(text) or _BRACKETED_IPV6.fullmatch(text)
        if shape is None:
            raise
        return parse_ip(shape.group(1))
