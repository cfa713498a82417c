"""deploy/nginx.conf, run for real: a real nginx in front of two real gateway replicas.

The compose network's DNS is a small DNS server here (`Names`) that answers `gateways` with
the replicas' addresses, two of 127.0.0.0/8; nginx gets it as its resolver exactly as
deploy/nginx-start.sh gives it the network's. Only what a test machine needs is replaced in
the shipped file: the resolver's address, the ports and the log directory.

What is checked: the key is never in nginx's logs; a dead replica costs no postback (the other
one answers, and shared dedup keeps the retry from paying twice); a replica restarted on a new
address gets requests again without restarting nginx.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config import parse_config
from gateway.deadline import Deadline
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.serving.app import public_runner
from tests.conftest import SECRET, UpstreamFactory
from tests.support.gatewayconfig import gateway_config, route
from tests.support.processes import REPO, free_port
from tests.support.tlscerts import make_certificate
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually, eventually_async

pytestmark = [pytest.mark.process, pytest.mark.postgres]

NGINX_CONF = REPO / "deploy/nginx.conf"
REPLICA_PORT = 8080  # where deploy/nginx.conf sends: the gateways' `listen` port
RESOLVE_EVERY = 5.0  # `resolver ... valid=5s`


class Names(threading.Thread):
    """A DNS server on 127.0.0.1 that answers A queries for `gateways` with `addresses`."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses
        self.queries = 0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._stopped = False

    def run(self) -> None:
        while not self._stopped:
            try:
                query, sender = self._socket.recvfrom(512)
            except OSError:
                return
            self.queries += 1
            self._socket.sendto(self._answer(query), sender)

    def stop(self) -> None:
        self._stopped = True
        self._socket.close()

    def _answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack("!H", query[:2])
        end = query.index(b"\0", 12) + 5  # the question: its name, then type and class
        question = query[12:end]
        labels, at = [], 0
        while question[at]:
            labels.append(question[at + 1 : at + 1 + question[at]].decode())
            at += 1 + question[at]
        (kind,) = struct.unpack("!H", question[at + 1 : at + 3])
        found = ".".join(labels) == "gateways" and kind == 1  # A
        answers = self.addresses if found else []
        header = struct.pack("!HHHHHH", ident, 0x8180 if found else 0x8183, 1, len(answers), 0, 0)
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
            for address in answers
        )
        return header + question + records


@pytest.fixture
def names() -> Iterator[Names]:
    server = Names(["127.0.0.2", "127.0.0.3"])
    server.start()
    yield server
    server.stop()


@dataclass
class Nginx:
    port: int
    logs: Path

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs.glob("*.log"))


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    assert found, "nginx is not installed: ./scripts/test installs it (nginx-light)"
    return found


def free_port_on_both(hosts: tuple[str, ...]) -> int:
    """A port free on every one of `hosts` (the replicas' addresses)."""
    while True:
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port


@pytest.fixture
def replica_port() -> int:
    return free_port_on_both(("127.0.0.2", "127.0.0.3", "127.0.0.4"))


