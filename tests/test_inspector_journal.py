"""The inspector's memory and what it makes of one postback, without a browser or sockets:
what is kept and for how long, the filters, the per-minute counts, the steps told for each
way a postback can end, and a replay line that stays correct for hostile values."""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.errors import Outcome
from gateway.inspector.charts import outcome_chart, percentile
from gateway.inspector.present import (
    FAILED,
    NOT_REPLAYABLE,
    PASSED,
    SKIPPED,
    curl_line,
    replay,
    steps,
)
from gateway.journal import MINUTES, Filters, Journal
from gateway.record import RequestRecord, UpstreamAttempt
from gateway.route import STEPS
from tests.support.gatewayconfig import gateway_config
from tests.support.processes import SECRET

HOSTILE_YMIDS = [
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(2)</script>",
    "'; rm -rf / #",
    '$(touch /tmp/pwned) `id` "quoted"',
    "line\nbreak & ampersand=equals",
    "юникод 🎁",
]


def record(
    number: int,
    *,
    route: str | None = "tapper",
    outcome: str = Outcome.FORWARDED,
    reason: str | None = None,
    ymid: str = "",
    telegram_id: str | None = None,
    passed: tuple[str, ...] = STEPS,
) -> RequestRecord:
    fields = {"ymid": ymid or f"user-{number}", "event_type": "click"}
    if telegram_id is not None:
        fields["telegram_id"] = telegram_id
    made = RequestRecord(f"req-{number:04d}", route=route, outcome=outcome, reason=reason)
    made.fields = fields
    made.query = [("uid", fields["ymid"]), ("event", "click")]
    made.passed = list(passed)
    made.failed_check = STEPS[len(passed)] if len(passed) < len(STEPS) else None
    made.client = made.peer = "127.0.0.1"
    return made


def journal_of(count: int, capacity: int = 1000) -> Journal:
    journal = Journal(capacity)
    for number in range(1, count + 1):
        journal.add(record(number), 200, 0.004)
    return journal


def test_keeps_the_newest_n_and_forgets_the_rest() -> None:
    journal = journal_of(15, capacity=10)
    kept = [entry.record.request_id for entry in journal.recent()]
    assert kept == [f"req-{n:04d}" for n in range(15, 5, -1)]
    assert journal.get(5) is None and journal.get(6) is not None
    assert journal.newest == 15


def test_zero_keeps_no_postback_but_still_counts_them() -> None:
    journal = journal_of(5, capacity=0)
    assert journal.recent() == [] and journal.newest == 0 and journal.get(1) is None
    [minute] = [m for m in journal.last_hour("tapper") if m.outcomes]
    assert minute.outcomes == {Outcome.FORWARDED: 5}


def test_resize_keeps_the_newest_that_fit() -> None:
    journal = journal_of(10)
    journal.resize(3)
    assert [entry.number for entry in journal.recent()] == [10, 9, 8]
    journal.add(record(11), 200, 0.001)
    assert [entry.number for entry in journal.recent()] == [11, 10, 9]
    journal.resize(0)
    assert journal.recent() == []


def test_after_returns_only_newer_entries_for_live_updates() -> None:
    journal = journal_of(8)
    assert [entry.number for entry in journal.recent(after=5)] == [8, 7, 6]
    assert journal.recent(after=8) == []


def test_filters_by_route_outcome_reason_and_search() -> None:
    journal = Journal(100)
    journal.add(record(1, ymid="alice", telegram_id="1001"), 200, 0.001)
    journal.add(
        record(2, outcome=Outcome.REJECTED, reason="secret_wrong", passed=STEPS[:2]), 403, 0.001
    )
    journal.add(record(3, route="runner", outcome=Outcome.QUEUED, ymid="bob"), 200, 0.001)

    def numbers(**given: str) -> list[int]:
        return [entry.number for entry in journal.recent(Filters(**given))]

    assert numbers(route="runner") == [3]
    assert numbers(outcome=Outcome.REJECTED) == [2]
    assert numbers(reason="secret_wrong") == [2]
    assert numbers(text="alice") == [1]
    assert numbers(text="1001") == [1]  # telegram_id
    assert numbers(text="req-0003") == [3]  # the request id
    assert numbers(text="nobody") == []


