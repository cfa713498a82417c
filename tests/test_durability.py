"""The durable queue, end to end: the real `python -m gateway run` process and `queue` command.

Every test starts the gateway as a subprocess on free loopback ports with a store (an SQLite
file in the test's temporary directory or, for the tests parametrized by `store`, a database
on the test PostgreSQL) in front of a real HTTP upstream (a `RecordingUpstream` in this process
that records each request and answers as the test tells it). Crashes are real (SIGKILL),
restarts reuse the same config and store, and a full disk is a real file-size limit on the
gateway process. Every wait is bounded; every process is killed in a `finally`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import UpstreamFactory
from tests.support.gatewayconfig import gateway_config
from tests.support.metrics import metric_sum
from tests.support.processes import command_env, free_port, gateway_command
from tests.support.queuedgateway import (
    Harness,
    Row,
    assert_all_queued,
    assert_queued,
    durable_route,
    harness,
    printed_stats,
    queue,
    queue_list,
    queue_stats,
    settled,
)
from tests.support.upstream import Answer, Received
from tests.support.waiting import eventually

pytestmark = pytest.mark.process

__all__ = ["harness"]  # the fixture, used by name


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> str | None:
    """Where the tests that hold on both stores keep their queue: the SQLite file in the
    test's directory (None: the harness's default) or a database on the test PostgreSQL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


# -- 1: a crash loses nothing acknowledged ----------------------------------------------------


def test_sigkill_then_restart_delivers_every_acknowledged_event(
    store: str | None, harness: Harness, start_upstream: UpstreamFactory
) -> None:
    events = 30
    upstream_port = free_port()  # nothing listens there until after the crash
    setup = harness.setup(
        {"tapper": durable_route(f"http://127.0.0.1:{upstream_port}/postback")}, store=store
    )
    gateway = harness.start(setup)
    ymids = [f"crash-{number:02d}" for number in range(events)]

    assert_all_queued(gateway, "tapper", ymids)

    gateway.crash()
    gateway = harness.start(setup)
    app = start_upstream(port=upstream_port)

    def all_arrived() -> bool:
        return app.ymids() >= set(ymids) and len(app.keys()) >= events

    # on PostgreSQL a delivery leased by the crashed process waits for its lease (timeout + 10s)
    eventually(all_arrived, 30.0, explain=lambda: f"missing: {sorted(set(ymids) - app.ymids())}")
    assert app.ymids() == set(ymids)
    keys = app.keys()
    assert len(keys) == events and "" not in keys, keys
    counts = eventually(
        lambda: settled(setup, "tapper", events), 10.0, explain=printed_stats(setup)
    )
    assert counts.get("delivered") == events and counts.get("pending", 0) == 0
    assert counts.get("dead", 0) == 0


# -- 2: dedup survives a restart --------------------------------------------------------------


