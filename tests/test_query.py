"""gateway.checks.query: the raw query decoded strictly, and yarl's fast path agreeing."""

from __future__ import annotations

import pytest
from yarl import URL

from gateway.checks.query import Query, parse_query, read_query


@pytest.mark.parametrize(
    ("raw", "pairs", "undecodable"),
    [
        pytest.param("", [], [], id="empty"),
        pytest.param("a=1&b=2", [("a", "1"), ("b", "2")], [], id="plain"),
        pytest.param("a=1;b=2", [("a", "1;b=2")], [], id="semicolon-is-not-a-separator"),
        pytest.param("a", [("a", "")], [], id="no-equals-is-empty"),
        pytest.param("=x", [("", "x")], [], id="empty-name"),
        pytest.param("&&x=1&&", [("x", "1")], [], id="empty-parts-skipped"),
        pytest.param("a+b=c+d", [("a b", "c d")], [], id="plus-is-space"),
        pytest.param("a=x%2By", [("a", "x+y")], [], id="escaped-plus-is-plus"),
        pytest.param("a=b=c", [("a", "b=c")], [], id="first-equals-splits"),
        pytest.param("%26=%3D", [("&", "=")], [], id="escaped-separators"),
        pytest.param("a=%zz&b=%2", [("a", "%zz"), ("b", "%2")], [], id="bad-escapes-kept"),
        pytest.param("a=%E2%9C%93", [("a", "\u2713")], [], id="utf8"),
        pytest.param("a=%EF%BF%BD", [("a", "\ufffd")], [], id="a-real-replacement-character"),
        pytest.param("a=%00", [("a", "\x00")], [], id="nul-is-utf8"),
        pytest.param("a=%FF&b=1", [("b", "1")], ["a"], id="invalid-byte"),
        pytest.param("a=%C3", [], ["a"], id="truncated-sequence"),
        pytest.param("a=%C0%AF", [], ["a"], id="overlong-encoding"),
        pytest.param("a=%ED%A0%80", [], ["a"], id="encoded-surrogate"),
        pytest.param("%FF=1", [], ["%FF"], id="undecodable-name-shown-escaped"),
        pytest.param("%FF" * 40 + "=1", [], ["%FF" * 21 + "%"], id="long-name-cut"),
    ],
)
def test_parse_query(raw: str, pairs: list[tuple[str, str]], undecodable: list[str]) -> None:
    assert parse_query(raw) == Query(tuple(pairs), tuple(undecodable))


@pytest.mark.parametrize(
    "raw",
    ["a=1&b=2", "a+b=c+d&a=%2B", "a=%E2%9C%93&b=%EF%BF%BD", "a=%FF&b=1", "a=%zz&=&x", "%7Bymid%7D"],
)
def test_read_query_gives_what_parse_query_gives(raw: str) -> None:
    assert read_query(URL.build(path="/p", query_string=raw, encoded=True)) == parse_query(raw)
