"""The real `python -m gateway run` process on its sockets: TLS on the public port (with
certificates renewed while it runs), listening on every address of both IP families, and what
it writes about requests that are not HTTP at all."""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BOTH_LOOPS, UpstreamFactory
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.metrics import metric_sum
from tests.support.processes import (
    REPO,
    SECRET,
    answers,
    command_env,
    free_port,
    http_get,
    spawn_gateway,
)
from tests.support.tlscerts import Certificate, make_certificate, not_after
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually

pytestmark = pytest.mark.process

START_TIMEOUT = 15.0


@pytest.fixture
def app(start_upstream: UpstreamFactory) -> RecordingUpstream:
    """The app behind the gateway."""
    return start_upstream()


def config(
    public: str, admin_port: int, app: RecordingUpstream, server: dict[str, Any] | None = None
) -> str:
    settings = {
        "listen": public,
        "admin_listen": f"127.0.0.1:{admin_port}",
        "reload_interval": "100ms",
        "shutdown_grace": "2s",
        **(server or {}),
    }
    return gateway_config(
        upstream(app.postback_url, timeout="2s", retries=0),
        server=settings,
        aliases={"uid": "ymid", "event": "event_type"},
    )


Run = Callable[..., tuple[subprocess.Popen[bytes], int, Path]]


@pytest.fixture(params=BOTH_LOOPS)
def event_loop_name(request: pytest.FixtureRequest) -> str:
    """The loop the gateway runs on: the listener is its own accept loop and TLS on top of the
    loop's transports, so every test here runs on both (GATEWAY_EVENT_LOOP)."""
    name: str = request.param
    return name


@pytest.fixture
def run_gateway(tmp_path: Path, event_loop_name: str) -> Iterator[Run]:
    """Start the gateway on a config text; returns (process, admin port, stdout file)."""
    started: list[subprocess.Popen[bytes]] = []

    def run(text: str, admin_port: int) -> tuple[subprocess.Popen[bytes], int, Path]:
        path = tmp_path / f"config{len(started)}.yaml"
        path.write_text(text)
        stdout, stderr = tmp_path / f"out{len(started)}.log", tmp_path / f"err{len(started)}.log"
        env = command_env(SECRET, GATEWAY_EVENT_LOOP=event_loop_name)
        process = spawn_gateway(path, env, stdout, stderr)
        started.append(process)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"gateway exited: {stderr.read_text()}{stdout.read_text()}")
            try:
                return http_get(admin_port, "/readyz", timeout=1).status == 200
            except OSError:
                return False

        eventually(ready, START_TIMEOUT, interval=0.05, explain=stderr.read_text)
        assert running_loop(stdout) == event_loop_name
        return process, admin_port, stdout

    yield run
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def running_loop(stdout: Path) -> str | None:
    """The event loop a started gateway says it runs on, in its "listening" line."""
    for line in stdout.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("message") == "listening":
            loop: str | None = entry.get("event_loop")
            return loop
    return None


QUERY = f"/postback/tapper?uid=u1&event=click&token={SECRET}"


# -- TLS -------------------------------------------------------------------------------------


