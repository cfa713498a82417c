"""Reward sessions over real sockets: a ymid issued to the Telegram user the Mini App's
initData proves, paid once per event type, and every other ymid refused with its reason; the
CORS rules and rate limits of the issuing endpoint; the status a frontend waits on; the
postbacks that never came. Each on both stores where the store is the subject."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

import aiohttp
import pytest

from gateway.history.search import Search
from gateway.history.trace import user_trace
from gateway.runtime import Runtime
from gateway.sessions.ymid import YmidSigner
from tests.conftest import GatewayFactory, RunningGateway, Sender
from tests.support.gatewayconfig import gateway_config
from tests.support.inspectorsite import server_settings, start_site
from tests.support.processes import SECRET
from tests.support.sessionsconfig import (
    ORIGIN,
    OTHER_SIGNING_KEY,
    SESSIONS_ENV,
    SIGNING_KEY,
    sessions_config,
    sessions_route,
)
from tests.support.telegram import OTHER_BOT_TOKEN, TEST_BOT_TOKEN, signed_init_data
from tests.support.upstream import RecordingUpstream
from tests.support.waiting import eventually_async
from tests.test_inspector_access import BEARER

__all__ = ["start_site"]  # a fixture, used by name

USER = 424242
OTHER_USER = 515151


class Serving(Protocol):
    """A gateway's public port and its runtime: in this process (start_gateway, start_site)."""

    url: str
    runtime: Runtime

    def postback_url(self, path: str = "/postback/tapper") -> str: ...


@dataclass
class PublicPort:
    url: str
    runtime: Runtime

    def postback_url(self, path: str = "/postback/tapper") -> str:
        return self.url + path


def init_data(user: int | None = USER, age: float = 0, bot_token: str | None = None) -> str:
    auth_date = int(time.time() - age)
    if bot_token is None:
        return signed_init_data(user, auth_date)
    return signed_init_data(user, auth_date, bot_token)