def test_a_queued_events_later_attempts_join_its_entry() -> None:
    journal = Journal(10)
    journal.add(record(1, outcome=Outcome.QUEUED), 200, 0.002)
    journal.attempted("req-0001", UpstreamAttempt.answered("app", 200, b"granted", 0.01))
    journal.attempted("someone-elses", UpstreamAttempt.failed("app", "timeout", 1.0))
    [entry] = journal.recent()
    assert [(a.status, a.body_head) for a in entry.attempts] == [(200, "granted")]


def test_the_last_hour_is_sixty_minutes_oldest_first() -> None:
    journal = journal_of(3)
    hour = journal.last_hour("tapper")
    assert len(hour) == MINUTES
    assert [m.minute for m in hour] == sorted(m.minute for m in hour)
    assert sum(sum(m.outcomes.values()) for m in hour) == 3


def test_chart_bars_stack_to_the_busiest_minute_and_percentiles_read_buckets() -> None:
    journal = journal_of(4)
    journal.add(record(5, outcome=Outcome.DUPLICATE), 200, 0.3)
    chart = outcome_chart(journal.last_hour("tapper"), [Outcome.FORWARDED, Outcome.DUPLICATE])
    assert chart.peak == 5
    assert {bar.outcome for bar in chart.bars} == {Outcome.FORWARDED, Outcome.DUPLICATE}
    assert sum(bar.height for bar in chart.bars) == pytest.approx(chart.plot.height)
    [minute] = [m for m in journal.last_hour("tapper") if m.outcomes]
    assert percentile(minute.latency, 0.5) == "≤ 5 ms"
    assert percentile(minute.latency, 0.99) == "≤ 500 ms"
    assert percentile([0] * len(minute.latency), 0.5) == "-"


# -- one postback, told ------------------------------------------------------------------------


def config_with(tmp_path: Path, **secret: str) -> GatewayConfig:
    """One route whose key travels where `secret` says (query_param or header)."""
    text = gateway_config(
        "http://127.0.0.1:9/app", secret={**secret, "keys": [SECRET]}, allow_ips=["127.0.0.1"]
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, {})


def test_steps_stop_at_the_failing_check(tmp_path: Path) -> None:
    config = config_with(tmp_path, query_param="token")
    journal = Journal(10)
    journal.add(
        record(1, outcome=Outcome.REJECTED, reason="secret_wrong", passed=STEPS[:2]), 403, 0
    )
    told = {step.name: step for step in steps(journal.recent()[0], config)}
    assert told["client"].state == PASSED and told["allowlist"].state == PASSED
    assert told["secret"].state == FAILED and "secret_wrong" in told["secret"].verdict
    assert told["normalize"].state == SKIPPED
    assert "dedup" not in told  # never reached


def test_steps_of_a_forwarded_postback_end_with_the_apps_answer(tmp_path: Path) -> None:
    config = config_with(tmp_path, query_param="token")
    forwarded = record(1)
    forwarded.upstream_status = 200
    journal = Journal(10)
    journal.add(forwarded, 200, 0.01)
    told = {step.name: step for step in steps(journal.recent()[0], config)}
    assert [s.state for s in told.values()] == [PASSED] * len(told)
    assert "query parameter 'token'" in told["secret"].verdict
    assert SECRET not in repr(told)
    assert "200" in told["deliver"].verdict


@pytest.mark.parametrize("ymid", HOSTILE_YMIDS)
def test_curl_line_replays_hostile_values_exactly_and_leaves_the_key_to_the_shell(
    tmp_path: Path, ymid: str
) -> None:
    config = config_with(tmp_path, query_param="token")
    journal = Journal(10)
    journal.add(record(1, ymid=ymid), 200, 0.01)
    line = curl_line(journal.recent()[0], config)
    assert line is not None and SECRET not in line
    words = shlex.split(line.replace('"$MONETAG_SECRET"', "KEY"))
    assert words[:2] == ["curl", "-sS"] and len(words) == 3  # nothing broke out of the quotes
    query = parse_qsl(urlsplit(words[2]).query, keep_blank_values=True)
    assert query == [("uid", ymid), ("event", "click"), ("token", "KEY")]


def test_curl_line_sends_a_header_key_from_the_shell(tmp_path: Path) -> None:
    config = config_with(tmp_path, header="X-Monetag-Key")
    journal = Journal(10)
    journal.add(record(1), 200, 0.01)
    line = curl_line(journal.recent()[0], config)
    assert line is not None
    assert "-H 'X-Monetag-Key: '\"$MONETAG_SECRET\"" in line
    assert SECRET not in line


