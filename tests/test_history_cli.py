"""`monetag-gateway history`: search, trace, export (CSV safe in a spreadsheet), report and
purge, on the store a real gateway wrote."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.cli import main
from gateway.config import parse_config
from gateway.deadline import Deadline
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.serving.app import public_runner
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.processes import (
    SECRET,
    answers,
    command_env,
    free_port,
    gateway_command,
    http_get,
    spawn_gateway,
)
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually
from tests.test_history import USER

HOSTILE = ['=HYPERLINK("http://evil")', "+1+1", "-2", "@SUM(A1)", "\tx", "\rx"]


def write_history(config_file: Path, sent: list[dict[str, str]]) -> None:
    """A real gateway on the config answers each postback, then stops (writing its history)."""

    async def serve() -> None:
        config = parse_config(config_file.read_text(), {"MONETAG_SECRET": SECRET})
        runtime = Runtime(config, Metrics())
        await runtime.start()
        runner = public_runner(runtime)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/postback/tapper"
        async with aiohttp.ClientSession() as http:
            for params in sent:
                async with http.get(url, params=params) as response:
                    await response.read()
        await runner.cleanup()
        await runtime.close(Deadline(5))

    asyncio.run(serve())


@pytest.fixture
def config_file(tmp_path: Path, start_upstream, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MONETAG_SECRET", SECRET)  # as the operator's shell has it
    app: RecordingUpstream = start_upstream()
    text = gateway_config(
        routes={"tapper": route([upstream(app.url, retries=0)])}, store=tmp_path / "gw.db"
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def history(config_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["history", "--config", str(config_file), *args])
    return code, capsys.readouterr().out


def test_search_trace_and_purge(config_file: Path, capsys: pytest.CaptureFixture[str]):
    write_history(
        config_file,
        [USER, USER, {**USER, "token": "x" * 20}, {**USER, "uid": "other", "telegram_id": "7"}],
    )
    code, out = history(config_file, capsys, "search", "--telegram-id", "123456")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert "rejected (secret_wrong)" in lines[0] and "(as sent)" in lines[0]
    assert "duplicate" in lines[1] and "forwarded" in lines[2]
    assert SECRET not in out

    code, out = history(config_file, capsys, "trace", "--telegram-id", "123456")
    verdict = out.splitlines()[0]
    assert verdict.startswith("rewarded once at ") and "1 later copy was a duplicate" in verdict
    code, out = history(config_file, capsys, "trace", "--telegram-id", "5", "--since", "2d")
    assert out.splitlines() == ["no postback arrived for this user in the last 2 days"]

    code, out = history(config_file, capsys, "search", "--reason", "secret_wrong")
    assert len(out.splitlines()) == 1
    assert history(config_file, capsys, "search", "--ymid", "nobody")[0] == 1  # nothing found

    assert history(config_file, capsys, "purge", "--telegram-id", "123456") == (
        0,
        "3 postback(s) deleted from the history\n",
    )
    assert history(config_file, capsys, "search", "--telegram-id", "123456")[0] == 1
    assert history(config_file, capsys, "search", "--telegram-id", "7")[0] == 0


def test_export_neutralizes_what_a_spreadsheet_would_run(
    config_file: Path, capsys: pytest.CaptureFixture[str]
):
    sent = [{**USER, "uid": value, "request_var": value} for value in HOSTILE]
    write_history(config_file, sent)
    code, out = history(config_file, capsys, "export", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    kept = [row for row in rows if row["outcome"] == "forwarded"]
    assert kept, rows
    for row in rows:
        for column, value in row.items():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), (column, value)
    assert {row["ymid"] for row in kept} <= {"'" + value for value in HOSTILE}

    code, out = history(config_file, capsys, "export", "--format", "jsonl")
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(rows)
    assert {r["ymid"] for r in records if r["outcome"] == "forwarded"} <= set(HOSTILE)


def test_report_counts_and_valued_revenue_by_day_and_zone(
    config_file: Path, capsys: pytest.CaptureFixture[str]
):
    valued = {**USER, "reward_event_type": "valued", "estimated_price": "0.25"}
    write_history(
        config_file,
        [
            {**valued, "uid": "a"},
            {**valued, "uid": "b"},
            {**valued, "uid": "b"},  # a duplicate: not counted as revenue
            {**valued, "uid": "c", "zone": "7"},
            {**USER, "uid": "d", "reward_event_type": "not_valued", "estimated_price": "9"},
        ],
    )
    code, out = history(config_file, capsys, "report", "--by", "day,zone")
    assert code == 0
    lines = out.splitlines()
    zone_42 = [line for line in lines if "zone=42" in line]
    assert any("forwarded  click  count=3  valued_revenue=0.5" in line for line in zone_42), lines
    assert any("duplicate  click  count=1  valued_revenue=0" in line for line in zone_42), lines
    assert any("zone=7" in line and "valued_revenue=0.25" in line for line in lines), lines
    with pytest.raises(SystemExit) as refused:
        history(config_file, capsys, "report", "--by", "week")
    assert refused.value.code == 2
    assert "'week': give one or more of day, zone, route" in capsys.readouterr().err


@pytest.mark.process
def test_the_real_gateway_on_uvloop_keeps_its_history_through_a_stop(
    tmp_path: Path, start_upstream
) -> None:
    """`python -m gateway run` (uvloop, the default) answers, is stopped with SIGTERM, and
    `history search` on its store finds every postback: the buffer was written at shutdown."""
    app: RecordingUpstream = start_upstream()
    port, admin = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        gateway_config(
            routes={"tapper": route([upstream(app.url, retries=0)])},
            store=tmp_path / "gw.db",
            server={"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}"},
        )
    )
    env = command_env()
    process = spawn_gateway(config, env, tmp_path / "out.log", tmp_path / "err.log")
    try:
        eventually(lambda: answers(admin) or None)
        for number in range(5):
            reply = http_get(port, f"/postback/tapper?uid=u{number}&event=click&zone=42"
                             f"&telegram_id=55&token={SECRET}")  # fmt: skip
            assert reply.outcome == "forwarded"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    listening = [
        json.loads(line)
        for line in (tmp_path / "out.log").read_text().splitlines()
        if '"listening"' in line
    ]
    assert listening and listening[0].get("event_loop") == "uvloop", listening
    found = gateway_command("history", "--config", str(config), "search", "--telegram-id", "55",
                            env=env)  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert sorted(line.split("ymid=")[1].split()[0] for line in found.stdout.splitlines()) == [
        f"u{number}" for number in range(5)
    ]


def test_reading_a_history_that_is_not_there_creates_none(
    config_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    """`history` on a store path the gateway never wrote (GATEWAY_STORE not the gateway's):
    a clear refusal, and no empty store left behind to be found later."""
    capsys.readouterr()
    assert main(["history", "--config", str(config_file), "search", "--ymid", "x"]) == 2
    said = capsys.readouterr()
    assert said.err.startswith(f"no history at {tmp_path / 'gw.history.db'}: "), said
    assert not (tmp_path / "gw.history.db").exists() and not (tmp_path / "gw.db").exists()
