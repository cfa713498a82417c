"""The durable queue, end to end: the real `python -m gateway run` process and `queue` command.

Every test starts the gateway as a subprocess on free loopback ports with a SQLite store in the
test's temporary directory, in front of a real HTTP upstream (a `RecordingUpstream` in this
process that records each request and answers as the test tells it). Crashes are real
(SIGKILL), restarts reuse the same config and store, and a full disk is a real file-size limit
on the gateway process. Every wait is bounded; every process is killed in a `finally`.
"""

from __future__ import annotations

import json
import re
import resource
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import processes
from tests.conftest import UpstreamFactory
from tests.gatewayconfig import gateway_config, route, upstream
from tests.processes import Reply, free_port, gateway_command, http_get, spawn_gateway
from tests.upstream import Answer, Received
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[1]
SECRET = "durable-secret-value-456"
START_TIMEOUT = 15.0
HTTP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
FAST_QUEUE = {"retry_base": "100ms", "retry_cap": "500ms"}


# -- helpers ----------------------------------------------------------------------------------


def command_env() -> dict[str, str]:
    return processes.command_env(SECRET)


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    return sum(
        value
        for sample, sample_labels, value in metric_samples(text)
        if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


# -- the gateway process ----------------------------------------------------------------------


def durable_route(
    app_url: str,
    *,
    delivery: str = "queued",
    timeout: str = "2s",
    queue: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A route as these tests use it: loopback only, one upstream without inline retries,
    and (when queued) a queue that retries fast."""
    settings: dict[str, Any] = {"delivery": delivery}
    if delivery == "queued":
        settings["queue"] = {**FAST_QUEUE, **(queue or {})}
    app = upstream(app_url, timeout=timeout, retries=0)
    return route([app], allow_ips=["127.0.0.1"], **settings)


@dataclass(frozen=True)
class Setup:
    """A config file (fixed ports, one store) that survives the processes started on it."""

    config: Path
    store: Path
    public_port: int
    admin_port: int


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    setup: Setup
    stdout: Path
    stderr: Path

    def postback(self, route: str, ymid: str, **extra: str) -> Reply:
        params = {"uid": ymid, "event": "click", "zone": "42", **extra, "token": SECRET}
        return http_get(self.setup.public_port, f"/postback/{route}?{urlencode(params)}")

    def admin(self, path: str) -> Reply:
        return http_get(self.setup.admin_port, path)

    def metrics(self) -> str:
        reply = self.admin("/metrics")
        assert reply.status == 200, reply
        return reply.body.decode()

    def output(self) -> str:
        return self.stdout.read_text(encoding="utf-8", errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.output().splitlines():
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                lines.append(parsed)
        return lines

    def is_ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"gateway exited with {self.process.returncode}; stderr:\n"
                + self.stderr.read_text(encoding="utf-8", errors="replace")
                + "\nstdout:\n"
                + self.output()
            )
        try:
            ready = self.admin("/readyz").status == 200
            with socket.create_connection(("127.0.0.1", self.setup.public_port), timeout=1):
                return ready
        except OSError:
            return False

    def crash(self) -> None:
        """SIGKILL: no drain, no shutdown code, exactly like a power cut for the process."""
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=STOP_TIMEOUT) == -signal.SIGKILL

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)


def _drain(pipe: IO[bytes], sink_path: Path) -> None:
    with sink_path.open("ab") as sink:
        for chunk in iter(lambda: pipe.read1(65536), b""):  # type: ignore[attr-defined]
            sink.write(chunk)
            sink.flush()


class Harness:
    """Configs and gateway processes of one test; `close` ends all of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.gateways: list[Gateway] = []
        self._drains: list[threading.Thread] = []

    def setup(
        self, routes: dict[str, dict[str, Any]], server: dict[str, Any] | None = None
    ) -> Setup:
        public_port, admin_port = free_port(), free_port()
        store = self.tmp / "gw.db"
        settings = {
            "listen": f"127.0.0.1:{public_port}",
            "admin_listen": f"127.0.0.1:{admin_port}",
            "reload_interval": 0,
            "shutdown_grace": "3s",
            **(server or {}),
        }
        config = self.tmp / "config.yaml"
        config.write_text(gateway_config(routes=routes, server=settings, store=store))
        return Setup(config, store, public_port, admin_port)

    def start(self, setup: Setup, file_size_limit: int | None = None) -> Gateway:
        """`run --config`, ready to serve; with `file_size_limit`, under RLIMIT_FSIZE."""
        index = len(self.gateways)
        stdout, stderr = self.tmp / f"gateway{index}.out", self.tmp / f"gateway{index}.err"
        if file_size_limit is None:
            process = spawn_gateway(setup.config, command_env(), stdout, stderr)
        else:
            process = self._spawn_limited(setup.config, file_size_limit, stdout, stderr)
        gateway = Gateway(process, setup, stdout, stderr)
        self.gateways.append(gateway)
        eventually(gateway.is_ready, START_TIMEOUT, explain=stderr.read_text)
        return gateway

    def _spawn_limited(
        self, config: Path, limit: int, stdout: Path, stderr: Path
    ) -> subprocess.Popen[bytes]:
        """The same command as spawn_gateway, with a file-size limit on the process.

        Its output goes through pipes (a pipe is not a file, so the limit does not silence the
        log) to files written by this process.
        """

        def limit_file_size() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            env=command_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=limit_file_size,
        )
        assert process.stdout is not None and process.stderr is not None
        for pipe, path in ((process.stdout, stdout), (process.stderr, stderr)):
            path.touch()
            drain = threading.Thread(target=_drain, args=(pipe, path), daemon=True)
            drain.start()
            self._drains.append(drain)
        return process

    def close(self) -> None:
        for gateway in self.gateways:
            if gateway.process.poll() is None:
                gateway.process.kill()
            gateway.process.wait(timeout=COMMAND_TIMEOUT)
        for drain in self._drains:
            drain.join(timeout=5)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    running = Harness(tmp_path)
    try:
        yield running
    finally:
        running.close()


# -- the `queue` command ----------------------------------------------------------------------


def queue(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(setup.config)
    return gateway_command("queue", "--config", config, *args, env=command_env())


def queue_stats(setup: Setup) -> dict[str, dict[str, int]]:
    """`queue stats` as {route: {state: deliveries}}; a state not printed is 0."""
    result = queue(setup, "stats")
    assert result.returncode == 0, result.stdout + result.stderr
    routes: dict[str, dict[str, int]] = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"route (\S+): (.*)", line)
        if not match:
            continue
        counts = routes.setdefault(match.group(1), Counter())
        for part in match.group(2).split(", "):
            state, _, number = part.partition(" ")
            if number.isdigit():
                counts[state] = int(number)
    return routes


@dataclass(frozen=True)
class Row:
    """One line of `queue list`."""

    event_id: int
    route: str
    state: str
    attempts: int
    status: str
    ymid: str
    error: str


def queue_list(setup: Setup, *args: str) -> list[Row]:
    result = queue(setup, "list", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = []
    for line in result.stdout.splitlines():
        event_id, _, route, state, attempts, status, _, ymid, error = line.split("\t")
        rows.append(
            Row(
                int(event_id),
                route,
                state,
                int(attempts.removeprefix("attempts ")),
                status.removeprefix("status "),
                ymid.removeprefix("ymid="),
                error,
            )
        )
    return rows


def settled(setup: Setup, route: str, delivered: int) -> dict[str, int] | None:
    """The route's counts once `delivered` deliveries are recorded and none is pending."""
    counts = queue_stats(setup).get(route, {})
    done = counts.get("delivered", 0) == delivered and not counts.get("pending")
    return dict(counts) if done else None


def printed_stats(setup: Setup) -> Callable[[], str]:
    """`queue stats` as printed, for a failure message."""
    return lambda: queue(setup, "stats").stdout


def assert_queued(reply: Reply) -> None:
    assert (reply.status, reply.outcome) == (200, "queued"), (reply.status, reply.body)
    assert reply.json() == {"outcome": "queued"}


def assert_all_queued(gateway: Gateway, route: str, ymids: list[str]) -> None:
    """Send one postback per ymid, ten at a time; every one must be acknowledged as queued."""
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda ymid: gateway.postback(route, ymid), ymids, timeout=30))
    for reply in replies:
        assert_queued(reply)


