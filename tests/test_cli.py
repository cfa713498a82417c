"""`python -m gateway run | check | health`, run as the real command in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.support import processes
from tests.support.processes import GatewayProcess as RunningGateway
from tests.support.processes import free_port, gateway_command, spawn_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.process

COMMAND_TIMEOUT = 30.0
FILE_SECRET = "topsecret-value-123"
ENV_SECRET = "envsecret-value-456"
UPSTREAM_PASSWORD = "hunter2-password"


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` from the repository and wait for it to finish."""
    environment = command_env() if env is None else env
    return gateway_command(*args, env=environment, timeout=COMMAND_TIMEOUT)


def command_env(**extra: str) -> dict[str, str]:
    return processes.command_env(ENV_SECRET, **extra)


def config_text(listen: str = "127.0.0.1:8080", admin: str = "127.0.0.1:9090") -> str:
    """Two routes: `tapper` (allowlist, query secret, two upstreams), `spinner` (header only)."""
    return (
        "server:\n"
        f"  listen: {listen}\n"
        f"  admin_listen: {admin}\n"
        "routes:\n"
        "  tapper:\n"
        "    path: /postback/tapper\n"
        "    allow_ips: [127.0.0.1, '::1', 203.0.113.0/24]\n"
        "    secret:\n"
        "      query_param: token\n"
        f"      keys: ['${{MONETAG_SECRET}}', {FILE_SECRET}]\n"
        "    aliases: {event: event_type, uid: ymid}\n"
        "    dedup: {key: [ymid, event_type]}\n"
        "    upstreams:\n"
        "      - url: http://127.0.0.1:3000/postback\n"
        "        timeout: 2s\n"
        "        retries: 1\n"
        f"      - url: http://svc:{UPSTREAM_PASSWORD}@127.0.0.1:3001/copy\n"
        "        rename: {event_type: event}\n"
        "  spinner:\n"
        "    path: /postback/spinner\n"
        "    secret:\n"
        "      header: X-Postback-Key\n"
        "      keys: ['${MONETAG_SECRET}']\n"
        "    upstreams:\n"
        "      - url: https://app.example/spin\n"
    )


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def route_sections(summary: str) -> dict[str, str]:
    """`check` output split into one text block per `route NAME` line."""
    sections: dict[str, str] = {}
    name = None
    for line in summary.splitlines():
        match = re.fullmatch(r"route (\S+)", line.strip())
        if match:
            name = match.group(1)
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    return sections


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        for secret in (FILE_SECRET, ENV_SECRET, UPSTREAM_PASSWORD):
            assert secret not in output, output


# -- check ------------------------------------------------------------------------------------


def test_check_summarizes_each_route_without_secrets(tmp_path: Path) -> None:
    result = gateway("check", "--config", str(write(tmp_path, config_text())))

    assert result.returncode == 0, result.stderr
    sections = route_sections(result.stdout)
    assert set(sections) == {"tapper", "spinner"}, result.stdout
    tapper, spinner = sections["tapper"], sections["spinner"]
    assert "/postback/tapper" in tapper
    assert re.search(r"allow_ips\D*\b3\b", tapper), tapper
    assert "query" in tapper and "'token'" in tapper
    assert re.search(r"'event': 'event_type'", tapper) and re.search(r"'uid': 'ymid'", tapper)
    assert re.search(r"dedup.*\bymid, event_type\b", tapper), tapper
    assert "upstream  127.0.0.1:3000 (http, answers;" in tapper
    assert "upstream  127.0.0.1:3001 (http, copy;" in tapper
    assert "/postback/spinner" in spinner
    assert "header" in spinner and "X-Postback-Key" in spinner
    assert "upstream  app.example:443 (https, answers;" in spinner
    assert "ymid, event_type, zone_id" in spinner  # the default dedup key
    assert_no_secret(result.stdout, result.stderr)


def test_check_reports_config_warnings(tmp_path: Path) -> None:
    result = gateway("check", "--config", str(write(tmp_path, config_text())))

    assert result.returncode == 0, result.stderr
    assert re.search(r"warning.*routes\.spinner.*allow_ips", result.stdout + result.stderr)


