"""The inspector's pages on the history, over real sockets in this process: the search, the
reward trace and one recorded postback, for postbacks this process no longer remembers, for
duplicates, refusals and floods; what a wrong parameter and a failing store are answered; a
re-drive told to the history; and two replicas on one PostgreSQL, each finding the other's.
(In a real browser: test_inspector_browser.py.)"""

from __future__ import annotations

import asyncio
import html
import os
import re
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from gateway.config import duration_words
from gateway.history.budget import PER_ADDRESS
from gateway.history.recorder import Recorder
from gateway.history.search import Recorded, Search
from gateway.history.sqlite_history import history_path
from gateway.inspector.present import NOT_REPLAYABLE
from gateway.inspector.recorded import original_of
from gateway.sessions.ymid import YmidSigner
from tests.conftest import SECRET, UpstreamFactory
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.inspectorsite import (
    ADMIN_TOKEN,
    FAST_QUEUE,
    WRONG_KEY,
    Site,
    SiteFactory,
    server_settings,
    start_site,
    tapper_config,
)
from tests.support.processes import Reply
from tests.support.sessionsconfig import SIGNING_KEY, sessions_route
from tests.support.tlscerts import make_certificate
from tests.support.waiting import eventually_async
from tests.test_inspector_access import BEARER, HTML, form_token_of, get, post

__all__ = ["start_site"]  # the fixture, used by name

IMG_ONERROR = "<img src=x onerror=alert(1)>"


def history_config(app: Any, store: str | Path, **server: Any) -> str:
    """`tapper` (sync) and `runner` (queued, one attempt: a refusal is a dead letter at once),
    with a store and so a history; `server` keys go to the server section."""
    app_route = upstream(app.url, retries=0)
    return gateway_config(
        routes={
            "tapper": route([app_route]),
            "runner": route(
                [app_route], delivery="queued", queue={**FAST_QUEUE, "max_attempts": 1}
            ),
        },
        server=server_settings(**server),
        store=store,
    )


def history_of(site: Site) -> Recorder:
    assert site.runtime is not None and site.runtime.history is not None
    return site.runtime.history


async def send(site: Site, ymid: str, **params: Any) -> Reply:
    """A postback over the public port (blocking: run aside the loop the gateway serves on)."""
    return await asyncio.to_thread(lambda: site.send(ymid, **params))


async def recorded(site: Site, **filters: Any) -> list[Recorded]:
    """What the history holds now (written first), newest first."""
    history = history_of(site)
    await history.flush()
    return await history.store.search(Search(**filters))


async def page(http: aiohttp.ClientSession, site: Site, path: str, status: int = 200) -> str:
    """A page's HTML, asked with the token; fails unless it came with `status`."""
    got, headers, body = await get(http, site.url(path), BEARER)
    assert got == status, (path, got, body[:500])
    assert headers["Content-Security-Policy"].startswith("default-src 'none'"), path
    return body


def rows_of(body: str) -> list[dict[str, str]]:
    """The history table's rows: request id and outcome (the row's class), top first."""
    return [
        {"outcome": outcome, "request_id": request_id}
        for outcome, request_id in re.findall(
            r'<tr class="([a-z_]+)" data-id="\d+" data-request-id="([0-9a-f]+)">', body
        )
    ]


def link_of(body: str, element_id: str) -> str:
    found = re.search(rf'<a href="([^"]+)"[^>]*id="{element_id}"', body)
    assert found, f"no link #{element_id}"
    return html.unescape(found.group(1))


def step_states(body: str) -> dict[str, str]:
    return dict(
        (name, state)
        for state, name in re.findall(r'<li class="(\w+)"><span class="name">(\w+)</span>', body)
    )


def steps_told(body: str) -> list[str]:
    """Each step's line as the page tells it: name, state and verdict."""
    return [
        html.unescape(" ".join(step))
        for step in re.findall(
            r'<span class="name">(\w+)</span> <span class="state">(\w+)</span> '
            r'<span class="what">([^<]*)</span>',
            body,
        )
    ]


