"""Secrets planted everywhere a config can hold one, and every output searched for them.

One real `python -m gateway run` with a key in each place: the route's key, the admin token,
a Redis URL's password (in the userinfo and as `?password=`), an upstream URL's userinfo
password, its query (`api_key=`) and a Telegram-style bot token in its path, a static
parameter. Traffic goes through it (forwarded, queued, retried, refused, invalid), a reload
with a broken upstream URL is refused, and then every output is read: the process's log,
`check`, the `queue` command, /metrics and every inspector page. None may hold a secret.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml

from tests.conftest import RedisServer, UpstreamFactory
from tests.support.processes import (
    answers,
    command_env,
    free_port,
    gateway_command,
    http_get,
    spawn_gateway,
)
from tests.support.upstream import Answer, Received
from tests.support.waiting import eventually

pytestmark = pytest.mark.process

PLANTED = {
    "MONETAG_SECRET": "planted-route-key-7f3a91",
    "ADMIN_TOKEN": "planted-admin-token-5b2c77e1",
    "REDIS_PASSWORD": "plantedRedisPw4412",
    "UPSTREAM_PASSWORD": "plantedBasicPw9090",
    "BOT_TOKEN": "AAHplantedBotToken31337",
    "APP_API_KEY": "planted-app-api-key-2718",
    "STATIC_SECRET": "planted-static-value-1618",
}
BEARER = {"Authorization": f"Bearer {PLANTED['ADMIN_TOKEN']}"}


def config(public: int, admin: int, app_port: int, redis_port: int, store: Path) -> str:
    bot_path = "/bot123456:${BOT_TOKEN}"
    app = f"http://svc:${{UPSTREAM_PASSWORD}}@127.0.0.1:{app_port}{bot_path}"
    redis_url = (
        f"redis://:${{REDIS_PASSWORD}}@127.0.0.1:{redis_port}/0?password=${{REDIS_PASSWORD}}"
    )
    secret = {"query_param": "token", "keys": ["${MONETAG_SECRET}"]}
    aliases = {"uid": "ymid", "event": "event_type", "zone": "zone_id"}
    document = {
        "server": {
            "listen": f"127.0.0.1:{public}",
            "admin_listen": f"127.0.0.1:{admin}",
            "admin_token": "${ADMIN_TOKEN}",
            "reload_interval": 0,
            "shutdown_grace": "2s",
        },
        "store": {"path": str(store)},
        "routes": {
            "tapper": {
                "path": "/postback/tapper",
                "allow_ips": ["127.0.0.1"],
                "secret": secret,
                "aliases": aliases,
                "dedup": {
                    "backend": "redis",
                    "redis_url": redis_url,
                    "on_redis_error": "fail_open",
                },
                "upstreams": [
                    {
                        "url": f"{app}/cb?api_key=${{APP_API_KEY}}",
                        "retries": 1,
                        "timeout": "1s",
                        "static_params": {"key": "${STATIC_SECRET}"},
                    }
                ],
            },
            "runner": {
                "path": "/postback/runner",
                "allow_ips": ["127.0.0.1"],
                "secret": secret,
                "aliases": aliases,
                "delivery": "queued",
                "queue": {"retry_base": "100ms", "retry_cap": "200ms", "max_attempts": 2},
                "upstreams": [{"url": f"{app}/fail?api_key=${{APP_API_KEY}}", "timeout": "1s"}],
            },
        },
    }
    return yaml.safe_dump(document, sort_keys=False)


def test_no_output_holds_a_secret_the_config_was_given(
    tmp_path: Path, start_upstream: UpstreamFactory, redis_server: RedisServer
) -> None:
    def answer(number: int, received: Received) -> Answer:
        return Answer(503, "try later") if "/fail" in received.path else Answer(200, "ok")

    app = start_upstream(default=answer)
    public, admin = free_port(), free_port()
    path = tmp_path / "config.yaml"
    path.write_text(config(public, admin, app.port, redis_server.port, tmp_path / "gw.db"))
    env = command_env(PLANTED["MONETAG_SECRET"], **PLANTED)
    stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"
    process = spawn_gateway(path, env, stdout, stderr)
    outputs: dict[str, str] = {}
    try:
        eventually(lambda: answers(admin), 15)

        def postback(route: str, ymid: str, **extra: str) -> int:
            query = {
                "uid": ymid,
                "event": "click",
                "zone": "7",
                "token": PLANTED["MONETAG_SECRET"],
                **extra,
            }
            return http_get(public, f"/postback/{route}?{urlencode(query)}").status

        assert postback("tapper", "u1") == 200
        assert postback("tapper", "u1") == 200  # a duplicate
        assert postback("runner", "q1") == 200  # queued, then refused by the app twice
        assert postback("tapper", "u2", zone="x") == 400
        query = urlencode({"uid": "u3", "event": "click", "token": "wrong"})
        assert http_get(public, f"/postback/tapper?{query}").status == 403
        eventually(lambda: len([r for r in app.received if "/fail" in r.path]) >= 2, 15)

        for words in (["stats"], ["list"], ["show", "1"], ["list", "--state", "dead"]):
            result = gateway_command("queue", "--config", str(path), *words, env=env)
            outputs[f"queue {' '.join(words)}"] = result.stdout + result.stderr
        result = gateway_command("check", "--config", str(path), env=env)
        assert result.returncode == 0, result.stderr
        outputs["check"] = result.stdout + result.stderr

        # a reload with a typo in an upstream URL (and its key in the query) is refused
        working = path.read_text()
        broken = working.replace(
            f"http://svc:${{UPSTREAM_PASSWORD}}@127.0.0.1:{app.port}",
            "http//svc:${UPSTREAM_PASSWORD}@host:99999",
            1,
        )
        path.write_text(broken)
        process.send_signal(signal.SIGHUP)
        eventually(lambda: "config reload failed" in stdout.read_text(), 10)
        result = gateway_command("check", "--config", str(path), env=env)
        assert result.returncode == 2
        outputs["check of the broken config"] = result.stdout + result.stderr

        for page in ("/", "/postbacks", "/postbacks.json", "/queue", "/metrics"):
            reply = http_get_with(admin, page, BEARER)
            assert reply[0] == 200, page
            outputs[f"page {page}"] = reply[1]
        for number in range(1, 7):
            status, text = http_get_with(admin, f"/postbacks/{number}", BEARER)
            if status == 200:
                outputs[f"page /postbacks/{number}"] = text
        # the history's pages: every postback, and the page of each (written within a second)
        eventually(
            lambda: http_get_with(admin, "/history", BEARER)[1].count('class="postback"') >= 5
        )
        for page in ("/history", "/trace?ymid=u1", "/trace?ymid=q1"):
            reply = http_get_with(admin, page, BEARER)
            assert reply[0] == 200, page
            outputs[f"page {page}"] = reply[1]
        for request_id in re.findall(r'href="/history/([0-9a-f]+)"', outputs["page /history"]):
            status, text = http_get_with(admin, f"/history/{request_id}", BEARER)
            assert status == 200, request_id
            outputs[f"page /history/{request_id}"] = text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    outputs["log"] = stdout.read_text() + stderr.read_text()
    assert "upstream" in outputs["log"] and "config reload failed" in outputs["log"]

    found = [
        (where, name)
        for where, text in outputs.items()
        for name, secret in PLANTED.items()
        if secret in text
    ]
    assert found == [], found
    assert "Traceback" not in outputs["log"]
    # the outputs are there and name what they are about, by labels that hold no secret
    assert f"127.0.0.1:{app.port}" in outputs["queue list"]
    assert f'upstream="127.0.0.1:{app.port}"' in outputs["page /metrics"]
    assert "routes.tapper.upstreams[0].url" in outputs["page /"]  # the refused reload, named


def http_get_with(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()
