"""Reward sessions' two checks, on their own: Telegram's initData (valid, tampered, stale,
for another bot, malformed) and the gateway's signed ymid (issued, verified, forged,
expired, rotated keys, one text per ymid)."""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl, urlencode

import pytest

from gateway.sessions.initdata import InitDataRefused, telegram_user
from gateway.sessions.ymid import (
    LENGTH,
    PLACED_LENGTH,
    YmidRefused,
    YmidSigner,
    key_id,
    placement_hash,
)
from tests.support.telegram import OTHER_BOT_TOKEN, TEST_BOT_TOKEN, signed_init_data

NOW = 1_800_000_000.0
HOUR = 3600.0


def refusal(init_data: str, max_age: float = HOUR, now: float = NOW) -> InitDataRefused:
    with pytest.raises(InitDataRefused) as refused:
        telegram_user(init_data, TEST_BOT_TOKEN, max_age=max_age, now=now)
    return refused.value


def test_valid_init_data_names_its_user():
    user = telegram_user(
        signed_init_data(279058397, int(NOW) - 60), TEST_BOT_TOKEN, max_age=HOUR, now=NOW
    )
    assert (user.id, user.auth_date) == (279058397, int(NOW) - 60)


def test_tampered_init_data_is_forged():
    fields = dict(parse_qsl(signed_init_data(279058397, int(NOW))))
    fields["user"] = fields["user"].replace("279058397", "1")  # another user, same hash
    refused = refusal(urlencode(fields))
    assert refused.reason == "init_data_forged"


def test_init_data_for_another_bot_is_forged():
    assert refusal(signed_init_data(5, int(NOW), OTHER_BOT_TOKEN)).reason == "init_data_forged"


def test_stale_init_data_is_expired_and_a_future_one_too():
    assert refusal(signed_init_data(5, int(NOW - 2 * HOUR))).reason == "init_data_expired"
    future = refusal(signed_init_data(5, int(NOW + 2 * HOUR)))
    assert future.reason == "init_data_expired" and "future" in future.detail


@pytest.mark.parametrize(
    "init_data",
    [
        "",
        "not a query string",
        "auth_date=1&user=%7B%7D",  # no hash
        signed_init_data(5, int(NOW)) + "&auth_date=1",  # a field twice
        "x" * 9000,
    ],
    ids=["empty", "garbage", "no hash", "field twice", "too long"],
)
def test_malformed_init_data_is_named_and_never_quoted(init_data):
    refused = refusal(init_data + "&marker=QUOTED" if init_data else init_data)
    assert refused.reason == "init_data_malformed"
    assert "QUOTED" not in refused.detail and "x" * 20 not in refused.detail


def test_an_age_of_nothing_is_a_mistake_not_any_age():
    """The library reads max age 0 as "any age" (replay forever): refused as a bug instead."""
    for max_age in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError):
            telegram_user(signed_init_data(5, int(NOW)), TEST_BOT_TOKEN, max_age=max_age, now=NOW)


def test_init_data_without_a_user_proves_nobody():
    assert refusal(signed_init_data(None, int(NOW))).reason == "init_data_no_user"


# -- the ymid --------------------------------------------------------------------------------

KEY, OLD_KEY = b"k" * 32, b"o" * 32
EXPIRES = int(NOW + HOUR)


def refused_ymid(signer: YmidSigner, ymid: str, now: float = NOW) -> str:
    with pytest.raises(YmidRefused) as refused:
        signer.verify(ymid, now=now)
    return refused.value.reason


@pytest.mark.parametrize("user_id", [1, 279058397, 7_999_999_999, 2**53])
def test_an_issued_ymid_verifies_to_its_user_and_is_short(user_id):
    signer = YmidSigner([KEY])
    ymid = signer.issue(user_id, expires=EXPIRES)
    assert len(ymid) == LENGTH == 46 and ymid.isascii()
    claims = signer.verify(ymid, now=NOW)
    assert (claims.user_id, claims.expires, claims.placement) == (user_id, EXPIRES, None)
    placed = signer.issue(user_id, expires=EXPIRES, request_var="bonus-lives")
    assert len(placed) == PLACED_LENGTH == 51
    assert signer.verify(placed, now=NOW).placement == placement_hash("bonus-lives")


def test_every_ymid_is_new():
    signer = YmidSigner([KEY])
    assert len({signer.issue(5, expires=EXPIRES) for _ in range(1000)}) == 1000


def test_a_changed_character_is_never_paid():
    signer = YmidSigner([KEY])
    ymid = signer.issue(279058397, expires=EXPIRES)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position in range(len(ymid)):
        for other in alphabet.replace(ymid[position], "")[::7]:
            changed = ymid[:position] + other + ymid[position + 1 :]
            assert refused_ymid(signer, changed) in ("ymid_forged", "ymid_not_issued")


def test_one_text_per_ymid():
    """The last character has spare bits the decoder ignores: a text that differs only there
    decodes to the same bytes, and is refused, so it cannot be paid under its own dedup key."""
    signer = YmidSigner([KEY])
    ymid = signer.issue(5, expires=EXPIRES)
    raw = base64.urlsafe_b64decode(ymid + "==")
    assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == ymid
    spare = "ABCD" if ymid[-1] not in "ABCD" else "QRST"
    twins = [ymid[:-1] + c for c in spare if base64.urlsafe_b64decode(ymid[:-1] + c + "==") == raw]
    for twin in twins:
        assert refused_ymid(signer, twin) == "ymid_not_issued"
    assert refused_ymid(signer, ymid[:20] + "*" + ymid[20:-1]) == "ymid_not_issued"


def test_shapes_that_are_not_ours_are_not_issued():
    signer = YmidSigner([KEY])
    for text in ("", "user-123", "9" * 46, "A" * 46, "é" * 46, signer.issue(5, expires=1)[:-1]):
        assert refused_ymid(signer, text) == "ymid_not_issued", text


def test_an_expired_ymid_is_refused():
    signer = YmidSigner([KEY])
    assert refused_ymid(signer, signer.issue(5, expires=int(NOW) - 1)) == "ymid_expired"


def test_keys_rotate():
    old = YmidSigner([OLD_KEY]).issue(5, expires=EXPIRES)
    rotating = YmidSigner([KEY, OLD_KEY])  # the new key signs, both verify
    assert rotating.verify(old, now=NOW).user_id == 5
    assert rotating.verify(rotating.issue(6, expires=EXPIRES), now=NOW).user_id == 6
    assert refused_ymid(YmidSigner([KEY]), old) == "ymid_not_issued"  # the old key removed


def test_a_key_sharing_the_key_id_is_still_a_wrong_signature():
    """The key id is one byte: another key may share it (1 in 256); its MAC still differs."""
    twin = next(
        candidate
        for candidate in (n.to_bytes(4, "big") * 8 for n in range(100_000))
        if candidate != KEY and key_id(candidate) == key_id(KEY)
    )
    assert refused_ymid(YmidSigner([KEY]), YmidSigner([twin]).issue(5, expires=EXPIRES)) == (
        "ymid_forged"
    )


def test_a_ymid_of_one_route_is_a_wrong_signature_on_another_with_the_same_key():
    """The MAC covers the context (the route): the same key on two routes pays each its own."""
    tapper, runner = YmidSigner([KEY], context="tapper"), YmidSigner([KEY], context="runner")
    ymid = tapper.issue(5, expires=EXPIRES)
    assert tapper.verify(ymid, now=NOW).user_id == 5
    assert refused_ymid(runner, ymid) == "ymid_forged"
    assert refused_ymid(YmidSigner([KEY]), ymid) == "ymid_forged"
