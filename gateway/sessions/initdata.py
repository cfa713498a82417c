"""Who asks for a ymid: the Telegram user in the Mini App's `initData`, as Telegram documents
the check (HMAC-SHA256 of the sorted fields, keyed by HMAC-SHA256("WebAppData", bot token);
`auth_date` no older than a configured age).

The check itself is init-data-py's (`validate_by_hash`): it compares in constant time, refuses
a field given twice (the pair hashed and the pair read could otherwise differ), and has no
dependencies; reviewed for this use, and tested here against data signed by the algorithm
written out independently (tests/support/telegram.py). This module turns its verdicts into the
gateway's named reasons, and never repeats what the sender sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from init_data_py import errors, validate_by_hash

MAX_INIT_DATA_BYTES = 8192  # Telegram's are well under 1 KB; more is refused unread
CLOCK_SKEW = 300.0  # seconds Telegram's clock may be ahead of ours
MAX_USER_ID = 2**64  # a ymid holds the user id in 8 unsigned bytes


@dataclass(frozen=True)
class TelegramUser:
    id: int
    auth_date: int  # when Telegram signed the initData (Unix time)


class InitDataRefused(Exception):
    """The initData does not prove a user: `reason` names why, for logs and metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def telegram_user(init_data: str, bot_token: str, *, max_age: float, now: float) -> TelegramUser:
    """The user the initData was signed for, or InitDataRefused (`init_data_malformed`,
    `init_data_forged`: not signed with this bot's token, `init_data_expired`,
    `init_data_no_user`)."""
    if len(init_data.encode()) > MAX_INIT_DATA_BYTES:
        raise InitDataRefused("init_data_malformed", f"longer than {MAX_INIT_DATA_BYTES} bytes")
    if not (math.isfinite(max_age) and max_age > 0):  # the library reads 0 as "any age"
        raise ValueError("max_age must be a positive number of seconds")
    moment = datetime.fromtimestamp(now, UTC)
    try:
        data = validate_by_hash(init_data, bot_token, expires_in=max_age, now=moment)
    except errors.ExpiredError:
        raise InitDataRefused(
            "init_data_expired", f"signed more than {max_age:g} s ago: open the Mini App again"
        ) from None
    except errors.AuthenticityError:
        raise InitDataRefused(
            "init_data_forged", "its hash does not match: not signed with this bot's token"
        ) from None
    except errors.InvalidInitDataError as error:
        raise InitDataRefused("init_data_malformed", _what(error)) from None
    if data.user is None:
        raise InitDataRefused("init_data_no_user", "it names no user")
    if not 0 < data.user.id < MAX_USER_ID:  # Telegram's are positive, well below 2^52
        raise InitDataRefused("init_data_malformed", "its user id is no Telegram user id")
    # signed for a time ahead of ours by more than the skew: one clock is wrong, and such
    # data would stay usable for longer than max_age
    if data.auth_date > now + CLOCK_SKEW:
        raise InitDataRefused("init_data_expired", "signed in the future: check the clock")
    return TelegramUser(data.user.id, data.auth_date)


def _what(error: errors.InvalidInitDataError) -> str:
    """What was wrong, by kind only: the library's messages may quote a value."""
    if isinstance(error, errors.DuplicateFieldError):
        return "a field is given twice"
    if isinstance(error, errors.MissingFieldError):
        return "auth_date or hash is missing"
    return "not Telegram initData (a query string with auth_date, user and hash)"
