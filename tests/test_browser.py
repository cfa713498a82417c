"""The browser tests' own tools, over real sockets: the `browser` fixture and the helpers of
tests/browser.py against a small aiohttp site on 127.0.0.1.

The site sends the strict Content-Security-Policy the gateway's pages are meant to send, so
these tests also prove what those pages rely on: this Chromium runs scripts from 'self' and
refuses inline ones, and says so on its console. The site runs on the test's event loop, so
every Selenium call goes through `asyncio.to_thread` (see tests/browser.py).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions

import tests.support.browser
from tests.support.browser import (
    _installed,
    add_cookie_for,
    alert_present,
    browser,
    console_errors,
    save_screenshot,
    wait_for,
)

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the fixture, used by name

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
WRITTEN = "written by /app.js"
APP_JS = f'document.getElementById("out").textContent = "{WRITTEN}";\n'
INLINE_ALERT = "<script>alert(1)</script>"


def page(body: str) -> str:
    # The data: icon keeps Chromium from asking for /favicon.ico: a 404 there would be a
    # console error of its own.
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>browser test</title>'
        f'<link rel="icon" href="data:,"></head><body>{body}</body></html>'
    )


WRITES = '<p id="out"></p><script src="/app.js"></script>'


def html_page(body: str, csp: bool = True) -> web.Response:
    headers = {"Content-Security-Policy": CSP} if csp else {}
    return web.Response(text=page(body), content_type="text/html", headers=headers)


async def index(request: web.Request) -> web.Response:
    return html_page(WRITES)


async def inline(request: web.Request) -> web.Response:
    """The inline script comes before app.js: once app.js has written, the parser is past it."""
    return html_page(INLINE_ALERT + WRITES)


async def inline_without_csp(request: web.Request) -> web.Response:
    return html_page(INLINE_ALERT + WRITES, csp=False)


async def cookie(request: web.Request) -> web.Response:
    shown = html.escape(request.cookies.get("session", "(none)"))
    return html_page(f'<p id="cookie">{shown}</p>')


async def app_js(request: web.Request) -> web.Response:
    return web.Response(text=APP_JS, content_type="text/javascript")


@pytest.fixture
async def site() -> AsyncIterator[str]:
    """The site's base URL (no trailing slash), served on the test's loop."""
    app = web.Application()
    for path, handler in [
        ("/", index),
        ("/inline", inline),
        ("/inline-without-csp", inline_without_csp),
        ("/cookie", cookie),
        ("/app.js", app_js),
    ]:
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def written(browser: webdriver.Chrome) -> str:
    """What app.js wrote into the page ("" until it has)."""
    return browser.find_element(By.ID, "out").text


def open_until_written(browser: webdriver.Chrome, url: str) -> str:
    console_errors(browser)  # drop what earlier tests left on the console
    browser.get(url)
    return wait_for(browser, written)


async def test_a_script_from_self_runs_under_the_csp(browser: webdriver.Chrome, site: str) -> None:
    assert await asyncio.to_thread(open_until_written, browser, site + "/") == WRITTEN
    assert await asyncio.to_thread(console_errors, browser) == []


async def test_an_inline_script_does_not_run_under_the_csp(
    browser: webdriver.Chrome, site: str
) -> None:
    assert await asyncio.to_thread(open_until_written, browser, site + "/inline") == WRITTEN
    assert not await asyncio.to_thread(alert_present, browser)
    errors = await asyncio.to_thread(console_errors, browser)
    assert any(
        error["source"] == "security"
        and "inline script" in error["message"]
        and "Content Security Policy" in error["message"]
        for error in errors
    ), errors


async def test_alert_present_sees_an_alert_and_dismisses_it(
    browser: webdriver.Chrome, site: str
) -> None:
    """Without the CSP the same page's alert runs: `alert_present` is not just always False."""
    await asyncio.to_thread(browser.get, site + "/inline-without-csp")
    assert await asyncio.to_thread(wait_for, browser, alert_present)
    assert not await asyncio.to_thread(alert_present, browser)
    assert await asyncio.to_thread(wait_for, browser, written) == WRITTEN


async def test_add_cookie_for_sends_the_cookie_to_the_site(
    browser: webdriver.Chrome, site: str
) -> None:
    def shown_cookie() -> str:
        add_cookie_for(browser, site + "/", "session", "token-123")
        browser.get(site + "/cookie")
        text = browser.find_element(By.ID, "cookie").text
        browser.delete_all_cookies()
        return text

    assert await asyncio.to_thread(shown_cookie) == "token-123"


async def test_wait_for_fails_naming_what_it_waited_for(
    browser: webdriver.Chrome, site: str
) -> None:
    def wait_in_vain() -> None:
        browser.get(site + "/")
        wait_for(browser, expected_conditions.title_is("never this"), seconds=0.3)

    with pytest.raises(pytest.fail.Exception) as failure:
        await asyncio.to_thread(wait_in_vain)
    message = str(failure.value)
    assert "waited 0.3s for title_is('never this')" in message, message
    assert site + "/" in message, message


async def test_pictures_are_saved_only_when_asked(
    browser: webdriver.Chrome, site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Not named for "screenshot": scripts/screenshots runs the tests selected by that word.)"""
    monkeypatch.setattr(tests.support.browser, "SCREENSHOTS", tmp_path)
    await asyncio.to_thread(browser.get, site + "/")
    monkeypatch.delenv("UPDATE_SCREENSHOTS", raising=False)
    assert await asyncio.to_thread(save_screenshot, browser, "index") is None
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("UPDATE_SCREENSHOTS", "1")
    saved = await asyncio.to_thread(save_screenshot, browser, "index")
    assert saved == tmp_path / "index.png"
    assert saved.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_missing_program_fails_saying_how_to_install_it() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"\./scripts/test installs chromium and "):
        _installed("chromium-that-is-not-installed")
