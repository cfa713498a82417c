"""`monetag-gateway fire` against a real gateway and a real app behind it."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.support.gatewayconfig import gateway_config
from tests.support.processes import REPO, command_env, free_port, spawn_gateway
from tests.support.sessionsconfig import SESSIONS_ENV, SIGNING_KEY, sessions_config
from tests.support.tlscerts import make_certificate
from tests.support.waiting import eventually

pytestmark = pytest.mark.process


async def fire(config_file: Path, *arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "fire",
        "--config",
        str(config_file),
        *arguments,
        cwd=REPO,
        env={"MONETAG_SECRET": SECRET, "PATH": "/usr/bin:/bin", **SESSIONS_ENV},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_fire_sends_a_postback_the_way_monetag_would(start_upstream, start_gateway, tmp_path):
    upstream = start_upstream(body="granted")
    yaml_text = gateway_config(upstream.url)
    gateway = await start_gateway(yaml_text)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml_text)
    code, out, _ = await fire(config_file, "--route", "tapper", "--url", gateway.url, "zone_id=77")
    assert code == 0, out
    assert "token=****" in out and SECRET not in out
    assert "3 allowlist  127.0.0.1 is allowed" in out
    assert "6 validate   ok" in out
    assert "answer: 200, outcome forwarded" in out
    assert "body:   granted" in out
    received = upstream.received[0].query
    assert received["zone_id"] == "77"
    assert received["ymid"].startswith("fire-")
    # the postback used the route's own names: uid, event, zone
    sent_line = out.splitlines()[0]
    assert "uid=fire-" in sent_line and "event=click" in sent_line and "zone=77" in sent_line


async def test_fire_predicts_and_shows_a_rejection(start_upstream, start_gateway, tmp_path):
    upstream = start_upstream()
    yaml_text = gateway_config(upstream.url, allow_ips=["203.0.113.0/24"])
    gateway = await start_gateway(yaml_text)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml_text)
    code, out, _ = await fire(config_file, "--route", "tapper", "--url", gateway.url)
    assert code == 1
    assert "3 allowlist  127.0.0.1 is not in allow_ips; expect 403 rejected (ip_not_allowed)" in out
    assert "answer: 403, outcome rejected" in out
    assert upstream.received == []


async def test_fire_names_unknown_route(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(gateway_config("http://127.0.0.1:9/"))
    code, _, err = await fire(config_file, "--route", "nope")
    assert code == 2
    assert "no route 'nope'; routes: tapper" in err


async def test_fire_on_a_route_with_sessions_brings_a_ymid_issued_for_its_user(
    start_upstream, start_gateway, tmp_path
):
    """What a Mini App user's ad brings: a ymid signed with the config's key, bound to the
    first placement; the key never printed."""
    upstream = start_upstream()
    yaml_text = sessions_config(upstream.url, tmp_path / "gw.db", placements=["shop"])
    gateway = await start_gateway(yaml_text, env=SESSIONS_ENV)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml_text)
    code, out, _ = await fire(
        config_file, "--route", "tapper", "--url", gateway.url, "telegram_id=777"
    )
    assert code == 0, out
    assert "session    a ymid the gateway issued to user 777, still valid" in out
    assert SIGNING_KEY not in out
    received = upstream.received[0].query
    assert (received["user_id"], received["request_var"]) == ("777", "shop")
    assert len(received["ymid"]) == 51


async def test_fire_says_it_sends_a_real_postback_and_dry_run_sends_nothing(
    start_upstream, start_gateway, tmp_path
):
    upstream = start_upstream()
    yaml_text = gateway_config(upstream.url)
    gateway = await start_gateway(yaml_text)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml_text)
    code, out, _ = await fire(config_file, "--route", "tapper", "--url", gateway.url, "--dry-run")
    assert code == 0, out
    assert "6 validate   ok" in out and "dry run: nothing sent" in out
    assert "answer:" not in out
    code, out, _ = await fire(
        config_file, "--route", "tapper", "--url", gateway.url, "--dry-run", "zone_id=x"
    )
    assert code == 1 and "it would be refused" in out
    assert upstream.received == []  # neither reached the gateway, so not the app
    code, out, _ = await fire(config_file, "--route", "tapper", "--url", gateway.url)
    assert code == 0, out
    assert "sending it: a real postback, which the app behind route tapper acts on" in out
    assert len(upstream.received) == 1


async def test_fire_follows_server_tls_and_trusts_a_ca_file_or_nothing(start_upstream, tmp_path):
    """With server.tls the default URL is https: the certificate checked against --cacert (a
    private CA's), or not at all with --insecure; the system's CAs refuse a self-signed one."""
    upstream = start_upstream()
    certificate = make_certificate(tmp_path, "gateway")
    public = free_port()
    tls = {"cert_file": str(certificate.cert_file), "key_file": str(certificate.key_file)}
    yaml_text = gateway_config(
        upstream.url,
        server={
            "listen": f"127.0.0.1:{public}",
            "admin_listen": f"127.0.0.1:{free_port()}",
            "tls": tls,
        },
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml_text)
    process = spawn_gateway(config_file, command_env(SECRET), tmp_path / "out", tmp_path / "err")
    try:
        await asyncio.to_thread(eventually, lambda: port_open(public), 30)
        code, out, _ = await fire(
            config_file, "--route", "tapper", "--cacert", str(certificate.cert_file)
        )
        assert code == 0, out
        assert f"GET https://127.0.0.1:{public}/postback/tapper?" in out
        code, out, _ = await fire(config_file, "--route", "tapper", "--insecure")
        assert code == 0, out
        code, out, _ = await fire(config_file, "--route", "tapper")
        assert code == 2 and "not trusted (self-signed certificate): --cacert FILE" in out
        assert "not reachable" not in out  # it is reached: its certificate is the problem
        code, _, err = await fire(
            config_file, "--route", "tapper", "--cacert", str(tmp_path / "none.pem")
        )
        assert code == 2 and "--cacert" in err
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert len(upstream.received) == 2


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