def tls_get(port: int, context: ssl.SSLContext, target: str = QUERY) -> tuple[int, bytes]:
    """One GET over TLS; returns (status, the server certificate in DER)."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        connection.request("GET", target)
        status = connection.getresponse().status
        assert connection.sock is not None
        der = connection.sock.getpeercert(binary_form=True)
        assert der is not None
        return status, der
    finally:
        connection.close()


def der_of(certificate: Certificate) -> bytes:
    return ssl.PEM_cert_to_DER_cert(certificate.cert_file.read_text())


def trusting(*certificates: Certificate) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    for certificate in certificates:
        context.load_verify_locations(cafile=str(certificate.cert_file))
    return context


def install(certificate: Certificate, live: Certificate) -> None:
    """Renew like certbot or cert-manager do: new files moved over the live paths."""
    for source, target in (
        (certificate.key_file, live.key_file),
        (certificate.cert_file, live.cert_file),
    ):
        staged = target.with_suffix(".new")
        shutil.copyfile(source, staged)
        os.replace(staged, target)


def tls_settings(live: Certificate) -> dict[str, Any]:
    return {"tls": {"cert_file": str(live.cert_file), "key_file": str(live.key_file)}}


@dataclass
class Renewal:
    """A TLS gateway serving `first` from the live files, and `second` ready to replace it."""

    port: int
    admin: int
    stdout: Path
    first: Certificate
    second: Certificate
    live: Certificate


@pytest.fixture
def renewal(tmp_path: Path, app: RecordingUpstream, run_gateway: Run) -> Renewal:
    first = make_certificate(tmp_path, "first")
    second = make_certificate(tmp_path, "second", days=30)
    live = Certificate(tmp_path / "live.crt", tmp_path / "live.key")
    install(first, live)
    port, admin = free_port(), free_port()
    _, _, stdout = run_gateway(config(f"127.0.0.1:{port}", admin, app, tls_settings(live)), admin)
    return Renewal(port, admin, stdout, first, second, live)


def test_public_port_serves_tls_and_picks_up_a_renewed_certificate(renewal: Renewal) -> None:
    port, admin, stdout = renewal.port, renewal.admin, renewal.stdout
    first, second, live = renewal.first, renewal.second, renewal.live
    both = trusting(first, second)

    expiry = "gateway_tls_certificate_expiry_timestamp_seconds"
    assert tls_get(port, both) == (200, der_of(first))
    assert metric_sum(http_get(admin, "/metrics").body.decode(), expiry) == not_after(first)
    install(second, live)
    eventually(lambda: tls_get(port, both)[1] == der_of(second), 10, interval=0.1)  # renewed
    assert tls_get(port, trusting(second))[0] == 200
    assert '"TLS certificate reloaded"' in stdout.read_text()
    metrics = http_get(admin, "/metrics").body.decode()
    assert 'gateway_tls_certificate_reloads_total{result="success"} 1.0' in metrics
    assert metric_sum(metrics, expiry) == not_after(second)  # 30 days on: the alert clears


def test_a_certificate_that_does_not_load_leaves_the_old_one_serving(renewal: Renewal) -> None:
    port, admin, stdout = renewal.port, renewal.admin, renewal.stdout
    first, second, live = renewal.first, renewal.second, renewal.live

    # half a renewal: the new certificate is in place, its key is not yet
    staged = live.cert_file.with_suffix(".new")
    shutil.copyfile(second.cert_file, staged)
    os.replace(staged, live.cert_file)
    failed = 'gateway_tls_certificate_reloads_total{result="failure"} 1.0'
    eventually(lambda: failed in http_get(admin, "/metrics").body.decode(), 10)
    assert tls_get(port, trusting(first)) == (200, der_of(first))  # still the old pair
    assert '"TLS certificate not reloaded"' in stdout.read_text()

    install(second, live)  # the key arrives: the next check loads the pair
    eventually(lambda: tls_get(port, trusting(first, second))[1] == der_of(second), 10)


def test_tls_below_1_2_and_plain_http_are_refused(
    tmp_path: Path, app: RecordingUpstream, run_gateway: Run
) -> None:
    live = make_certificate(tmp_path, "live")
    port, admin = free_port(), free_port()
    _, _, stdout = run_gateway(config(f"127.0.0.1:{port}", admin, app, tls_settings(live)), admin)

    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = trusting(live)
        context.minimum_version = context.maximum_version = version
        assert tls_get(port, context)[0] == 200, version

    old = trusting(live)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0 and 1.1 at all
    with warnings.catch_warnings():  # setting TLS 1.0 and 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        assert tls_get(port, old)[0] == 200  # the same client is served when it may use 1.2...
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        tls_get(port, old)  # ...and refused when it offers 1.1 at most

    # plain HTTP on the TLS port: before, dropped with no answer, no log line, no metric
    plain = http_get(port, QUERY, timeout=5)
    assert plain.status == 400
    assert plain.body == b"The plain HTTP request was sent to HTTPS port.\r\n"
    assert app.count() == 1  # one event; the later good handshakes were duplicates
    scraped = http_get(admin, "/metrics").body.decode()
    counted = 'gateway_connections_refused_total{port="public",reason="plain_http_on_tls"} 1.0'
    assert counted in scraped
    eventually(lambda: '"reason": "plain_http_on_tls"' in stdout.read_text(), 5)
    logs = stdout.read_text() + stdout.with_name("err0.log").read_text()
    assert "Traceback" not in logs


# -- both address families -------------------------------------------------------------------


def test_star_listens_on_ipv4_and_ipv6(app: RecordingUpstream, run_gateway: Run) -> None:
    port, admin = free_port(), free_port()
    run_gateway(config(f"*:{port}", admin, app), admin)

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("GET", QUERY.replace("uid=u1", f"uid=u-{family.name}"))
        response = connection.getresponse()
        assert (response.status, response.getheader("X-Gateway-Outcome")) == (200, "forwarded")
        connection.close()
    assert app.count() == 2


# -- what the process writes about requests that are not HTTP ----------------------------------


def test_malformed_requests_write_one_short_line_each_and_never_the_key(
    app: RecordingUpstream, run_gateway: Run, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    process, _, stdout = run_gateway(config(f"127.0.0.1:{port}", admin, app), admin)
    target = QUERY.encode()
    garbage = [
        b"GET " + target + b"&x=a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET " + target + b"&x=\x01 HTTP/1.1\r\n\r\n",
        b"GET " + target + b"&x=\xff HTTP/1.1\r\n\r\n",
        b"GET " + target + b" HTTP/1.1\nHost: x\n\n",
        b"GET " + target + b"&x=" + b"a" * 60_000 + b" HTTP/1.1\r\n\r\n",
    ]
    for request in garbage:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(request)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        assert b"X-Gateway-Outcome: invalid" in answer
        assert SECRET.encode() not in answer

    process.terminate()
    process.wait(timeout=15)
    written = stdout.read_text() + (tmp_path / "err0.log").read_text()
    assert SECRET not in written
    assert "Traceback" not in written
    lines = [json.loads(line) for line in stdout.read_text().splitlines()]
    malformed = [line for line in lines if line.get("reason") == "malformed_request"]
    assert len(malformed) == len(garbage)
    assert all(len(json.dumps(line)) < 1000 for line in malformed)


# -- connections that never become requests -----------------------------------------------------


def held_open(port: int, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    """`count` TCP connections to the port, each having sent `first_bytes` (perhaps none)."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            sock.sendall(first_bytes)
        held.append(sock)
    return held