# -- which delivery a duplicate repeats, and how a window is said --------------------------------


def kept(
    row_id: int, at: float, outcome: str, reason: str | None = None, key: str = "k1"
) -> Recorded:
    """A history row of one user's, as the store answers it."""
    return Recorded(
        row_id,
        at,
        "r",
        "tapper",
        f"req-{row_id}",
        None,
        "127.0.0.1",
        outcome,
        reason,
        200,
        {"ymid": "u"},
        key,
        1,
    )


DUPLICATE = kept(10, 1000.0, "duplicate")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([kept(1, 900.0, "forwarded")], 1, id="the delivery before it"),
        pytest.param([kept(1, 900.0, "queued")], 1, id="queued counts: the store took it"),
        pytest.param(
            [kept(1, 100.0, "forwarded"), kept(2, 900.0, "forwarded")], 2, id="the latest before"
        ),
        pytest.param(
            [kept(1, 900.0, "forwarded", "upstream_refused")], None, id="refused by the app: no"
        ),
        pytest.param([kept(1, 900.0, "rejected", "secret_wrong")], None, id="a refusal: no"),
        pytest.param([kept(1, 900.0, "duplicate")], None, id="another duplicate: no"),
        pytest.param([kept(1, 900.0, "forwarded", key="k2")], None, id="another event: no"),
        pytest.param([kept(11, 1003.0, "forwarded")], 11, id="a replica's clock ahead"),
        pytest.param([DUPLICATE], None, id="not itself"),
        pytest.param([], None, id="nothing kept"),
    ],
)
def test_a_duplicate_repeats_the_latest_delivery_of_its_event(
    rows: list[Recorded], expected: int | None
) -> None:
    found = original_of(DUPLICATE, [*rows, DUPLICATE])
    assert (found.id if found is not None else None) == expected


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (604800, "7 days"),
        (86400, "1 day"),
        (7200, "2 hours"),
        (90, "90 seconds"),
        (1.5, "1.5 seconds"),
        (1, "1 second"),
    ],
)
def test_a_window_is_said_in_words(seconds: float, said: str) -> None:
    assert duration_words(seconds) == said


# -- the search and one recorded postback ------------------------------------------------------


