"""The durable queue, end to end: the real `python -m gateway run` process and `queue` command.

Every test starts the gateway as a subprocess on free loopback ports with a SQLite store in the
test's temporary directory, in front of a real HTTP upstream (a threaded stdlib server in this
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import processes
from tests.processes import Reply, free_port, http_get, spawn_gateway, wait_until

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


# -- a real upstream --------------------------------------------------------------------------

# What the upstream answers: (request number, X-Idempotency-Key) -> (status, body, delay first)
Answer = Callable[[int, str], tuple[int, str, float]]


def always(status: int, body: str = "OK") -> Answer:
    return lambda number, key: (status, body, 0.0)


@dataclass(frozen=True)
class Hit:
    """One request the upstream received, and the status it answered."""

    ymid: str
    key: str
    status: int


class Recorder:
    """A threaded HTTP server on 127.0.0.1 that records each request and answers per `answer`."""

    def __init__(self, port: int = 0, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or always(200)
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                key = self.headers.get("X-Idempotency-Key", "")
                with owner._lock:
                    status, body, delay = owner.answer(len(owner.hits), key)
                    owner.hits.append(Hit(query.get("ymid", [""])[0], key, status))
                if delay:
                    time.sleep(delay)
                payload = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the gateway gave up waiting (timeout): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/postback"

    def snapshot(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    def ymids(self) -> set[str]:
        return {hit.ymid for hit in self.snapshot()}

    def keys(self) -> set[str]:
        return {hit.key for hit in self.snapshot()}

    def hits_for(self, ymid: str) -> list[Hit]:
        return [hit for hit in self.snapshot() if hit.ymid == ymid]

    def accepted_per_key(self) -> Counter[str]:
        """How many times each idempotency key was answered 2xx."""
        return Counter(hit.key for hit in self.snapshot() if 200 <= hit.status < 300)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- the gateway process ----------------------------------------------------------------------


def route_yaml(
    name: str,
    upstream_url: str,
    *,
    delivery: str = "queued",
    timeout: str = "2s",
    queue: dict[str, str] | None = None,
) -> str:
    """Route `name` at /postback/NAME: loopback only, secret `token`, Monetag-style aliases."""
    text = (
        f"  {name}:\n"
        f"    path: /postback/{name}\n"
        "    allow_ips: [127.0.0.1]\n"
        "    secret:\n"
        "      query_param: token\n"
        "      keys: ['${MONETAG_SECRET}']\n"
        "    aliases: {uid: ymid, event: event_type, zone: zone_id}\n"
        f"    delivery: {delivery}\n"
    )
    if delivery == "queued":
        settings = {**FAST_QUEUE, **(queue or {})}
        text += "    queue: {" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}\n"
    return text + (
        f"    upstreams:\n      - url: {upstream_url}\n        timeout: {timeout}\n"
        "        retries: 0\n"
    )


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
    """Configs, gateway processes and upstreams of one test; `close` ends all of them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.gateways: list[Gateway] = []
        self.upstreams: list[Recorder] = []
        self._drains: list[threading.Thread] = []

    def setup(self, routes: str, server: dict[str, str] | None = None) -> Setup:
        public_port, admin_port = free_port(), free_port()
        store = self.tmp / "gw.db"
        settings = {"reload_interval": "0", "shutdown_grace": "3s", **(server or {})}
        text = (
            "server:\n"
            f"  listen: 127.0.0.1:{public_port}\n"
            f"  admin_listen: 127.0.0.1:{admin_port}\n"
            + "".join(f"  {key}: {value}\n" for key, value in settings.items())
            + f"store:\n  path: {json.dumps(str(store))}\n"
            + "routes:\n"
            + routes
        )
        config = self.tmp / "config.yaml"
        config.write_text(text, encoding="utf-8")
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
        if not wait_until(gateway.is_ready, START_TIMEOUT):
            pytest.fail("gateway never became ready; stderr:\n" + stderr.read_text())
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

    def upstream(self, port: int = 0, answer: Answer | None = None) -> Recorder:
        recorder = Recorder(port, answer)
        self.upstreams.append(recorder)
        return recorder

    def close(self) -> None:
        for gateway in self.gateways:
            if gateway.process.poll() is None:
                gateway.process.kill()
            gateway.process.wait(timeout=COMMAND_TIMEOUT)
        for drain in self._drains:
            drain.join(timeout=5)
        for recorder in self.upstreams:
            recorder.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    running = Harness(tmp_path)
    try:
        yield running
    finally:
        running.close()


