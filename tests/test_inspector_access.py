"""Who may use the admin port, without a browser: the config rules for the admin token, and
the answers a script gets over a real socket (aiohttp's client, or the standard library's).

The inspector shows recent postbacks and can re-send dead letters, so an admin port that
other machines reach must have a token (or say on purpose that something else guards it);
the token must be long enough not to be guessed; pages and actions need it, the probes never
do; actions also need the form field only the inspector's own pages carry and must not come
from another site; and the token never reaches a log line or a cookie.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.checks.secret import Secret
from gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from gateway.runtime import Runtime
from tests.conftest import SECRET, UpstreamFactory
from tests.support.gatewayconfig import gateway_config, upstream
from tests.support.inspectorsite import (
    ADMIN_ENV,
    ADMIN_TOKEN,
    Site,
    SiteFactory,
    queued_config,
    server_settings,
    start_site,
    tapper_config,
)
from tests.support.metrics import metric_sum
from tests.support.processes import Reply, command_env, http_get, spawn_gateway
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually, eventually_async

__all__ = ["start_site"]  # the fixture, used by name

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml"}
FORM_TOKEN = re.compile(r'name="form_token" value="([0-9a-f]+)"')


# -- the config rules ---------------------------------------------------------------------------


def load_with(
    tmp_path: Path, environ: dict[str, str] | None = None, **server: Any
) -> GatewayConfig:
    """load_config of a file whose server section has these keys (loopback ports otherwise)."""
    path = tmp_path / "gateway.yaml"
    settings = {"listen": "127.0.0.1:8080", "admin_listen": "127.0.0.1:9090", **server}
    path.write_text(gateway_config("http://127.0.0.1:3000", server=settings), encoding="utf-8")
    return load_config(path, {"MONETAG_SECRET": SECRET, **(environ or {})})


def problems_loading(tmp_path: Path, **server: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, **server)
    return caught.value.problems


@pytest.mark.parametrize("admin_listen", ["0.0.0.0:9090", "[::]:9090", "*:9090", "10.1.2.3:9090"])
def test_an_admin_port_other_machines_reach_needs_a_token(
    tmp_path: Path, admin_listen: str
) -> None:
    (problem,) = problems_loading(tmp_path, admin_listen=admin_listen)
    assert problem.startswith("server.admin_listen: "), problem
    assert "server.admin_token" in problem and "admin_insecure" in problem, problem


def test_admin_insecure_loads_an_open_admin_port_with_a_warning(tmp_path: Path) -> None:
    """For an admin port something else guards (a private network, a proxy with its own
    login): it loads, and says what anyone who reaches it can do."""
    config = load_with(tmp_path, admin_listen="0.0.0.0:9090", admin_insecure=True)
    (warning,) = [line for line in config.warnings if "admin_listen" in line]
    assert warning.startswith("server.admin_listen: 0.0.0.0:9090 without admin_token"), warning
    assert "recent postbacks" in warning and "dead letters" in warning


def test_a_token_from_the_environment_opens_the_admin_port_to_other_machines(
    tmp_path: Path,
) -> None:
    config = load_with(
        tmp_path, ADMIN_ENV, admin_listen="0.0.0.0:9090", admin_token="${ADMIN_TOKEN}"
    )
    assert config.server.admin_token == Secret(ADMIN_TOKEN)
    assert not [line for line in config.warnings if "admin" in line], config.warnings
    assert ADMIN_TOKEN not in repr(config.server)  # a config printed never shows it


def test_a_loopback_admin_port_needs_no_token(tmp_path: Path) -> None:
    config = load_with(tmp_path)
    assert config.server.admin_token is None
    assert not [line for line in config.warnings if "admin" in line], config.warnings


def test_an_admin_token_shorter_than_16_characters_is_an_error(tmp_path: Path) -> None:
    short = "fifteen-chars-x"
    (problem,) = problems_loading(tmp_path, admin_token=short)
    assert problem == "server.admin_token: must be at least 16 characters"
    assert short not in problem  # the problem is told, not the value
    assert load_with(tmp_path, admin_token=short + "y").server.admin_token == Secret(short + "y")


def test_metrics_need_token_without_a_token_is_an_error(tmp_path: Path) -> None:
    (problem,) = problems_loading(tmp_path, metrics_need_token=True)
    assert problem == "server.metrics_need_token: needs server.admin_token"


# -- pages, probes and metrics over HTTP --------------------------------------------------------


async def sent(site: Site, ymid: str) -> Reply:
    """A postback to the gateway serving on this loop (Site.send blocks: run it aside)."""
    return await asyncio.to_thread(site.send, ymid)


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one GET, redirects not followed."""
    async with http.get(url, headers=headers or {}, allow_redirects=False) as response:
        return response.status, dict(response.headers), await response.text()


