"""Tests for gateway.normalize: incoming query pairs -> canonical Postback."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidPostback, Problem
from gateway.normalize import Normalizer
from gateway.postback import Postback

ALIASES = {"event": "event_type", "uid": "ymid", "zone": "zone_id"}
AMBIGUOUS = "given more than once with different values"

Pairs = list[tuple[str, str]]


def _normalizer(
    aliases: dict[str, str] = ALIASES, secret_param: str | None = "token"
) -> Normalizer:
    return Normalizer(aliases, secret_param)


@pytest.mark.parametrize(
    ("pairs", "fields", "extras"),
    [
        pytest.param([], {}, (), id="nothing"),
        pytest.param(
            [("uid", "u1"), ("event", "click"), ("zone", "5")],
            {"ymid": "u1", "event_type": "click", "zone_id": "5"},
            (),
            id="aliases-applied",
        ),
        pytest.param(
            [
                ("ymid", "u1"),
                ("zone_id", "5"),
                ("sub_zone_id", "6"),
                ("request_var", "rv"),
                ("telegram_id", "42"),
                ("event_type", "impression"),
                ("reward_event_type", "valued"),
                ("estimated_price", "0.0023"),
            ],
            {
                "ymid": "u1",
                "zone_id": "5",
                "sub_zone_id": "6",
                "request_var": "rv",
                "telegram_id": "42",
                "event_type": "impression",
                "reward_event_type": "valued",
                "estimated_price": "0.0023",
            },
            (),
            id="canonical-names-accepted-directly",
        ),
        pytest.param(
            [("uid", "u1"), ("event_type", "click")],
            {"ymid": "u1", "event_type": "click"},
            (),
            id="alias-and-canonical-mixed",
        ),
        pytest.param(
            [("event", "CLICK"), ("reward_event_type", "Not_Valued")],
            {"event_type": "click", "reward_event_type": "not_valued"},
            (),
            id="event-types-lower-cased",
        ),
        pytest.param(
            [("uid", "User-ABC"), ("request_var", "MiXeD"), ("estimated_price", "1E3")],
            {"ymid": "User-ABC", "request_var": "MiXeD", "estimated_price": "1E3"},
            (),
            id="other-fields-keep-their-case",
        ),
        pytest.param(
            [("Extra", "KeepMe")],
            {},
            (("Extra", "KeepMe"),),
            id="extras-keep-their-case",
        ),
        pytest.param(
            [("uid", "{ymid}"), ("zone", "5")],
            {"zone_id": "5"},
            (),
            id="unexpanded-macro-via-alias-is-missing",
        ),
        pytest.param(
            [
                ("ymid", "{ymid}"),
                ("event_type", "{event_type}"),
                ("reward_event_type", "{reward_event_type}"),
                ("estimated_price", "{estimated_price}"),
                ("sub_zone_id", "{sub_zone_id}"),
            ],
            {},
            (),
            id="unexpanded-macros-are-missing",
        ),
        pytest.param(
            [("ymid", "{ymid}"), ("ymid", "u1")],
            {"ymid": "u1"},
            (),
            id="macro-then-real-value",
        ),
        pytest.param(
            [("ymid", "u1"), ("ymid", "{ymid}")],
            {"ymid": "u1"},
            (),
            id="real-value-then-macro",
        ),
        pytest.param(
            [("ymid", "{other_name}")],
            {},
            (),
            id="any-macro-shaped-value-is-missing",
        ),
        pytest.param(
            [("ymid", "x{ymid}"), ("request_var", "{ymid}x"), ("zone_id", "{}")],
            {"ymid": "x{ymid}", "request_var": "{ymid}x", "zone_id": "{}"},
            (),
            id="partial-macros-are-values",
        ),
        pytest.param(
            [("campaign", "{campaign}")],
            {},
            (("campaign", "{campaign}"),),
            id="macro-in-extra-passes-through",
        ),
        pytest.param(
            [("ymid", "")],
            {"ymid": ""},
            (),
            id="empty-value-is-present",
        ),
        pytest.param(
            [("a", "1"), ("uid", "u1"), ("b", "2"), ("a", "3"), ("c", "")],
            {"ymid": "u1"},
            (("a", "1"), ("b", "2"), ("a", "3"), ("c", "")),
            id="extras-in-order-with-repeats",
        ),
        pytest.param(
            [("token", "s3cret"), ("uid", "u1")],
            {"ymid": "u1"},
            (),
            id="secret-param-removed",
        ),
        pytest.param(
            [("token", "a"), ("token", "b"), ("x", "1")],
            {},
            (("x", "1"),),
            id="repeated-secret-param-removed",
        ),
        pytest.param(
            [("Token", "s3cret")],
            {},
            (("Token", "s3cret"),),
            id="secret-param-name-is-case-sensitive",
        ),
        pytest.param(
            [("ymid", "u1"), ("ymid", "u1")],
            {"ymid": "u1"},
            (),
            id="same-field-twice-equal",
        ),
        pytest.param(
            [("uid", "u1"), ("ymid", "u1")],
            {"ymid": "u1"},
            (),
            id="alias-and-canonical-equal",
        ),
        pytest.param(
            [("event", "Click"), ("event_type", "click")],
            {"event_type": "click"},
            (),
            id="equal-after-lower-casing",
        ),
        pytest.param(
            [("UID", "u1"), ("Ymid", "u2")],
            {},
            (("UID", "u1"), ("Ymid", "u2")),
            id="names-are-case-sensitive",
        ),
    ],
)
def test_normalize(
    pairs: Pairs, fields: dict[str, str], extras: tuple[tuple[str, str], ...]
) -> None:
    postback = _normalizer().normalize(pairs)

    assert postback == Postback(fields, extras)


def test_normalize_without_secret_param_keeps_everything() -> None:
    postback = _normalizer(secret_param=None).normalize([("token", "s3cret"), ("uid", "u1")])

    assert postback == Postback({"ymid": "u1"}, (("token", "s3cret"),))


def test_normalize_never_lets_the_secret_into_the_postback() -> None:
    postback = _normalizer().normalize([("uid", "u1"), ("token", "s3cret-value")])

    assert "s3cret-value" not in repr(postback)


def test_normalize_accepts_any_iterable_of_pairs() -> None:
    postback = _normalizer().normalize(iter([("uid", "u1"), ("x", "y")]))

    assert postback == Postback({"ymid": "u1"}, (("x", "y"),))


@pytest.mark.parametrize(
    ("aliases", "pairs", "fields", "extras"),
    [
        pytest.param(
            {"zone_id": "sub_zone_id"},
            [("zone_id", "7")],
            {"sub_zone_id": "7"},
            (),
            id="canonical-name-as-alias-source-goes-to-target",
        ),
        pytest.param(
            {"zone_id": "sub_zone_id"},
            [("zone_id", "7"), ("sub_zone_id", "7")],
            {"sub_zone_id": "7"},
            (),
            id="canonical-source-and-target-equal",
        ),
        pytest.param(
            {"zone_id": "sub_zone_id", "zone": "zone_id"},
            [("zone", "5"), ("zone_id", "7")],
            {"zone_id": "5", "sub_zone_id": "7"},
            (),
            id="swap-through-aliases",
        ),
        pytest.param(
            {"ymid": "request_var", "request_var": "ymid"},
            [("ymid", "a"), ("request_var", "b")],
            {"request_var": "a", "ymid": "b"},
            (),
            id="two-canonical-names-swapped",
        ),
        pytest.param(
            {},
            [("event", "click")],
            {},
            (("event", "click"),),
            id="no-aliases-alias-name-is-an-extra",
        ),
    ],
)
def test_normalize_with_custom_aliases(
    aliases: dict[str, str],
    pairs: Pairs,
    fields: dict[str, str],
    extras: tuple[tuple[str, str], ...],
) -> None:
    postback = _normalizer(aliases).normalize(pairs)

    assert postback == Postback(fields, extras)


@pytest.mark.parametrize(
    ("pairs", "problems"),
    [
        pytest.param(
            [("ymid", "a"), ("ymid", "b")],
            [Problem("ymid", AMBIGUOUS)],
            id="canonical-twice-different",
        ),
        pytest.param(
            [("uid", "a"), ("ymid", "b")],
            [Problem("ymid", AMBIGUOUS)],
            id="alias-and-canonical-different",
        ),
        pytest.param(
            [("uid", "a"), ("uid", "b")],
            [Problem("ymid", AMBIGUOUS)],
            id="alias-twice-different",
        ),
        pytest.param(
            [("ymid", "a"), ("ymid", "")],
            [Problem("ymid", AMBIGUOUS)],
            id="value-then-empty",
        ),
        pytest.param(
            [("ymid", "a"), ("ymid", "A")],
            [Problem("ymid", AMBIGUOUS)],
            id="differ-only-in-case",
        ),
        pytest.param(
            [("event", "click"), ("event_type", "impression")],
            [Problem("event_type", AMBIGUOUS)],
            id="event-type-via-alias",
        ),
        pytest.param(
            [("uid", "a"), ("zone", "1"), ("ymid", "b"), ("zone_id", "2")],
            [Problem("ymid", AMBIGUOUS), Problem("zone_id", AMBIGUOUS)],
            id="two-fields-each-reported-in-order",
        ),
        pytest.param(
            [("ymid", "a"), ("ymid", "b"), ("ymid", "c")],
            [Problem("ymid", AMBIGUOUS)],
            id="three-different-values-reported-once",
        ),
    ],
)
def test_same_field_with_different_values_is_invalid(pairs: Pairs, problems: list[Problem]) -> None:
    with pytest.raises(InvalidPostback) as caught:
        _normalizer().normalize(pairs)

    assert caught.value.problems == problems
    assert caught.value.reason == "invalid"
    assert caught.value.status == 400


def test_ambiguity_through_canonical_alias_source_names_the_target() -> None:
    with pytest.raises(InvalidPostback) as caught:
        _normalizer({"zone_id": "sub_zone_id"}).normalize([("zone_id", "1"), ("sub_zone_id", "2")])

    assert caught.value.problems == [Problem("sub_zone_id", AMBIGUOUS)]
