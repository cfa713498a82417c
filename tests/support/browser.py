"""A real browser for tests of the gateway's pages: Debian's chromium, headless, driven by
Selenium through Debian's chromedriver.

`browser` is one Chrome session for the whole run (starting one costs about a second), so a
test gets whatever the previous one left: cookies, an open page, console entries it did not
read. Tests that care clear what they care about (`browser.delete_all_cookies()`, reading
`console_errors` once before acting).

Selenium calls block. A test whose server runs on the test's own event loop (an async test,
`start_gateway`) makes them through `asyncio.to_thread`, or the page it asks for never comes;
servers in threads or processes (`RecordingUpstream`, `Harness`) need no such care.

Use it by name: `from tests.support.browser import browser`, with `__all__ = ["browser"]` in
the test module so linters see the import is used.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.processes import REPO

T = TypeVar("T")

SCREENSHOTS = REPO / "docs" / "screenshots"
WINDOW_SIZE = "1280,900"  # the size README screenshots are taken at
REBOUND_NAME = "evil.example"  # resolves to 127.0.0.1 in this browser (a rebinding's result)
MISSING = "{what} is not on the PATH: ./scripts/test installs chromium and chromium-driver"


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    """A headless Chromium for the whole run, quit at the end. Never skipped: a missing browser
    fails every test that wants one, as a missing redis-server or PostgreSQL does."""
    chromium, chromedriver = _installed("chromium"), _installed("chromedriver")
    # Both paths are given, so Selenium never runs selenium-manager; were it ever to, offline
    # mode keeps it from downloading a browser or a driver.
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory(prefix="browser-profile-") as profile:
        driver = webdriver.Chrome(
            options=_options(chromium, profile),
            service=Service(executable_path=chromedriver),
        )
        try:
            yield driver
        finally:
            driver.quit()


def _installed(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(MISSING.format(what=program), pytrace=False)
    return path


def _options(chromium: str, profile: str) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers' /dev/shm is often too small for it
        "--disable-gpu",
        f"--window-size={WINDOW_SIZE}",
        f"--user-data-dir={profile}",  # a fresh profile: nothing from a desktop session
        # an attacker's name, resolved to this machine, as a DNS rebinding makes it
        f"--host-resolver-rules=MAP {REBOUND_NAME} 127.0.0.1",
    ):
        options.add_argument(flag)
    # The console, for `console_errors` (a CSP violation is a SEVERE entry there).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def wait_for(
    browser: webdriver.Chrome, condition: Callable[[webdriver.Chrome], T], seconds: float = 10
) -> T:
    """The first truthy value of `condition(browser)` (an `expected_conditions` one, or any
    function of the driver) within `seconds`. On timeout the test fails naming the condition,
    the page it was on and the console errors there, rather than with a bare TimeoutException."""
    try:
        return WebDriverWait(browser, seconds).until(condition)
    except TimeoutException:
        pytest.fail(
            f"waited {seconds}s for {_described(condition)} on {browser.current_url}"
            f" ({browser.title!r}); console errors: {console_errors(browser)}",
            pytrace=False,
        )


def navigated(browser: webdriver.Chrome, action: Callable[[], object], seconds: float = 10) -> None:
    """Run `action` (a click that submits or follows a link) and wait until the browser shows
    another document. A marker set on the old page's window is gone once the new one loads.
    (`staleness_of` races the navigation: chromedriver may then answer "Node with given id
    does not belong to the document" instead of reporting the element stale.)"""
    browser.execute_script("window.__before_navigation = true;")
    action()

    def new_document(driver: webdriver.Chrome) -> bool:
        return bool(driver.execute_script("return window.__before_navigation === undefined;"))

    try:
        WebDriverWait(browser, seconds, ignored_exceptions=(WebDriverException,)).until(
            new_document
        )
    except TimeoutException:
        pytest.fail(f"no new page within {seconds}s of the click on {browser.current_url}")


def console_errors(browser: webdriver.Chrome) -> list[dict[str, Any]]:
    """The SEVERE console entries (`message`, `source`, `level`, `timestamp`) since the last
    call: Chromium hands each entry out once, so a test sees only what happened since then."""
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def alert_present(browser: webdriver.Chrome) -> bool:
    """Whether an alert() is open now: for XSS tests, the proof that no injected script ran.
    An open alert is dismissed, so the shared browser stays usable for the next test. (Any
    other Selenium call that meets an alert fails with UnexpectedAlertPresentException, so an
    alert is never passed over silently either.)"""
    try:
        alert = browser.switch_to.alert
    except NoAlertPresentException:
        return False
    alert.dismiss()
    return True


def save_screenshot(browser: webdriver.Chrome, name: str) -> Path | None:
    """Save the window as docs/screenshots/`name`.png for the README, only when
    UPDATE_SCREENSHOTS=1 (scripts/screenshots sets it): ordinary runs leave the tree clean.
    Returns the file written, or None."""
    if os.environ.get("UPDATE_SCREENSHOTS") != "1":
        return None
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if not browser.save_screenshot(str(path)):
        pytest.fail(f"could not save the screenshot {path}", pytrace=False)
    return path


def add_cookie_for(browser: webdriver.Chrome, base_url: str, name: str, value: str) -> None:
    """Set a cookie for `base_url`'s site. WebDriver only sets cookies for the page's own
    domain, so this opens `base_url` first."""
    browser.get(base_url)
    browser.add_cookie({"name": name, "value": value, "path": "/"})


def _described(condition: Callable[..., object]) -> str:
    """A readable name for a wait's condition: `visibility_of_element_located(('id', 'x'))`
    for an expected_conditions closure, the source for a lambda, else its qualified name."""
    name = getattr(condition, "__qualname__", repr(condition))
    if "<lambda>" in name:
        try:
            return inspect.getsource(condition).strip()
        except (OSError, TypeError):
            return name
    outer, found, _ = name.partition(".<locals>")
    cells = getattr(condition, "__closure__", None) or ()
    try:
        captured = [repr(cell.cell_contents) for cell in cells]
    except ValueError:  # a cell not yet filled
        return name
    return f"{outer}({', '.join(captured)})" if found and captured else name
