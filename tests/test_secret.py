"""gateway.checks.secret: the shared key check, and the Secret type that hides its value."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.checks.secret import KEY_AS_NAME, Secret, SecretCheck
from gateway.errors import Forbidden

OLD_KEY = "old-key-0123456789"
NEW_KEY = "new-key-9876543210"

IN_QUERY = SecretCheck((Secret(OLD_KEY), Secret(NEW_KEY)), query_param="token")
IN_HEADER = SecretCheck((Secret(OLD_KEY), Secret(NEW_KEY)), header="X-Gateway-Key")


def _query(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return list(pairs)


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("check", "query", "headers"),
    [
        pytest.param(IN_QUERY, _query(("token", OLD_KEY)), _headers(), id="query-first-key"),
        pytest.param(
            IN_QUERY, _query(("token", NEW_KEY)), _headers(), id="query-rotated-second-key"
        ),
        pytest.param(
            IN_QUERY,
            _query(("ymid", "u1"), ("token", OLD_KEY), ("zone_id", "5")),
            _headers(),
            id="query-among-other-params",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY)),
            _headers(("X-Gateway-Key", "wrong")),
            id="query-location-ignores-header",
        ),
        pytest.param(
            IN_HEADER, _query(), _headers(("X-Gateway-Key", OLD_KEY)), id="header-first-key"
        ),
        pytest.param(
            IN_HEADER,
            _query(),
            _headers(("X-Gateway-Key", NEW_KEY)),
            id="header-rotated-second-key",
        ),
        pytest.param(
            IN_HEADER,
            _query(),
            _headers(("x-gateway-key", OLD_KEY)),
            id="header-name-case-insensitive",
        ),
        pytest.param(
            IN_HEADER,
            _query(("token", "wrong")),
            _headers(("X-Gateway-Key", OLD_KEY)),
            id="header-location-ignores-query",
        ),
        pytest.param(
            SecretCheck((Secret(OLD_KEY),), query_param="token"),
            _query(("token", OLD_KEY)),
            _headers(),
            id="single-key",
        ),
    ],
)
def test_verify_accepts_any_configured_key(
    check: SecretCheck, query: list[tuple[str, str]], headers: CIMultiDictProxy[str]
) -> None:
    check.verify(query, headers)  # no exception: the request may go on


@pytest.mark.parametrize(
    ("check", "query", "headers", "detail"),
    [
        pytest.param(
            IN_QUERY,
            _query(),
            _headers(),
            "missing from query parameter 'token'",
            id="query-missing",
        ),
        pytest.param(
            IN_QUERY,
            _query(),
            _headers(("X-Gateway-Key", OLD_KEY)),
            "missing from query parameter 'token'",
            id="query-missing-but-in-header",
        ),
        pytest.param(
            IN_QUERY,
            _query(("Token", OLD_KEY)),
            _headers(),
            "missing from query parameter 'token'",
            id="query-name-is-case-sensitive",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", "wrong-key-0123456789")),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-wrong",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY[:-1])),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-prefix-of-key",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY + "x")),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-key-plus-suffix",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY.upper())),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-different-case",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", f" {OLD_KEY}")),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-leading-space",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY + NEW_KEY)),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-both-keys-concatenated",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", "")),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-empty-string",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", "ключ-0123456789")),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-non-ascii",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY + "\u00e9")),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-key-plus-non-ascii",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", "\udcff")),
            _headers(),
            "wrong key in query parameter 'token'",
            id="query-lone-surrogate",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY), ("token", OLD_KEY)),
            _headers(),
            "given 2 times in query parameter 'token'",
            id="query-right-key-given-twice",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", "wrong"), ("token", OLD_KEY)),
            _headers(),
            "given 2 times in query parameter 'token'",
            id="query-wrong-then-right",
        ),
        pytest.param(
            IN_QUERY,
            _query(("token", OLD_KEY), ("token", NEW_KEY), ("token", "x")),
            _headers(),
            "given 3 times in query parameter 'token'",
            id="query-given-three-times",
        ),
        pytest.param(
            IN_HEADER,
            _query(),
            _headers(),
            "missing from header 'X-Gateway-Key'",
            id="header-missing",
        ),
        pytest.param(
            IN_HEADER,
            _query(("X-Gateway-Key", OLD_KEY)),
            _headers(),
            "missing from header 'X-Gateway-Key'",
            id="header-missing-but-in-query",
        ),
        pytest.param(
            IN_HEADER,
            _query(),
            _headers(("X-Gateway-Key", "wrong")),
            "wrong key in header 'X-Gateway-Key'",
            id="header-wrong",
        ),
        pytest.param(
            IN_HEADER,
            _query(),
            _headers(("X-Gateway-Key", "")),
            "wrong key in header 'X-Gateway-Key'",
            id="header-empty-string",
        ),
        pytest.param(
            IN_HEADER,
            _query(),
            _headers(("X-Gateway-Key", "cl\u00e9")),
            "wrong key in header 'X-Gateway-Key'",
            id="header-non-ascii",
        ),
        pytest.param(
            IN_HEADER,
            _query(),
            _headers(("X-Gateway-Key", OLD_KEY), ("x-gateway-key", NEW_KEY)),
            "given 2 times in header 'X-Gateway-Key'",
            id="header-given-twice-any-case",
        ),
    ],
)
def test_verify_rejects_with_a_named_reason(
    check: SecretCheck,
    query: list[tuple[str, str]],
    headers: CIMultiDictProxy[str],
    detail: str,
) -> None:
    with pytest.raises(Forbidden) as caught:
        check.verify(query, headers)

    named = {"missing": "secret_missing", "given": "secret_repeated", "wrong": "secret_wrong"}
    assert caught.value.reason == named[detail.split()[0]]
    assert caught.value.detail == detail
    assert caught.value.status == 403


def test_an_empty_configured_key_never_matches_an_empty_presented_value() -> None:
    check = SecretCheck((Secret(""),), query_param="token")

    with pytest.raises(Forbidden) as caught:
        check.verify(_query(("token", "")), _headers())

    assert caught.value.detail == "wrong key in query parameter 'token'"


def test_rejection_never_shows_the_keys_or_the_presented_value() -> None:
    presented = "presented-value-42"

    with pytest.raises(Forbidden) as caught:
        IN_QUERY.verify(_query(("token", presented)), _headers())

    shown = [str(caught.value), repr(caught.value), caught.value.detail, str(caught.value.body())]
    for text in shown:
        assert OLD_KEY not in text
        assert NEW_KEY not in text
        assert presented not in text


@pytest.mark.parametrize(
    "show",
    [
        pytest.param(repr, id="repr"),
        pytest.param(str, id="str"),
        pytest.param(lambda secret: f"{secret}", id="f-string"),
        pytest.param(lambda secret: f"{secret!r}", id="f-string-repr"),
        pytest.param(lambda secret: repr([secret]), id="inside-a-list"),
        pytest.param(lambda secret: repr((secret,)), id="inside-a-tuple"),
    ],
)
def test_secret_never_shows_its_value(show: Callable[[Secret], str]) -> None:
    secret = Secret(OLD_KEY)

    shown = show(secret)

    assert OLD_KEY not in shown
    assert "**********" in shown


def test_secret_check_repr_never_shows_the_keys() -> None:
    shown = repr(IN_QUERY)

    assert OLD_KEY not in shown
    assert NEW_KEY not in shown


def test_secret_reveals_its_bytes_on_request() -> None:
    assert Secret(OLD_KEY).reveal() == OLD_KEY.encode()


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        pytest.param(Secret("a"), Secret("a"), True, id="same-value"),
        pytest.param(Secret("a"), Secret("b"), False, id="different-value"),
        pytest.param(Secret("a"), "a", False, id="plain-string-is-not-a-secret"),
        pytest.param(Secret("a"), b"a", False, id="plain-bytes-is-not-a-secret"),
    ],
)
def test_secret_equality(left: Secret, right: object, equal: bool) -> None:
    assert (left == right) is equal


def test_secret_hash_does_not_depend_on_the_value() -> None:
    assert hash(Secret("a")) == hash(Secret("b"))
    assert len({Secret("a"), Secret("a")}) == 1


@pytest.mark.parametrize(
    ("check", "location"),
    [
        pytest.param(IN_QUERY, "query parameter 'token'", id="query"),
        pytest.param(IN_HEADER, "header 'X-Gateway-Key'", id="header"),
    ],
)
def test_location_names_where_the_key_travels(check: SecretCheck, location: str) -> None:
    assert check.location == location


# -- scrubbing: the key never reaches a log line or the app -----------------------------------

Pairs = list[tuple[str, str]]


@pytest.mark.parametrize(
    ("check", "query", "kept", "removed"),
    [
        pytest.param(
            IN_QUERY,
            [("token", OLD_KEY), ("uid", "u1")],
            [("uid", "u1")],
            [],
            id="the-secret-parameter-goes-silently",
        ),
        pytest.param(
            IN_QUERY,
            [("token", "wrong"), ("uid", "u1")],
            [("uid", "u1")],
            [],
            id="the-secret-parameter-goes-whatever-its-value",
        ),
        pytest.param(
            IN_QUERY, [("TOKEN", OLD_KEY)], [], ["TOKEN"], id="upper-case-spelling-with-the-key"
        ),
        pytest.param(
            IN_QUERY, [("Token", "guess")], [], ["Token"], id="other-case-spelling-any-value"
        ),
        pytest.param(IN_QUERY, [("token[]", OLD_KEY)], [], ["token[]"], id="rails-array-spelling"),
        pytest.param(
            IN_QUERY, [("token[x", "v")], [], ["token[x"], id="php-unclosed-bracket-spelling"
        ),
        pytest.param(IN_QUERY, [(" token", "v")], [], [" token"], id="leading-blank-spelling"),
        pytest.param(
            IN_QUERY, [("note", NEW_KEY)], [], ["note"], id="rotated-key-under-another-name"
        ),
        pytest.param(IN_QUERY, [(OLD_KEY, "1")], [], [KEY_AS_NAME], id="key-as-a-name"),
        pytest.param(IN_QUERY, [("uid", OLD_KEY)], [], ["uid"], id="key-as-a-field-value"),
        pytest.param(
            IN_QUERY,
            [("note", OLD_KEY[:-1]), ("note", OLD_KEY + "x"), ("note", OLD_KEY.upper())],
            [("note", OLD_KEY[:-1]), ("note", OLD_KEY + "x"), ("note", OLD_KEY.upper())],
            [],
            id="near-keys-are-not-keys",
        ),
        pytest.param(
            IN_QUERY,
            [("tokens", "v"), ("my_token", "v")],
            [("tokens", "v"), ("my_token", "v")],
            [],
            id="names-merely-containing-the-parameter-stay",
        ),
        pytest.param(
            IN_HEADER,
            [("token", OLD_KEY), ("uid", "u1")],
            [("uid", "u1")],
            ["token"],
            id="header-route-key-sent-in-the-query-too",
        ),
        pytest.param(
            IN_HEADER,
            [("X-Gateway-Key", "v")],
            [("X-Gateway-Key", "v")],
            [],
            id="header-route-has-no-secret-parameter",
        ),
        pytest.param(
            IN_QUERY,
            [("uid", "ключ"), ("v", "")],
            [("uid", "ключ"), ("v", "")],
            [],
            id="non-ascii-and-empty-values-stay",
        ),
    ],
)
def test_scrub_removes_every_trace_of_the_key(
    check: SecretCheck, query: Pairs, kept: Pairs, removed: list[str]
) -> None:
    scrubbed = check.scrub(query)

    assert scrubbed.pairs == kept
    assert scrubbed.removed == removed
    texts = {text for pair in scrubbed.pairs for text in pair} | set(scrubbed.removed)
    assert not texts & {OLD_KEY, NEW_KEY}
