"""The Mini App demo (`scripts/run --miniapp`) for real: the demo app and the gateway as
processes, the shipped config.miniapp.yaml with its ports changed, and Chromium clicking
through the page the demo app serves."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions

from gateway.demo_app import DEMO_USER_ID, signed_init_data
from gateway.sessions.initdata import telegram_user
from tests.support.browser import browser, console_errors, wait_for
from tests.support.configedit import edited
from tests.support.processes import (
    REPO,
    SECRET,
    answers,
    command_env,
    free_port,
    gateway_command,
    spawn_gateway,
)
from tests.support.telegram import TEST_BOT_TOKEN
from tests.support.telegram import signed_init_data as telegram_signed
from tests.support.waiting import eventually

__all__ = ["browser"]

SHIPPED = REPO / "config.miniapp.yaml"


def sessions_env(**extra: str) -> dict[str, str]:
    """What config.miniapp.yaml reads: the route key, the bot's token, a ymid signing key."""
    return command_env(
        SECRET,
        TELEGRAM_BOT_TOKEN=TEST_BOT_TOKEN,
        YMID_SIGNING_KEY=secrets.token_hex(32),
        **extra,
    )


@dataclass
class MiniAppDemo:
    """The demo app serving the page, and the gateway it asks for ymids and sends postbacks."""

    app_port: int
    gateway: subprocess.Popen[bytes]
    app: subprocess.Popen[bytes]
    logs: Path

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/miniapp"

    def rewards(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.app_port}/rewards"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return list(json.loads(answer.read()))

    def output(self) -> str:
        """Both processes' logs, for a failure's message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}"
            for path in sorted(self.logs.glob("*.log"))
        )

    def stop(self) -> None:
        for process in (self.gateway, self.app):
            process.terminate()
        for process in (self.gateway, self.app):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture
def miniapp_demo(tmp_path: Path) -> Iterator[MiniAppDemo]:
    app_port, public, admin = free_port(), free_port(), free_port()
    origin = f"http://127.0.0.1:{app_port}"  # the page's, which the gateway must allow (CORS)
    config = tmp_path / "config.miniapp.yaml"
    changes = {
        "server.listen": f"127.0.0.1:{public}",
        "server.admin_listen": f"127.0.0.1:{admin}",
        "store.path": str(tmp_path / "gateway.db"),
        "routes.miniapp.upstreams.0.url": f"{origin}/postback",
        "routes.miniapp.sessions.allowed_origins": [origin],
    }
    config.write_text(edited(yaml.safe_load(SHIPPED.read_text()), changes))
    env = sessions_env()
    command = [sys.executable, "-m", "gateway.demo_app", "--port", str(app_port)]
    with (tmp_path / "app.log").open("wb") as log:
        app = subprocess.Popen(
            [*command, "--gateway-url", f"http://127.0.0.1:{public}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gateway = spawn_gateway(config, env, tmp_path / "gateway.log", tmp_path / "gateway.err.log")
    demo = MiniAppDemo(app_port, gateway, app, tmp_path)
    try:
        eventually(lambda: answers(admin), 20, explain=demo.output)
        eventually(lambda: answers(app_port, "/rewards"), 20, explain=demo.output)
        yield demo
    finally:
        demo.stop()


def text_of(browser: webdriver.Chrome, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def says(element_id: str, text: str) -> Any:
    """A wait condition: the element with this id shows `text`."""
    return expected_conditions.text_to_be_present_in_element((By.ID, element_id), text)


@pytest.mark.browser
@pytest.mark.process
def test_page_gets_a_ymid_and_its_ad_rewards_the_verified_user_once(
    browser: webdriver.Chrome, miniapp_demo: MiniAppDemo
) -> None:
    console_errors(browser)  # what earlier tests left in the console
    browser.get(miniapp_demo.page_url)
    browser.find_element(By.ID, "get-ymid").click()
    wait_for(browser, expected_conditions.element_to_be_clickable((By.ID, "show-ad")))
    ymid = text_of(browser, "ymid")
    assert ymid and ymid != "none yet", text_of(browser, "state")

    browser.find_element(By.ID, "show-ad").click()
    wait_for(browser, says("state", "Reward granted!"), 20)
    assert text_of(browser, "event-type") == "impression"
    assert text_of(browser, "postback") == "the gateway answered 200 forwarded"
    rewards = miniapp_demo.rewards()
    assert rewards == [{"user_id": str(DEMO_USER_ID), "ymid": ymid, "event_type": "impression"}]

    # Monetag's retry of the same postback: answered, not forwarded, not paid again
    browser.find_element(By.ID, "show-ad").click()
    wait_for(browser, says("postback", "the gateway answered 200 duplicate"))
    wait_for(browser, says("state", "Reward granted!"), 20)
    assert miniapp_demo.rewards() == rewards
    assert console_errors(browser) == []


@pytest.mark.process
def test_shipped_miniapp_config_passes_check_without_warnings(tmp_path: Path) -> None:
    env = sessions_env(GATEWAY_STORE=str(tmp_path / "gateway.db"))
    result = gateway_command("check", "--config", str(SHIPPED), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower()
    assert "sessions  enforce, ymids at /ymid/miniapp" in result.stdout


def test_demo_init_data_is_signed_as_telegram_documents_it() -> None:
    now = int(time.time())
    signed = signed_init_data(DEMO_USER_ID, now, TEST_BOT_TOKEN)
    verified = telegram_user(signed, TEST_BOT_TOKEN, max_age=60, now=now)
    assert (verified.id, verified.auth_date) == (DEMO_USER_ID, now)
    # the same fields, signed by the algorithm written out on its own: the same hash
    user = json.dumps({"id": DEMO_USER_ID, "first_name": "Demo"}, separators=(",", ":"))
    independent = telegram_signed(
        None, now, TEST_BOT_TOKEN, query_id="AAdemo-query-0001", user=user
    )
    assert signed == independent
