"""Telegram's initData, signed the way Telegram documents it, written out here on its own
(not with the library the gateway checks it with), for a test bot token."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

TEST_BOT_TOKEN = "7000000001:AAtest-bot-token-for-the-gateway-tests0"
OTHER_BOT_TOKEN = "7000000002:AAanother-bot-token-not-the-gateways00"


def signed_init_data(
    user_id: int | None, auth_date: int, bot_token: str = TEST_BOT_TOKEN, **fields: str
) -> str:
    """A Mini App's `Telegram.WebApp.initData`: the fields, and `hash` = hex HMAC-SHA256 of
    their sorted `key=value` lines, keyed by HMAC-SHA256(key="WebAppData", msg=bot token)."""
    values = {"auth_date": str(auth_date), "query_id": "AAHdF6IQAAAAAN0XohDhrOrc", **fields}
    if user_id is not None:
        values["user"] = json.dumps({"id": user_id, "first_name": "Test"}, separators=(",", ":"))
    check = "\n".join(f"{key}={values[key]}" for key in sorted(values))
    secret = hmac.digest(b"WebAppData", bot_token.encode(), hashlib.sha256)
    values["hash"] = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    return urlencode(values)