@pytest.fixture
def nginx(tmp_path: Path, names: Names, replica_port: int) -> Iterator[Nginx]:
    """deploy/nginx.conf, as deploy/nginx-start.sh makes it, inside a minimal main config."""
    logs = tmp_path / "logs"
    logs.mkdir()
    shipped = NGINX_CONF.read_text()
    assert "@RESOLVER@" in shipped and f":{REPLICA_PORT};" in shipped and "listen 80;" in shipped
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = (
        shipped.replace("@RESOLVER@", f"127.0.0.1:{names.port}")
        .replace(f":{REPLICA_PORT};", f":{replica_port};")
        .replace("listen 80;", f"listen 127.0.0.1:{port};")
        .replace("/var/log/nginx/", f"{logs}/")
    )
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {logs}/main-error.log crit;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  fastcgi_temp_path {tmp_path}/fastcgi;\n"
        f"  uwsgi_temp_path {tmp_path}/uwsgi;\n  scgi_temp_path {tmp_path}/scgi;\n"
        f"  include {tmp_path}/site.conf;\n}}\n"
    )
    nginx = subprocess.Popen(
        [nginx_binary(), "-c", str(tmp_path / "nginx.conf"), "-e", str(logs / "main-error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def listening() -> bool:
        assert nginx.poll() is None, nginx.stderr.read() if nginx.stderr else ""
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        eventually(listening, 10)
        yield Nginx(port, logs)
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


class Replicas:
    """Gateway replicas on 127.0.0.x:replica_port, sharing one PostgreSQL store."""

    def __init__(self, port: int, store: str, app: RecordingUpstream) -> None:
        self._port, self._store, self._app = port, store, app
        self.running: dict[str, tuple[Runtime, web.ServerRunner]] = {}

    async def start(self, host: str) -> Runtime:
        text = gateway_config(
            routes={"tapper": route([self._app.url + "/postback"], allow_ips=["203.0.113.7"])},
            server={"listen": f"{host}:{self._port}", "trusted_proxies": ["127.0.0.0/8"]},
            store=self._store,
        )
        runtime = Runtime(parse_config(text, {"MONETAG_SECRET": SECRET}), Metrics())
        await runtime.start()
        runner = public_runner(runtime)
        await runner.setup()
        await web.TCPSite(runner, host, self._port).start()
        self.running[host] = (runtime, runner)
        return runtime

    async def stop(self, host: str) -> None:
        runtime, runner = self.running.pop(host)
        await runner.cleanup()
        await runtime.close(Deadline(1))

    def answered(self, host: str) -> int:
        runtime, _ = self.running[host]
        return len(runtime.journal.recent(limit=1000))


@pytest.fixture
async def replicas(
    replica_port: int, postgres_url: str, start_upstream: UpstreamFactory
) -> AsyncIterator[Replicas]:
    app = start_upstream()
    running = Replicas(replica_port, postgres_url, app)
    for host in ("127.0.0.2", "127.0.0.3"):
        await running.start(host)
    yield running
    for host in list(running.running):
        await running.stop(host)


async def postback(http: aiohttp.ClientSession, nginx: Nginx, ymid: str) -> tuple[int, str]:
    params = {"uid": ymid, "event": "click", "zone": "1", "token": SECRET}
    headers = {"X-Forwarded-For": "203.0.113.7"}  # Monetag, as the proxy in front saw it
    url = f"http://127.0.0.1:{nginx.port}/postback/tapper"
    async with http.get(url, params=params, headers=headers) as response:
        return response.status, response.headers.get("X-Gateway-Outcome", "")


async def test_nginx_logs_never_hold_the_key_even_about_a_dead_replica(
    nginx: Nginx, replicas: Replicas, http: aiohttp.ClientSession
) -> None:
    await replicas.stop("127.0.0.3")  # connections to it fail: nginx writes errors about them
    answers = [await postback(http, nginx, f"log-{number}") for number in range(6)]

    assert set(answers) == {(200, "forwarded")}
    logged = nginx.log_text()
    assert '"GET /postback/tapper" 200' in logged  # the access log is there, without its query
    assert SECRET not in logged and "token=" not in logged, logged


async def test_a_dead_replica_costs_no_postback_and_nothing_is_paid_twice(
    nginx: Nginx, replicas: Replicas, http: aiohttp.ClientSession
) -> None:
    # Before (proxy_next_upstream off): with gateway-1 dead, 2 of 14 postbacks got 502.
    await replicas.stop("127.0.0.2")
    answers = [await postback(http, nginx, f"dead-{number}") for number in range(14)]
    again = [await postback(http, nginx, f"dead-{number}") for number in range(14)]

    assert set(answers) == {(200, "forwarded")}
    assert set(again) == {(200, "duplicate")}
    assert replicas.answered("127.0.0.3") == 28


async def test_a_replica_back_on_a_new_address_gets_requests_without_restarting_nginx(
    nginx: Nginx, names: Names, replicas: Replicas, http: aiohttp.ClientSession
) -> None:
    # Before: nginx resolved the names once, kept connecting to the old address ("No route to
    # host", 502 now and then) and never sent the restarted replica a request.
    sent = 0

    async def both_answered() -> bool:  # nginx's resolver hands the addresses out at random
        nonlocal sent
        sent += 1
        assert await postback(http, nginx, f"before-{sent}") == (200, "forwarded")
        return replicas.answered("127.0.0.3") > 0 and replicas.answered("127.0.0.2") > 0

    await eventually_async(both_answered, timeout=10, interval=0.01)
    await replicas.stop("127.0.0.3")
    await replicas.start("127.0.0.4")
    names.addresses = ["127.0.0.2", "127.0.0.4"]  # the restarted replica's new address

    async def reached() -> bool:
        await postback(http, nginx, f"moved-{names.queries}-{replicas.answered('127.0.0.2')}")
        return replicas.answered("127.0.0.4") > 0

    await eventually_async(reached, timeout=RESOLVE_EVERY + 5, interval=0.2)
    answers = [await postback(http, nginx, f"after-{number}") for number in range(6)]
    assert set(answers) == {(200, "forwarded")}


def test_the_same_host_nginx_of_the_deployment_docs_is_valid(tmp_path: Path) -> None:
    """docs/deployment.md's nginx in front of one gateway on this host, as nginx reads it
    (its certificate loaded), with the key cut from the access line as deploy/nginx.conf's."""
    page = (REPO / "docs" / "deployment.md").read_text()
    block = re.search(r"^( *)```nginx\n(.*?)^\1```", page, re.S | re.M)
    assert block, "docs/deployment.md has no nginx block"
    text = textwrap.dedent(block.group(2))
    assert "$path_only" in text and "error_log /var/log/nginx/error.log crit" in text
    certificate = make_certificate(tmp_path, "localhost")
    text = (
        text.replace("/etc/monetag-gateway/tls/fullchain.pem", str(certificate.cert_file))
        .replace("/etc/monetag-gateway/tls/privkey.pem", str(certificate.key_file))
        .replace("/var/log/nginx/", f"{tmp_path}/")
        .replace("listen 443 ssl", f"listen 127.0.0.1:{free_port()} ssl")
    )
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\n{text}")
    checked = subprocess.run(
        [nginx_binary(), "-t", "-c", str(tmp_path / "nginx.conf"), "-e", f"{tmp_path}/e.log"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