# -- 1: a crash loses nothing acknowledged ----------------------------------------------------


def test_sigkill_then_restart_delivers_every_acknowledged_event(
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    events = 30
    upstream_port = free_port()  # nothing listens there until after the crash
    setup = harness.setup({"tapper": durable_route(f"http://127.0.0.1:{upstream_port}/postback")})
    gateway = harness.start(setup)
    ymids = [f"crash-{number:02d}" for number in range(events)]

    assert_all_queued(gateway, "tapper", ymids)

    gateway.crash()
    gateway = harness.start(setup)
    app = start_upstream(port=upstream_port)

    def all_arrived() -> bool:
        return app.ymids() >= set(ymids) and len(app.keys()) >= events

    eventually(all_arrived, 15.0, explain=lambda: f"missing: {sorted(set(ymids) - app.ymids())}")
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
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream()
    nowhere = f"http://127.0.0.1:{free_port()}/postback"
    routes = {
        "direct": durable_route(app.postback_url, delivery="sync"),
        "queued": durable_route(app.postback_url),
        "held": durable_route(nowhere),  # never delivered: pending across the restart
    }
    setup = harness.setup(routes)
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
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    events = 20
    app = start_upstream(default=lambda number, request: 503 if number % 2 == 0 else 200)
    setup = harness.setup({"flap": durable_route(app.postback_url)})
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
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    first_seen: set[str] = set()

    def slow_at_first(number: int, request: Received) -> Answer:
        if request.key in first_seen:
            return Answer(200, "OK")
        first_seen.add(request.key)
        return Answer(200, "OK (too late)", delay=1.0)

    app = start_upstream(default=slow_at_first)
    setup = harness.setup({"slow": durable_route(app.postback_url, timeout="300ms")})
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
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream(default=Answer(400, "unknown user"))
    setup = harness.setup({"refused": durable_route(app.postback_url)})
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
    assert gateway.process.poll() is None


def test_unavailable_upstream_is_retried_not_dead_lettered(
    harness: Harness, start_upstream: UpstreamFactory
) -> None:
    app = start_upstream(default=Answer(503, "busy"))
    setup = harness.setup({"busy": durable_route(app.postback_url)})
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