REFUSED_BEFORE_AUTHENTICATING = [
    ("client", Outcome.REJECTED, "no_peer"),
    ("client", Outcome.REJECTED, "xff_unparseable"),
    ("allowlist", Outcome.REJECTED, "ip_not_allowed"),
    ("secret", Outcome.REJECTED, "secret_missing"),
    ("secret", Outcome.REJECTED, "secret_repeated"),
    ("secret", Outcome.REJECTED, "secret_wrong"),
    ("session", Outcome.REJECTED, "ymid_not_issued"),
    ("session", Outcome.REJECTED, "ymid_forged"),
    ("session", Outcome.REJECTED, "ymid_expired"),
    ("session", Outcome.REJECTED, "telegram_id_mismatch"),
    ("session", Outcome.REJECTED, "placement_mismatch"),
]
REFUSED_AFTER_THE_KEY = [
    ("normalize", Outcome.INVALID, "ambiguous_fields"),
    ("validate", Outcome.INVALID, "invalid_fields"),
    ("match", Outcome.FILTERED, "filtered"),
]


@pytest.mark.parametrize(("check", "outcome", "reason"), REFUSED_BEFORE_AUTHENTICATING)
def test_a_postback_refused_before_it_authenticated_gets_no_replay_line(
    tmp_path: Path, check: str, outcome: str, reason: str
) -> None:
    """Replayed with the operator's key, a stranger's postback would become a real reward."""
    config = config_with(tmp_path, query_param="token")
    journal = Journal(10)
    refused = record(1, outcome=outcome, reason=reason, passed=STEPS[: STEPS.index(check)])
    if check == "session":
        refused.ymid_check = reason
    journal.add(refused, 403, 0.001)
    entry = journal.recent()[0]
    told = replay(entry, config)
    assert told is not None and told.curl is None and told.withheld == NOT_REPLAYABLE
    assert curl_line(entry, config) is None  # nor is the line built for anyone else


@pytest.mark.parametrize(("check", "outcome", "reason"), REFUSED_AFTER_THE_KEY)
def test_a_postback_refused_after_the_key_keeps_its_replay_line(
    tmp_path: Path, check: str, outcome: str, reason: str
) -> None:
    config = config_with(tmp_path, query_param="token")
    journal = Journal(10)
    journal.add(
        record(1, outcome=outcome, reason=reason, passed=STEPS[: STEPS.index(check)]), 400, 0
    )
    told = replay(journal.recent()[0], config)
    assert told is not None and told.withheld is None
    assert told.curl is not None and told.curl.endswith('&token=\'"$MONETAG_SECRET"')


@pytest.mark.parametrize(
    ("let_in", "key_valid", "ymid_check", "replayable"),
    [
        (True, True, None, True),  # allow_ips_mode: log_only, and the key vouches for it
        (True, False, None, False),  # log_only on a route without a key: nobody vouches
        (False, True, "verified", True),
        (False, True, "ymid_forged", False),  # sessions.mode: log_only let a refusal in
    ],
)
def test_what_log_only_lets_in_is_replayable_only_when_it_authenticated(
    tmp_path: Path, let_in: bool, key_valid: bool, ymid_check: str | None, replayable: bool
) -> None:
    config = config_with(tmp_path, query_param="token")
    forwarded = record(1)
    forwarded.let_in_by_log_only = let_in
    forwarded.key_valid = key_valid
    forwarded.ymid_check = ymid_check
    journal = Journal(10)
    journal.add(forwarded, 200, 0.01)
    told = replay(journal.recent()[0], config)
    assert told is not None and (told.curl is not None) is replayable


def test_a_postback_refused_before_normalizing_is_found_by_its_query_values() -> None:
    journal = Journal(10)
    refused = record(1, outcome=Outcome.REJECTED, reason="secret_wrong", passed=STEPS[:2])
    refused.fields = None
    refused.query = [("uid", "carol"), ("event", "click")]
    journal.add(refused, 403, 0.001)
    assert [entry.number for entry in journal.recent(Filters(text="carol"))] == [1]
    assert journal.recent(Filters(text="dave")) == []
