"""The benchmark scripts keep working (one short run); they assert nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO

pytestmark = pytest.mark.bench


def test_ack_throughput_script_runs_every_mode_on_both_stores(tmp_path: Path) -> None:
    output = tmp_path / "ack.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/ack_throughput.py",
            "--seconds",
            "0.5",
            "--rounds",
            "1",
            "--concurrency",
            "4",
            "--output",
            str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    for line in (
        "queued/sync requests/s:",
        "postgres_queued/queued requests/s:",
        "target postgres_queued/queued >= 0.5 at 32 connections:",
        "target postgres_queued p99 < 20 ms at 32 connections:",
    ):
        assert line in result.stdout
    report = json.loads(output.read_text())
    assert report["failures"] == 0
    assert report["settings"]["modes"] == ["sync", "queued", "postgres_sync", "postgres_queued"]
    for mode in ("sync", "queued", "postgres_sync", "postgres_queued"):
        summary = report["summary"][mode]
        assert summary["requests_per_second"] > 0 and summary["failures"] == 0, mode
        assert ("drain_seconds" in summary) == mode.endswith("queued"), mode
        assert len(report["runs"][mode]) == 1
    assert set(report["ratios"]) == {
        "postgres_queued/queued",
        "queued/sync",
        "postgres_queued/sync",
    }
    assert len(report["targets"]) == 2
    for verdict in report["targets"].values():
        assert isinstance(verdict["met"], bool)
        assert verdict["applies"] is False  # 4 connections: the targets are for 32
    # the comparison is honest only if PostgreSQL, like SQLite, fsyncs at every commit
    assert report["postgres"]["fsync"] == "on"
    assert report["postgres"]["synchronous_commit"] == "on"


def test_ack_throughput_script_refuses_an_unknown_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "bench/ack_throughput.py",
            "--modes",
            "queued,postgres_qeued",
            "--output",
            str(tmp_path / "ack.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "postgres_qeued" in result.stderr
    assert not (tmp_path / "ack.json").exists()


def test_dedup_memory_script_reports_bytes_and_rates(tmp_path: Path) -> None:
    output = tmp_path / "dedup.json"
    result = subprocess.run(
        [sys.executable, "bench/dedup_memory.py", "--events", "20000", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    assert report["events"] == 20000
    assert report["inserts_per_second"] > 0 and report["lookups_per_second"] > 0


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_history_search_script_times_every_lookup_and_counts_bytes(
    tmp_path: Path, store: str
) -> None:
    output = tmp_path / "history.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/history_search.py",
            "--records",
            "20000",
            "--store",
            store,
            "--lookups",
            "20",
            "--write-batches",
            "2",
            "--json",
            str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    measured = report["stores"][store]
    assert len(measured["lookups"]) == 9
    for name, timing in measured["lookups"].items():
        assert name in result.stdout
        assert timing["count"] == (10 if name.endswith("7 days") else 20), name
        assert timing["failed"] == 0, (name, timing["error"])
        assert 0 < timing["p50_ms"] <= timing["p99_ms"], name
        assert timing["empty"] == 0 and timing["mean_rows"] >= 1, name  # each finds what it seeks
    assert measured["lookups"]["newest, no filter"]["mean_rows"] == 100
    per_postback = measured["bytes_per_postback"]
    assert 500 < per_postback["all"] < 5000
    assert per_postback["its indexes"] > 0 and per_postback["history table"] > 0
    assert measured["write"]["rows_per_second"] > 0 and measured["write"]["batches"] == 2
    assert "bytes per postback" in result.stdout and "write rows/s" in result.stdout


def test_sessions_endpoints_script_measures_each_request_and_the_waiters(tmp_path: Path) -> None:
    output = tmp_path / "sessions.json"
    command = [sys.executable, "bench/sessions_endpoints.py", "--requests", "20", "--rounds",
               "1", "--waiters", "20", "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    assert set(report["per_request"]["median_us"]) == {
        "plain postback", "postback with ymid", "issue"
    }  # fmt: skip
    waited = report["status_under_waiters"]
    assert waited["rewarded_heard"] == waited["waiters"] == 20
