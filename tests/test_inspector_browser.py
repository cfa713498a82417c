"""The inspector in a real browser: the admin port's pages as an operator sees them.

A real gateway (public and admin ports on loopback sockets, started on the test's event loop
by tests/inspectorsite.py) in front of a recording app, and headless Chromium
(tests/browser.py) on the admin port. Postbacks go to the public port over HTTP, as Monetag
sends them. Nothing is mocked: what a test sees is what the pages, the live updates of
static/inspector.js, the access rules and the CSP do together.

Selenium calls block, and the gateway runs on the test's loop, so each test hands its
browser part to a thread (`asyncio.to_thread`): a plain function that drives the browser and
sends postbacks with blocking HTTP while the loop serves them.

The tests named for "screenshot" also write docs/screenshots/*.png for the README when run
by ./scripts/screenshots (UPDATE_SCREENSHOTS=1); otherwise they only assert.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import math
import shlex
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select

from gateway.inspector.charts import nice_step, scale_top
from gateway.journal import MINUTES
from tests.conftest import SECRET, UpstreamFactory
from tests.support.browser import (
    REBOUND_NAME,
    alert_present,
    browser,
    console_errors,
    navigated,
    save_screenshot,
    wait_for,
)
from tests.support.clock import FakeClock
from tests.support.gatewayconfig import gateway_config, route, upstream
from tests.support.inspectorsite import (
    ADMIN_TOKEN,
    FAST_QUEUE,
    WRONG_KEY,
    Site,
    SiteFactory,
    queued_config,
    server_settings,
    start_site,
    tapper_config,
)
from tests.support.processes import Reply, http_get
from tests.support.upstream import Received, RecordingUpstream
from tests.support.waiting import eventually

pytestmark = pytest.mark.browser

__all__ = ["browser", "start_site"]  # the fixtures, used by name

LIVE = 5.0  # seconds a new postback may take to show in the list (it polls every second)

# what a sender may put in a value: each must be shown as these characters, never run
IMG_ONERROR = "<img src=x onerror=alert(1)>"
SCRIPT_CLOSE = "</script><script>alert(2)</script>"
SVG_ONLOAD = '"><svg onload=alert(3)>'


# -- the browser's side -------------------------------------------------------------------------


def signed_out(browser: webdriver.Chrome, site: Site) -> None:
    """No session cookie for the site (the shared browser may hold one from an earlier test:
    cookies are per host, not per port). Opens the open login page to reach its cookies, and
    reads the console, so later reads show only this test's entries."""
    browser.get(site.url("/login"))
    browser.delete_all_cookies()
    console_errors(browser)


def session_cookie(site: Site) -> SimpleCookie:
    """The cookie the gateway sets on signing in, got by posting the login form over plain
    HTTP, as a script would."""
    connection = http.client.HTTPConnection("127.0.0.1", site.admin_port)
    try:
        form = urlencode({"token": ADMIN_TOKEN, "next": "/"})
        content_type = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/login", form, content_type)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 303, response.status
    return SimpleCookie(response.headers["Set-Cookie"])


def sign_in(browser: webdriver.Chrome, site: Site, path: str = "/") -> None:
    """Open `path` signed in. The browser gets the session cookie the login form sets; the
    form itself is the business of the tests of signing in, in and out."""
    signed_out(browser, site)
    for name, morsel in session_cookie(site).items():
        browser.add_cookie({"name": name, "value": morsel.value, "path": "/"})
    browser.get(site.url(path))
    assert path_of(browser) == path


def login_with(browser: webdriver.Chrome, token: str) -> None:
    """Type `token` on the login page and press #sign-in; fails at once, with the gateway's
    words, if the sign-in is refused outright (403) rather than answered with a page."""
    field = wait_for(browser, expected_conditions.presence_of_element_located((By.ID, "token")))
    field.clear()
    field.send_keys(token)
    press(browser, browser.find_element(By.ID, "sign-in"))


def press(browser: webdriver.Chrome, button: WebElement) -> None:
    """Submit a form with its button and wait for the next page. An answer that is not one
    of the inspector's pages (a plain-text 403, say) fails the test with the gateway's words."""
    action = button.find_element(By.XPATH, "ancestor::form").get_attribute("action")
    navigated(browser, button.click)
    if not browser.find_elements(By.TAG_NAME, "main"):
        text = browser.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"the form to {action} was answered: {text!r}", pytrace=False)


