"""gateway.checks.clientip: which address is the client, and when X-Forwarded-For counts."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from gateway.checks.addresses import AddressSet
from gateway.checks.clientip import ClientAddressResolver
from gateway.errors import Forbidden

TRUSTED = ["10.0.0.0/8", "2001:db8:aaaa::/48"]


def _resolver(trusted: list[str] = TRUSTED) -> ClientAddressResolver:
    return ClientAddressResolver(AddressSet.compile(trusted))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        pytest.param("203.0.113.9", [], "203.0.113.9", id="untrusted-peer-without-xff"),
        pytest.param(
            "203.0.113.9", ["1.1.1.1"], "203.0.113.9", id="untrusted-peer-xff-spoof-ignored"
        ),
        pytest.param(
            "203.0.113.9",
            ["1.1.1.1, 10.0.0.5"],
            "203.0.113.9",
            id="untrusted-peer-xff-with-trusted-hop-ignored",
        ),
        pytest.param("10.0.0.1", [], "10.0.0.1", id="trusted-peer-without-xff"),
        pytest.param("10.0.0.1", ["1.1.1.1"], "1.1.1.1", id="trusted-peer-single-hop"),
        pytest.param(
            "10.0.0.1", ["1.1.1.1, 2.2.2.2"], "2.2.2.2", id="trusted-peer-right-most-untrusted"
        ),
        pytest.param(
            "10.0.0.1",
            ["1.1.1.1, 2.2.2.2, 10.0.0.7, 10.9.9.9"],
            "2.2.2.2",
            id="trusted-hops-skipped-from-the-right",
        ),
        pytest.param(
            "10.0.0.1",
            ["1.1.1.1,2.2.2.2"],
            "2.2.2.2",
            id="hops-without-spaces",
        ),
        pytest.param(
            "10.0.0.1",
            ["  1.1.1.1 ,\t2.2.2.2  "],
            "2.2.2.2",
            id="hops-with-extra-whitespace",
        ),
        pytest.param(
            "10.0.0.1",
            ["1.1.1.1", "2.2.2.2, 10.0.0.5"],
            "2.2.2.2",
            id="several-header-lines-joined-in-order",
        ),
        pytest.param(
            "10.0.0.1",
            ["1.1.1.1", "10.0.0.5", "10.0.0.6"],
            "1.1.1.1",
            id="untrusted-hop-on-an-earlier-line",
        ),
        pytest.param(
            "10.0.0.1",
            ["10.0.0.9, 10.0.0.8", "10.0.0.7"],
            "10.0.0.9",
            id="all-hops-trusted-left-most",
        ),
        pytest.param(
            "10.0.0.1",
            ["garbage, 2.2.2.2"],
            "2.2.2.2",
            id="garbage-left-of-client-never-read",
        ),
        pytest.param("2001:db8:bbbb::1", [], "2001:db8:bbbb::1", id="untrusted-ipv6-peer"),
        pytest.param(
            "2001:db8:bbbb::1",
            ["2001:db8:cccc::1"],
            "2001:db8:bbbb::1",
            id="untrusted-ipv6-peer-xff-ignored",
        ),
        pytest.param(
            "2001:db8:aaaa::1",
            ["2001:db8:cccc::1, 2001:db8:aaaa::2"],
            "2001:db8:cccc::1",
            id="trusted-ipv6-peer-ipv6-hops",
        ),
        pytest.param(
            "2001:db8:aaaa::1",
            ["198.51.100.4"],
            "198.51.100.4",
            id="trusted-ipv6-peer-ipv4-hop",
        ),
        pytest.param(
            "fe80::1%eth0",
            [],
            "fe80::1",
            id="ipv6-peer-with-zone",
        ),
        pytest.param(
            "::ffff:10.0.0.1",
            ["1.1.1.1"],
            "1.1.1.1",
            id="mapped-peer-trusted-by-ipv4-cidr",
        ),
        pytest.param(
            "::ffff:203.0.113.9",
            ["1.1.1.1"],
            "203.0.113.9",
            id="mapped-untrusted-peer-returned-as-ipv4",
        ),
        pytest.param(
            "10.0.0.1",
            ["1.1.1.1, ::ffff:10.0.0.5"],
            "1.1.1.1",
            id="mapped-trusted-hop-skipped",
        ),
        pytest.param(
            "10.0.0.1",
            ["::ffff:2.2.2.2"],
            "2.2.2.2",
            id="mapped-client-hop-returned-as-ipv4",
        ),
    ],
)
def test_resolve_picks_the_client_address(
    peer: str, forwarded_for: list[str], expected: str
) -> None:
    resolved = _resolver().resolve(peer, forwarded_for)

    assert resolved == ip_address(expected)
    assert type(resolved) is type(ip_address(expected))


def test_resolve_returns_ipv4_for_mapped_peer() -> None:
    resolved = _resolver().resolve("::ffff:10.0.0.1", [])

    assert resolved == IPv4Address("10.0.0.1")


def test_resolve_with_no_trusted_proxies_always_uses_the_peer() -> None:
    resolved = _resolver([]).resolve("127.0.0.1", ["1.1.1.1"])

    assert resolved == IPv4Address("127.0.0.1")


def test_resolve_accepts_a_tuple_of_header_lines() -> None:
    resolved = _resolver().resolve("10.0.0.1", ("1.1.1.1", "2001:db8:cccc::1"))

    assert resolved == IPv6Address("2001:db8:cccc::1")


@pytest.mark.parametrize(
    "forwarded_for",
    [
        pytest.param(["1.2.3.4:"], id="hop-with-empty-port"),
        pytest.param(["1.2.3.4:123456"], id="hop-with-six-digit-port"),
        pytest.param(["1.2.3.4:80:81"], id="hop-with-two-ports"),
        pytest.param(["1.2.3.4:http"], id="hop-with-named-port"),
        pytest.param(["[::1]:"], id="brackets-with-empty-port"),
        pytest.param(["[::1]x"], id="brackets-then-garbage"),
        pytest.param(["[::1"], id="unclosed-bracket"),
        pytest.param(["[]:80"], id="empty-brackets"),
        pytest.param(["[unknown]:80"], id="word-in-brackets"),
        pytest.param(["unknown"], id="hop-unknown"),
        pytest.param([""], id="empty-header-line"),
        pytest.param(["1.1.1.1, "], id="trailing-empty-hop"),
        pytest.param(["1.1.1.1,,10.0.0.5"], id="empty-hop-between-trusted"),
        pytest.param(["1.1.1.1", ""], id="empty-last-line"),
        pytest.param(["1.1.1.1, 010.0.0.5"], id="leading-zero-hop"),
        pytest.param(["1.1.1.1, garbage, 10.0.0.5"], id="garbage-behind-trusted-hop"),
        pytest.param(['"1.1.1.1"'], id="quoted-hop"),
        pytest.param(["for=1.1.1.1"], id="forwarded-header-syntax"),
        pytest.param(["1.1.1.1 2.2.2.2"], id="space-separated-hops"),
        pytest.param(["x" * 10_000], id="very-long-hop"),
        pytest.param(["\u0661.\u0662.\u0663.\u0664"], id="non-ascii-digits"),
        pytest.param(["\x00"], id="nul-byte"),
        pytest.param(["%:"], id="only-zone-marker"),
    ],
)
def test_garbage_hop_from_trusted_peer_is_forbidden(forwarded_for: list[str]) -> None:
    with pytest.raises(Forbidden) as caught:
        _resolver().resolve("10.0.0.1", forwarded_for)

    assert caught.value.reason == "xff_unparseable"
    assert "X-Forwarded-For" in caught.value.detail


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        pytest.param(["1.2.3.4:80"], "1.2.3.4", id="ipv4-with-port"),
        pytest.param(["203.0.113.5:4711"], "203.0.113.5", id="ipv4-with-high-port"),
        pytest.param(["[2001:db8::1]:443"], "2001:db8::1", id="bracketed-ipv6-with-port"),
        pytest.param(["[2001:db8::1]"], "2001:db8::1", id="bracketed-ipv6"),
        pytest.param(["[::ffff:1.2.3.4]:80"], "1.2.3.4", id="bracketed-mapped-ipv6-with-port"),
        pytest.param(["1.1.1.1:1, 10.0.0.5:2"], "1.1.1.1", id="ports-on-trusted-hops-too"),
        # a bare IPv6 address cannot carry a port: the last group is part of the address
        pytest.param(["2001:db8::1:443"], "2001:db8::1:443", id="bare-ipv6-has-no-port"),
    ],
)
def test_hop_with_a_port_resolves_to_its_address(forwarded_for: list[str], client: str) -> None:
    """Some cloud load balancers append the client's port; refusing it would refuse all
    traffic behind them."""
    assert _resolver().resolve("10.0.0.1", forwarded_for) == ip_address(client)


def test_forbidden_detail_truncates_a_long_garbage_hop() -> None:
    with pytest.raises(Forbidden) as caught:
        _resolver().resolve("10.0.0.1", ["x" * 10_000])

    assert len(caught.value.detail) < 200


@pytest.mark.parametrize(
    "forwarded_for",
    [
        pytest.param(["1.2.3.4:80"], id="hop-with-port"),
        pytest.param(["[::1]"], id="hop-in-brackets"),
        pytest.param(["unknown"], id="hop-unknown"),
        pytest.param([""], id="empty-header-line"),
        pytest.param(["1.1.1.1, "], id="trailing-empty-hop"),
    ],
)
def test_garbage_hop_from_untrusted_peer_is_never_read(forwarded_for: list[str]) -> None:
    resolved = _resolver().resolve("203.0.113.9", forwarded_for)

    assert resolved == IPv4Address("203.0.113.9")


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
    ],
)
def test_missing_peer_is_forbidden(peer: str | None) -> None:
    with pytest.raises(Forbidden) as caught:
        _resolver().resolve(peer, ["1.1.1.1"])

    assert caught.value.reason == "no_peer"
    assert caught.value.detail == "no peer address on the connection"


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param("unknown", id="word"),
        pytest.param("10.0.0.1:5000", id="with-port"),
        pytest.param("[::1]", id="in-brackets"),
        pytest.param(" 10.0.0.1", id="leading-space"),
        pytest.param("/run/gateway.sock", id="unix-socket-path"),
    ],
)
def test_unparseable_peer_is_forbidden(peer: str) -> None:
    with pytest.raises(Forbidden) as caught:
        _resolver().resolve(peer, [])

    assert caught.value.reason == "peer_unparseable"
    assert "peer" in caught.value.detail


def test_forbidden_body_does_not_leak_the_reason() -> None:
    with pytest.raises(Forbidden) as caught:
        _resolver().resolve("10.0.0.1", ["unknown"])

    assert caught.value.status == 403
    assert caught.value.body() == {"outcome": "rejected", "error": "forbidden"}