def closed_by_the_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


HALF_A_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 16


def test_handshakes_that_never_finish_are_closed_at_client_timeout_and_capped(
    tmp_path: Path, app: RecordingUpstream, run_gateway: Run
) -> None:
    """Before: 1,000 idle connections or 200 half ClientHellos were held 55-60 s each, and
    1,100 under a 1,024 open-files limit served 0 of 5 genuine postbacks in 15 s while asyncio
    logged `socket.accept() out of system resource` 55,732 times. Now an idle or half-done
    handshake is closed at `client_timeout`, connections beyond `max_connections` at once, and
    each kind of refusal is logged once and counted."""
    live = make_certificate(tmp_path, "live")
    port, admin = free_port(), free_port()
    settings = {**tls_settings(live), "client_timeout": "1s", "max_connections": 40}
    process, _, stdout = run_gateway(config(f"127.0.0.1:{port}", admin, app, settings), admin)

    idle = held_open(port, 30)
    halves = held_open(port, 10, HALF_A_CLIENT_HELLO)
    beyond = held_open(port, 20)  # over the cap of 40: closed at once
    assert all(closed_by_the_server(sock, 1.0) for sock in beyond)
    assert all(closed_by_the_server(sock, 3.0) for sock in idle + halves)  # before: 55-60 s

    assert tls_get(port, trusting(live))[0] == 200  # a genuine postback, served
    scraped = http_get(admin, "/metrics").body.decode()
    for reason, at_least in (("over_capacity", 20), ("idle", 30), ("tls_handshake", 10)):
        line = f'gateway_connections_refused_total{{port="public",reason="{reason}"}} '
        (value,) = [float(row.split()[-1]) for row in scraped.splitlines() if row.startswith(line)]
        assert value >= at_least, (reason, value)
    log = stdout.read_text()
    assert log.count('"message": "connections refused"') <= 3  # once per reason, not 60 times
    assert "Traceback" not in log and "out of system resource" not in log
    assert process.poll() is None


def test_a_low_open_files_limit_lowers_the_cap_and_nothing_floods_the_log(
    tmp_path: Path, app: RecordingUpstream
) -> None:
    """Under a 256 open-files limit the gateway says it takes fewer connections than
    max_connections, refuses what is beyond, and serves genuine postbacks once idle
    connections time out."""
    port, admin = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(config(f"127.0.0.1:{port}", admin, app, {"client_timeout": "1s"}))
    stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(path)],
            cwd=REPO,
            env=command_env(SECRET),
            stdout=out,
            stderr=err,
            preexec_fn=limited,
        )
    try:
        eventually(lambda: answers(admin), START_TIMEOUT)
        flood = held_open(port, 200)
        assert sum(closed_by_the_server(sock, 3.0) for sock in flood) == 200
        assert http_get(port, QUERY, timeout=5).status == 200
        log = stdout.read_text()
        assert '"connections_per_port": 8' in log, log[-2000:]
        assert "Traceback" not in log + stderr.read_text()
        assert "out of system resource" not in log + stderr.read_text()
    finally:
        process.terminate()
        process.wait(timeout=10)
