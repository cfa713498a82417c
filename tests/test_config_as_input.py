"""A config file is input too: what a hostile or a huge one costs `check` and a running gateway.

Nested YAML aliases ("billion laughs") once took `check` 13.4 s and 1.7 GB and printed 580 MB,
and one level less stalled a running gateway on SIGHUP; a 4 MB config held the event loop for
7.5 s on reload, so neither postbacks nor /healthz were answered. Here each is bounded: a
document that expands too far, or a file too large, is refused at once with a short message,
and a reload is read and compiled off the event loop.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from gateway.config import MAX_CONFIG_BYTES, ConfigError, parse_config
from gateway.config.yamlfile import MAX_VALUES
from tests.conftest import SECRET, UpstreamFactory
from tests.support.gatewayconfig import gateway_config
from tests.support.processes import REPO, answers, command_env, free_port, http_get, spawn_gateway
from tests.support.waiting import eventually


def laughs(levels: int) -> str:
    """A config whose route's `match` list holds 9**levels strings, in a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    config = yaml.safe_load(gateway_config("http://127.0.0.1:3000/cb"))
    config["routes"]["tapper"]["match"] = {"request_var": "PLACEHOLDER"}
    text = yaml.safe_dump(config, sort_keys=False).replace("'PLACEHOLDER'", f"*a{levels - 1}")
    return "\n".join(lines) + "\n" + text


@pytest.mark.process
@pytest.mark.parametrize("levels", [9, 8, 6])
def test_a_config_that_expands_too_far_is_refused_at_once(tmp_path: Path, levels: int) -> None:
    text = laughs(levels)
    assert len(text) < 2000 and 9**levels > MAX_VALUES
    path = tmp_path / "config.yaml"
    path.write_text(text)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=command_env(SECRET),
    )
    assert time.monotonic() - started < 10  # before: 13.4 s for 9 levels, and 1.7 GB
    assert result.returncode == 2
    assert "expands to more than" in result.stderr
    assert len(result.stdout) + len(result.stderr) < 2000  # before: 580 MB


def test_problem_messages_quote_at_most_80_characters_of_a_value() -> None:
    long_value = "v" * 5000
    text = gateway_config("http://127.0.0.1:3000/cb", allow_ips=[long_value])
    with pytest.raises(ConfigError) as refused:
        parse_config(text, {"MONETAG_SECRET": SECRET})
    assert all(long_value[:100] not in problem for problem in refused.value.problems)
    assert all(len(problem) <= 600 for problem in refused.value.problems)


@pytest.mark.process
def test_a_file_above_the_documented_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(gateway_config("http://127.0.0.1:3000/cb") + "#" * MAX_CONFIG_BYTES)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=command_env(SECRET),
    )
    assert result.returncode == 2
    assert f"is larger than {MAX_CONFIG_BYTES} bytes" in result.stderr


def big_allowlist_config(public: int, admin: int, app_url: str, entries: int) -> str:
    allow = ["127.0.0.1"] + [
        f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}" for n in range(entries)
    ]
    text = gateway_config(
        app_url,
        allow_ips=allow,
        server={
            "listen": f"127.0.0.1:{public}",
            "admin_listen": f"127.0.0.1:{admin}",
            "reload_interval": 0,
        },
    )
    assert len(text.encode()) <= MAX_CONFIG_BYTES, len(text)
    return text


@pytest.mark.process
def test_a_large_reload_leaves_postbacks_and_probes_answered(
    tmp_path: Path, start_upstream: UpstreamFactory
) -> None:
    """A config near the size limit (about 45,000 allow_ips entries) is reloaded while a probe
    asks /healthz every 20 ms: the loop never stops answering for long; the log says how long
    the reload took."""
    app = start_upstream()
    public, admin = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(big_allowlist_config(public, admin, app.postback_url, 10))
    stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"
    process = spawn_gateway(path, command_env(SECRET), stdout, stderr)
    try:
        eventually(lambda: answers(admin), 15)
        path.write_text(big_allowlist_config(public, admin, app.postback_url, 45_000))
        gaps: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            last = time.monotonic()
            while not stop.is_set():
                assert http_get(admin, "/healthz", timeout=10).status == 200
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                time.sleep(0.02)

        prober = threading.Thread(target=probe)
        prober.start()
        process.send_signal(signal.SIGHUP)
        eventually(lambda: '"message": "config reloaded"' in stdout.read_text(), 60)
        stop.set()
        prober.join(timeout=15)
        query = f"uid=u1&event=click&zone=1&token={SECRET}"
        assert http_get(public, f"/postback/tapper?{query}").status == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
    reloaded = [line for line in stdout.read_text().splitlines() if "config reloaded" in line]
    assert '"seconds": ' in reloaded[0]
    assert max(gaps) < 1.0, max(gaps)  # before: 7.5 s without an answer