@pytest.mark.parametrize(
    "old, new, key_path, phrase",
    [
        pytest.param(
            "203.0.113.0/24]",
            "203.0.113.7/24]",
            "routes.tapper.allow_ips[2]",
            "host bits",
            id="cidr-with-host-bits",
        ),
        pytest.param(
            "        retries: 1\n",
            "        retries: two\n",
            "routes.tapper.upstreams[0].retries",
            "whole number",
            id="retries-is-a-word",
        ),
        pytest.param(
            "'${MONETAG_SECRET}', ",
            "'${UNSET_GATEWAY_KEY}', ",
            "routes.tapper.secret.keys[0]",
            "UNSET_GATEWAY_KEY",
            id="unset-variable",
        ),
        pytest.param(
            "    aliases:",
            "    alow_ips: []\n    aliases:",
            "routes.tapper.alow_ips",
            "unknown key",
            id="misspelt-key",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "run", "health"])
def test_bad_config_exits_2_naming_key_path_and_problem(
    tmp_path: Path, command: str, old: str, new: str, key_path: str, phrase: str
) -> None:
    good = config_text(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    assert old in good
    path = write(tmp_path, good.replace(old, new, 1))

    result = gateway(command, "--config", str(path))

    assert result.returncode == 2, (result.stdout, result.stderr)
    problem_lines = [line for line in result.stderr.splitlines() if key_path in line]
    assert any(phrase in line for line in problem_lines), result.stderr
    assert "listening" not in result.stdout
    assert_no_secret(result.stdout, result.stderr)


def test_check_of_a_missing_file_exits_2_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    result = gateway("check", "--config", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr


# -- where the config path comes from ---------------------------------------------------------


def test_config_path_comes_from_gateway_config_when_no_flag(tmp_path: Path) -> None:
    path = write(tmp_path, config_text())

    result = gateway("check", env=command_env(GATEWAY_CONFIG=str(path)))

    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    assert "/postback/tapper" in result.stdout


def test_config_flag_wins_over_gateway_config(tmp_path: Path) -> None:
    good = write(tmp_path, config_text(), "good.yaml")
    bad = write(tmp_path, "routes: {}\n", "bad.yaml")

    result = gateway("check", "--config", str(good), env=command_env(GATEWAY_CONFIG=str(bad)))

    assert result.returncode == 0, result.stderr
    assert str(good) in result.stdout


def test_gateway_config_pointing_at_a_bad_config_fails(tmp_path: Path) -> None:
    bad = write(tmp_path, "routes: {}\n")
    result = gateway("check", env=command_env(GATEWAY_CONFIG=str(bad)))
    assert result.returncode == 2
    assert "routes" in result.stderr and "at least one route" in result.stderr


def test_unknown_event_loop_exits_2_naming_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, config_text(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"))

    result = gateway("run", "--config", str(path), env=command_env(GATEWAY_EVENT_LOOP="tokio"))

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "GATEWAY_EVENT_LOOP='tokio': expected one of uvloop, asyncio" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize("command", ["run", "check", "health"])
def test_no_config_anywhere_says_how_to_pass_one(command: str) -> None:
    result = gateway(command)

    assert result.returncode != 0
    assert "--config" in result.stderr
    assert "GATEWAY_CONFIG" in result.stderr
    assert "listening" not in result.stdout


def test_only_check_and_run_open_the_certificate_files(tmp_path: Path) -> None:
    """Reading a config reads its TLS paths; `queue stats` on a host without the pod's
    certificate works, while `check` still reports a certificate that does not load."""
    tls = "  tls: {cert_file: /nonexistent/tls.crt, key_file: /nonexistent/tls.key}\n"
    text = config_text().replace("routes:\n", tls + "routes:\n", 1)
    config = write(tmp_path, f"{text}store:\n  path: {tmp_path / 'queue.db'}\n")

    stats = gateway("queue", "--config", str(config), "stats")
    checked = gateway("check", "--config", str(config))

    assert stats.returncode == 0, stats.stdout + stats.stderr
    assert "dedup keys stored: 0" in stats.stdout
    assert checked.returncode == 2, checked.stdout
    assert "  server.tls: cannot read: No such file or directory\n" in checked.stderr


# -- run and health ---------------------------------------------------------------------------


def is_healthy(running: RunningGateway) -> bool:
    """Whether `health` says so; fails the test at once if the process has exited."""
    if running.process.poll() is not None:
        pytest.fail("gateway exited; stderr:\n" + running.stderr.read_text(encoding="utf-8"))
    return gateway("health", "--config", str(running.config)).returncode == 0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningGateway]:
    """`run` on free loopback ports, already answering `health`; killed if a test leaves it."""
    public_port, admin_port = free_port(), free_port()
    config = write(tmp_path, config_text(f"127.0.0.1:{public_port}", f"127.0.0.1:{admin_port}"))
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    process = spawn_gateway(config, command_env(), stdout, stderr)
    gateway_process = RunningGateway(process, config, public_port, admin_port, stdout, stderr)
    try:
        eventually(partial(is_healthy, gateway_process), 10.0, interval=0.2)
        yield gateway_process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=COMMAND_TIMEOUT)


def test_running_gateway_is_healthy_and_ready(running: RunningGateway) -> None:
    health = gateway("health", "--config", str(running.config))
    assert health.returncode == 0, health.stderr
    assert health.stdout == f"alive: http://127.0.0.1:{running.admin_port}/healthz answered 200\n"

    check = gateway("check", "--config", str(running.config))
    checksum = re.search(r"checksum ([0-9a-f]{16})", check.stdout)
    assert checksum, check.stdout

    url = f"http://127.0.0.1:{running.admin_port}/readyz"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {
            "status": "ready",
            "config_checksum": checksum.group(1),
        }


def test_health_reaches_an_admin_port_on_every_address_over_loopback(tmp_path: Path) -> None:
    """`admin_listen: "*:PORT"` is probed at 127.0.0.1 (it once asked for http://*:PORT)."""
    public_port, admin_port = free_port(), free_port()
    text = config_text(f"127.0.0.1:{public_port}", f"'*:{admin_port}'").replace(
        "routes:\n", "  admin_token: ${ADMIN_TOKEN}\nroutes:\n", 1
    )
    config = write(tmp_path, text)
    env = command_env(ADMIN_TOKEN="health-probe-admin-token-0123")
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    process = spawn_gateway(config, env, stdout, stderr)
    try:
        running = RunningGateway(process, config, public_port, admin_port, stdout, stderr)
        eventually(lambda: _answers_readyz(running), 10.0, interval=0.2)

        health = gateway("health", "--config", str(config), env=env)

        assert health.returncode == 0, health.stderr
    finally:
        process.kill()
        process.wait(timeout=COMMAND_TIMEOUT)


def _answers_readyz(running: RunningGateway) -> bool:
    if running.process.poll() is not None:
        pytest.fail("gateway exited; stderr:\n" + running.stderr.read_text(encoding="utf-8"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{running.admin_port}/readyz", timeout=1):
            return True
    except OSError:
        return False


def test_running_gateway_listens_on_the_public_port_without_admin_endpoints(
    running: RunningGateway,
) -> None:
    url = f"http://127.0.0.1:{running.public_port}/readyz"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=5)
    assert caught.value.code == 404


def test_sigterm_stops_the_gateway_with_exit_0(running: RunningGateway) -> None:
    assert running.stop(timeout=5) == 0

    after = gateway("health", "--config", str(running.config))
    assert after.returncode != 0
    assert f"127.0.0.1:{running.admin_port}" in after.stderr


def test_run_logs_json_lines_with_listening_and_config_warnings(running: RunningGateway) -> None:
    assert running.stop(timeout=5) == 0

    lines = running.json_lines()
    listening = [line for line in lines if line.get("message") == "listening"]
    assert len(listening) == 1, lines
    assert f":{running.public_port}" in json.dumps(listening[0])
    assert f":{running.admin_port}" in json.dumps(listening[0])
    assert listening[0]["event_loop"] == "uvloop"  # installed, and GATEWAY_EVENT_LOOP unset
    warnings = [line for line in lines if line.get("level") == "warning"]
    assert any("routes.spinner" in json.dumps(line) for line in warnings), lines
    log_text = running.stdout.read_text(encoding="utf-8")
    assert_no_secret(log_text, running.stderr.read_text(encoding="utf-8"))


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`monetag-gateway history search ... | head -3`: the reader stops, and the command
    printed a BrokenPipeError traceback. The pipe here is closed before the command writes."""
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails with EPIPE
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "gateway", "check", "--config", "config.yaml"],
            cwd=processes.REPO,
            env=command_env(),
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    finally:
        os.close(writer)
    assert "Traceback" not in finished.stderr and "BrokenPipe" not in finished.stderr
    assert finished.returncode == 1