async def test_a_postback_gone_from_memory_is_found_and_shown_from_the_history(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """With one postback kept in memory, the first of three is gone from /postbacks; the
    history's search finds all three, and the first's page shows what it was."""
    app = start_upstream(body="granted")
    site = await start_site(history_config(app, tmp_path / "gw.db", recent_postbacks=1), app)
    replies = [await send(site, f"h-{n}", telegram_id="5001") for n in (1, 2, 3)]
    assert [reply.outcome for reply in replies] == ["forwarded"] * 3
    first, _, third = (reply.headers["X-Request-ID"] for reply in replies)
    await history_of(site).flush()

    await page(http, site, "/postbacks/1", 404)  # the live view forgot it
    found = await page(http, site, "/history?telegram_id=5001")
    assert [row["request_id"] for row in rows_of(found)] == [
        third,
        replies[1].headers["X-Request-ID"],
        first,
    ]
    assert f'href="/history/{first}"' in found
    assert 'href="/trace?telegram_id=5001"' in found

    shown = await page(http, site, f"/history/{first}")
    assert 'id="verdict">forwarded: answered 200' in shown
    assert "<th>ymid</th><td>h-1</td>" in shown and "<th>telegram_id</th><td>5001</td>" in shown
    assert set(step_states(shown).values()) == {"passed"}
    assert "<code>granted</code>" in shown  # the app's answer, first bytes
    assert f'id="replica">{history_of(site).replica}<' in shown
    assert "$MONETAG_SECRET" in shown and SECRET not in shown and ADMIN_TOKEN not in shown

    live = await page(http, site, "/postbacks/3")  # still in memory: it links its record
    assert link_of(live, "in-history") == f"/history/{third}"
    listing = await page(http, site, "/postbacks")
    assert 'id="history-note"' in listing and 'href="/history"' in listing


async def test_the_search_filters_and_pages_back_by_what_was_written_before(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    for number in range(5):
        await send(site, f"p-{number}", telegram_id="6001")
    await send(site, "p-wrong", telegram_id="6001", key=WRONG_KEY)
    everything = await recorded(site, telegram_id="6001")
    assert len(everything) == 6

    refused = rows_of(await page(http, site, "/history?telegram_id=6001&outcome=rejected"))
    assert refused == [{"outcome": "rejected", "request_id": everything[0].request_id}]
    assert rows_of(await page(http, site, "/history?telegram_id=6001&reason=secret_wrong"))
    assert rows_of(await page(http, site, "/history?telegram_id=6001&route=runner")) == []

    seen: list[str] = []
    path = "/history?telegram_id=6001&limit=4"
    for _ in range(3):
        body = await page(http, site, path)
        seen += [row["request_id"] for row in rows_of(body)]
        if 'id="older"' not in body:
            break
        path = link_of(body, "older")
        assert "telegram_id=6001" in path and "limit=4" in path and "before=" in path
    assert seen == [row.request_id for row in everything]  # every row once, newest first

    none = await page(http, site, "/history?ymid=nobody-sent-this")
    assert 'id="none"' in none and rows_of(none) == []


async def test_a_refusal_shows_the_user_as_sent_and_a_flood_as_one_row(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """A wrong key is refused before the fields are read: its row says `as sent` with the
    sender's `uid=`, and it is still found by that ymid. Past the budget, refusals are one
    row that says how many and from where."""
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    assert (await send(site, "carol-7", key=WRONG_KEY)).outcome == "rejected"
    await history_of(site).flush()
    found = await page(http, site, "/history?" + urlencode({"ymid": "carol-7"}))
    assert re.search(
        r'<span class="tag">as sent</span> <code>uid=carol-7 event=click zone=42', found
    )
    (row,) = rows_of(found)
    shown = await page(http, site, f"/history/{row['request_id']}")
    assert 'id="as-sent"' in shown and 'id="fields"' not in shown
    assert step_states(shown)["secret"] == "failed"
    assert "<th>uid</th><td>carol-7</td>" in shown
    assert WRONG_KEY not in found + shown and SECRET not in found + shown

    flood = PER_ADDRESS + 5
    for number in range(flood):
        await send(site, f"flood-{number}", key=WRONG_KEY)
    await history_of(site).flush(final=True)  # the aggregate too, as at shutdown
    refusals = await page(http, site, "/history?reason=secret_wrong&limit=100")
    aggregates = re.findall(r'<span class="repeats">\u00d7(\d+) from ([0-9.]+)</span>', refusals)
    assert [client for _, client in aggregates] == ["127.0.0.1"]
    repeats = int(aggregates[0][0])
    assert repeats + (len(rows_of(refusals)) - 1) == flood + 1  # carol's, and the flood's


async def test_a_duplicates_page_links_the_delivery_it_repeats_and_is_no_failure(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    original = await send(site, "twice-1", telegram_id="7001")
    copy = await send(site, "twice-1", telegram_id="7001")
    assert (original.outcome, copy.outcome) == ("forwarded", "duplicate")
    first = original.headers["X-Request-ID"]
    (kept,) = await recorded(site, request_id=first)

    shown = await page(http, site, f"/history/{copy.headers['X-Request-ID']}")
    assert link_of(shown, "original") == f"/history/{first}"
    assert f'id="original-request-id">{first}<' in shown
    assert re.search(r"forwarded postback of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", shown)
    assert 'class="info" id="duplicate"' in shown and 'class="problem"' not in shown
    assert step_states(shown)["dedup"] == "noted"
    assert "failed" not in step_states(shown).values()
    assert kept.outcome == "forwarded"

    live = await page(http, site, "/postbacks/2")  # the live page says the same
    assert step_states(live)["dedup"] == "noted"


async def test_a_duplicate_whose_delivery_is_not_kept_says_so(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    await send(site, "aged-1")
    history = history_of(site)
    await history.flush()
    assert await history.store.purge(ymid="aged-1") == 1  # as retention would have
    copy = await send(site, "aged-1")
    assert copy.outcome == "duplicate"
    await history.flush()
    shown = await page(http, site, f"/history/{copy.headers['X-Request-ID']}")
    assert 'id="duplicate"' in shown and 'id="original"' not in shown
    assert "is not in the history" in shown


# -- the trace ---------------------------------------------------------------------------------


def rewarded_verdict(body: str) -> str:
    """The trace page's verdict sentence, which must be shown as a reward."""
    verdict = re.search(r'<p class="trace-verdict rewarded" id="trace-verdict">([^<]+)</p>', body)
    assert verdict, body
    return verdict.group(1)


async def test_the_trace_says_the_verdict_and_links_each_moment(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    for _ in range(3):
        await send(site, "tr-1", telegram_id="8001", zone="8790478")
    ids = [row.request_id for row in await recorded(site, telegram_id="8001")]

    body = await page(http, site, "/trace?telegram_id=8001")
    verdict = rewarded_verdict(body)
    assert re.fullmatch(
        r"rewarded once at \d\d:\d\d:\d\d \(click, zone 8790478\); 2 later copies were "
        r"duplicates",
        verdict,
    )
    timeline = body.partition('<table id="timeline">')[2]
    assert sorted(re.findall(r'href="/history/([0-9a-f]+)"', timeline)) == sorted(ids)
    assert link_of(body, "trace-search") == "/history?telegram_id=8001&since=7d"

    by_form = await page(http, site, "/trace?by=ymid&user=tr-1&since=1d")
    assert "rewarded once at" in by_form and 'value="tr-1"' in by_form
    nobody = await page(http, site, "/trace?telegram_id=9999&since=2h")
    assert "no postback arrived for this user in the last 2 hours" in nobody
    empty = await page(http, site, "/trace")
    assert 'id="trace-verdict"' not in empty and 'id="trace-form"' in empty

    overview = await page(http, site, "/")  # the first thing support sees: the trace's box
    assert 'id="overview-trace"' in overview and 'id="nav-trace"' in overview


async def test_the_traces_headline_says_the_click_and_the_impression_after_it(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    await send(site, "tr-2", telegram_id="8002", zone="1")
    await send(site, "tr-2", telegram_id="8002", zone="1", event="impression")
    await history_of(site).flush()
    body = await page(http, site, "/trace?telegram_id=8002")
    verdict = rewarded_verdict(body)
    assert re.fullmatch(
        r"click: rewarded once at \d\d:\d\d:\d\d \(zone 1\); "
        r"impression: rewarded once at \d\d:\d\d:\d\d \(zone 1\)",
        verdict,
    )


async def test_markup_from_senders_is_text_on_every_history_page(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    await send(site, IMG_ONERROR, telegram_id="9101")
    await send(site, IMG_ONERROR, telegram_id="9101")
    await send(site, IMG_ONERROR, key=WRONG_KEY, note=IMG_ONERROR)
    rows = await recorded(site, ymid=IMG_ONERROR)
    assert len(rows) == 3
    pages = [
        await page(http, site, "/history?" + urlencode({"ymid": IMG_ONERROR})),
        await page(http, site, "/trace?" + urlencode({"ymid": IMG_ONERROR})),
        *[await page(http, site, f"/history/{row.request_id}") for row in rows],
    ]
    for body in pages:
        assert "<img" not in body
        assert html.escape(IMG_ONERROR) in body


# -- the replay line ------------------------------------------------------------------------


def replay_of(body: str) -> str:
    """A postback page's replay section: its curl line, or the sentence that says why none."""
    line = re.search(r'<pre id="curl">([^<]*)</pre>', body)
    withheld = re.search(r'id="not-replayable">([^<]*)</p>', body)
    found = line or withheld
    assert found is not None and (line is None or withheld is None), "one of the two"
    return html.unescape(found.group(1))


async def test_only_a_postback_that_authenticated_is_offered_for_replay_on_either_page(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """A postback refused by the allowlist, the key or the ymid check, or let in by a
    sessions rollout in log_only, was never authenticated: replaying it with the real key
    would grant what a stranger asked for, so neither its live page nor its recorded one has
    a curl line, only the sentence that says so. What passed the key keeps its line: a
    delivery, a duplicate, a refusal of its fields."""
    app = start_upstream()
    app_route = upstream(app.url, retries=0)
    config = gateway_config(
        routes={
            "tapper": route([app_route]),
            "fenced": route([app_route], allow_ips=["192.0.2.0/24"]),  # never 127.0.0.1
            "shielded": sessions_route(app.url),
            "rollout": sessions_route(app.url, mode="log_only"),
        },
        server=server_settings(),
        store=tmp_path / "gw.db",
    )
    site = await start_site(config, app)
    issued = YmidSigner([SIGNING_KEY.encode()], context="shielded").issue(
        424242, expires=int(time.time()) + 600
    )
    sent = [  # (the postback, its outcome and reason, whether it may be replayed)
        (dict(ymid="rp-1"), "forwarded", True),
        (dict(ymid="rp-1"), "duplicate", True),
        (dict(ymid="rp-2", event="view"), "invalid (invalid_fields)", True),
        (dict(ymid=issued, route="shielded"), "forwarded", True),
        (dict(ymid="rp-3", key=WRONG_KEY), "rejected (secret_wrong)", False),
        (dict(ymid="rp-4", key=None), "rejected (secret_missing)", False),
        (dict(ymid="rp-5", route="fenced"), "rejected (ip_not_allowed)", False),
        (dict(ymid="rp-6", route="shielded"), "rejected (ymid_not_issued)", False),
        (dict(ymid="rp-7", route="rollout"), "forwarded", False),  # a refusal let in
    ]
    replies = [await send(site, **postback) for postback, _, _ in sent]
    await history_of(site).flush()

    for number, ((_, outcome, replayable), reply) in enumerate(zip(sent, replies, strict=True)):
        live = await page(http, site, f"/postbacks/{number + 1}")
        kept = await page(http, site, f"/history/{reply.headers['X-Request-ID']}")
        for body in (live, kept):
            assert f'id="verdict">{outcome}' in body, (number, outcome)
        told = replay_of(live)
        assert replay_of(kept) == told, outcome  # one rule, one line, for both pages
        assert steps_told(kept) == steps_told(live), outcome  # from what the history keeps
        if replayable:
            assert told.startswith("curl -sS 'http://127.0.0.1:"), told
        else:
            assert told == NOT_REPLAYABLE, (outcome, told)
        assert SECRET not in live + kept and WRONG_KEY not in live + kept


def curl(line: str, *options: str) -> tuple[int, str | None]:
    """A curl line as a shell runs it, the key in $MONETAG_SECRET, `options` after `curl`:
    its exit code and the gateway's X-Gateway-Outcome."""
    assert line.startswith("curl "), line
    asked = shlex.join(["curl", "-o", "/dev/null", "-D", "-", *options])
    environment = {"PATH": os.environ["PATH"], "MONETAG_SECRET": SECRET}
    done = subprocess.run(
        ["bash", "-c", asked + line.removeprefix("curl")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    found = re.search(r"^x-gateway-outcome: *(\w+)", done.stdout, re.IGNORECASE | re.MULTILINE)
    return done.returncode, found.group(1) if found else None


async def test_over_tls_the_replay_line_is_https_and_a_test_certificate_needs_cacert(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """As docs/inspector.md says: with server.tls the line is https, and against a
    certificate the system does not trust curl stops (60) until given it with --cacert."""
    certificate = make_certificate(tmp_path, "gateway")
    tls = {"cert_file": str(certificate.cert_file), "key_file": str(certificate.key_file)}
    app = start_upstream()
    site = await start_site(tapper_config(app, tls=tls), app)
    port = site.config.server.listen.port
    trusting = ("--cacert", str(certificate.cert_file))
    first = f"curl -sS 'https://127.0.0.1:{port}/postback/tapper?uid=tls-1&event=click&zone=42"
    sent = await asyncio.to_thread(curl, first + '&token=\'"$MONETAG_SECRET"', *trusting)
    assert sent == (0, "forwarded")

    line = replay_of(await page(http, site, "/postbacks/1"))
    assert line.startswith(f"curl -sS 'https://127.0.0.1:{port}/postback/tapper?"), line
    assert await asyncio.to_thread(curl, line) == (60, None)  # curl: (60) SSL certificate
    assert await asyncio.to_thread(curl, line, *trusting) == (0, "duplicate")
    assert len(app.for_ymid("tls-1")) == 1


# -- what a wrong question and a failing store are answered ------------------------------------


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/history?limit=0", "limit"),
        ("/history?limit=many", "limit"),
        ("/history?limit=501", "limit"),
        ("/history?limit=%D9%A1", "limit"),  # an Arabic-Indic digit passes str.isdigit
        ("/history?since=7x", "since"),
        ("/history?since=0", "since"),
        ("/history?since=", None),  # empty: the default, no problem
        ("/history?before=-1", "before"),
        ("/history?before=1e3", "before"),
        ("/history?before=" + "9" * 30, "before"),
        ("/history?outcome=lost", "outcome"),
        ("/history?ymid=" + "x" * 600, "ymid"),
        ("/trace?telegram_id=1&since=forever", "since"),
        ("/trace?telegram_id=1&ymid=2", "telegram_id"),
        ("/trace?by=zone_id&user=1", "by"),
    ],
)
async def test_a_parameter_that_means_nothing_is_a_400_naming_it(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
    path: str,
    parameter: str | None,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    if parameter is None:
        await page(http, site, path)
        return
    body = await page(http, site, path, 400)
    problem = re.search(r'<p class="problem" id="problem">([^<]+)</p>', body)
    assert problem and problem.group(1).startswith(f"{parameter}: "), body


async def test_a_request_id_that_is_not_ours_is_a_404(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    for odd in ("x" * 20, "ABCDEF" * 4, "0" * 19, "0" * 41, "1234567890abcdef1234;1"):
        assert (await get(http, site.url(f"/history/{odd}"), BEARER))[0] == 404, odd
    body = await page(http, site, "/history/" + "0" * 20, 404)
    assert "No postback with this request id in the history" in body


async def test_a_history_that_fails_gives_a_503_page_not_a_traceback(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    reply = await send(site, "gone-1", telegram_id="4001")
    await history_of(site).flush()
    with sqlite3.connect(history_path(str(tmp_path / "gw.db"))) as connection:
        connection.execute("DROP TABLE history")
    for path in (
        "/history?telegram_id=4001",
        "/trace?telegram_id=4001",
        f"/history/{reply.headers['X-Request-ID']}",
    ):
        body = await page(http, site, path, 503)
        assert "The history is unavailable: cannot read the history" in body, body
        assert "Traceback" not in body
    assert (await page(http, site, "/postbacks")).count("gone-1") == 1  # the live view works


# -- access, and a gateway without a history ---------------------------------------------------


async def test_the_history_pages_need_the_token(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    reply = await send(site, "private-9", telegram_id="4242")
    await history_of(site).flush()
    request_id = reply.headers["X-Request-ID"]
    for path in ("/history?telegram_id=4242", "/trace?telegram_id=4242", f"/history/{request_id}"):
        status, _, body = await get(http, site.url(path))
        assert status == 401 and "private-9" not in body and "4242" not in body, path
        status, headers, _ = await get(http, site.url(path), HTML)
        assert status == 303 and headers["Location"].startswith("/login?next="), path


async def test_without_a_store_the_pages_are_as_they_were(
    http: aiohttp.ClientSession, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    assert (await send(site, "plain-1")).outcome == "forwarded"
    for path in ("/history", "/trace?telegram_id=1", "/history/" + "0" * 20):
        status, _, body = await get(http, site.url(path), BEARER)
        assert status == 404 and "keeps no history" in body, path
    for path in ("/", "/postbacks", "/postbacks/1"):
        body = await page(http, site, path)
        assert 'href="/history' not in body and 'action="/trace"' not in body, path


# -- a re-drive, told to the history -----------------------------------------------------------


async def test_a_re_drive_from_the_queue_page_is_recorded_in_the_history(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream(default=500)
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)
    reply = await send(site, "stuck-3", route="runner")
    assert reply.outcome == "queued"
    request_id = reply.headers["X-Request-ID"]
    await eventually_async(lambda: states_with(site, request_id, "dead"))
    queue = await page(http, site, "/queue")
    (event_id,) = re.findall(r'<tr data-event="(\d+)">', queue)
    app.default = 200
    form = {"form_token": await form_token_of(http, site), "event_id": event_id}
    answer = await post(http, site.url("/queue/retry"), form, {"Origin": site.admin, **BEARER})
    assert answer.status == 303 and answer.headers["Location"] == "/queue?done=1"

    final = await eventually_async(lambda: states_with(site, request_id, "delivered"))
    assert final == ["dead", "redriven", "delivered"]
    shown = await page(http, site, f"/history/{request_id}")
    later = shown.partition('<table id="later">')[2].partition("</table>")[0]
    assert re.findall(r'<tr class="(\w+)">', later) == ["dead", "redriven", "delivered"]
    trace = await page(http, site, "/trace?ymid=stuck-3")
    assert 'class="trace-verdict rewarded"' in trace


async def states_with(site: Site, request_id: str, wanted: str) -> list[str] | None:
    """The states a postback's later deliveries left, once one of them is `wanted`."""
    history = history_of(site)
    await history.flush()
    states = [delivery.state for delivery in await history.store.deliveries([request_id])]
    return states if wanted in states else None


# -- two replicas on one PostgreSQL ------------------------------------------------------------


@pytest.mark.postgres
async def test_either_replicas_inspector_finds_the_others_postbacks(
    http: aiohttp.ClientSession,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    postgres_url: str,
) -> None:
    app = start_upstream()
    replicas = [await start_site(history_config(app, postgres_url), app) for _ in range(2)]
    sent: dict[str, str] = {}
    for name, site in zip("ab", replicas, strict=True):
        history_of(site).replica = f"replica-{name}"
        reply = await send(site, f"from-{name}", telegram_id="3003")
        sent[name] = reply.headers["X-Request-ID"]
        await history_of(site).flush()
    for name, site in zip("ab", replicas, strict=True):
        other = "b" if name == "a" else "a"
        found = await page(http, site, "/history?telegram_id=3003")
        assert {row["request_id"] for row in rows_of(found)} == set(sent.values())
        assert f"<td>replica-{other}</td>" in found
        shown = await page(http, site, f"/history/{sent[other]}")
        assert f'id="replica">replica-{other}<' in shown and f"from-{other}" in shown
        trace = await page(http, site, "/trace?telegram_id=3003")
        assert trace.count('href="/history/') == 2
