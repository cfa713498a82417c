"""Two gateway processes sharing a real redis-server, in front of one app."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.support.gatewayconfig import gateway_config
from tests.support.processes import REPO, SECRET, command_env, free_port, http_get, spawn_gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.process


def config(public: int, admin: int, app: int, redis_url: str, policy: str) -> str:
    """One replica's config: its own ports, the shared Redis, the one demo app."""
    listeners = {"listen": f"127.0.0.1:{public}", "admin_listen": f"127.0.0.1:{admin}"}
    return gateway_config(
        {"url": f"http://127.0.0.1:{app}/postback", "timeout": "2s"},
        server={**listeners, "reload_interval": 0},
        allow_ips=["127.0.0.1"],
        aliases={"uid": "ymid", "event": "event_type"},
        dedup={"backend": "redis", "redis_url": redis_url, "on_redis_error": policy},
    )


class Replicas:
    def __init__(self, tmp_path: Path, redis: RedisServer, policy: str) -> None:
        self.app_port = free_port()
        self.app = subprocess.Popen(
            [sys.executable, "-m", "gateway.demo_app", "--port", str(self.app_port)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ports: list[int] = []
        self.admin_ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        for index in range(2):
            public, admin = free_port(), free_port()
            path = tmp_path / f"replica{index}.yaml"
            path.write_text(config(public, admin, self.app_port, redis.url, policy))
            logs = tmp_path / f"replica{index}.out", tmp_path / f"replica{index}.err"
            self.processes.append(spawn_gateway(path, command_env(SECRET), *logs))
            self.ports.append(public)
            self.admin_ports.append(admin)
        for port in self.ports:
            eventually(partial(_answers, port), 15)
        eventually(lambda: self.rewards() is not None, 15)  # the demo app is up

    def postback(self, replica: int, ymid: str) -> tuple[int, str | None]:
        reply = http_get(
            self.ports[replica], f"/postback/tapper?uid={ymid}&event=click&token={SECRET}"
        )
        return reply.status, reply.outcome

    def rewards(self) -> list[dict[str, str]] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.app_port}/rewards", timeout=5
            ) as r:
                return list(json.loads(r.read()))
        except OSError:
            return None

    def stop(self) -> None:
        for process in [*self.processes, self.app]:
            process.terminate()
        for process in [*self.processes, self.app]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _answers(port: int) -> bool:
    try:
        return http_get(port, "/nowhere", timeout=1).status == 404
    except OSError:
        return False


@pytest.fixture
def replicas_closed(tmp_path: Path, redis_server: RedisServer) -> Iterator[Replicas]:
    replicas = Replicas(tmp_path, redis_server, "fail_closed")
    yield replicas
    replicas.stop()


@pytest.fixture
def replicas_open(tmp_path: Path, redis_server: RedisServer) -> Iterator[Replicas]:
    replicas = Replicas(tmp_path, redis_server, "fail_open")
    yield replicas
    replicas.stop()


def test_same_postback_to_both_replicas_grants_one_reward(replicas_closed: Replicas) -> None:
    events = [f"player-{n}" for n in range(20)]
    sends = [(replica, ymid) for ymid in events for replica in (0, 1, 0, 1, 0, 1)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda job: replicas_closed.postback(*job), sends))
    assert {status for status, _ in answers} == {200}
    outcomes = [outcome for _, outcome in answers]
    assert outcomes.count("forwarded") == 20 and outcomes.count("duplicate") == 100
    rewards = replicas_closed.rewards()
    assert rewards is not None
    assert sorted(reward["ymid"] for reward in rewards) == sorted(events)


def test_redis_stopped_fail_closed_refuses_then_recovers(
    replicas_closed: Replicas, redis_server: RedisServer
) -> None:
    assert replicas_closed.postback(0, "before") == (200, "forwarded")
    redis_server.stop()
    assert replicas_closed.postback(1, "during") == (503, "store_error")
    assert replicas_closed.postback(0, "before")[0] == 200  # known locally: still a duplicate
    redis_server.start()
    eventually(lambda: replicas_closed.postback(1, "during") == (200, "forwarded"), 10)
    assert replicas_closed.postback(0, "during") == (200, "duplicate")
    rewards = replicas_closed.rewards() or []
    assert sorted(reward["ymid"] for reward in rewards) == ["before", "during"]


def test_redis_stopped_fail_open_keeps_forwarding(
    replicas_open: Replicas, redis_server: RedisServer
) -> None:
    redis_server.stop()
    assert replicas_open.postback(0, "during") == (200, "forwarded")
    assert replicas_open.postback(0, "during") == (200, "duplicate")  # this replica's memory
    metrics_url = f"http://127.0.0.1:{replicas_open.admin_ports[0]}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        metrics = response.read().decode()
    assert 'gateway_dedup_fallbacks_total{route="tapper"} 1.0' in metrics
    assert "gateway_redis_errors_total" in metrics
