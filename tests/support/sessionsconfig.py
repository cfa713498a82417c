"""A route with reward sessions, for tests: the test bot's token and a signing key from the
environment, the test page's origin allowed, the Mini App's user forwarded as `user_id`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.gatewayconfig import MONETAG_ALIASES, gateway_config, route, upstream
from tests.support.telegram import TEST_BOT_TOKEN

SIGNING_KEY = "test-ymid-signing-key-0123456789abcdef"
OTHER_SIGNING_KEY = "another-ymid-signing-key-0123456789abc"
ORIGIN = "https://miniapp.example"
SESSIONS_ENV = {"TELEGRAM_BOT_TOKEN": TEST_BOT_TOKEN, "YMID_SIGNING_KEY": SIGNING_KEY}
# Monetag's names for the fields the sessions read, besides the usual test aliases
SESSION_ALIASES = {**MONETAG_ALIASES, "user": "telegram_id", "placement": "request_var"}


def sessions_settings(**overrides: Any) -> dict[str, Any]:
    return {
        "bot_token": "${TELEGRAM_BOT_TOKEN}",
        "signing_keys": ["${YMID_SIGNING_KEY}"],
        "allowed_origins": [ORIGIN],
        **overrides,
    }


def sessions_route(app_url: str, **sessions: Any) -> dict[str, Any]:
    return route(
        [upstream(app_url, retries=0, rename={"telegram_id": "user_id"})],
        aliases=SESSION_ALIASES,
        sessions=sessions_settings(**sessions),
    )


def sessions_config(
    app_url: str, store: str | Path, delivery: str = "sync", **sessions: Any
) -> str:
    """The one route `tapper` (/postback/tapper, ymids at /ymid/tapper) on the store."""
    tapper = sessions_route(app_url, **sessions)
    if delivery != "sync":
        tapper |= {"delivery": delivery, "queue": {"retry_base": "50ms"}}
    return gateway_config(routes={"tapper": tapper}, store=store)
