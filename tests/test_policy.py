"""The retry policy as a table: what each answer or failure means on each path, and the backoff."""

from __future__ import annotations

import random

import pytest

from gateway.forwarding import policy
from gateway.forwarding.forward import AttemptFailure
from gateway.forwarding.policy import Verdict

DELIVERED, REFUSED, RETRY, UNUSABLE = (
    Verdict.DELIVERED,
    Verdict.REFUSED,
    Verdict.RETRY,
    Verdict.UNUSABLE,
)


@pytest.mark.parametrize(
    ("status", "sync", "queued"),
    [
        pytest.param(200, DELIVERED, DELIVERED, id="200-delivered"),
        pytest.param(204, DELIVERED, DELIVERED, id="204-delivered"),
        pytest.param(299, DELIVERED, DELIVERED, id="299-delivered"),
        pytest.param(400, REFUSED, REFUSED, id="400-refused"),
        pytest.param(403, REFUSED, REFUSED, id="403-refused"),
        pytest.param(404, REFUSED, REFUSED, id="404-refused"),
        pytest.param(409, REFUSED, REFUSED, id="409-refused"),
        pytest.param(408, REFUSED, RETRY, id="408-sync-passes-back-queued-retries"),
        pytest.param(429, REFUSED, RETRY, id="429-sync-passes-back-queued-retries"),
        pytest.param(499, REFUSED, REFUSED, id="499-refused"),
        pytest.param(500, UNUSABLE, RETRY, id="500-sync-502s-queued-retries"),
        pytest.param(501, UNUSABLE, RETRY, id="501-sync-502s-queued-retries"),
        pytest.param(502, RETRY, RETRY, id="502-retried"),
        pytest.param(503, RETRY, RETRY, id="503-retried"),
        pytest.param(504, RETRY, RETRY, id="504-retried"),
        pytest.param(505, UNUSABLE, RETRY, id="505-sync-502s-queued-retries"),
        pytest.param(101, UNUSABLE, RETRY, id="1xx-sync-502s-queued-retries"),
        pytest.param(301, UNUSABLE, RETRY, id="redirect-sync-502s-queued-retries"),
        pytest.param(304, UNUSABLE, RETRY, id="304-sync-502s-queued-retries"),
    ],
)
def test_what_a_status_means_on_each_path(status, sync, queued):
    assert policy.sync_answer(status) is sync
    assert policy.queued_answer(status) is queued


@pytest.mark.parametrize(
    ("failure", "sync", "queued"),
    [
        pytest.param(AttemptFailure("timeout", timed_out=True), RETRY, RETRY, id="timeout"),
        pytest.param(
            AttemptFailure("connection error: refused", timed_out=False),
            RETRY,
            RETRY,
            id="connection-error",
        ),
        pytest.param(
            AttemptFailure("bad response: echoed key", timed_out=False),
            RETRY,
            RETRY,
            id="another-events-answer",
        ),
        pytest.param(
            AttemptFailure("bad response: two lengths", timed_out=False, malformed=True),
            UNUSABLE,
            RETRY,
            id="malformed-sync-502s-queued-retries",
        ),
    ],
)
def test_what_a_failure_means_on_each_path(failure, sync, queued):
    assert policy.sync_failure(failure) is sync
    assert policy.queued_failure(failure) is queued


def test_delivered_is_2xx_only():
    assert [s for s in range(100, 600) if policy.delivered(s)] == list(range(200, 300))


@pytest.fixture
def longest(monkeypatch):
    """Every jittered pause at its upper bound."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)


@pytest.mark.parametrize(
    ("base", "cap", "pauses"),
    [
        # the sync defaults: the same pauses as `0.1 * 2**attempt` gave before they were shared
        pytest.param(
            policy.SYNC_BACKOFF_BASE,
            policy.SYNC_BACKOFF_CAP,
            [0.2, 0.4, 0.8, 1.6, 2.0, 2.0],
            id="sync-defaults",
        ),
        # the queue's defaults (retry_base 1s, retry_cap 10m)
        pytest.param(1.0, 600.0, [1, 2, 4, 8, 16, 32], id="queued-defaults"),
        pytest.param(0.05, 0.1, [0.05, 0.1, 0.1, 0.1, 0.1, 0.1], id="capped"),
    ],
)
def test_backoff_doubles_from_base_up_to_cap(longest, base, cap, pauses):
    assert [policy.backoff(retry, base, cap) for retry in range(1, 7)] == pytest.approx(pauses)


def test_backoff_has_full_jitter():
    pauses = [policy.backoff(3, 1.0, 600.0) for _ in range(200)]
    assert all(0 <= pause <= 4.0 for pause in pauses)
    assert min(pauses) < 1.0 < 3.0 < max(pauses)