# -- the `queue` command ----------------------------------------------------------------------


def queue(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "queue", "--config", str(setup.config), *args],
        cwd=REPO,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


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


def assert_queued(reply: Reply) -> None:
    assert (reply.status, reply.outcome) == (200, "queued"), (reply.status, reply.body)
    assert reply.json() == {"outcome": "queued"}


# -- 1: a crash loses nothing acknowledged ----------------------------------------------------


def test_sigkill_then_restart_delivers_every_acknowledged_event(harness: Harness) -> None:
    events = 30
    upstream_port = free_port()  # nothing listens there until after the crash
    setup = harness.setup(route_yaml("tapper", f"http://127.0.0.1:{upstream_port}/postback"))
    gateway = harness.start(setup)
    ymids = [f"crash-{number:02d}" for number in range(events)]

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda ymid: gateway.postback("tapper", ymid), ymids, timeout=30))
    for reply in replies:
        assert_queued(reply)

    gateway.crash()
    gateway = harness.start(setup)
    app = harness.upstream(port=upstream_port)

    def all_arrived() -> bool:
        return app.ymids() >= set(ymids) and len(app.keys()) >= events

    assert wait_until(all_arrived, 15.0), (
        f"missing after restart: {sorted(set(ymids) - app.ymids())}"
    )
    assert app.ymids() == set(ymids)
    keys = app.keys()
    assert len(keys) == events and "" not in keys, keys
    counts = wait_until(lambda: settled(setup, "tapper", events), 10.0)
    assert counts, queue(setup, "stats").stdout
    assert counts.get("delivered") == events and counts.get("pending", 0) == 0
    assert counts.get("dead", 0) == 0


# -- 2: dedup survives a restart --------------------------------------------------------------


def test_duplicates_are_recognised_after_a_restart(harness: Harness) -> None:
    app = harness.upstream()
    nowhere = f"http://127.0.0.1:{free_port()}/postback"
    routes = (
        route_yaml("direct", app.url, delivery="sync")
        + route_yaml("queued", app.url)
        + route_yaml("held", nowhere)  # never delivered: pending across the restart
    )
    setup = harness.setup(routes)
    gateway = harness.start(setup)

    forwarded = gateway.postback("direct", "sync-1")
    assert (forwarded.status, forwarded.outcome) == (200, "forwarded")
    assert len(app.hits_for("sync-1")) == 1
    assert_queued(gateway.postback("queued", "queued-1"))
    assert_queued(gateway.postback("held", "held-1"))
    assert wait_until(lambda: settled(setup, "queued", 1), 10.0), queue(setup, "stats").stdout
    assert gateway.stop() == 0

    gateway = harness.start(setup)
    for route, ymid in (("direct", "sync-1"), ("queued", "queued-1"), ("held", "held-1")):
        again = gateway.postback(route, ymid)
        assert (again.status, again.outcome) == (200, "duplicate"), (route, again.body)

    assert len(app.hits_for("sync-1")) == 1
    assert len(app.hits_for("queued-1")) == 1
    stats = queue_stats(setup)
    assert stats["queued"] == {"delivered": 1}, stats  # no second event was queued
    assert stats["held"] == {"pending": 1}, stats
    assert "direct" not in stats  # sync routes keep only the key
    assert "dedup keys stored: 3" in queue(setup, "stats").stdout


# -- 3: a flapping upstream gets each event exactly once --------------------------------------


def test_flapping_upstream_gets_each_event_once(harness: Harness) -> None:
    events = 20
    app = harness.upstream(answer=lambda number, key: (503 if number % 2 == 0 else 200, "", 0.0))
    setup = harness.setup(route_yaml("flap", app.url))
    gateway = harness.start(setup)
    ymids = [f"flap-{number:02d}" for number in range(events)]

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda ymid: gateway.postback("flap", ymid), ymids, timeout=30))
    for reply in replies:
        assert_queued(reply)

    counts = wait_until(lambda: settled(setup, "flap", events), 20.0)
    assert counts, queue(setup, "stats").stdout
    assert counts.get("dead", 0) == 0
    accepted = app.accepted_per_key()
    assert len(accepted) == events, accepted
    assert set(accepted.values()) == {1}, accepted  # no event was delivered twice
    assert {hit.ymid for hit in app.snapshot() if hit.status == 200} == set(ymids)
    assert any(hit.status == 503 for hit in app.snapshot())

    metrics = gateway.metrics()
    assert metric_sum(metrics, "gateway_deliveries_total", route="flap", result="retry") > 0
    assert metric_sum(metrics, "gateway_deliveries_total", route="flap", result="delivered") == (
        events
    )


