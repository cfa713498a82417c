"""The building blocks of the ymid endpoint on their own: the rate limit per user and per
address, and which origins may call it from a browser (CORS)."""

from __future__ import annotations

import pytest

from gateway.sessions.limits import RateLimit
from gateway.sessions.origins import OriginPolicy, parse_origin


def test_a_burst_then_one_every_interval():
    limit = RateLimit(per_minute=3)
    assert [limit.take("u", 100.0) for _ in range(3)] == [None, None, None]
    wait = limit.take("u", 100.0)
    assert wait == pytest.approx(20.0)  # 60 s / 3
    assert limit.take("u", 110.0) == pytest.approx(10.0)  # refused again: half a token back
    assert limit.take("u", 120.0) is None  # a whole token back
    assert limit.take("other", 120.0) is None  # each key has its own bucket


def test_a_refused_take_costs_nothing():
    limit = RateLimit(per_minute=60)
    for _ in range(60):
        assert limit.take("u", 0.0) is None
    for _ in range(100):  # hammering while limited does not push the next one further away
        assert limit.take("u", 0.0) == pytest.approx(1.0)
    assert limit.take("u", 1.0) is None


def test_memory_is_bounded_oldest_forgotten_first():
    limit = RateLimit(per_minute=1, keys=2)
    limit.take("a", 0.0)
    limit.take("b", 0.0)
    limit.take("a", 0.0)  # "a" seen again: "b" is now the oldest
    limit.take("c", 0.0)
    assert len(limit) == 2
    assert limit.take("a", 0.0) is not None  # still remembered, still limited
    assert limit.take("b", 0.0) is None  # forgotten: starts full again


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com/", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("https://app.example.com:8443", "https://app.example.com:8443"),
        ("http://localhost:5173", "http://localhost:5173"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_origins_are_read_as_browsers_send_them(given, origin):
    assert parse_origin(given) == origin


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("*", "any site"),
        ("http://app.example.com", "must be https"),
        ("https://app.example.com/mini-app", "no path"),
        ("https://user@app.example.com", "no path, query or user"),
        ("app.example.com", "is not an origin"),
        ("ftp://app.example.com", "is not an origin"),
        ("https://app.example.com:99999", "is not an origin"),
    ],
)
def test_what_is_not_an_origin_is_said(given, problem):
    with pytest.raises(ValueError, match=problem):
        parse_origin(given)


def test_only_listed_origins_get_cors_headers_and_preflights():
    policy = OriginPolicy(["https://app.example.com"])
    assert policy.allows("https://app.example.com") and policy.allows(None)
    assert not policy.allows("https://evil.example") and not policy.allows("null")
    assert policy.headers("https://app.example.com") == {
        "Access-Control-Allow-Origin": "https://app.example.com",
        "Vary": "Origin",
    }
    assert policy.headers("https://evil.example") == {"Vary": "Origin"}
    preflight = policy.preflight("https://app.example.com", "POST")
    assert preflight is not None and preflight["Access-Control-Allow-Methods"] == "POST"
    assert policy.preflight("https://evil.example", "POST") is None
    assert policy.preflight("https://app.example.com", "DELETE") is None
