"""The history's pages in a real browser: what support does first. Search a user by
telegram_id and follow a row to its postback; trace a user from the overview's box and read
the verdict; follow the timeline. Real gateway and headless Chromium as in
test_inspector_browser.py (whose helpers these use); no page logs a console error, and
values from senders stay text.

The senders seen (behind a trusted proxy, from documentation networks) and the reward
sessions' fill rates are read in the browser too.

The tests named for "screenshot" also write docs/screenshots/history.png, trace.png,
senders.png and sessions.png for the README when run by ./scripts/screenshots.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select

from tests.conftest import SECRET, UpstreamFactory
from tests.support.browser import (
    alert_present,
    browser,
    console_errors,
    navigated,
    save_screenshot,
    wait_for,
)
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.inspectorsite import (
    ADMIN_TOKEN,
    WRONG_KEY,
    Site,
    SiteFactory,
    server_settings,
    start_site,
)
from tests.support.sessionsconfig import ORIGIN, sessions_route
from tests.support.telegram import signed_init_data
from tests.test_inspector_browser import IMG_ONERROR, assert_sent, in_browser, path_of, sign_in
from tests.test_inspector_history import history_config, history_of

pytestmark = pytest.mark.browser

__all__ = ["browser", "start_site"]  # the fixtures, used by name

CLOCK = r"\d\d:\d\d:\d\d"


async def site_with_users(
    start_upstream: UpstreamFactory, start_site: SiteFactory, tmp_path: Path
) -> Site:
    """A gateway with a history after a few users' postbacks (and written to it): one
    rewarded with two later copies, one refused for a wrong key, one whose app failed."""
    app = start_upstream(default=lambda _, request: 500 if request.ymid == "broken-1" else 200)
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)

    def send_mix() -> None:
        assert_sent(site.send("ad-1", telegram_id="5550001", zone="8790478"), "forwarded")
        assert_sent(site.send("ad-1", telegram_id="5550001", zone="8790478"), "duplicate")
        assert_sent(site.send("ad-1", telegram_id="5550001", zone="8790478"), "duplicate")
        assert_sent(site.send("ad-2", telegram_id="5550002", key=WRONG_KEY), "rejected")
        assert_sent(site.send("broken-1", telegram_id="5550003"), "upstream_error")

    await asyncio.to_thread(send_mix)
    await history_of(site).flush()
    return site


def type_into(browser: webdriver.Chrome, element_id: str, text: str) -> None:
    box = browser.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(text)


def history_rows(browser: webdriver.Chrome) -> list[dict[str, Any]]:
    """The history table's rows as shown: outcome, ymid cell (or the as-sent one), link."""
    return [
        {
            "outcome": row.get_attribute("class"),
            "user": row.find_elements(By.TAG_NAME, "td")[6].get_property("textContent"),
            "link": row.find_element(By.CSS_SELECTOR, "a.postback").get_attribute("href"),
        }
        for row in browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    ]


async def test_history_search_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """Support searches a telegram_id: the user's three postbacks, newest first; the
    duplicate's row leads to its page, which links the delivery it repeats."""
    site = await site_with_users(start_upstream, start_site, tmp_path)

    def scenario() -> None:
        sign_in(browser, site, "/history")
        type_into(browser, "telegram_id", "5550001")
        navigated(browser, browser.find_element(By.ID, "search").click)
        assert "telegram_id=5550001" in path_of(browser)
        shown = history_rows(browser)
        assert [(row["outcome"], row["user"]) for row in shown] == [
            ("duplicate", "ad-1"),
            ("duplicate", "ad-1"),
            ("forwarded", "ad-1"),
        ]
        assert console_errors(browser) == []
        save_screenshot(browser, "history")

        navigated(browser, browser.find_elements(By.CSS_SELECTOR, "a.postback")[0].click)
        assert browser.find_element(By.ID, "verdict").text.startswith("duplicate (duplicate)")
        assert browser.find_element(By.CSS_SELECTOR, "#steps li.noted").text.startswith("dedup")
        assert not browser.find_elements(By.CSS_SELECTOR, "#steps li.failed")
        original = browser.find_element(By.ID, "original")
        assert re.search(rf"forwarded postback of .* {CLOCK}\.\d{{3}} UTC", original.text)
        navigated(browser, original.click)
        assert browser.find_element(By.ID, "verdict").text.startswith("forwarded: answered 200")
        fields = browser.find_element(By.ID, "fields").text
        assert "ad-1" in fields and "5550001" in fields
        assert SECRET not in browser.page_source and ADMIN_TOKEN not in browser.page_source
        assert console_errors(browser) == []

        # a refusal, found by the telegram_id it was sent with, shows the user as sent
        type_into(browser, "nav-user", "5550002")  # the nav's box goes to the trace
        navigated(browser, browser.find_element(By.CSS_SELECTOR, "#nav-trace button").click)
        assert path_of(browser).startswith("/trace?by=telegram_id&user=5550002")
        verdict = browser.find_element(By.ID, "trace-verdict").text
        assert verdict.startswith("refused: secret_wrong (the key may have been rotated"), verdict
        navigated(browser, browser.find_element(By.ID, "trace-search").click)
        (row,) = history_rows(browser)
        assert row["outcome"] == "rejected" and row["user"].startswith("as sent uid=ad-2")
        navigated(browser, browser.find_element(By.CSS_SELECTOR, "a.postback").click)
        assert browser.find_element(By.ID, "verdict").text.startswith("rejected (secret_wrong)")
        assert "ad-2" in browser.find_element(By.ID, "as-sent").text
        assert console_errors(browser) == []

    await in_browser(scenario)