async def post(
    http: aiohttp.ClientSession,
    url: str,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """One form POST, redirects not followed; the body is read."""
    async with http.post(url, data=form, headers=headers or {}, allow_redirects=False) as answer:
        await answer.read()
        return answer


async def test_pages_need_the_token_and_the_probes_do_not(
    http: aiohttp.ClientSession, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """A script without the token gets 401 (JSON, with a WWW-Authenticate challenge); a
    browser asking for a page is sent to the login page instead. Probes, the login page and
    the static files answer anyone. Every answer carries the CSP."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    assert (await sent(site, "seen-1")).outcome == "forwarded"

    status, headers, body = await get(http, site.url("/postbacks.json"))
    assert (status, json.loads(body)["error"]) == (
        401,
        "admin_token required: Authorization: Bearer TOKEN",
    )
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    assert "seen-1" not in body
    wrong = {"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)}
    assert (await get(http, site.url("/postbacks.json"), wrong))[0] == 401

    status, headers, _ = await get(http, site.url("/postbacks/1"), HTML)
    assert (status, headers["Location"]) == (303, "/login?next=/postbacks/1")

    status, _, body = await get(http, site.url("/postbacks.json"), BEARER)
    assert status == 200
    assert [row["ymid"] for row in json.loads(body)["rows"]] == ["seen-1"]

    for path in ("/healthz", "/readyz", "/login", "/static/inspector.js", "/metrics"):
        status, headers, _ = await get(http, site.url(path))
        assert status == 200, path
        assert "script-src 'self'" in headers["Content-Security-Policy"], path
    for path, asked in [("/", HTML), ("/queue", {}), ("/postbacks.json", BEARER)]:
        _, headers, _ = await get(http, site.url(path), asked)
        assert headers["Content-Security-Policy"].startswith("default-src 'none'"), path


async def test_metrics_need_the_token_when_configured(
    http: aiohttp.ClientSession, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    app = start_upstream()
    site = await start_site(tapper_config(app, metrics_need_token=True), app)

    status, headers, body = await get(http, site.url("/metrics"))
    assert status == 401 and "gateway_" not in body
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    status, _, body = await get(http, site.url("/metrics"), BEARER)
    assert status == 200 and "gateway_" in body
    assert (await get(http, site.url("/healthz")))[0] == 200
    assert (await get(http, site.url("/readyz")))[0] == 200


# -- signing in ---------------------------------------------------------------------------------


def session_cookie(answer: aiohttp.ClientResponse) -> tuple[str, str]:
    """The name and value the login's Set-Cookie gives, and that header as sent."""
    (header,) = answer.headers.getall("Set-Cookie")
    cookie = SimpleCookie(header)
    ((name, morsel),) = cookie.items()
    return f"{name}={morsel.value}", header


async def test_signing_in_sets_a_strict_http_only_cookie_that_is_not_the_token(
    http: aiohttp.ClientSession, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """The cookie a browser carries is HttpOnly (no script reads it) and SameSite=Strict (no
    other site sends it), and holds a digest, never the token; it opens the pages as the
    token does. A wrong token is a 401 page without a cookie; a sign-in posted from another
    site is refused; `next` only ever leads to this site."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    login = site.url("/login")

    answer = await post(http, login, {"token": ADMIN_TOKEN, "next": "/queue"})
    assert (answer.status, answer.headers["Location"]) == (303, "/queue")
    cookie, header = session_cookie(answer)
    attributes = [part.strip().lower() for part in header.split(";")[1:]]
    assert "httponly" in attributes and "samesite=strict" in attributes, header
    assert "path=/" in attributes, header
    assert cookie.startswith("gateway_admin=")
    assert ADMIN_TOKEN not in header
    status, _, _ = await get(http, site.url("/postbacks.json"), {"Cookie": cookie})
    assert status == 200
    forged = {"Cookie": "gateway_admin=" + ADMIN_TOKEN}
    assert (await get(http, site.url("/postbacks.json"), forged))[0] == 401

    answer = await post(http, login, {"token": "wrong-" + ADMIN_TOKEN, "next": "/"})
    assert answer.status == 401
    assert 'id="login-problem"' in await answer.text()
    assert "Set-Cookie" not in answer.headers

    from_elsewhere = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    answer = await post(http, login, {"token": ADMIN_TOKEN}, from_elsewhere)
    assert answer.status == 403 and "Set-Cookie" not in answer.headers

    for elsewhere in ("//evil.example/", "https://evil.example/", "evil"):
        answer = await post(http, login, {"token": ADMIN_TOKEN, "next": elsewhere})
        assert (answer.status, answer.headers["Location"]) == (303, "/"), elsewhere

    answer = await post(http, site.url("/logout"), {}, {"Cookie": cookie})
    assert (answer.status, answer.headers["Location"]) == (303, "/login")
    (removal,) = answer.headers.getall("Set-Cookie")
    assert removal.startswith('gateway_admin=""') and "Max-Age=0" in removal, removal


async def test_a_sign_in_posted_by_the_login_page_itself_is_accepted(
    http: aiohttp.ClientSession, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """What Chromium sends when the login form is submitted: `Sec-Fetch-Site: same-origin`,
    and `Origin: null`, because the page's `Referrer-Policy: no-referrer` makes a browser
    hide the origin of its POSTs. That is the inspector's own page and must be let in;
    `Origin: null` from another site, or from no browser that says where it is, must not."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    form = {"token": ADMIN_TOKEN, "next": "/"}

    _, headers, _ = await get(http, site.url("/login"))
    assert headers["Referrer-Policy"] == "no-referrer"
    own_page = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    answer = await post(http, site.url("/login"), form, own_page)
    assert (answer.status, answer.headers.get("Location")) == (303, "/"), await answer.text()

    for elsewhere in ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        answer = await post(http, site.url("/login"), form, elsewhere)
        assert answer.status == 403, elsewhere


# -- re-driving dead letters --------------------------------------------------------------------


async def site_with_a_dead_letter(
    start_upstream: UpstreamFactory, start_site: SiteFactory, tmp_path: Path, token: bool
) -> tuple[Site, RecordingUpstream]:
    """A queued route whose app refused the one postback (500, max_attempts 1)."""
    app = start_upstream(default=500)
    site = await start_site(queued_config(app, tmp_path / "gw.db", token, max_attempts=1), app)
    assert (await sent(site, "stuck-1")).outcome == "queued"
    await eventually_async(lambda: [r.answered for r in app.received] == [500])
    return site, app


async def dead_ymids(http: aiohttp.ClientSession, site: Site) -> list[str]:
    """The ymids the queue page lists as dead letters."""
    _, _, page = await get(http, site.url("/queue"), BEARER)
    dead = page.partition('<table id="dead">')[2].partition("</table>")[0]
    return re.findall(r'<td class="ymid">([^<]*)</td>', dead)


async def form_token_of(
    http: aiohttp.ClientSession, site: Site, headers: dict[str, str] = BEARER
) -> str:
    """The form token the queue page gives whoever sends `headers` (a token, a session)."""
    _, _, page = await get(http, site.url("/queue"), headers)
    found = FORM_TOKEN.search(page)
    assert found, page
    return found.group(1)


async def test_re_driving_needs_the_token_the_form_field_and_the_same_site(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """POST /queue/retry without the token: 401; with it but without the queue page's form
    field, or with a wrong one: 403; with both but from another site: 403. Each refusal
    leaves the dead letter dead; the same POST from the page's own site re-drives it."""
    site, app = await site_with_a_dead_letter(start_upstream, start_site, tmp_path, token=True)
    retry = site.url("/queue/retry")
    field = await form_token_of(http, site)
    assert ADMIN_TOKEN not in field
    form = {"form_token": field, "event_id": ""}
    own_site = {"Origin": site.admin, "Sec-Fetch-Site": "same-origin", **BEARER}

    refusals = [
        (form, {}, 401),
        ({"event_id": ""}, own_site, 403),
        ({**form, "form_token": "0" * len(field)}, own_site, 403),
        (form, {**BEARER, "Origin": "https://evil.example"}, 403),
        (form, {**BEARER, "Sec-Fetch-Site": "cross-site"}, 403),
        (form, {**BEARER, "Sec-Fetch-Site": "same-site"}, 403),  # a sibling subdomain
    ]
    for refused, headers, status in refusals:
        answer = await post(http, retry, refused, headers)
        assert answer.status == status, (refused, headers, await answer.text())
        assert await dead_ymids(http, site) == ["stuck-1"]

    app.default = 200
    answer = await post(http, retry, form, own_site)
    assert answer.status == 303
    assert answer.headers["Location"] == "/queue?done=1"
    await eventually_async(lambda: [r.answered for r in app.received] == [500, 200])
    assert await dead_ymids(http, site) == []


async def test_the_queue_page_shows_no_text_from_a_link_and_refuses_odd_event_ids(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """`done` after a re-drive is a count: text put in a link (phishing wording, markup) is
    not shown. An event id that is not a short run of ASCII digits is a 400, not a crash in
    the store (Arabic-Indic digits pass str.isdigit; 30 digits overflow SQLite's integer)."""
    site, _ = await site_with_a_dead_letter(start_upstream, start_site, tmp_path, token=True)
    _, _, page = await get(http, site.url("/queue?done=Call+support+at+evil.example"), BEARER)
    assert "evil.example" not in page and 'id="done"' not in page and "stuck-1" in page
    _, _, page = await get(http, site.url("/queue?done=3"), BEARER)
    assert "3 delivery(ies) pending again" in page

    field = await form_token_of(http, site)
    own_site = {"Origin": site.admin, "Sec-Fetch-Site": "same-origin", **BEARER}
    for odd in ("\u0661\u0662", "9" * 30, "-1", "1e3"):
        form = {"form_token": field, "event_id": odd}
        answer = await post(http, site.url("/queue/retry"), form, own_site)
        assert answer.status == 400, (odd, await answer.text())
    assert await dead_ymids(http, site) == ["stuck-1"]


async def test_without_a_token_actions_still_need_the_form_field_and_the_same_site(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """On a loopback admin port without a token the pages are open, but another site still
    cannot make a browser there press Re-drive: the form field is signed with a key of the
    process, and cross-site posts are refused."""
    site, app = await site_with_a_dead_letter(start_upstream, start_site, tmp_path, token=False)
    assert (await get(http, site.url("/"), HTML))[0] == 200
    retry = site.url("/queue/retry")
    field = await form_token_of(http, site)

    for refused, headers in [
        ({"event_id": ""}, {}),
        ({"form_token": field}, {"Origin": "http://evil.example"}),
        ({"form_token": field}, {"Sec-Fetch-Site": "cross-site"}),
    ]:
        answer = await post(http, retry, refused, headers)
        assert answer.status == 403, (refused, headers)
    assert await dead_ymids(http, site) == ["stuck-1"]

    app.default = 200
    assert (await post(http, retry, {"form_token": field}, {"Origin": site.admin})).status == 303
    await eventually_async(lambda: len(app.received) == 2)


# -- the log ------------------------------------------------------------------------------------


class Process:
    """`python -m gateway run` with a token from the environment, its log at DEBUG."""

    def __init__(self, tmp_path: Path, app: RecordingUpstream) -> None:
        settings = server_settings(reload_interval=0)
        self.admin_port = int(settings["admin_listen"].rpartition(":")[2])
        self.public_port = int(settings["listen"].rpartition(":")[2])
        config = tmp_path / "gateway.yaml"
        text = gateway_config(
            upstream(app.url, retries=0), server=settings, logging={"level": "DEBUG"}
        )
        config.write_text(text, encoding="utf-8")
        self.stdout, self.stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
        env = command_env(SECRET, **ADMIN_ENV)
        self.process = spawn_gateway(config, env, self.stdout, self.stderr)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail("gateway exited: " + self.stderr.read_text(encoding="utf-8"))
        try:
            return http_get(self.admin_port, "/readyz", timeout=1).status == 200
        except OSError:
            return False

    def request(
        self, method: str, path: str, body: str | None = None, **headers: str
    ) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def log(self) -> str:
        return self.stdout.read_text(encoding="utf-8") + self.stderr.read_text(encoding="utf-8")


@pytest.fixture
def process(tmp_path: Path, start_upstream: UpstreamFactory) -> Iterator[Process]:
    running = Process(tmp_path, start_upstream())
    try:
        eventually(running.ready, 15, interval=0.1, explain=running.log)
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
        running.process.wait(timeout=10)


@pytest.mark.process
def test_the_token_and_its_digests_never_reach_the_log(process: Process) -> None:
    """Signing in wrongly and rightly, scripts with and without the bearer token, nearly right
    credentials, refused actions: the log (at DEBUG) tells of them, and never holds the
    token nor a digest made from it (the session cookie, the form field)."""
    login = urlencode({"token": ADMIN_TOKEN, "next": "/"})
    answer = process.request("POST", "/login", login)
    assert answer.status == 303
    cookie = answer.headers["Set-Cookie"].partition(";")[0]
    assert process.request("POST", "/login", "token=wrong-" + ADMIN_TOKEN).status == 401
    assert process.request("GET", "/postbacks.json").status == 401
    assert process.request("GET", "/postbacks.json", **BEARER).status == 200
    assert process.request("GET", "/", Cookie=cookie).status == 200
    page = http_get(process.admin_port, "/postbacks")  # no token: refused, not shown
    assert page.status == 401
    # nearly right is refused too: a log of what was sent would hold the real ones
    nearly = {"Authorization": f"Bearer {ADMIN_TOKEN}x", "Cookie": f"{cookie}x"}
    assert process.request("GET", "/postbacks.json", **nearly).status == 401
    refused = process.request("POST", "/queue/retry", "form_token=0", Cookie=cookie)
    assert refused.status == 403
    postback = f"/postback/tapper?uid=u1&event=click&token={SECRET}"
    assert http_get(process.public_port, postback).status == 200

    process.process.terminate()
    assert process.process.wait(timeout=10) == 0
    log = process.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    messages = {line["message"] for line in lines}
    assert "admin token refused; more refusals are summed up once a minute" in messages, messages
    assert "admin request refused: not signed in" in messages, messages
    assert "inspector action refused: cross-site or without the form token" in messages
    for secret in (ADMIN_TOKEN, cookie.partition("=")[2], SECRET):
        assert secret not in log
    assert not re.search(r"[0-9a-f]{64}", log), "a digest in the log"


# -- the Host: DNS rebinding ------------------------------------------------------------------


async def raw_exchange(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """`request`'s bytes to the port, and everything that comes back until the close."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def answered(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines)
    headers = {name.lower(): value.strip() for name, _, value in fields}
    return status_line, headers, body


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        pytest.param("127.0.0.1:{port}", True, id="loopback-address"),
        pytest.param("localhost:{port}", True, id="localhost"),
        pytest.param("[::1]:{port}", True, id="ipv6-loopback"),
        pytest.param("10.1.2.3:{port}", True, id="another-address-a-probe-uses"),
        pytest.param("gateway-admin.internal:{port}", True, id="a-listed-name"),
        pytest.param("GATEWAY-ADMIN.internal.", True, id="a-listed-name-any-case-trailing-dot"),
        pytest.param("evil.example:{port}", False, id="a-rebound-name"),
        pytest.param("evil.example", False, id="a-rebound-name-without-port"),
        pytest.param("localhost.evil.example:{port}", False, id="localhost-as-a-label"),
        pytest.param("127.0.0.1.evil.example", False, id="an-address-as-a-label"),
        pytest.param("127.0.0.1:{port}@evil.example", False, id="userinfo-trick"),
        pytest.param("[::1", False, id="an-open-bracket"),
    ],
)
async def test_the_admin_port_answers_only_to_its_own_names(
    host: str, allowed: bool, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """A page on evil.example that rebinds its name to 127.0.0.1 makes the browser send
    `Host: evil.example`: refused before the token, the probes or anything else is looked at,
    with the token too. Before: it read /postbacks.json (ymids, telegram_ids) with no token."""
    app = start_upstream()
    site = await start_site(tapper_config(app, admin_hosts=["gateway-admin.internal"]), app)
    assert (await sent(site, "private-ymid")).outcome == "forwarded"
    named = host.format(port=site.admin_port)

    for path, headers in [
        ("/postbacks.json", f"Authorization: Bearer {ADMIN_TOKEN}\r\n"),
        ("/healthz", ""),
        ("/queue", ""),
    ]:
        request = f"GET {path} HTTP/1.1\r\nHost: {named}\r\n{headers}Connection: close\r\n\r\n"
        status_line, _, body = answered(await raw_exchange(site.admin_port, request.encode()))
        if allowed:
            assert " 421 " not in status_line, (path, status_line)
        else:
            assert status_line == "HTTP/1.1 421 Misdirected Request", (path, status_line)
            assert b"private-ymid" not in body and b"form_token" not in body


# -- where a sign-in leads: never another site -------------------------------------------------


@pytest.mark.parametrize(
    "elsewhere",
    [
        "/\t/evil.example/",  # the URL parser drops the tab: //evil.example/
        "/\n/evil.example/",
        "/\r/evil.example/",
        "/\\evil.example/",  # a backslash is a slash to a browser
        "\\/evil.example/",
        "/\\\\evil.example",
        " //evil.example/",
        "\x00//evil.example",
        "//evil.example/",
        "https://evil.example/",
        "https:evil.example",
        "evil.example",
        "/\x7fx",
    ],
)
async def test_a_sign_in_never_leads_to_another_site(
    elsewhere: str,
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
) -> None:
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    answer = await post(http, site.url("/login"), {"token": ADMIN_TOKEN, "next": elsewhere})
    assert (answer.status, answer.headers["Location"]) == (303, "/"), repr(elsewhere)
    status, _, page = await get(http, site.url("/login?" + urlencode({"next": elsewhere})))
    assert status == 200 and 'name="next" value="/"' in page, repr(elsewhere)


async def test_a_sign_in_still_returns_to_the_page_asked_for(
    http: aiohttp.ClientSession, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    for target in ("/queue", "/postbacks?route=tapper&outcome=forwarded", "/postbacks/7"):
        answer = await post(http, site.url("/login"), {"token": ADMIN_TOKEN, "next": target})
        assert (answer.status, answer.headers["Location"]) == (303, target)


# -- guessing the token -----------------------------------------------------------------------


async def test_guessing_the_token_is_slowed_down_per_address_and_said_once(
    start_upstream: UpstreamFactory, start_site: SiteFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: 7,320 wrong sign-ins in 5 s, each logged. Now a few wrong tokens are free, then
    the address waits (429, Retry-After), at /login and with Bearer alike, even for the right
    token; another address signs in; the log says it once, the metric counts every one."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    wrong = {"token": "wrong-" + ADMIN_TOKEN, "next": "/"}
    local = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=local) as guesser,
        aiohttp.ClientSession(connector=other) as operator,
    ):
        statuses = [(await post(guesser, site.url("/login"), wrong)).status for _ in range(40)]
        bearer_wrong = {"Authorization": "Bearer wrong-" + ADMIN_TOKEN}
        statuses += [
            (await get(guesser, site.url("/postbacks.json"), bearer_wrong))[0] for _ in range(40)
        ]
        right_from_here = await post(guesser, site.url("/login"), {"token": ADMIN_TOKEN})
        right_bearer_here = await get(guesser, site.url("/postbacks.json"), BEARER)
        right_from_there = await post(operator, site.url("/login"), {"token": ADMIN_TOKEN})

    assert statuses[:5] == [401] * 5
    assert set(statuses[6:]) == {429}, statuses
    assert right_from_here.status == 429 and int(right_from_here.headers["Retry-After"]) >= 1
    assert right_bearer_here[0] == 429
    assert right_from_there.status == 303  # the right token keeps working elsewhere
    refused = [r for r in caplog.records if "admin token refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    scraped = generate_latest(site_metrics(site)).decode()
    assert metric_sum(scraped, "gateway_admin_refusals_total", reason="wrong_token") >= 6
    locked = metric_sum(scraped, "gateway_admin_refusals_total", reason="locked_out")
    assert locked >= 70


# -- sessions ----------------------------------------------------------------------------------


async def signed_in_cookie(http: aiohttp.ClientSession, site: Site) -> str:
    answer = await post(http, site.url("/login"), {"token": ADMIN_TOKEN, "next": "/"})
    assert answer.status == 303
    return session_cookie(answer)[0]


async def test_each_sign_in_is_its_own_session_ended_by_sign_out(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """Before: the cookie was HMAC(token, "session"), the same for every sign-in, valid
    forever, even after sign-out; the form token one value for all. Now each sign-in gets a
    random session with its own form token, and signing out ends it (only it)."""
    site, _ = await site_with_a_dead_letter(start_upstream, start_site, tmp_path, token=True)
    first, second = await signed_in_cookie(http, site), await signed_in_cookie(http, site)
    assert first != second
    assert await form_token_of(http, site, {"Cookie": first}) != await form_token_of(
        http, site, {"Cookie": second}
    )
    own_page = {"Origin": site.admin, "Sec-Fetch-Site": "same-origin"}
    others_field = {"form_token": await form_token_of(http, site, {"Cookie": second})}
    answer = await post(http, site.url("/queue/retry"), others_field, {"Cookie": first, **own_page})
    assert answer.status == 403  # one session's form token is not another's

    answer = await post(http, site.url("/logout"), {}, {"Cookie": first, **own_page})
    assert answer.status == 303
    assert (await get(http, site.url("/postbacks.json"), {"Cookie": first}))[0] == 401
    assert (await get(http, site.url("/postbacks.json"), {"Cookie": second}))[0] == 200


@pytest.mark.process
@pytest.mark.slow
async def test_a_session_ends_at_its_expiry_and_when_the_token_changes(
    http: aiohttp.ClientSession, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    app = start_upstream()
    site = await start_site(tapper_config(app, admin_session_ttl="1s"), app)
    expiring = await signed_in_cookie(http, site)
    _, header = session_cookie(await post(http, site.url("/login"), {"token": ADMIN_TOKEN}))
    assert "max-age=1" in header.lower()  # the browser forgets it too

    async def refused() -> bool:
        return (await get(http, site.url("/postbacks.json"), {"Cookie": expiring}))[0] == 401

    await eventually_async(refused, timeout=5)

    lasting = await start_site(tapper_config(app), app)
    cookie = await signed_in_cookie(http, lasting)
    assert (await get(http, lasting.url("/postbacks.json"), {"Cookie": cookie}))[0] == 200
    runtime = site_runtime(lasting)
    rotated = parse_config(
        tapper_config(app).replace("${ADMIN_TOKEN}", "a-brand-new-token-0123456789"),
        {"MONETAG_SECRET": SECRET, **ADMIN_ENV},
    )
    await runtime.apply(rotated)
    assert (await get(http, lasting.url("/postbacks.json"), {"Cookie": cookie}))[0] == 401


# -- what is not HTTP, and HTTP that is not 1.x ------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /?<script>x</script> HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
            id="header-without-colon",
        ),
        pytest.param(
            b"GET /<script>alert(1)</script>\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            id="control-byte-in-the-target",
        ),
        pytest.param(b"G<script>ET / HTTP/1.1\r\nHost: a\r\n\r\n", id="markup-in-the-method"),
    ],
)
async def test_what_is_not_http_on_the_admin_port_is_answered_without_an_echo(
    request_bytes: bytes, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """Before: aiohttp's own 400 quoted the request's bytes back as text/plain, with no CSP
    and no nosniff. Now the public port's way: JSON naming the problem, the pages' headers."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    status_line, headers, body = answered(await raw_exchange(site.admin_port, request_bytes))

    assert " 400 " in status_line, status_line
    assert headers["content-type"].startswith("application/json")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert b"script" not in body and b"<" not in body
    assert json.loads(body)["error"] == "malformed request"


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
async def test_versions_other_than_1_0_and_1_1_are_answered_505_in_1_1(
    version: str, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """Before: `GET / HTTP/2.0` was answered `HTTP/2.0 200 OK`."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    public = site.config.server.listen.port
    query = f"uid=u1&event=click&zone=1&token={SECRET}"
    for port, path in ((public, f"/postback/tapper?{query}"), (site.admin_port, "/healthz")):
        request = f"GET {path} {version}\r\nHost: 127.0.0.1\r\n\r\n".encode()
        status_line, _, body = answered(await raw_exchange(port, request))
        assert status_line == "HTTP/1.1 505 HTTP Version Not Supported", (port, status_line)
        assert json.loads(body)["problem"] == "http_version"
    assert app.received == []


def site_runtime(site: Site) -> Runtime:
    runtime = site.runtime
    assert runtime is not None
    return runtime


def site_metrics(site: Site) -> CollectorRegistry:
    return site_runtime(site).metrics.registry
