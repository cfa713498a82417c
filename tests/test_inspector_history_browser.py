"""The history's pages in a real browser: what support does first. Search a user by
telegram_id and follow a row to its postback; trace a user from the overview's box and read
the verdict; follow the timeline. Real gateway and headless Chromium as in
test_inspector_browser.py (whose helpers these use); no page logs a console error, and
values from senders stay text.

The tests named for "screenshot" also write docs/screenshots/history.png and trace.png for
the README when run by ./scripts/screenshots.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

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
from tests.support.inspectorsite import ADMIN_TOKEN, WRONG_KEY, Site, SiteFactory, start_site
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