def test_duplicates_are_recognised_after_a_restart(
    store: str | None, harness: Harness, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream()
    nowhere = f"http://127.0.0.1:{free_port()}/postback"
    routes = {
        "direct": durable_route(app.postback_url, delivery="sync"),
        "queued": durable_route(app.postback_url),
        "held": durable_route(nowhere),  # never delivered: pending across the restart
    }
    setup = harness.setup(routes, store=store)
    gateway = harness.start(setup)

    forwarded = gateway.postback("direct", "sync-1")
    assert (forwarded.status, forwarded.outcome) == (200, "forwarded")
    assert len(app.for_ymid("sync-1")) == 1
    assert_queued(gateway.postback("queued", "queued-1"))
    assert_queued(gateway.postback("held", "held-1"))
    eventually(lambda: settled(setup, "queued", 1), 10.0, explain=printed_stats(setup))
    assert gateway.stop() == 0

    gateway = harness.start(setup)
    for name, ymid in (("direct", "sync-1"), ("queued", "queued-1"), ("held", "held-1")):
        again = gateway.postback(name, ymid)
        assert (again.status, again.outcome) == (200, "duplicate"), (name, again.body)

    assert len(app.for_ymid("sync-1")) == 1
    assert len(app.for_ymid("queued-1")) == 1
    stats = queue_stats(setup)
    assert stats["queued"] == {"delivered": 1}, stats  # no second event was queued
    assert stats["held"] == {"pending": 1}, stats
    assert "direct" not in stats  # sync routes keep only the key
    assert "dedup keys stored: 3" in queue(setup, "stats").stdout


# -- 3: a flapping upstream gets each event exactly once --------------------------------------


def test_flapping_upstream_gets_each_event_once(
    store: str | None, harness: Harness, start_upstream: UpstreamFactory
) -> None:
    events = 20
    app = start_upstream(default=lambda number, request: 503 if number % 2 == 0 else 200)
    setup = harness.setup({"flap": durable_route(app.postback_url)}, store=store)
    gateway = harness.start(setup)
    ymids = [f"flap-{number:02d}" for number in range(events)]

    assert_all_queued(gateway, "flap", ymids)

    counts = eventually(lambda: settled(setup, "flap", events), 20.0, explain=printed_stats(setup))
    assert counts.get("dead", 0) == 0
    accepted = app.accepted_per_key()
    assert len(accepted) == events, accepted
    assert set(accepted.values()) == {1}, accepted  # no event was delivered twice
    assert {hit.ymid for hit in app.received if hit.answered == 200} == set(ymids)
    assert any(hit.answered == 503 for hit in app.received)

    metrics = gateway.metrics()
    assert metric_sum(metrics, "gateway_deliveries_total", route="flap", result="retry") > 0
    assert metric_sum(metrics, "gateway_deliveries_total", route="flap", result="delivered") == (
        events
    )


# -- 4: an upstream slower than its timeout ---------------------------------------------------


def test_upstream_slower_than_timeout_is_retried_until_delivered(
    store: str | None, harness: Harness, start_upstream: UpstreamFactory
) -> None:
    first_seen: set[str] = set()

    def slow_at_first(number: int, request: Received) -> Answer:
        if request.key in first_seen:
            return Answer(200, "OK")
        first_seen.add(request.key)
        return Answer(200, "OK (too late)", delay=1.0)

    app = start_upstream(default=slow_at_first)
    setup = harness.setup({"slow": durable_route(app.postback_url, timeout="300ms")}, store=store)
    gateway = harness.start(setup)
    ymids = [f"slow-{number}" for number in range(3)]
    for ymid in ymids:
        assert_queued(gateway.postback("slow", ymid))

    counts = eventually(
        lambda: settled(setup, "slow", len(ymids)), 15.0, explain=printed_stats(setup)
    )
    assert counts.get("dead", 0) == 0
    assert app.ymids() == set(ymids)
    for ymid in ymids:
        assert len(app.for_ymid(ymid)) >= 2, app.for_ymid(ymid)
    rows = queue_list(setup)
    assert sorted(row.ymid for row in rows) == sorted(ymids)
    assert all(row.state == "delivered" and row.attempts >= 2 for row in rows), rows
    metrics = gateway.metrics()
    timeouts = metric_sum(
        metrics, "gateway_upstream_attempts_total", route="slow", status_class="timeout"
    )
    assert timeouts >= len(ymids)
    assert metric_sum(metrics, "gateway_deliveries_total", route="slow", result="retry") >= 3


# -- 5-6: refused events are dead letters, unavailable upstreams are retried ------------------


def test_refused_event_is_dead_lettered_then_redriven(
    store: str | None, harness: Harness, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream(default=Answer(400, "unknown user"))
    setup = harness.setup({"refused": durable_route(app.postback_url)}, store=store)
    gateway = harness.start(setup)
    assert_queued(gateway.postback("refused", "dead-1"))

    dead = eventually(lambda: queue_list(setup, "--state", "dead"), 10.0)
    assert [row.ymid for row in dead] == ["dead-1"], dead
    assert dead[0].status == "400"
    assert len(app.for_ymid("dead-1")) == 1  # a 4xx is the app's answer: not retried
    shown = queue(setup, "show", str(dead[0].event_id))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "400" in shown.stdout and "unknown user" in shown.stdout, shown.stdout
    assert "dead" in shown.stdout

    app.default = 200
    redriven = queue(setup, "retry", "--dead")
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    assert "1 delivery pending again" in redriven.stdout

    def delivered() -> bool:
        return any(hit.answered == 200 for hit in app.for_ymid("dead-1"))

    eventually(delivered, 10.0, explain=lambda: app.received)
    counts = eventually(lambda: settled(setup, "refused", 1), 10.0, explain=printed_stats(setup))
    assert counts == {"delivered": 1}, queue(setup, "stats").stdout
    assert "dead:" not in queue(setup, "stats").stdout
    assert queue_list(setup, "--state", "dead") == []
    kept = queue(setup, "purge", "--delivered", "--older-than", "1h")
    assert "0 delivered event(s) purged" in kept.stdout, kept.stdout + kept.stderr
    time.sleep(1.1)  # until the delivery was recorded more than a second ago
    purged = queue(setup, "purge", "--delivered", "--older-than", "1s")
    assert "1 delivered event(s) purged" in purged.stdout, purged.stdout + purged.stderr
    assert "refused" not in queue_stats(setup)
    assert gateway.process.poll() is None


def test_unavailable_upstream_is_retried_not_dead_lettered(
    store: str | None, harness: Harness, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream(default=Answer(503, "busy"))
    setup = harness.setup({"busy": durable_route(app.postback_url)}, store=store)
    gateway = harness.start(setup)
    assert_queued(gateway.postback("busy", "busy-1"))

    def attempted_thrice() -> list[Row] | None:
        rows = queue_list(setup)
        return rows if rows and rows[0].attempts >= 3 else None

    rows = eventually(attempted_thrice, 15.0, explain=lambda: queue_list(setup))
    assert [(row.ymid, row.state, row.status) for row in rows] == [("busy-1", "pending", "503")]
    assert len(app.for_ymid("busy-1")) >= 3
    assert queue_list(setup, "--state", "dead") == []

    app.default = 200
    counts = eventually(lambda: settled(setup, "busy", 1), 10.0, explain=printed_stats(setup))
    assert counts == {"delivered": 1}, queue(setup, "stats").stdout
    assert [hit.answered for hit in app.for_ymid("busy-1")][-1] == 200
    assert app.accepted_per_key() == Counter({app.for_ymid("busy-1")[0].key: 1})
    assert gateway.process.poll() is None


# -- 7-8: the store failing -------------------------------------------------------------------


def _ignored_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M)
    assert match, status
    return int(match.group(1), 16)


def test_full_disk_answers_503_and_acknowledges_only_what_is_stored(harness: Harness) -> None:
    limit = 384 * 1024
    nowhere = f"http://127.0.0.1:{free_port()}/postback"
    setup = harness.setup(
        {"tapper": durable_route(nowhere, queue={"retry_base": "1h", "retry_cap": "1h"})},
        server={"max_query_length": 8000},
    )
    gateway = harness.start(setup, file_size_limit=limit)
    pid = gateway.process.pid
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(rf"^Max file size\s+{limit}\s+{limit}\s+bytes", limits, re.M), limits
    # Python ignores SIGXFSZ, so going over the limit fails the write (EFBIG), not the process
    assert _ignored_signals(pid) & (1 << (signal.SIGXFSZ - 1))

    accepted: list[str] = []
    refused: list[str] = []
    for number in range(400):
        ymid = f"big-{number:03d}"
        reply = gateway.postback("tapper", ymid, padding=secrets.token_hex(1500))
        if reply.status == 200:
            assert_queued(reply)
            accepted.append(ymid)
            continue
        assert (reply.status, reply.outcome) == (503, "store_error"), (reply.status, reply.body)
        assert reply.headers.get("Retry-After"), dict(reply.headers)
        assert reply.json()["outcome"] == "store_error"
        refused.append(ymid)
        if len(refused) >= 3:
            break
    assert refused, f"{len(accepted)} postbacks stored and no failure under a {limit}-byte limit"
    assert accepted, "not one postback fit under the file-size limit"

    assert gateway.process.poll() is None, "the gateway died when the disk filled"
    health = gateway.admin("/healthz")
    assert health.status == 200 and health.json() == {"status": "alive"}
    errors = [
        line
        for line in gateway.log_lines()
        if line.get("level") == "error" and "store" in str(line.get("message", ""))
    ]
    assert errors, gateway.output()[-5000:]
    gateway.stop()  # within STOP_TIMEOUT; its exit status is not the point here

    connection = sqlite3.connect(setup.store)
    try:
        stored = [
            json.loads(fields).get("ymid")
            for (fields,) in connection.execute("SELECT fields FROM events")
        ]
    finally:
        connection.close()
    assert set(accepted) <= set(stored), sorted(set(accepted) - set(stored))
    assert not set(refused) & set(stored), sorted(set(refused) & set(stored))
    assert len(stored) == len(set(stored))


def test_unusable_store_path_stops_run_with_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory\n")
    store = blocker / "gw.db"
    config = tmp_path / "config.yaml"
    listeners = {"listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}"}
    tapper = durable_route(f"http://127.0.0.1:{free_port()}/postback")
    config.write_text(gateway_config(routes={"tapper": tapper}, server=listeners, store=store))
    started = time.monotonic()
    result = gateway_command("run", "--config", str(config), env=command_env())
    assert time.monotonic() - started < 10.0
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines, "run failed without a word on stderr"
    # the message itself must say it is the store; the temporary path may contain "store" too
    message = lines[-1].replace(str(tmp_path), "TMP")
    assert "store" in message.lower(), result.stderr
    assert "TMP/file.txt" in message, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert blocker.is_file() and not store.exists()


# -- one gateway per SQLite file; a full or damaged file is not "up" --------------------------


def test_a_second_gateway_on_the_same_sqlite_file_refuses_to_start(
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    # A rolling update on a shared volume: both gateways used to start and deliver
    # everything, 20 queued postbacks making 32 deliveries.
    app = start_upstream()
    setup = harness.setup({"tapper": durable_route(app.url + "/postback")})
    first = harness.start(setup)
    other = harness.setup({"tapper": durable_route(app.url + "/postback")}, name="other")
    assert other.store == setup.store

    second = gateway_command("run", "--config", str(other.config), env=command_env())

    assert second.returncode == 1
    assert f"store {setup.store} is in use by another gateway (pid {first.process.pid}" in (
        second.stderr
    ), second.stderr
    assert "Traceback" not in second.stderr
    ymids = [f"one-{number:02d}" for number in range(20)]
    assert_all_queued(first, "tapper", ymids)
    eventually(lambda: app.ymids() >= set(ymids), 15)
    assert len(app.received) == 20  # each delivered once, by the one gateway

    first.stop()
    harness.start(other)  # the file is free once its gateway stopped


def test_a_damaged_store_file_is_refused_at_start(harness: Harness) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/postback"
    setup = harness.setup({"tapper": durable_route(nowhere)})
    gateway = harness.start(setup)
    assert_all_queued(gateway, "tapper", [f"d-{number:03d}" for number in range(200)])
    gateway.stop()
    store = Path(setup.store)
    size = store.stat().st_size
    assert size > 32 * 1024, size
    with store.open("r+b") as file:  # 8 KB of noise into the middle, as a bad disk would
        file.seek(size // 2)
        file.write(secrets.token_bytes(8192))

    result = gateway_command("run", "--config", str(setup.config), env=command_env())

    assert result.returncode == 1
    assert f"store {setup.store} is damaged" in result.stderr, result.stderr
    assert "restore" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MB filesystem (tmpfs) the test can fill up. The test command runs as root;
    a run without the right to mount fails here, loudly, rather than skipping."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"a full disk needs a small tmpfs (run as root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, bytes(65536))
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    try:  # the last few bytes
        while True:
            os.write(descriptor, b"\0")
    except OSError:
        pass
    finally:
        os.close(descriptor)
    return filler


def test_full_disk_is_unready_until_writes_commit_again_and_says_both(
    harness: Harness, small_disk: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/postback"
    tapper = durable_route(nowhere, queue={"retry_base": "1h", "retry_cap": "1h"})
    setup = harness.setup(
        {"tapper": tapper}, server={"max_query_length": 8000}, store=str(small_disk / "gw.db")
    )
    gateway = harness.start(setup)
    assert_all_queued(gateway, "tapper", ["before-1", "before-2"])
    filler = _fill(small_disk)

    refused = [
        gateway.postback("tapper", f"full-{n}", padding=secrets.token_hex(1500)).status
        for n in range(5)
    ]
    assert refused == [503] * 5
    probes = []
    for _ in range(20):  # several of the gateway's own probes and reads fall in here
        probes.append(
            (gateway.admin("/readyz").status, metric_sum(gateway.metrics(), "gateway_store_up"))
        )
        time.sleep(0.25)
    assert probes == [(503, 0.0)] * 20  # before: 200 and store_up 1 now and then
    assert gateway.admin("/readyz").json()["store"] == "down"

    filler.unlink()
    eventually(lambda: gateway.admin("/readyz").status == 200, 10)
    assert_queued(gateway.postback("tapper", "after-1"))
    messages = [line.get("message") for line in gateway.log_lines()]
    down, up = messages.index("store unavailable"), messages.index("store reachable again")
    assert down < up
    assert messages.count("store unavailable") == 1  # once per outage, not per failure


# -- the queue command as input: ids, limits, and what the app wrote -----------------------------


@pytest.mark.parametrize(
    "words",
    [
        pytest.param(["show", "99999999999999999999"], id="show-an-id-past-64-bits"),
        pytest.param(["retry", "99999999999999999999"], id="retry-an-id-past-64-bits"),
        pytest.param(["list", "--limit", "99999999999999999999"], id="a-limit-past-64-bits"),
        pytest.param(["list", "--limit", "-1"], id="a-negative-limit"),
        pytest.param(["list", "--limit", "0"], id="a-zero-limit"),
        pytest.param(["show", "\u0663"], id="an-arabic-indic-digit"),
        pytest.param(["show", "-3"], id="a-negative-id"),
    ],
)
def test_the_queue_command_refuses_odd_ids_and_limits_without_a_traceback(
    words: list[str], harness: Harness
) -> None:
    """Before: OverflowError tracebacks, `--limit -1` meaning no limit, `show ٣` event 3."""
    setup = harness.setup({"tapper": durable_route(f"http://127.0.0.1:{free_port()}/postback")})
    result = queue(setup, *words)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error: argument" in result.stderr


def test_queue_show_escapes_what_the_app_wrote(
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    """An app's answer `\\x1b]0;...\\x07\\x1b[2J` retitled and cleared the operator's terminal."""
    hostile = "bad\x1b]0;owned\x07\x1b[2J\rline\u202e"
    app = start_upstream(default=Answer(400, hostile))
    setup = harness.setup({"refused": durable_route(app.postback_url)})
    gateway = harness.start(setup)
    assert_queued(gateway.postback("refused", "esc-1", note="\u202eevil\x1b[2J"))
    dead = eventually(lambda: queue_list(setup, "--state", "dead"), 10.0)

    for words in (["show", str(dead[0].event_id)], ["list"], ["stats"]):
        output = queue(setup, *words).stdout
        assert not any(0x00 < ord(c) < 0x20 and c not in "\t\n" for c in output), repr(output)
        assert "\x7f" not in output and "\u202e" not in output
    assert (
        "bad\\x1b]0;owned\\x07\\x1b[2J\\x0dline\\u202e"
        in queue(setup, "show", str(dead[0].event_id)).stdout
    )