async def ask(
    http: aiohttp.ClientSession,
    gateway: Serving,
    body: Any,
    origin: str | None = ORIGIN,
    path: str = "/ymid/tapper",
) -> tuple[int, dict[str, Any], Any]:
    """POST for a ymid: (status, the answer's headers, its JSON)."""
    headers = {"Origin": origin} if origin is not None else {}
    async with http.post(gateway.url + path, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


async def issue(http: aiohttp.ClientSession, gateway: Serving, placement: str | None = None) -> str:
    body = {"init_data": init_data(), **({"placement": placement} if placement else {})}
    status, _, answer = await ask(http, gateway, body)
    assert status == 200, answer
    ymid: str = answer["ymid"]
    return ymid


async def postback(
    http: aiohttp.ClientSession,
    gateway: Serving,
    ymid: str,
    event: str = "click",
    **extra: str,
) -> tuple[int, str]:
    params = {"uid": ymid, "event": event, "zone": "42", "token": SECRET, **extra}
    async with http.get(gateway.postback_url(), params=params) as response:
        return response.status, response.headers["X-Gateway-Outcome"]


async def status(
    http: aiohttp.ClientSession, gateway: Serving, ymid: str, wait: str | None = None
) -> tuple[int, dict[str, Any]]:
    params = {"wait": wait} if wait else {}
    url = f"{gateway.url}/ymid/tapper/{ymid}"
    async with http.get(url, params=params, headers={"Origin": ORIGIN}) as response:
        return response.status, await response.json()


def metric(gateway: Serving, name: str, **labels: str) -> float:
    value = gateway.runtime.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def start(
    start_gateway: GatewayFactory, app: RecordingUpstream, store: str | Path, **sessions: Any
) -> RunningGateway:
    return await start_gateway(sessions_config(app.url, store, **sessions), env=SESSIONS_ENV)


def signed(
    user: int,
    expires: float,
    key: str = SIGNING_KEY,
    placement: str | None = None,
    route: str = "tapper",
) -> str:
    """A ymid as the gateway would sign it for the route, with an expiry of the test's choosing."""
    signer = YmidSigner([key.encode()], context=route)
    return signer.issue(user, expires=int(expires), request_var=placement)


# -- issued and paid once ----------------------------------------------------------------------


async def test_an_issued_ymid_pays_once_per_event_type_to_the_verified_user(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, store_at
) -> None:
    app = start_upstream()
    gateway = await start(start_gateway, app, store_at)
    ymid = await issue(http, gateway)
    assert len(ymid) == 46

    assert await postback(http, gateway, ymid) == (200, "forwarded")
    assert await postback(http, gateway, ymid) == (200, "duplicate")
    assert await postback(http, gateway, ymid, "impression") == (200, "forwarded")
    assert await postback(http, gateway, ymid, "impression") == (200, "duplicate")

    assert len(app.received) == 2
    # the app is told the user the initData proved, under the name its rename gives
    assert {request.query["user_id"] for request in app.received} == {str(USER)}
    assert metric(gateway, "gateway_ymids_issued_total", route="tapper", placement="") == 1
    verified = {"route": "tapper", "result": "verified", "mode": "enforce"}
    assert metric(gateway, "gateway_ymid_checks_total", **verified) == 4


async def test_a_ymid_placed_for_one_placement_pays_only_there(
    start_upstream, start_gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    app = start_upstream()
    gateway = await start(start_gateway, app, tmp_path / "gw.db", placements=["level_end"])
    ymid = await issue(http, gateway, placement="level_end")
    assert len(ymid) == 51
    assert await postback(http, gateway, ymid, placement="shop") == (403, "rejected")
    assert await postback(http, gateway, ymid) == (403, "rejected")  # no placement at all
    assert await postback(http, gateway, ymid, placement="level_end") == (200, "forwarded")
    mismatch = {"route": "tapper", "result": "placement_mismatch", "mode": "enforce"}
    assert metric(gateway, "gateway_ymid_checks_total", **mismatch) == 2
    status_code, _, answer = await ask(
        http, gateway, {"init_data": init_data(), "placement": "not-listed"}
    )
    assert (status_code, answer["error"]) == (400, "placement_unknown")


# -- ymids that do not pay ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: "user-1", "ymid_not_issued"),  # what a legacy frontend sends
        (lambda: signed(USER, time.time() + 600, OTHER_SIGNING_KEY), "ymid_not_issued"),
        (lambda: _altered(signed(USER, time.time() + 600)), "ymid_forged"),
        (lambda: signed(USER, time.time() - 1), "ymid_expired"),
    ],
    ids=["plain-text", "another-key", "altered", "expired"],
)
async def test_a_ymid_not_issued_here_or_no_longer_valid_is_refused_with_its_reason(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path, make, reason: str
) -> None:
    app = start_upstream()
    gateway = await start(start_gateway, app, tmp_path / "gw.db")
    assert await postback(http, gateway, make()) == (403, "rejected")
    assert app.received == []
    assert metric(gateway, "gateway_rejections_total", route="tapper", reason=reason) == 1
    refused = {"route": "tapper", "result": reason, "mode": "enforce"}
    assert metric(gateway, "gateway_ymid_checks_total", **refused) == 1


def _altered(ymid: str) -> str:
    """One character of the user id changed: still our shape, no longer our signature."""
    index = 3
    swapped = "A" if ymid[index] != "A" else "B"
    return ymid[:index] + swapped + ymid[index + 1 :]


async def test_monetags_telegram_id_must_be_the_bound_user(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path
) -> None:
    app = start_upstream()
    gateway = await start(start_gateway, app, tmp_path / "gw.db")
    ymid = await issue(http, gateway)
    assert await postback(http, gateway, ymid, user=str(OTHER_USER)) == (403, "rejected")
    assert await postback(http, gateway, ymid, user=str(USER)) == (200, "forwarded")
    assert (
        metric(gateway, "gateway_rejections_total", route="tapper", reason="telegram_id_mismatch")
        == 1
    )


