"""Tests for gateway.checks.addresses: strict IP parsing and compiled address sets."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from gateway.checks.addresses import AddressSet, IndexedValueError, parse_ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1.2.3.4", IPv4Address("1.2.3.4"), id="ipv4"),
        pytest.param("0.0.0.0", IPv4Address("0.0.0.0"), id="ipv4-unspecified"),
        pytest.param("::1", IPv6Address("::1"), id="ipv6-loopback"),
        pytest.param("2001:DB8::A", IPv6Address("2001:db8::a"), id="ipv6-uppercase"),
        pytest.param("fe80::1%eth0", IPv6Address("fe80::1"), id="ipv6-zone-stripped"),
        pytest.param("::ffff:10.0.0.1", IPv4Address("10.0.0.1"), id="ipv4-mapped-becomes-ipv4"),
        pytest.param("::ffff:a00:1", IPv4Address("10.0.0.1"), id="ipv4-mapped-hex-form"),
        pytest.param("::a00:1", IPv6Address("::a00:1"), id="ipv4-compatible-stays-ipv6"),
    ],
)
def test_parse_ip_accepts_plain_addresses(text: str, expected: IPv4Address | IPv6Address) -> None:
    parsed = parse_ip(text)

    assert parsed == expected
    assert type(parsed) is type(expected)


def test_parse_ip_drops_the_zone_entirely() -> None:
    parsed = parse_ip("fe80::1%eth0")

    assert isinstance(parsed, IPv6Address)
    assert parsed.scope_id is None
    assert str(parsed) == "fe80::1"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(" ", id="blank"),
        pytest.param("1.2.3.4:80", id="ipv4-with-port"),
        pytest.param("[::1]", id="ipv6-in-brackets"),
        pytest.param("[::1]:443", id="ipv6-brackets-and-port"),
        pytest.param(" 1.2.3.4", id="leading-space"),
        pytest.param("1.2.3.4 ", id="trailing-space"),
        pytest.param("1.2.3.4\n", id="trailing-newline"),
        pytest.param("010.0.0.1", id="leading-zero-octet"),
        pytest.param("1.2.3", id="three-octets"),
        pytest.param("1.2.3.4.5", id="five-octets"),
        pytest.param("256.0.0.1", id="octet-too-large"),
        pytest.param("0x7f.0.0.1", id="hex-octet"),
        pytest.param("2130706433", id="integer-form"),
        pytest.param("1.2.3.4%eth0", id="ipv4-with-zone"),
        pytest.param("1.2.3.4/32", id="cidr-is-not-an-address"),
        pytest.param("unknown", id="garbage-word"),
        pytest.param("::g", id="bad-ipv6-digit"),
        pytest.param("\u0661.\u0662.\u0663.\u0664", id="non-ascii-digits"),
    ],
)
def test_parse_ip_rejects_anything_that_is_not_exactly_an_address(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ip(text)


def _ip(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)


@pytest.mark.parametrize(
    ("entries", "inside", "outside"),
    [
        pytest.param(
            ["192.0.2.7"],
            ["192.0.2.7"],
            ["192.0.2.6", "192.0.2.8"],
            id="single-ipv4",
        ),
        pytest.param(
            ["2001:db8::7"],
            ["2001:db8::7"],
            ["2001:db8::6", "2001:db8::8"],
            id="single-ipv6",
        ),
        pytest.param(
            ["10.0.0.0/8"],
            ["10.0.0.0", "10.128.0.1", "10.255.255.255"],
            ["9.255.255.255", "11.0.0.0"],
            id="cidr-ipv4",
        ),
        pytest.param(
            ["192.0.2.5/32"],
            ["192.0.2.5"],
            ["192.0.2.4", "192.0.2.6"],
            id="cidr-ipv4-slash-32",
        ),
        pytest.param(
            ["0.0.0.0/0"],
            ["0.0.0.0", "255.255.255.255"],
            ["::", "::1"],
            id="cidr-ipv4-everything-but-no-ipv6",
        ),
        pytest.param(
            ["2001:db8::/32"],
            ["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
            ["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"],
            id="cidr-ipv6",
        ),
        pytest.param(
            ["::/0"],
            ["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            ["0.0.0.0", "127.0.0.1"],
            id="cidr-ipv6-everything-but-no-ipv4",
        ),
        pytest.param(
            ["192.0.2.10-192.0.2.20"],
            ["192.0.2.10", "192.0.2.15", "192.0.2.20"],
            ["192.0.2.9", "192.0.2.21"],
            id="range-ipv4-inclusive",
        ),
        pytest.param(
            ["192.0.2.10 - 192.0.2.20"],
            ["192.0.2.10", "192.0.2.20"],
            ["192.0.2.9", "192.0.2.21"],
            id="range-ipv4-spaces-around-dash",
        ),
        pytest.param(
            ["192.0.2.10-192.0.2.10"],
            ["192.0.2.10"],
            ["192.0.2.9", "192.0.2.11"],
            id="range-of-one-address",
        ),
        pytest.param(
            ["10.0.0.255-10.0.1.0"],
            ["10.0.0.255", "10.0.1.0"],
            ["10.0.0.254", "10.0.1.1"],
            id="range-across-octet-boundary",
        ),
        pytest.param(
            ["2001:db8::10-2001:db8::20"],
            ["2001:db8::10", "2001:db8::1a", "2001:db8::20"],
            ["2001:db8::f", "2001:db8::21"],
            id="range-ipv6-inclusive",
        ),
        pytest.param(
            ["::ffff:10.0.0.0/104"],
            ["10.0.0.0", "10.255.255.255"],
            ["9.255.255.255", "11.0.0.0", "::a00:1", "a00::"],
            id="mapped-ipv6-cidr-matches-ipv4",
        ),
        pytest.param(
            ["::ffff:192.0.2.1"],
            ["192.0.2.1"],
            ["192.0.2.2", "::c000:201"],
            id="mapped-ipv6-single-is-ipv4",
        ),
        pytest.param(
            ["::ffff:192.0.2.1-::ffff:192.0.2.3"],
            ["192.0.2.1", "192.0.2.3"],
            ["192.0.2.0", "192.0.2.4"],
            id="mapped-ipv6-range-is-ipv4",
        ),
        pytest.param(
            ["fe80::1%eth0"],
            ["fe80::1"],
            ["fe80::2"],
            id="ipv6-zone-in-entry-stripped",
        ),
        pytest.param(
            ["10.0.0.0/8"],
            [],
            ["::a00:1", "a00::", "::ffff:0:0"],
            id="ipv4-cidr-never-matches-ipv6",
        ),
        pytest.param(
            ["::/96"],
            [],
            ["0.0.0.0", "0.0.0.1", "255.255.255.255"],
            id="ipv6-cidr-with-ipv4-sized-values-never-matches-ipv4",
        ),
        pytest.param(
            [],
            [],
            ["0.0.0.0", "127.0.0.1", "::1"],
            id="empty-set-contains-nothing",
        ),
    ],
)
def test_address_set_contains(entries: list[str], inside: list[str], outside: list[str]) -> None:
    addresses = AddressSet.compile(entries)

    assert [text for text in inside if _ip(text) not in addresses] == []
    assert [text for text in outside if _ip(text) in addresses] == []


@pytest.mark.parametrize(
    ("entries", "inside", "outside"),
    [
        pytest.param(
            ["10.0.0.0/24", "10.0.0.128/25"],
            ["10.0.0.0", "10.0.0.127", "10.0.0.128", "10.0.0.255"],
            ["10.0.1.0", "9.255.255.255"],
            id="overlapping-cidrs",
        ),
        pytest.param(
            ["10.0.0.0/25", "10.0.0.128/25"],
            ["10.0.0.127", "10.0.0.128", "10.0.0.255"],
            ["10.0.1.0"],
            id="adjacent-cidrs",
        ),
        pytest.param(
            ["10.0.0.0-10.0.0.100", "10.0.0.10-10.0.0.20"],
            ["10.0.0.21", "10.0.0.50", "10.0.0.100"],
            ["10.0.0.101"],
            id="nested-range-does-not-cut-outer-short",
        ),
        pytest.param(
            ["10.0.0.10-10.0.0.20", "10.0.0.0-10.0.0.100"],
            ["10.0.0.0", "10.0.0.50", "10.0.0.100"],
            ["10.0.0.101"],
            id="nested-range-listed-first",
        ),
        pytest.param(
            ["10.0.0.5-10.0.0.9", "10.0.0.0-10.0.0.3"],
            ["10.0.0.0", "10.0.0.3", "10.0.0.5", "10.0.0.9"],
            ["10.0.0.4", "10.0.0.10"],
            id="unsorted-with-one-address-gap",
        ),
        pytest.param(
            ["10.0.0.1", "10.0.0.1", "10.0.0.0/31"],
            ["10.0.0.0", "10.0.0.1"],
            ["10.0.0.2"],
            id="duplicates",
        ),
        pytest.param(
            ["2001:db8::-2001:db8::ff", "2001:db8::100/120"],
            ["2001:db8::ff", "2001:db8::100", "2001:db8::1ff"],
            ["2001:db8::200"],
            id="adjacent-ipv6-range-and-cidr",
        ),
        pytest.param(
            ["10.0.0.0/8", "::ffff:11.0.0.0/104"],
            ["10.255.255.255", "11.0.0.0", "11.255.255.255"],
            ["12.0.0.0"],
            id="ipv4-and-mapped-cidr-adjacent",
        ),
        pytest.param(
            ["0.0.0.0/0", "::/0"],
            ["0.0.0.0", "255.255.255.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            [],
            id="both-versions-whole-space",
        ),
    ],
)
def test_address_set_merges_overlapping_and_adjacent_entries(
    entries: list[str], inside: list[str], outside: list[str]
) -> None:
    addresses = AddressSet.compile(entries)

    assert [text for text in inside if _ip(text) not in addresses] == []
    assert [text for text in outside if _ip(text) in addresses] == []


@pytest.mark.parametrize(
    ("entries", "text"),
    [
        pytest.param(["10.0.0.0/8"], "::ffff:10.0.0.1", id="mapped-address-vs-ipv4-cidr"),
        pytest.param(["10.0.0.1"], "::ffff:10.0.0.1", id="mapped-address-vs-ipv4-single"),
        pytest.param(["::ffff:10.0.0.0/104"], "::ffff:10.1.2.3", id="mapped-both-sides"),
        pytest.param(["::ffff:10.0.0.0/104"], "10.1.2.3", id="mapped-cidr-vs-ipv4-address"),
    ],
)
def test_parsed_mapped_addresses_match_ipv4_entries(entries: list[str], text: str) -> None:
    assert parse_ip(text) in AddressSet.compile(entries)


def test_address_set_membership_of_non_addresses_is_false() -> None:
    addresses = AddressSet.compile(["0.0.0.0/0", "::/0"])

    assert "1.2.3.4" not in addresses
    assert None not in addresses
    assert 16909060 not in addresses


def test_address_set_keeps_entries_as_given() -> None:
    entries = ["10.0.0.0/8", "10.0.0.1", "192.0.2.1-192.0.2.9"]

    addresses = AddressSet.compile(iter(entries))

    assert addresses.entries == tuple(entries)
    assert len(addresses) == 3


@pytest.mark.parametrize(
    ("entries", "index", "message_parts"),
    [
        pytest.param(
            ["1.2.3.4/24"],
            0,
            ["'1.2.3.4/24'", "host bits", "1.2.3.0/24"],
            id="host-bits-set-ipv4",
        ),
        pytest.param(
            ["2001:db8::1/32"],
            0,
            ["host bits", "2001:db8::/32"],
            id="host-bits-set-ipv6",
        ),
        pytest.param(
            ["10.0.0.0/8", "192.0.2.20-192.0.2.10"],
            1,
            ["ends before it starts"],
            id="reversed-range",
        ),
        pytest.param(
            ["2001:db8::20-2001:db8::10"],
            0,
            ["ends before it starts"],
            id="reversed-range-ipv6",
        ),
        pytest.param(
            ["10.0.0.1", "10.0.0.2", "10.0.0.1-2001:db8::1"],
            2,
            ["mixes IPv4 and IPv6"],
            id="mixed-version-range",
        ),
        pytest.param(["bogus"], 0, [], id="garbage-word"),
        pytest.param(["10.0.0.1", ""], 1, [], id="empty-entry"),
        pytest.param(["10.0.0.0/33"], 0, [], id="prefix-too-long"),
        pytest.param(["10.0.0.0/"], 0, [], id="missing-prefix"),
        pytest.param(["010.0.0.0/8"], 0, [], id="leading-zero-cidr"),
        pytest.param([" 10.0.0.1"], 0, [], id="leading-space-single"),
        pytest.param(["10.0.0.1:80"], 0, [], id="port"),
        pytest.param(["[::1]"], 0, [], id="brackets"),
        pytest.param(["10.0.0.1-"], 0, [], id="range-without-end"),
        pytest.param(["-10.0.0.1"], 0, [], id="range-without-start"),
        pytest.param(["10.0.0.1-10.0.0.2-10.0.0.3"], 0, [], id="range-with-two-dashes"),
        pytest.param(["10.0.0.0/8-10.0.0.9"], 0, [], id="range-of-cidr"),
        pytest.param(["1.1.1.1", "2.2.2.2", "3.3.3.3", "oops", "nope"], 3, [], id="first-bad-wins"),
    ],
)
def test_address_set_rejects_bad_entries_with_their_index(
    entries: list[str], index: int, message_parts: list[str]
) -> None:
    with pytest.raises(IndexedValueError) as caught:
        AddressSet.compile(entries)

    assert caught.value.index == index
    assert isinstance(caught.value, ValueError)
    for part in message_parts:
        assert part in str(caught.value)


def test_host_bits_message_suggests_the_network() -> None:
    with pytest.raises(IndexedValueError) as caught:
        AddressSet.compile(["1.2.3.4/24"])

    assert str(caught.value) == (
        "'1.2.3.4/24' has host bits set; write 1.2.3.0/24 if that whole network is meant"
    )


@pytest.mark.slow
def test_large_set_answers_correctly_at_every_boundary() -> None:
    # 10,000 disjoint /24s, each separated from the next by an unlisted /24.
    base = int(IPv4Address("10.0.0.0"))
    firsts = [base + index * 512 for index in range(10_000)]
    entries = [f"{IPv4Address(first)}/24" for first in firsts]

    addresses = AddressSet.compile(entries)

    wrong: list[str] = []
    for first in firsts:
        last = first + 255
        for value, expected in ((first - 1, False), (first, True), (last, True), (last + 1, False)):
            if (IPv4Address(value) in addresses) != expected:
                wrong.append(f"{IPv4Address(value)} expected {expected}")
    assert wrong == []
    assert len(addresses) == 10_000
