"""Upstream URLs and the retry loop of the forwarder, against real upstream servers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType

import pytest
from yarl import URL

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamUnavailable
from gateway.forwarding.forward import Forwarder, Upstream
from gateway.forwarding.upstream_client import UpstreamClient
from gateway.metrics import Metrics
from gateway.postback import Postback
from tests.support.upstream import Answer

POSTBACK = Postback({"ymid": "u 1&x", "event_type": "click"}, (("source", "a"), ("source", "b")))


@asynccontextmanager
async def closing_client() -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient()
    yield client
    await client.close()


def upstream(url: str, **settings: object) -> Upstream:
    return Upstream(UpstreamConfig(URL(url), **settings))  # type: ignore[arg-type]


def test_url_keeps_own_query_then_renamed_fields_then_extras():
    target = upstream(
        "http://app:3000/cb?key=app-key", rename=MappingProxyType({"event_type": "event"})
    )
    url = target.url_for(POSTBACK)
    assert url.path == "/cb"
    assert list(url.query.items()) == [
        ("key", "app-key"),
        ("ymid", "u 1&x"),
        ("event", "click"),
        ("source", "a"),
        ("source", "b"),
    ]


@pytest.mark.parametrize(
    ("url", "name", "label"),
    [
        pytest.param(
            "https://user:pw@app.example/cb?key=app-key",
            None,
            "app.example:443",
            id="userinfo-and-query",
        ),
        pytest.param(
            "https://app.example/bot123456:AAHsecret/cb",
            None,
            "app.example:443",
            id="a-token-in-the-path",
        ),
        pytest.param("http://[::1]:3000/cb", None, "[::1]:3000", id="ipv6"),
        pytest.param("https://app.example/bot1:AAH/cb", "telegram", "telegram", id="named"),
    ],
)
def test_an_upstreams_label_never_holds_its_path_or_query(url, name, label):
    assert upstream(url, name=name).label == label


async def test_backoff_stays_within_cap(start_upstream):
    app = start_upstream(script=[503, 503, 503, 200])
    async with closing_client() as session:
        forwarder = Forwarder(session, Metrics(), backoff_base=0.01, backoff_cap=0.02)
        delays = [forwarder._backoff(attempt) for attempt in range(1, 50)]
        assert all(0 <= delay <= 0.02 for delay in delays)
        assert len(set(delays)) > 1  # jitter
        reply = await forwarder.send(upstream(app.url, retries=3), POSTBACK, {})
    assert reply.status == 200
    assert len(app.received) == 4


@pytest.mark.parametrize(
    ("script", "reason", "timed_out"),
    [
        pytest.param([503, 503], "upstream_unavailable", False, id="status"),
        pytest.param(
            [Answer(delay=1.0)] * 2,
            "upstream_timeout",
            True,
            id="timeout",
            marks=pytest.mark.process,
        ),
        pytest.param(
            [Answer(delay=1.0), 503], "upstream_unavailable", False, id="last-failure-wins"
        ),
    ],
)
@pytest.mark.slow
async def test_spent_retries_raise_with_reason(start_upstream, script, reason, timed_out):
    app = start_upstream(script=list(script))
    async with closing_client() as session:
        forwarder = Forwarder(session, Metrics(), backoff_base=0.01)
        with pytest.raises(UpstreamUnavailable) as raised:
            await forwarder.send(upstream(app.url, retries=1, timeout=0.2), POSTBACK, {})
    assert raised.value.reason == reason
    assert raised.value.status == (504 if timed_out else 502)
    assert "2 attempt(s)" in raised.value.detail


async def test_user_agent_and_given_headers_are_sent(start_upstream):
    app = start_upstream()
    async with closing_client() as session:
        await Forwarder(session, Metrics()).send(
            upstream(app.url), POSTBACK, {"X-Request-ID": "r1"}
        )
    headers = app.received[0].headers
    assert headers["User-Agent"] == "monetag-gateway"
    assert headers["X-Request-ID"] == "r1"


@pytest.mark.parametrize(
    ("budget", "timeout", "retries", "most_seconds", "most_attempts"),
    [
        pytest.param(
            0.5, 5.0, 2, 0.8, 1, id="one-attempt-cut-by-the-deadline", marks=pytest.mark.process
        ),
        pytest.param(
            0.7,
            0.3,
            10,
            1.0,
            3,
            id="retries-stop-when-the-deadline-is-spent",
            marks=pytest.mark.process,
        ),
    ],
)
@pytest.mark.slow
async def test_deadline_bounds_every_attempt_and_backoff_together(
    start_upstream, budget, timeout, retries, most_seconds, most_attempts
):
    app = start_upstream(default=Answer(delay=3.0))  # never answers in time
    async with closing_client() as session:
        forwarder = Forwarder(session, Metrics(), backoff_base=0.01, backoff_cap=0.02)
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as raised:
            await forwarder.send(
                upstream(app.url, retries=retries, timeout=timeout), POSTBACK, {}, budget=budget
            )
        spent = time.monotonic() - started
    assert budget <= spent + 0.05 and spent < most_seconds
    assert raised.value.status == 504
    assert f"deadline {budget:g}s spent" in raised.value.detail
    assert 1 <= len(app.received) <= most_attempts


async def test_deadline_leaves_room_for_retries_that_fit(start_upstream):
    app = start_upstream(script=[503, 503], default=200)
    async with closing_client() as session:
        forwarder = Forwarder(session, Metrics(), backoff_base=0.01, backoff_cap=0.02)
        reply = await forwarder.send(upstream(app.url, retries=2), POSTBACK, {}, budget=5.0)
    assert reply.status == 200
    assert len(app.received) == 3