async def test_log_only_lets_a_refused_ymid_in_and_counts_it(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path
) -> None:
    app = start_upstream()
    gateway = await start(start_gateway, app, tmp_path / "gw.db", mode="log_only")
    assert await postback(http, gateway, "user-1") == (200, "forwarded")
    assert app.received[0].query["ymid"] == "user-1"
    assert "user_id" not in app.received[0].query  # nothing verified to pass on
    let_in = {"route": "tapper", "result": "ymid_not_issued", "mode": "log_only"}
    assert metric(gateway, "gateway_ymid_checks_total", **let_in) == 1
    (line,) = [r for r in gateway.runtime.journal.recent() if r.record.route == "tapper"]
    assert "log_only" in (line.record.detail or "")


# -- who may ask for a ymid ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"init_data": init_data(age=7200)}, "init_data_expired"),
        ({"init_data": init_data(bot_token=OTHER_BOT_TOKEN)}, "init_data_forged"),
        ({"init_data": init_data().replace(str(USER), str(OTHER_USER))}, "init_data_forged"),
        ({"init_data": init_data(user=None)}, "init_data_no_user"),
        ({"init_data": "not init data"}, "init_data_malformed"),
        ({"initData": "x"}, "body_invalid"),
        ("just text", "body_invalid"),
    ],
    ids=["stale", "another-bot", "tampered", "no-user", "garbage", "wrong-key", "not-an-object"],
)
async def test_initdata_that_proves_no_user_gets_no_ymid(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path, body: Any, reason: str
) -> None:
    gateway = await start(start_gateway, start_upstream(), tmp_path / "gw.db")
    status_code, headers, answer = await ask(http, gateway, body)
    assert status_code in (400, 403)
    assert answer["error"] == reason
    assert headers["Access-Control-Allow-Origin"] == ORIGIN  # the page can read why
    refused = {"route": "tapper", "reason": reason}
    assert metric(gateway, "gateway_ymid_requests_refused_total", **refused) == 1
    assert metric(gateway, "gateway_ymids_issued_total", route="tapper", placement="") == 0


async def test_a_body_that_arrives_in_pieces_is_read_whole_and_a_large_one_refused(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path
) -> None:
    gateway = await start(start_gateway, start_upstream(), tmp_path / "gw.db")
    port = int(gateway.url.rsplit(":", 1)[1])
    body = json.dumps({"init_data": init_data()}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /ymid/tapper HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
    )
    for piece in (body[:20], body[20:]):  # two chunks, the second after the first is read
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"ymid":' in answer

    huge = {"init_data": "x" * 20_000}
    status_code, _, answer_json = await ask(http, gateway, huge)
    assert (status_code, answer_json["error"]) == (413, "body_too_large")


async def test_no_secret_or_initdata_reaches_a_log_line_or_an_answer(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path, capsys, caplog
) -> None:
    caplog.set_level(logging.INFO)
    gateway = await start(start_gateway, start_upstream(), tmp_path / "gw.db")
    good, forged = init_data(), init_data(bot_token=OTHER_BOT_TOKEN)
    answers = [await ask(http, gateway, {"init_data": data}) for data in (good, forged)]
    ymid = answers[0][2]["ymid"]
    assert await postback(http, gateway, ymid) == (200, "forwarded")
    assert (await postback(http, gateway, _altered(ymid)))[0] == 403
    lines = "".join(str(vars(record)) for record in caplog.records)  # messages and extras
    shown = lines + capsys.readouterr().out + json.dumps([answer for *_, answer in answers])
    assert "ymid issued" in shown and "ymid request refused" in shown  # the lines were there
    hashes = [dict(parse_qsl(data))["hash"] for data in (good, forged)]
    for secret in (TEST_BOT_TOKEN, SIGNING_KEY, SECRET, *hashes):
        assert secret not in shown