async def test_trace_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """The overview's box traces a user: the verdict sentence first, then each event and
    the timeline, whose lines lead to their postbacks."""
    site = await site_with_users(start_upstream, start_site, tmp_path)

    def scenario() -> None:
        sign_in(browser, site, "/")
        type_into(browser, "trace-user", "5550001")
        navigated(browser, browser.find_element(By.ID, "trace-go").click)
        verdict = wait_for(
            browser, expected_conditions.visibility_of_element_located((By.ID, "trace-verdict"))
        )
        assert re.fullmatch(
            rf"rewarded once at {CLOCK} \(click, zone 8790478\); 2 later copies were duplicates",
            verdict.text,
        ), verdict.text
        assert "rewarded" in verdict.get_attribute("class").split()
        lines = browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
        assert [line.get_attribute("class") for line in lines] == ["good", "neutral", "neutral"]
        assert console_errors(browser) == []
        save_screenshot(browser, "trace")

        navigated(browser, lines[1].find_element(By.TAG_NAME, "a").click)
        assert path_of(browser).startswith("/history/")
        assert browser.find_element(By.ID, "original")

        browser.get(site.url("/"))
        Select(browser.find_element(By.ID, "trace-by")).select_by_value("telegram_id")
        type_into(browser, "trace-user", "5550003")
        navigated(browser, browser.find_element(By.ID, "trace-go").click)
        said = browser.find_element(By.ID, "trace-verdict")
        assert said.text.startswith("forwarded at "), said.text
        assert "the app answered 500" in said.text
        assert "not-rewarded" in said.get_attribute("class").split()
        assert console_errors(browser) == []

    await in_browser(scenario)


