"""The `sessions:` section of a route: what it needs, what it refuses, and that its secrets
(the bot token, the signing keys) never show in a problem or in `check`'s output."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gateway.config.model import SessionsMode
from gateway.summary import summarize
from tests.support.configedit import DROP, ConfigEdits, assert_problem_at
from tests.support.processes import SECRET
from tests.support.sessionsconfig import SESSIONS_ENV, SIGNING_KEY, sessions_config
from tests.support.telegram import TEST_BOT_TOKEN

BASE = yaml.safe_load(sessions_config("http://127.0.0.1:3000/postback", "/tmp/never-opened.db"))
EDITS = ConfigEdits(BASE, {"MONETAG_SECRET": SECRET, **SESSIONS_ENV})
S = "routes.tapper.sessions"


def test_defaults_and_the_dedup_key_sessions_need() -> None:
    config = EDITS.parse({})
    (route,) = config.routes
    sessions = route.sessions
    assert sessions is not None
    assert sessions.path == "/ymid/tapper"
    assert sessions.mode == SessionsMode.ENFORCE
    assert (sessions.ttl, sessions.init_data_max_age, sessions.no_postback_after) == (
        3600.0,
        3600.0,
        900.0,
    )
    assert sessions.bot_token.reveal().decode() == TEST_BOT_TOKEN
    # each issued ymid pays once per event type: the default key, without zone_id
    assert set(route.dedup.key) == {"ymid", "event_type"}


@pytest.mark.parametrize(
    ("changes", "where", "phrase"),
    [
        ({f"{S}.bot_token": DROP}, f"{S}.bot_token", "is required"),
        ({f"{S}.bot_token": "not-a-token"}, f"{S}.bot_token", "not a bot token"),
        ({f"{S}.signing_keys": ["short"]}, f"{S}.signing_keys[0]", "at least 32"),
        ({f"{S}.signing_keys": [SIGNING_KEY, SIGNING_KEY]}, f"{S}.signing_keys", "twice"),
        ({f"{S}.signing_keys": []}, f"{S}.signing_keys", "at least one key"),
        ({f"{S}.allowed_origins": ["*"]}, f"{S}.allowed_origins[0]", "any site"),
        ({f"{S}.allowed_origins": ["http://app.example"]}, f"{S}.allowed_origins[0]", "https"),
        ({f"{S}.allowed_origins": ["https://a.example/path"]}, f"{S}.allowed_origins[0]", "path"),
        ({f"{S}.mode": "audit"}, f"{S}.mode", "enforce"),
        ({f"{S}.ttl": "0s"}, f"{S}.ttl", ""),
        ({f"{S}.per_user_per_minute": 0}, f"{S}.per_user_per_minute", ""),
        ({f"{S}.placements": [""]}, f"{S}.placements[0]", "1 to 64"),
        ({f"{S}.placements": ["x" * 65]}, f"{S}.placements[0]", "1 to 64"),
        ({f"{S}.path": "/postback/tapper"}, f"{S}.path", "route 'tapper'"),
        ({f"{S}.path": "/postback"}, f"{S}.path", "route 'tapper'"),
        ({f"{S}.zz": 1}, f"{S}.zz", "unknown key"),
        (
            {"routes.tapper.dedup": {"key": ["ymid", "event_type", "zone_id"]}},
            "routes.tapper.dedup.key",
            "once per event type",
        ),
        ({"routes.tapper.dedup": {"ttl": "30m"}}, f"{S}.ttl", "dedup.ttl"),
        ({"store": "memory"}, S, "needs the store"),
        ({"history": {"enabled": False}}, S, "needs the store"),
    ],
)
def test_a_sessions_problem_names_its_key(changes: dict[str, Any], where: str, phrase: str) -> None:
    assert_problem_at(EDITS.problems(EDITS.text(changes)), where, phrase)


def test_two_routes_cannot_share_a_session_path() -> None:
    other = {**copy.deepcopy(BASE["routes"]["tapper"]), "path": "/postback/runner"}
    text = EDITS.text(
        {
            "routes.runner": other,
            f"{S}.path": "/ymid/app",
            "routes.runner.sessions.path": "/ymid/app",
        }
    )
    assert_problem_at(EDITS.problems(text), "routes.runner.sessions.path", "already")


def test_log_only_and_no_origins_are_warned_about() -> None:
    config = EDITS.parse({f"{S}.mode": "log_only", f"{S}.allowed_origins": DROP})
    warnings = "\n".join(config.warnings)
    assert "log_only" in warnings and "still paid" in warnings
    assert "allowed_origins: none" in warnings


def test_the_sessions_secrets_never_show() -> None:
    bad = EDITS.text({f"{S}.bot_token": 12345})
    problems = EDITS.problems(bad)
    assert not any("12345" in problem for problem in problems)
    config = EDITS.parse({})
    shown = summarize(config, "config.yaml") + repr(config)
    assert "sessions  enforce, ymids at /ymid/tapper" in shown
    assert TEST_BOT_TOKEN not in shown and SIGNING_KEY not in shown
    assert TEST_BOT_TOKEN.split(":")[1] not in shown