async def test_only_listed_origins_get_cors_and_a_preflight(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path
) -> None:
    gateway = await start(start_gateway, start_upstream(), tmp_path / "gw.db")
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    async with http.options(gateway.url + "/ymid/tapper", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert response.headers["Access-Control-Allow-Methods"] == "POST"
        assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    stranger = {**preflight, "Origin": "https://evil.example"}
    async with http.options(gateway.url + "/ymid/tapper", headers=stranger) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers

    status_code, headers, answer = await ask(
        http, gateway, {"init_data": init_data()}, origin="https://evil.example"
    )
    assert (status_code, answer["error"]) == (403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in headers
    status_code, headers, _ = await ask(http, gateway, {"init_data": init_data()})
    assert status_code == 200
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Vary"] == "Origin" and headers["Cache-Control"] == "no-store"


async def test_ymids_are_rate_limited_per_user_and_per_address(
    start_upstream, start_gateway: GatewayFactory, sender: Sender, tmp_path: Path
) -> None:
    gateway = await start(
        start_gateway,
        start_upstream(),
        tmp_path / "gw.db",
        per_user_per_minute=2,
        per_address_per_minute=3,
    )
    first, second = sender("127.0.0.21"), sender("127.0.0.22")
    for _ in range(2):
        assert (await ask(first, gateway, {"init_data": init_data()}))[0] == 200
    status_code, headers, answer = await ask(first, gateway, {"init_data": init_data()})
    assert (status_code, answer["error"]) == (429, "rate_limited_user")
    assert int(headers["Retry-After"]) >= 1
    # the same user from another address is still the same user
    assert (await ask(second, gateway, {"init_data": init_data()}))[2]["error"] == (
        "rate_limited_user"
    )
    # a fourth request from the first address is refused before its initData is read
    status_code, _, answer = await ask(first, gateway, {"init_data": init_data(OTHER_USER)})
    assert (status_code, answer["error"]) == (429, "rate_limited_address")
    assert (await ask(second, gateway, {"init_data": init_data(OTHER_USER)}))[0] == 200


# -- the status a frontend waits on -------------------------------------------------------------


async def test_status_goes_from_pending_to_rewarded_and_a_waiting_frontend_hears_it(
    start_upstream, start_gateway: GatewayFactory, http, store_at
) -> None:
    app = start_upstream()
    gateway = await start(start_gateway, app, store_at)
    ymid = await issue(http, gateway)
    code, answer = await status(http, gateway, ymid)
    assert (code, answer["ymid"], answer["state"]) == (200, ymid, "pending")
    assert answer["expires"] > time.time()

    waiting = asyncio.create_task(status(http, gateway, ymid, wait="20s"))
    await eventually_async(lambda: metric(gateway, "gateway_ymid_status_waiting") == 1)
    assert not waiting.done()
    assert await postback(http, gateway, ymid, "impression") == (200, "forwarded")
    code, answer = await asyncio.wait_for(waiting, 10)
    assert code == 200
    assert (answer["state"], answer["event_type"]) == ("rewarded", "impression")
    assert answer["at"] <= time.time()
    assert metric(gateway, "gateway_ymid_status_waiting") == 0


async def test_status_says_refused_with_the_reason_and_expired_when_nothing_came(
    start_upstream, start_gateway: GatewayFactory, http, tmp_path: Path
) -> None:
    app = start_upstream(default=400)  # the app says no
    gateway = await start(start_gateway, app, tmp_path / "gw.db")
    ymid = await issue(http, gateway)
    assert (await postback(http, gateway, ymid, user=str(OTHER_USER)))[0] == 403
    code, answer = await status(http, gateway, ymid, wait="10s")
    assert (answer["state"], answer["reason"]) == ("refused", "telegram_id_mismatch")
    assert (await postback(http, gateway, ymid))[0] == 400
    code, answer = await status(http, gateway, ymid)
    assert (answer["state"], answer["reason"]) == ("refused", "telegram_id_mismatch")

    expired = signed(USER, time.time() - 5)
    assert (await status(http, gateway, expired))[1]["state"] == "expired"
    code, answer = await status(http, gateway, _altered(expired))
    assert (code, answer["error"]) == (404, "ymid_forged")
    code, answer = await status(http, gateway, ymid, wait="soon")
    assert (code, answer["error"]) == (400, "wait_invalid")


async def test_a_queued_ymid_is_rewarded_once_the_app_has_it(
    start_upstream, start_gateway: GatewayFactory, http, store_at
) -> None:
    app = start_upstream()
    gateway = await start_gateway(
        sessions_config(app.url, store_at, delivery="queued"), env=SESSIONS_ENV
    )
    ymid = await issue(http, gateway)
    assert await postback(http, gateway, ymid) == (200, "queued")
    # queued is still pending: rewarded once the delivery to the app is recorded
    code, answer = await status(http, gateway, ymid, wait="20s")
    assert (code, answer["state"]) == (200, "rewarded")
    assert app.received[0].query["user_id"] == str(USER)


# -- postbacks that never came ------------------------------------------------------------------


async def test_an_issued_ymid_without_a_postback_counts_as_no_postback_once(
    start_upstream, start_gateway: GatewayFactory, http, store_at
) -> None:
    app = start_upstream()
    gateway = await start(start_gateway, app, store_at, no_postback_after="1s", placements=["shop"])
    paid = await issue(http, gateway, placement="shop")
    missed = await issue(http, gateway, placement="shop")
    assert await postback(http, gateway, paid, placement="shop") == (200, "forwarded")
    no_postback = {"route": "tapper", "placement": "shop"}
    await eventually_async(
        lambda: metric(gateway, "gateway_ymids_no_postback_total", **no_postback) >= 1, 15
    )
    history = gateway.runtime.history
    assert history is not None
    await history.flush()
    lines = await history.store.search(Search(ymid=missed))
    assert [line.outcome for line in lines] == ["no_postback"]
    trace = await user_trace(history.store, telegram_id=None, ymid=missed, since=0, window="ever")
    assert trace is not None
    assert "no postback came for the ymid issued at" in trace.verdict
    assert await history.sweep({"tapper": 1.0}) == 0  # marked once: the next sweep finds none
    assert metric(gateway, "gateway_ymids_no_postback_total", **no_postback) == 1
    rates = await history.store.fill_rates(0)
    assert [(r.placement, r.issued, r.postbacks, r.no_postback) for r in rates] == [
        ("shop", 2, 1, 1)
    ]


# -- replicas -----------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_two_replicas_on_postgresql_answer_each_others_ymids(
    start_upstream, start_gateway: GatewayFactory, http, postgres_url: str
) -> None:
    app = start_upstream()
    first = await start(start_gateway, app, postgres_url)
    second = await start(start_gateway, app, postgres_url)
    ymid = await issue(http, first)
    waiting = asyncio.create_task(status(http, second, ymid, wait="20s"))
    assert await postback(http, second, ymid) == (200, "forwarded")
    assert await postback(http, first, ymid) == (200, "duplicate")
    code, answer = await asyncio.wait_for(waiting, 15)
    assert (code, answer["state"]) == (200, "rewarded")
    assert (await status(http, first, ymid, wait="20s"))[1]["state"] == "rewarded"
    assert len(app.received) == 1


# -- the inspector ------------------------------------------------------------------------------


async def test_the_inspector_shows_each_placements_fill_rate(
    start_site, start_upstream, http, tmp_path: Path
) -> None:
    app = start_upstream()
    tapper = sessions_route(app.url, placements=["shop"], no_postback_after="1s")
    text = gateway_config(
        routes={"tapper": tapper}, store=tmp_path / "gw.db", server=server_settings()
    )
    site = await start_site(text, app)
    assert site.runtime is not None
    public = PublicPort(f"http://127.0.0.1:{site.config.server.listen.port}", site.runtime)
    answered = await issue(http, public, placement="shop")
    await issue(http, public, placement="shop")  # never answered
    await issue(http, public)  # no placement, never answered
    assert await postback(http, public, answered, placement="shop") == (200, "forwarded")
    await eventually_async(
        lambda: (
            metric(public, "gateway_ymids_no_postback_total", route="tapper", placement="") == 1
        ),
        15,
    )
    await eventually_async(
        lambda: (
            metric(public, "gateway_ymids_no_postback_total", route="tapper", placement="shop") == 1
        ),
        15,
    )
    async with http.get(site.url("/sessions?since=1h"), headers=BEARER) as response:
        assert response.status == 200
        body = html.unescape(await response.text())
    table = body.split('id="fill-rates"')[1].split("</table>")[0]
    cells = re.findall(r"<tr[^>]*>(.*?)</tr>", table)[1:]
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in cells]
    assert rows == [
        ["tapper", "(none)", "1", "0", "1", "0", "0%"],
        ["tapper", "shop", "2", "1", "1", "0", "50%"],
    ]