async def test_markup_from_senders_is_text_on_the_history_pages(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    app = start_upstream()
    site = await start_site(history_config(app, tmp_path / "gw.db"), app)

    def send() -> None:
        assert_sent(site.send(IMG_ONERROR, telegram_id="5550009"), "forwarded")
        assert_sent(site.send(IMG_ONERROR, telegram_id="5550009", key=WRONG_KEY), "rejected")

    await asyncio.to_thread(send)
    await history_of(site).flush()

    def scenario() -> None:
        sign_in(browser, site, "/history")
        type_into(browser, "telegram_id", "5550009")
        navigated(browser, browser.find_element(By.ID, "search").click)
        cells = browser.find_elements(By.CSS_SELECTOR, "#history td.ymid, #history td.as-sent")
        texts = [cell.get_property("textContent") for cell in cells]
        assert texts[0] == f"as sent uid={IMG_ONERROR} event=click zone=42 telegram_id=5550009"
        assert texts[1] == IMG_ONERROR
        for link in [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")]:
            assert link is None or not link.startswith("javascript:")
        pages = ["/trace?telegram_id=5550009"]
        pages += [
            path_of_link(a.get_attribute("href"))
            for a in browser.find_elements(By.CSS_SELECTOR, "a.postback")
        ]
        for path in pages:
            browser.get(site.url(path))
            assert browser.find_elements(By.CSS_SELECTOR, "main img, main svg, main script") == []
            assert not alert_present(browser)
            assert console_errors(browser) == []

    await in_browser(scenario)


def path_of_link(href: str) -> str:
    return "/" + href.split("/", 3)[3]


# -- the senders seen and the reward sessions ----------------------------------------------------

LISTED = ["192.0.2.0/24", "198.51.100.7"]  # the route's allow_ips (documentation networks)
# the address a postback with the route's key came from -> how many: 192.0.2.x is listed,
# 198.51.100.x in part, 203.0.113.x not at all (as a new address of Monetag's would be)
KEYED_FROM = {
    "192.0.2.10": 9,
    "192.0.2.44": 5,
    "198.51.100.7": 6,
    "198.51.100.23": 2,
    "203.0.113.5": 3,
}
PROBER = "198.18.0.9"  # only ever sends a wrong key: never counted as a sender


async def test_senders_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Behind a proxy on this machine (trusted_proxies, X-Forwarded-For), postbacks with the
    key from three networks and a prober's wrong keys from a fourth: the page counts the
    three, says which the allow_ips lets in, and suggests one that lists them all."""
    app = start_upstream()
    tapper = route([upstream(app.url, retries=0)], allow_ips=LISTED)
    server = server_settings(trusted_proxies=["127.0.0.1"])
    config = gateway_config(routes={"tapper": tapper}, server=server, store=tmp_path / "gw.db")
    site = await start_site(config, app)
    url = f"http://127.0.0.1:{site.config.server.listen.port}/postback/tapper"
    outcomes: Counter[str] = Counter()
    for number, address in enumerate([*interleaved(KEYED_FROM), *[PROBER] * 3]):
        key = WRONG_KEY if address == PROBER else SECRET
        query = {"uid": f"ad-{number}", "event": "click", "zone": "8790478", "token": key}
        async with http.get(url, params=query, headers={"X-Forwarded-For": address}) as reply:
            outcomes[reply.headers["X-Gateway-Outcome"]] += 1
    assert outcomes == {"forwarded": 20, "rejected": 2 + 3 + 3}
    await history_of(site).flush()

    def scenario() -> None:
        sign_in(browser, site, "/senders?since=1d")
        table = browser.find_element(By.CSS_SELECTOR, "#senders-tapper table.senders")
        shown = {
            cells[0]: (cells[1], cells[2], cells[6])
            for cells in (
                [cell.text for cell in line.find_elements(By.TAG_NAME, "td")]
                for line in table.find_elements(By.CSS_SELECTOR, "tbody tr")
            )
        }
        assert shown == {
            "192.0.2.0/24": ("14", "0", "listed"),
            "198.51.100.0/24": ("8", "2", "partly listed"),
            "203.0.113.0/24": ("3", "3", "refused"),
        }
        assert "198.18." not in browser.page_source  # the prober taught nothing
        suggestion = browser.find_element(By.CSS_SELECTOR, "#senders-tapper pre.suggestion").text
        assert "\nallow_ips:\n" in suggestion, suggestion
        for network in shown:
            assert f"- {network}" in suggestion, suggestion
        assert console_errors(browser) == []
        save_screenshot(browser, "senders")

    await in_browser(scenario)


def interleaved(counts: dict[str, int]) -> list[str]:
    """Each address as many times as it sent, interleaved as real traffic would be."""
    left = dict(counts)
    order: list[str] = []
    while left:
        for address in list(left):
            order.append(address)
            left[address] -= 1
            if not left[address]:
                del left[address]
    return order


# placement -> (ymids issued, of which a postback came), on the route whose window is swept;
# the other route's ymids are still within theirs, so its unanswered ones are waiting
ANSWERED = {"level_end": (8, 6), "shop": (4, 1), None: (3, 2)}
WAITING = (5, 2)


async def test_sessions_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Two Mini App routes issue ymids to users (signed initData) and Monetag's postbacks
    come for some: each placement's issued, answered, missed and waiting, and its fill rate."""
    app = start_upstream()
    routes = {
        "tapper": sessions_route(app.url, placements=["level_end", "shop"]),  # 15 minutes
        "runner": sessions_route(app.url, no_postback_after="30m"),
    }
    config = gateway_config(routes=routes, server=server_settings(), store=tmp_path / "gw.db")
    site = await start_site(config, app)
    public = f"http://127.0.0.1:{site.config.server.listen.port}"
    users = itertools.count(7001001)

    async def issue(route: str, placement: str | None, counts: tuple[int, int]) -> None:
        """`counts`: how many ymids to issue, and for how many of them a postback comes."""
        issued, answered = counts
        for number in range(issued):
            body: dict[str, Any] = {"init_data": signed_init_data(next(users), int(time.time()))}
            if placement:
                body["placement"] = placement
            async with http.post(
                f"{public}/ymid/{route}", json=body, headers={"Origin": ORIGIN}
            ) as reply:
                assert reply.status == 200, await reply.text()
                ymid = (await reply.json())["ymid"]
            if number < answered:
                query = {"uid": ymid, "event": "impression", "zone": "8790478", "token": SECRET}
                if placement:
                    query["placement"] = placement
                async with http.get(f"{public}/postback/{route}", params=query) as reply:
                    assert reply.headers["X-Gateway-Outcome"] == "forwarded"

    for placement, counts in ANSWERED.items():
        await issue("tapper", placement, counts)
    await issue("runner", None, WAITING)
    history = history_of(site)
    await history.flush()
    # tapper's sweep as it runs once its 15 minutes are over (runner's 30 are not)
    missed = sum(issued - answered for issued, answered in ANSWERED.values())
    assert await history.sweep({"tapper": 0.0}) == missed

    def scenario() -> None:
        sign_in(browser, site, "/sessions?since=1h")
        shown = [
            [cell.text for cell in line.find_elements(By.TAG_NAME, "td")]
            for line in browser.find_elements(By.CSS_SELECTOR, "#fill-rates tbody tr")
        ]
        assert sorted(shown) == [
            ["runner", "(none)", "5", "2", "0", "3", "40%"],
            ["tapper", "(none)", "3", "2", "1", "0", "67%"],
            ["tapper", "level_end", "8", "6", "2", "0", "75%"],
            ["tapper", "shop", "4", "1", "3", "0", "25%"],
        ]
        assert console_errors(browser) == []
        save_screenshot(browser, "sessions")

    await in_browser(scenario)