def path_of(browser: webdriver.Chrome) -> str:
    parts = urlsplit(browser.current_url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def sent_to_login(browser: webdriver.Chrome) -> str | None:
    """Where the login page will lead back to, if the browser is on it; else None."""
    parts = urlsplit(browser.current_url)
    if parts.path != "/login":
        return None
    return parse_qs(parts.query).get("next", [""])[0]


@dataclass(frozen=True)
class Row:
    """One line of the recent-postbacks table."""

    number: int
    outcome: str  # the row's class
    reason: str
    ymid: str  # td.ymid's text, exactly
    ymid_children: int  # elements inside td.ymid: 0 unless a value became markup
    link: str  # the row's link to its postback


# One round trip for the whole table: it may change under a test between two finds.
_ROWS = """
return Array.from(document.querySelectorAll("#postbacks tbody tr")).map(row => {
  const ymid = row.querySelector("td.ymid");
  return [row.dataset.number, row.className, row.cells[3].textContent, ymid.textContent,
          ymid.childElementCount, row.querySelector("a").getAttribute("href")];
});
"""


def rows(browser: webdriver.Chrome) -> list[Row]:
    """The table's rows as shown, top first."""
    return [Row(int(number), *rest) for number, *rest in browser.execute_script(_ROWS)]


def row_where(**wanted: str) -> Callable[[webdriver.Chrome], Row | None]:
    """A wait_for condition: the top row whose fields have the `wanted` values
    (`ymid="a"`, `outcome="rejected"`, `reason="secret_wrong"`)."""

    def shown(browser: webdriver.Chrome) -> Row | None:
        return next(
            (
                row
                for row in rows(browser)
                if all(getattr(row, name) == value for name, value in wanted.items())
            ),
            None,
        )

    shown.__qualname__ = f"row_where({wanted})"
    return shown


def filter_list(
    browser: webdriver.Chrome, outcome: str = "", reason: str = "", text: str = ""
) -> None:
    """Fill the filter form and press #apply: the page reloads with the filters."""
    Select(browser.find_element(By.ID, "outcome")).select_by_value(outcome)
    for name, value in (("reason", reason), ("text", text)):
        box = browser.find_element(By.ID, name)
        box.clear()
        box.send_keys(value)
    navigated(browser, browser.find_element(By.ID, "apply").click)


def steps(browser: webdriver.Chrome) -> dict[str, str]:
    """The postback page's steps: name -> state (the li's class)."""
    found = {}
    for item in browser.find_elements(By.CSS_SELECTOR, "#steps li"):
        found[item.find_element(By.CLASS_NAME, "name").text] = item.get_attribute("class")
    return found


def table_cells(browser: webdriver.Chrome, table_id: str) -> dict[str, WebElement]:
    """A two-column table (#fields, #query): header text -> its value's cell."""
    return {
        line.find_element(By.TAG_NAME, "th").get_property("textContent"): line.find_element(
            By.TAG_NAME, "td"
        )
        for line in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tr")
    }


def open_postback(browser: webdriver.Chrome, site: Site, **wanted: str) -> None:
    """From the list, follow the link of the top row with the `wanted` values."""
    browser.get(site.url("/postbacks"))
    row = wait_for(browser, row_where(**wanted))
    browser.find_element(By.CSS_SELECTOR, f'tr[data-number="{row.number}"] a').click()
    wait_for(browser, expected_conditions.url_to_be(site.url(row.link)))


def no_secret_in(browser: webdriver.Chrome, *secrets: str) -> None:
    source = browser.page_source
    for secret in secrets:
        assert secret not in source, f"{secret!r} is on {browser.current_url}"


def assert_sent(reply: Reply, outcome: str) -> None:
    assert reply.outcome == outcome, (reply.status, reply.outcome, reply.body)


async def in_browser(scenario: Callable[..., None], *args: Any) -> None:
    """Run a blocking browser scenario off the loop the gateway serves on."""
    await asyncio.to_thread(scenario, *args)


# -- 1. signing in -----------------------------------------------------------------------------


async def test_signing_in_leads_from_the_login_page_to_the_overview(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """Without the cookie a page sends the browser to /login; a wrong token is refused there
    with a message; the right one opens the page first asked for. No page logs a console
    error (a CSP violation would be one)."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        signed_out(browser, site)
        browser.get(site.url("/"))
        wait_for(browser, expected_conditions.presence_of_element_located((By.ID, "token")))
        assert sent_to_login(browser) == "/"
        assert browser.find_elements(By.ID, "login-problem") == []

        login_with(browser, "a-wrong-token-of-enough-length")
        problem = wait_for(
            browser, expected_conditions.visibility_of_element_located((By.ID, "login-problem"))
        )
        assert problem.text == "Wrong token."
        assert browser.get_cookies() == []
        # the page came with status 401, which Chromium reports; nothing else went wrong
        assert [error["message"] for error in console_errors(browser)] == [
            f"{site.url('/login')} - Failed to load resource: the server responded with a"
            " status of 401 (Unauthorized)"
        ]

        login_with(browser, ADMIN_TOKEN)
        wait_for(browser, expected_conditions.url_to_be(site.url("/")))
        assert browser.title == "Overview · monetag-gateway"
        checksum = browser.find_element(By.ID, "checksum").text
        assert checksum == site.config.checksum
        assert [cookie["name"] for cookie in browser.get_cookies()] == ["gateway_admin"]
        for path in ("/postbacks", "/"):  # signed in now: no detour through /login
            browser.get(site.url(path))
            assert path_of(browser) == path
        assert console_errors(browser) == []
        no_secret_in(browser, ADMIN_TOKEN)

    await in_browser(scenario)


# -- 2 and 3. the recent postbacks --------------------------------------------------------------


async def test_new_postbacks_appear_in_the_open_list_without_reloading(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """inspector.js polls /postbacks.json and puts new rows on top: forwarded, rejected and
    duplicate postbacks show within seconds, each with its outcome, newest first, while the
    page stays the same document."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        sign_in(browser, site, "/postbacks")
        assert rows(browser) == []
        browser.execute_script("window.stillTheSamePage = true;")

        assert_sent(site.send("live-forwarded"), "forwarded")
        assert_sent(site.send("live-wrong-key", key=WRONG_KEY), "rejected")
        assert_sent(site.send("live-twice"), "forwarded")
        assert_sent(site.send("live-twice"), "duplicate")

        wait_for(browser, row_where(ymid="live-forwarded", outcome="forwarded"), LIVE)
        wait_for(browser, row_where(outcome="rejected", reason="secret_wrong"), LIVE)
        wait_for(browser, row_where(ymid="live-twice", outcome="duplicate"), LIVE)
        shown = rows(browser)
        assert [(row.outcome, row.reason) for row in shown] == [
            ("duplicate", "duplicate"),
            ("forwarded", ""),
            ("rejected", "secret_wrong"),
            ("forwarded", ""),
        ]
        assert [shown[n].ymid for n in (0, 1, 3)] == ["live-twice", "live-twice", "live-forwarded"]
        numbers = [row.number for row in shown]
        assert numbers == sorted(numbers, reverse=True) and len(set(numbers)) == 4
        assert browser.execute_script("return window.stillTheSamePage === true;")
        assert browser.find_element(By.ID, "live").text == "live"
        assert console_errors(browser) == []

    await in_browser(scenario)


async def test_the_filters_show_only_the_postbacks_asked_for(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """outcome=rejected keeps only rejections, also among rows that arrive live; a reason
    narrows them further; the search finds one postback by its ymid and by its telegram_id."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        assert_sent(site.send("anna-1", telegram_id="7001"), "forwarded")
        assert_sent(site.send("boris-2", telegram_id="7002"), "forwarded")
        assert_sent(site.send("clara-3", key=WRONG_KEY), "rejected")
        assert_sent(site.send("dmitri-4", key=None), "rejected")
        assert_sent(site.send("anna-1", telegram_id="7001"), "duplicate")

        sign_in(browser, site, "/postbacks")
        assert len(rows(browser)) == 5

        filter_list(browser, outcome="rejected")
        assert parse_qs(urlsplit(browser.current_url).query)["outcome"] == ["rejected"]
        assert sorted((row.outcome, row.reason) for row in rows(browser)) == [
            ("rejected", "secret_missing"),
            ("rejected", "secret_wrong"),
        ]
        # live rows get the same filter: the forwarded one, sent first, never shows
        assert_sent(site.send("elena-5"), "forwarded")
        assert_sent(site.send("fyodor-6", key=WRONG_KEY), "rejected")
        wait_for(browser, lambda browser: len(rows(browser)) == 3, LIVE)
        assert {row.outcome for row in rows(browser)} == {"rejected"}

        filter_list(browser, outcome="rejected", reason="secret_missing")
        assert [row.reason for row in rows(browser)] == ["secret_missing"]

        filter_list(browser, text="boris-2")
        assert [row.ymid for row in rows(browser)] == ["boris-2"]

        filter_list(browser, text="7001")  # anna's telegram_id: her postback and its repeat
        assert [(row.ymid, row.outcome) for row in rows(browser)] == [
            ("anna-1", "duplicate"),
            ("anna-1", "forwarded"),
        ]

        filter_list(browser, text="nobody-sent-this")
        assert rows(browser) == []
        filter_list(browser)
        assert len(rows(browser)) == 7

    await in_browser(scenario)


# -- 4. one postback ----------------------------------------------------------------------------


async def test_a_postback_page_tells_each_step_and_never_shows_the_key(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """A wrong key fails at the `secret` step and nothing after it runs; a forwarded postback
    passes every step and shows the app's answer. The replay line leaves the key to the
    shell; neither the key nor the admin token is on any page visited."""
    app = start_upstream(body="granted")
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        assert_sent(site.send("pat-1", telegram_id="424242"), "forwarded")
        assert_sent(site.send("pat-2", key=WRONG_KEY), "rejected")
        sign_in(browser, site, "/postbacks")
        no_secret_in(browser, SECRET, ADMIN_TOKEN)

        open_postback(browser, site, outcome="rejected", reason="secret_wrong")
        assert browser.find_element(By.ID, "verdict").text.startswith("rejected (secret_wrong)")
        assert steps(browser) == {
            "route": "passed",
            "client": "passed",
            "allowlist": "passed",
            "secret": "failed",
            "normalize": "skipped",
            "validate": "skipped",
            "session": "skipped",
            "match": "skipped",
        }
        assert browser.find_elements(By.ID, "attempts") == []
        query = {name: cell.text for name, cell in table_cells(browser, "query").items()}
        assert query == {"uid": "pat-2", "event": "click", "zone": "42"}  # no `token`
        no_secret_in(browser, SECRET, ADMIN_TOKEN, WRONG_KEY)

        open_postback(browser, site, ymid="pat-1", outcome="forwarded")
        assert browser.find_element(By.ID, "verdict").text.startswith("forwarded: answered 200")
        told = steps(browser)
        assert set(told.values()) == {"passed"}
        assert list(told)[-2:] == ["dedup", "deliver"]
        fields = {name: cell.text for name, cell in table_cells(browser, "fields").items()}
        assert fields == {
            "event_type": "click",
            "telegram_id": "424242",
            "ymid": "pat-1",
            "zone_id": "42",
        }
        attempt = browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
        assert len(attempt) == 1
        cells = [cell.text for cell in attempt[0].find_elements(By.TAG_NAME, "td")]
        assert cells[2:5:2] == ["200", "granted"]  # the app's status and its answer
        # the replay line, as the shell splits it, sends the same event again
        words = shlex.split(browser.find_element(By.ID, "curl").text)
        assert words[:2] == ["curl", "-sS"] and words[2].endswith("&token=$MONETAG_SECRET")
        replay = urlsplit(words[2].replace("$MONETAG_SECRET", SECRET))
        assert replay.port is not None
        assert_sent(http_get(replay.port, f"{replay.path}?{replay.query}"), "duplicate")
        no_secret_in(browser, SECRET, ADMIN_TOKEN)

        browser.get(site.url("/"))
        no_secret_in(browser, SECRET, ADMIN_TOKEN)

    await in_browser(scenario)
    assert len(app.for_ymid("pat-1")) == 1


# -- 5. the queue ---------------------------------------------------------------------------------


def dead_letter_of(ymid: str) -> Callable[[webdriver.Chrome], WebElement | None]:
    """A wait_for condition that reloads /queue until `ymid` is a dead letter there."""

    def dead(browser: webdriver.Chrome) -> WebElement | None:
        browser.refresh()
        for line in browser.find_elements(By.CSS_SELECTOR, "#dead tbody tr"):
            if line.find_element(By.CSS_SELECTOR, "td.ymid").text == ymid:
                return line
        return None

    dead.__qualname__ = f"dead_letter_of({ymid!r})"
    return dead


def answered(app: RecordingUpstream, ymid: str) -> list[int | None]:
    return [request.answered for request in app.for_ymid(ymid)]


async def test_a_dead_letter_is_re_driven_from_the_queue_page(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """A queued delivery the app refused (500, and max_attempts 1) is listed as a dead
    letter; once the app is well again, its Re-drive button delivers it, the page says so,
    and the dead letter is gone."""
    app = start_upstream(default=500)
    site = await start_site(queued_config(app, tmp_path / "gw.db", max_attempts=1), app)

    def scenario() -> None:
        assert_sent(site.send("stuck-1"), "queued")
        eventually(lambda: answered(app, "stuck-1") == [500])
        sign_in(browser, site, "/queue")
        dead = wait_for(browser, dead_letter_of("stuck-1"))
        cells = [cell.text for cell in dead.find_elements(By.TAG_NAME, "td")]
        assert cells[2] == "tapper" and cells[4:6] == ["1", "500"]  # route, attempts, status

        app.default = 200
        press(browser, dead.find_element(By.CSS_SELECTOR, "button.retry"))
        done = wait_for(browser, expected_conditions.visibility_of_element_located((By.ID, "done")))
        assert done.text == "1 delivery(ies) pending again"
        eventually(lambda: answered(app, "stuck-1") == [500, 200])

        def no_dead_letters(browser: webdriver.Chrome) -> bool:
            browser.get(site.url("/queue"))
            return not browser.find_elements(By.ID, "dead")

        wait_for(browser, no_dead_letters)
        assert console_errors(browser) == []

        # the postback's own page saw both deliveries, made later by the deliverer
        open_postback(browser, site, ymid="stuck-1", outcome="queued")
        statuses = [
            line.find_elements(By.TAG_NAME, "td")[2].text
            for line in browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
        ]
        assert statuses == ["500", "200"]

    await in_browser(scenario)
    delivered = app.for_ymid("stuck-1")[-1]
    assert (delivered.query["event_type"], delivered.query["zone_id"]) == ("click", "42")
    assert "token" not in delivered.query


# -- 6. what senders write is shown, never run -------------------------------------------------


def assert_shown_as_text(browser: webdriver.Chrome, ymids: Iterable[str]) -> None:
    """Each ymid is a row whose td.ymid holds exactly its characters and no element; nothing
    ran, and nothing even tried to (the CSP would have logged a blocked handler or script)."""
    for ymid in ymids:
        row = wait_for(browser, row_where(ymid=ymid), LIVE)
        assert (row.ymid, row.ymid_children) == (ymid, 0)
    assert_nothing_made_of_markup(browser)


def assert_nothing_made_of_markup(browser: webdriver.Chrome) -> None:
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main svg, main script") == []
    assert not alert_present(browser)
    assert console_errors(browser) == []


async def test_markup_from_senders_is_shown_as_text_everywhere(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """ymids and an unknown parameter (the route forwards unknown ones) holding markup are
    shown character for character: in rows the script adds live, in rows the server renders,
    and on the postback's page. No alert ever opens and no element is made of them."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)
    payloads = [IMG_ONERROR, SCRIPT_CLOSE]

    def scenario() -> None:
        sign_in(browser, site, "/postbacks")
        for ymid in payloads:
            assert_sent(site.send(ymid), "forwarded")
        assert_sent(site.send("xss-extra", note=SVG_ONLOAD, **{SVG_ONLOAD: "1"}), "forwarded")

        assert_shown_as_text(browser, [*payloads, "xss-extra"])  # added live
        browser.refresh()
        assert_shown_as_text(browser, [*payloads, "xss-extra"])  # rendered by the server

        for ymid in payloads:
            open_postback(browser, site, ymid=ymid, outcome="forwarded")
            assert table_cells(browser, "fields")["ymid"].get_property("textContent") == ymid
            assert_nothing_made_of_markup(browser)

        open_postback(browser, site, ymid="xss-extra", outcome="forwarded")
        query = table_cells(browser, "query")
        assert query["note"].get_property("textContent") == SVG_ONLOAD
        assert query[SVG_ONLOAD].get_property("textContent") == "1"
        assert_nothing_made_of_markup(browser)

    await in_browser(scenario)
    assert app.ymids() == {*payloads, "xss-extra"}  # forwarded as they came


async def test_markup_in_a_dead_letter_is_shown_as_text_on_the_queue_page(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """The queue page lists ymids too, read back from the store rather than from memory."""
    app = start_upstream(default=500)
    site = await start_site(queued_config(app, tmp_path / "gw.db", max_attempts=1), app)

    def scenario() -> None:
        assert_sent(site.send(IMG_ONERROR), "queued")
        sign_in(browser, site, "/queue")
        dead = wait_for(browser, dead_letter_of(IMG_ONERROR))
        cell = dead.find_element(By.CSS_SELECTOR, "td.ymid")
        assert cell.get_property("textContent") == IMG_ONERROR
        assert_nothing_made_of_markup(browser)

    await in_browser(scenario)


# -- 7. without the token -------------------------------------------------------------------------


async def test_without_the_cookie_every_page_leads_to_the_login(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """A fresh cookie jar sees no page, only the login; signing out (the header's button)
    ends the session the same way. (The HTTP-level rules: test_inspector_access.py.)"""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        assert_sent(site.send("private-1"), "forwarded")
        signed_out(browser, site)
        for path in ("/", "/postbacks", "/queue", "/postbacks/1"):
            browser.get(site.url(path))
            assert sent_to_login(browser) == path
            assert "private-1" not in browser.page_source

        login_with(browser, ADMIN_TOKEN)
        wait_for(browser, expected_conditions.url_to_be(site.url("/postbacks/1")))
        assert browser.find_element(By.ID, "fields").text.count("private-1") == 1

        press(browser, browser.find_element(By.CSS_SELECTOR, "form.logout button"))
        wait_for(browser, expected_conditions.url_to_be(site.url("/login")))
        assert browser.get_cookies() == []
        browser.get(site.url("/postbacks"))
        assert sent_to_login(browser) == "/postbacks"

    await in_browser(scenario)


# -- 8. the README's screenshots ----------------------------------------------------------------


def busy_app(_: int, request: Received) -> int:
    """The app behind the queued route: down for the ymids that say so."""
    return 500 if request.ymid.startswith("stuck") else 200


@dataclass
class Busy:
    """A gateway with two routes after a realistic mix of postbacks."""

    site: Site
    runner_app: RecordingUpstream
    sent: dict[str, int] = field(default_factory=dict)  # outcome -> postbacks, this minute
    earlier: Counter[str] = field(default_factory=Counter)  # outcome -> postbacks, the hour before


async def busy_site(
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
    hour: bool = False,
) -> Busy:
    """`tapper` (sync) and `runner` (queued, max_attempts 1 so refusals die at once) after
    forwarded postbacks, duplicates, wrong and missing keys, invalid fields and queued ones,
    some of which the app refused. With `hour`, tapper's postbacks of the hour before come
    first (`an_hour_before`)."""
    tapper_app, runner_app = start_upstream(), start_upstream(default=busy_app)
    routes = {
        "tapper": route([upstream(tapper_app.url, retries=0)]),
        "runner": route(
            [upstream(runner_app.url, retries=0)],
            delivery="queued",
            queue={**FAST_QUEUE, "max_attempts": 1},
        ),
    }
    config = gateway_config(routes=routes, server=server_settings(), store=tmp_path / "gw.db")
    busy = Busy(await start_site(config, tapper_app), runner_app)

    def send_mix() -> None:
        site = busy.site
        if hour:
            busy.earlier = an_hour_before(site)
        postbacks: list[tuple[str, dict[str, Any]]] = [
            *[
                (f"u{n:04d}-{kind}", {"telegram_id": str(5550100 + n), "event": kind})
                for n, kind in enumerate(["click", "impression"] * 6)
            ],
            ("u0000-click", {"telegram_id": "5550100"}),  # repeats
            ("u0003-impression", {"telegram_id": "5550103", "event": "impression"}),
            ("u0004-click", {"telegram_id": "5550104"}),
            ("u9001-click", {"key": WRONG_KEY}),
            ("u9002-click", {"key": WRONG_KEY}),
            ("u9003-click", {"key": None}),
            ("u9004-click", {"event": "view"}),
            ("u9005-click", {"zone": "not-a-zone"}),
            *[(f"r{n:04d}", {"route": "runner"}) for n in range(4)],
            ("stuck-7", {"route": "runner"}),
            ("stuck-8", {"route": "runner"}),
        ]
        for ymid, params in postbacks:
            reply = site.send(ymid, **params)
            assert reply.outcome is not None
            busy.sent[reply.outcome] = busy.sent.get(reply.outcome, 0) + 1
        eventually(lambda: runner_app.count() == 6)

    await asyncio.to_thread(send_mix)
    assert busy.sent == {
        "forwarded": 12,
        "duplicate": 3,
        "rejected": 3,
        "invalid": 2,
        "queued": 6,
    }
    return busy


def an_hour_before(site: Site) -> Counter[str]:
    """The hour before now on `tapper`, as its chart counts it: a few postbacks a minute,
    rising and falling, with a copy every third minute and a wrong key every seventh. Real
    postbacks through the gateway (blocking); only the journal's clock is set back, a minute
    at a time, while they are sent, and given back after. Returns outcome -> postbacks."""
    assert site.runtime is not None
    journal = site.runtime.journal
    real = journal.clock
    # the 58 minutes before this one: the oldest stays in the chart's window even if the
    # minute turns before the page is read
    back = MINUTES - 2
    clock = FakeClock(real() - back * 60)
    journal.clock = clock
    sent: Counter[str] = Counter()
    try:
        for minute in range(back):
            users = [f"h{minute:02d}-{n}" for n in range(4 + round(3 * math.sin(minute / 5)))]
            copies = users[:1] if minute % 3 == 0 else []
            for ymid in users + copies:
                sent[site.send(ymid, telegram_id=str(5550200 + minute)).outcome or "?"] += 1
            if minute % 7 == 3:
                sent[site.send(f"h{minute:02d}-x", key=WRONG_KEY).outcome or "?"] += 1
            clock.advance(60)
    finally:
        journal.clock = real
    return sent


async def test_overview_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """Each route's chart has a bar per outcome seen, its figures add up, and it has its
    axes: tapper's hour (a burst this minute, 20 postbacks, over a few a minute before) on
    a value axis up to 20 in fives, clock labels every ten minutes up to "now", all legible
    and inside the drawing."""
    busy = await busy_site(start_upstream, start_site, tmp_path, hour=True)
    earlier = busy.earlier
    assert set(earlier) == {"forwarded", "duplicate", "rejected"}, earlier

    def scenario() -> None:
        sign_in(browser, busy.site, "/")
        tapper = browser.find_element(By.ID, "route-tapper")
        bars = tapper.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
        assert {bar.get_attribute("class") for bar in bars} == {
            "bar forwarded",
            "bar duplicate",
            "bar rejected",
            "bar invalid",
        }
        assert all(float(bar.get_attribute("height")) > 0 for bar in bars)
        assert len({bar.get_attribute("x") for bar in bars}) >= MINUTES - 2  # all but the edge
        total = 20 + sum(earlier.values())
        assert tapper.find_element(By.CLASS_NAME, "total").text == str(total)
        reasons = tapper.find_element(By.CLASS_NAME, "reasons").text
        assert f"secret_wrong {2 + earlier['rejected']}" in reasons, reasons
        assert "secret_missing 1" in reasons

        chart = tapper.find_element(By.CSS_SELECTOR, "svg.chart")
        assert chart.get_attribute("role") == "img"
        named = chart.get_attribute("aria-label")
        assert "postbacks per minute by outcome" in named
        # 20 this minute, unless the minute turned while they were sent (then 10 to 19)
        peak = int(named.rpartition("the busiest minute had ")[2])
        assert 10 <= peak <= 20, named
        texts = drawn_texts(browser, chart)
        values = [text.label for text in texts if text.axis == "values"]
        step = nice_step(peak)
        assert values == [str(value) for value in range(0, scale_top(peak, step) + 1, step)]
        assert peak != 20 or values == ["0", "5", "10", "15", "20"]
        clock = [text.label for text in texts if text.axis == "times"]
        assert clock[-1] == "now" and len(clock) in (6, 7), clock
        minutes = [int(label[:2]) * 60 + int(label[3:]) for label in clock[:-1]]
        assert all(minute % 10 == 0 for minute in minutes), clock
        steps = {(later - sooner) % (24 * 60) for sooner, later in itertools.pairwise(minutes)}
        assert steps == {10}, clock
        fits_and_reads(texts)

        runner = browser.find_element(By.ID, "route-runner")
        assert runner.find_element(By.CSS_SELECTOR, "rect.bar.queued")
        fits_and_reads(drawn_texts(browser, runner.find_element(By.CSS_SELECTOR, "svg.chart")))
        wait_for(browser, lambda b: dead_count(b) == "2")
        assert console_errors(browser) == []
        save_screenshot(browser, "overview")

    def dead_count(browser: webdriver.Chrome) -> str:
        browser.refresh()
        return str(browser.find_element(By.CSS_SELECTOR, "#route-runner dd.dead").text)

    await in_browser(scenario)


async def test_an_hour_without_postbacks_is_a_chart_that_says_so(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """(Not named for "screenshot": a page of nothing is no picture for the README.)"""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        sign_in(browser, site, "/")
        chart = browser.find_element(By.CSS_SELECTOR, "#route-tapper svg.chart")
        assert browser.find_elements(By.CSS_SELECTOR, "#route-tapper rect.bar") == []
        texts = drawn_texts(browser, chart)
        assert [text.label for text in texts if text.axis == "values"] == ["0", "1"]
        assert [text.label for text in texts if text.axis is None] == [
            "no postbacks in the last hour"
        ]
        fits_and_reads(texts)
        assert console_errors(browser) == []

    await in_browser(scenario)


@dataclass(frozen=True)
class Drawn:
    """One text of a chart as Chromium laid it out: its box in the SVG's own units (the
    viewBox's) and its height on the screen, in CSS pixels."""

    label: str
    axis: str | None  # the class of the group it is in: "values", "times", or None
    x: float
    y: float
    width: float
    height: float
    on_screen: float
    view: tuple[float, float]  # the viewBox's width and height


# One round trip for every text of one chart.
_TEXTS = """
const svg = arguments[0], view = svg.viewBox.baseVal;
return Array.from(svg.querySelectorAll("text")).map(text => {
  const box = text.getBBox();
  const axis = text.closest("g")?.getAttribute("class") ?? null;
  return [text.textContent, axis, box.x, box.y, box.width, box.height,
          text.getBoundingClientRect().height, view.width, view.height];
});
"""


def drawn_texts(browser: webdriver.Chrome, chart: WebElement) -> list[Drawn]:
    return [
        Drawn(label, axis, x, y, width, height, on_screen, (view_width, view_height))
        for label, axis, x, y, width, height, on_screen, view_width, view_height in (
            browser.execute_script(_TEXTS, chart)
        )
    ]


def fits_and_reads(texts: list[Drawn]) -> None:
    """Every text is drawn whole inside the viewBox (none clipped at an edge), is at least
    11 CSS pixels high on the screen, and overlaps no other text."""
    assert texts
    for text in texts:
        width, height = text.view
        assert text.width > 0 and text.height > 0, text
        assert text.x >= 0 and text.x + text.width <= width, text
        assert text.y >= 0 and text.y + text.height <= height, text
        assert text.on_screen >= 11, text
    for one, other in itertools.combinations(texts, 2):
        apart = (
            one.x + one.width <= other.x
            or other.x + other.width <= one.x
            or one.y + one.height <= other.y
            or other.y + other.height <= one.y
        )
        assert apart, (one, other)


async def test_recent_postbacks_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """Every postback sent is a row, with its outcome."""
    busy = await busy_site(start_upstream, start_site, tmp_path)

    def scenario() -> None:
        sign_in(browser, busy.site, "/postbacks")
        shown: dict[str, int] = {}
        for row in rows(browser):
            shown[row.outcome] = shown.get(row.outcome, 0) + 1
        assert shown == busy.sent
        assert console_errors(browser) == []
        save_screenshot(browser, "postbacks")

    await in_browser(scenario)


async def test_one_postback_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """A forwarded postback: every step passed, the app's answer, the replay line."""
    busy = await busy_site(start_upstream, start_site, tmp_path)

    def scenario() -> None:
        sign_in(browser, busy.site, "/postbacks")
        open_postback(browser, busy.site, ymid="u0005-impression", outcome="forwarded")
        assert set(steps(browser).values()) == {"passed"}
        assert (
            browser.find_element(By.CSS_SELECTOR, "#attempts tbody td:nth-child(3)").text == "200"
        )
        assert "$MONETAG_SECRET" in browser.find_element(By.ID, "curl").text
        no_secret_in(browser, SECRET, ADMIN_TOKEN)
        save_screenshot(browser, "postback")

    await in_browser(scenario)


async def test_queue_screenshot(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """The two deliveries the app refused are dead letters, each with its Re-drive button."""
    busy = await busy_site(start_upstream, start_site, tmp_path)

    def scenario() -> None:
        sign_in(browser, busy.site, "/queue")

        def dead_ymids(browser: webdriver.Chrome) -> list[str]:
            browser.refresh()
            cells = browser.find_elements(By.CSS_SELECTOR, "#dead td.ymid")
            return sorted(cell.text for cell in cells)

        wait_for(browser, lambda b: dead_ymids(b) == ["stuck-7", "stuck-8"])
        assert len(browser.find_elements(By.CSS_SELECTOR, "#dead button.retry")) == 2
        assert browser.find_element(By.ID, "retry-all").is_displayed()
        stats = browser.find_element(By.ID, "stats").text
        assert "runner 0 4 2" in stats  # pending, delivered, dead
        save_screenshot(browser, "queue")

    await in_browser(scenario)


async def test_login_screenshot(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """The login page a signed-out browser is sent to, with the token field focused."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        signed_out(browser, site)
        browser.get(site.url("/postbacks"))
        field = wait_for(browser, expected_conditions.presence_of_element_located((By.ID, "token")))
        assert field.get_attribute("type") == "password"
        assert browser.switch_to.active_element == field
        assert browser.find_element(By.NAME, "next").get_attribute("value") == "/postbacks"
        save_screenshot(browser, "login")

    await in_browser(scenario)


# -- an attacker with a browser: rebinding, redirects, old sessions -----------------------------


async def test_a_page_rebound_to_the_admin_port_reads_nothing_and_re_drives_nothing(
    browser: webdriver.Chrome,
    start_upstream: UpstreamFactory,
    start_site: SiteFactory,
    tmp_path: Path,
) -> None:
    """A page on evil.example whose name now resolves to 127.0.0.1 (DNS rebinding; here the
    browser's resolver rules) loads this port under its own origin: same-origin to itself, so
    its scripts could read answers. Without a token the inspector is open on loopback; before,
    such a page read /postbacks.json and took the form token from /queue."""
    app = start_upstream(default=500)
    site = await start_site(
        queued_config(app, tmp_path / "gw.db", token=False, max_attempts=1), app
    )
    assert (await asyncio.to_thread(site.send, "private-ymid")).outcome == "queued"
    rebound = f"http://{REBOUND_NAME}:{site.admin_port}"

    def scenario() -> None:
        for path in ("/postbacks.json", "/queue", "/"):
            browser.get(rebound + path)
            text = browser.find_element(By.TAG_NAME, "body").text
            assert "private-ymid" not in text and "form_token" not in browser.page_source
            assert "not known by that name" in text, (path, text[:200])
        # what a script on the rebound page would do: fetch and post, same-origin to it
        outcome = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/queue/retry', {method: 'POST', body: new URLSearchParams({form_token: 'x'})})"
            ".then(r => done(r.status)).catch(e => done(String(e)));"
        )
        assert outcome == 421
        browser.get(site.url("/postbacks.json"))  # by its address, the page is there
        assert "private-ymid" in browser.find_element(By.TAG_NAME, "body").text

    await in_browser(scenario)


async def test_a_sign_in_link_to_another_site_lands_on_the_overview(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """A link `/login?next=/%09/evil.example/phish`: before, the signed-in operator landed on
    the attacker's page (the browser drops the tab, leaving //evil.example/phish)."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        for link in ("/%09/evil.example/phish", "/%0a/evil.example/phish", "/%5Cevil.example"):
            signed_out(browser, site)
            browser.get(site.url("/login?next=" + link))
            login_with(browser, ADMIN_TOKEN)
            wait_for(browser, expected_conditions.url_to_be(site.url("/")))
            assert urlsplit(browser.current_url).hostname == "127.0.0.1", link

    await in_browser(scenario)


async def test_a_cookie_kept_from_before_a_sign_out_opens_nothing(
    browser: webdriver.Chrome, start_upstream: UpstreamFactory, start_site: SiteFactory
) -> None:
    """Before: the cookie was the same for every sign-in and stayed valid after sign-out, so
    one copied from a browser (or sent by the browser to the app on the same host) worked
    forever. Now a sign-out ends that session, whoever holds its cookie."""
    app = start_upstream()
    site = await start_site(tapper_config(app), app)

    def scenario() -> None:
        signed_out(browser, site)
        browser.get(site.url("/"))
        login_with(browser, ADMIN_TOKEN)
        wait_for(browser, expected_conditions.url_to_be(site.url("/")))
        (kept,) = browser.get_cookies()
        press(browser, browser.find_element(By.CSS_SELECTOR, "form.logout button"))
        wait_for(browser, expected_conditions.presence_of_element_located((By.ID, "token")))
        browser.add_cookie({"name": kept["name"], "value": kept["value"], "path": "/"})
        browser.get(site.url("/postbacks"))
        assert sent_to_login(browser) == "/postbacks"

    await in_browser(scenario)