# -- 4: an upstream slower than its timeout ---------------------------------------------------


def test_upstream_slower_than_timeout_is_retried_until_delivered(harness: Harness) -> None:
    first_seen: set[str] = set()

    def slow_at_first(number: int, key: str) -> tuple[int, str, float]:
        if key in first_seen:
            return 200, "OK", 0.0
        first_seen.add(key)
        return 200, "OK (too late)", 1.0

    app = harness.upstream(answer=slow_at_first)
    setup = harness.setup(route_yaml("slow", app.url, timeout="300ms"))
    gateway = harness.start(setup)
    ymids = [f"slow-{number}" for number in range(3)]
    for ymid in ymids:
        assert_queued(gateway.postback("slow", ymid))

    counts = wait_until(lambda: settled(setup, "slow", len(ymids)), 15.0)
    assert counts, queue(setup, "stats").stdout
    assert counts.get("dead", 0) == 0
    assert app.ymids() == set(ymids)
    for ymid in ymids:
        assert len(app.hits_for(ymid)) >= 2, app.hits_for(ymid)
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


def test_refused_event_is_dead_lettered_then_redriven(harness: Harness) -> None:
    app = harness.upstream(answer=always(400, "unknown user"))
    setup = harness.setup(route_yaml("refused", app.url))
    gateway = harness.start(setup)
    assert_queued(gateway.postback("refused", "dead-1"))

    dead = wait_until(lambda: queue_list(setup, "--state", "dead"), 10.0)
    assert [row.ymid for row in dead] == ["dead-1"], dead
    assert dead[0].status == "400"
    assert len(app.hits_for("dead-1")) == 1  # a 4xx is the app's answer: not retried
    shown = queue(setup, "show", str(dead[0].event_id))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "400" in shown.stdout and "unknown user" in shown.stdout, shown.stdout
    assert "dead" in shown.stdout

    app.answer = always(200)
    redriven = queue(setup, "retry", "--dead")
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    assert "1 delivery pending again" in redriven.stdout

    def delivered() -> bool:
        return any(hit.status == 200 for hit in app.hits_for("dead-1"))

    assert wait_until(delivered, 10.0), app.snapshot()
    counts = wait_until(lambda: settled(setup, "refused", 1), 10.0)
    assert counts == {"delivered": 1}, queue(setup, "stats").stdout
    assert "dead:" not in queue(setup, "stats").stdout
    assert queue_list(setup, "--state", "dead") == []
    assert gateway.process.poll() is None


def test_unavailable_upstream_is_retried_not_dead_lettered(harness: Harness) -> None:
    app = harness.upstream(answer=always(503, "busy"))
    setup = harness.setup(route_yaml("busy", app.url))
    gateway = harness.start(setup)
    assert_queued(gateway.postback("busy", "busy-1"))

    def attempted_thrice() -> list[Row] | None:
        rows = queue_list(setup)
        return rows if rows and rows[0].attempts >= 3 else None

    rows = wait_until(attempted_thrice, 15.0)
    assert rows, queue_list(setup)
    assert [(row.ymid, row.state, row.status) for row in rows] == [("busy-1", "pending", "503")]
    assert len(app.hits_for("busy-1")) >= 3
    assert queue_list(setup, "--state", "dead") == []

    app.answer = always(200)
    counts = wait_until(lambda: settled(setup, "busy", 1), 10.0)
    assert counts == {"delivered": 1}, queue(setup, "stats").stdout
    assert [hit.status for hit in app.hits_for("busy-1")][-1] == 200
    assert app.accepted_per_key() == Counter({app.hits_for("busy-1")[0].key: 1})
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
        route_yaml("tapper", nowhere, queue={"retry_base": "1h", "retry_cap": "1h"}),
        server={"max_query_length": "8000"},
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
    config.write_text(
        "server:\n"
        f"  listen: 127.0.0.1:{free_port()}\n"
        f"  admin_listen: 127.0.0.1:{free_port()}\n"
        f"store:\n  path: {json.dumps(str(store))}\n"
        "routes:\n" + route_yaml("tapper", f"http://127.0.0.1:{free_port()}/postback"),
        encoding="utf-8",
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=REPO,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
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
