"""Tests for gateway.checks.normalize: incoming query pairs -> canonical Postback."""

from __future__ import annotations

import pytest

from gateway.checks.normalize import NOT_UTF8, Normalizer
from gateway.errors import InvalidPostback, Problem
from gateway.postback import Postback

ALIASES = {"event": "event_type", "uid": "ymid", "zone": "zone_id"}
AMBIGUOUS = "given more than once with different values"

Pairs = list[tuple[str, str]]


def _normalizer(
    aliases: dict[str, str] = ALIASES, secret_param: str | None = "token"
) -> Normalizer:
    """The secret's parameter is one of the names the gateway writes (never from a sender)."""
    return Normalizer(aliases, [secret_param] if secret_param else [])


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
            {},
            (),
            id="empty-value-is-missing",
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
            (),
            id="secret-param-in-any-case-removed",
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
            (("UID", "u1"),),
            id="alias-names-are-case-sensitive-canonical-spellings-dropped",
        ),
    ],
)
def test_normalize(
    pairs: Pairs, fields: dict[str, str], extras: tuple[tuple[str, str], ...]
) -> None:
    postback = _normalizer().normalize(pairs)

    assert (postback.fields, postback.extras) == (fields, extras)


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
    assert caught.value.reason == "ambiguous_fields"
    assert caught.value.status == 400


def test_ambiguity_through_canonical_alias_source_names_the_target() -> None:
    with pytest.raises(InvalidPostback) as caught:
        _normalizer({"zone_id": "sub_zone_id"}).normalize([("zone_id", "1"), ("sub_zone_id", "2")])

    assert caught.value.problems == [Problem("sub_zone_id", AMBIGUOUS)]


# -- canonical values: one spelling per value, for dedup and for the app ----------------------


@pytest.mark.parametrize(
    ("field", "value", "canonical"),
    [
        pytest.param("zone_id", "042", "42", id="leading-zero"),
        pytest.param("zone_id", "0000000000000000000000042", "42", id="many-leading-zeros"),
        pytest.param("zone_id", "000", "0", id="all-zeros-is-zero"),
        pytest.param("zone_id", "0", "0", id="zero-stays"),
        pytest.param("sub_zone_id", "007", "7", id="sub-zone"),
        pytest.param("telegram_id", "0123", "123", id="telegram-id"),
        pytest.param("zone_id", "0x1f", "0x1f", id="hex-left-for-validation"),
        pytest.param("zone_id", "-042", "-042", id="sign-left-for-validation"),
        pytest.param("zone_id", "\u0664\u0662", "\u0664\u0662", id="arabic-digits-left"),
        pytest.param("zone_id", " 42", " 42", id="blank-left-for-validation"),
        pytest.param("estimated_price", "00.50", "0.5", id="price-zeros-both-ends"),
        pytest.param("estimated_price", ".5", "0.5", id="price-bare-fraction"),
        pytest.param("estimated_price", "5.", "5", id="price-bare-point"),
        pytest.param("estimated_price", "2.000", "2", id="price-zero-fraction"),
        pytest.param("estimated_price", "0.000", "0", id="price-zero"),
        pytest.param("estimated_price", "0.0023", "0.0023", id="price-already-plain"),
        pytest.param("estimated_price", "1E3", "1E3", id="price-exponent-left"),
        pytest.param("estimated_price", ".", ".", id="price-lone-point-left"),
        pytest.param("estimated_price", "1.2.3", "1.2.3", id="price-two-points-left"),
        pytest.param("event_type", "CLICK", "click", id="event-lower-cased"),
        pytest.param("ymid", "007", "007", id="ymid-is-text"),
        pytest.param("request_var", "Bonus-Btn", "Bonus-Btn", id="request-var-is-text"),
    ],
)
def test_canonical_value(field: str, value: str, canonical: str) -> None:
    assert Normalizer({}).normalize([(field, value)]).fields[field] == canonical


@pytest.mark.parametrize(
    ("pairs", "fields", "empty"),
    [
        pytest.param([("zone", "042"), ("zone", "42")], {"zone_id": "42"}, set(), id="042-is-42"),
        pytest.param([("zone", ""), ("zone", "42")], {"zone_id": "42"}, set(), id="empty-then-42"),
        pytest.param([("zone", "42"), ("zone", "")], {"zone_id": "42"}, set(), id="42-then-empty"),
        pytest.param([("zone", "")], {}, {"zone_id"}, id="only-empty-is-missing-and-noted"),
        pytest.param([("zone", "{zone_id}")], {}, set(), id="macro-is-missing-not-empty"),
        pytest.param(
            [("estimated_price", "0.50"), ("estimated_price", ".5")],
            {"estimated_price": "0.5"},
            set(),
            id="equal-prices",
        ),
    ],
)
def test_equivalent_spellings_are_one_value(
    pairs: Pairs, fields: dict[str, str], empty: set[str]
) -> None:
    postback = _normalizer().normalize(pairs)

    assert postback.fields == fields
    assert postback.empty == empty


def test_different_values_after_canonicalization_are_still_ambiguous() -> None:
    with pytest.raises(InvalidPostback) as caught:
        _normalizer().normalize([("zone", "042"), ("zone", "43")])

    assert caught.value.problems == [Problem("zone_id", AMBIGUOUS)]


# -- no incoming parameter may pose as a name the gateway writes ------------------------------

WRITTEN = ["user_id", "api_key", "event", "token"]  # renames, static params, the secret's


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        pytest.param("user_id", True, id="rename-target"),
        pytest.param("USER_ID", True, id="upper-case"),
        pytest.param("User_Id", True, id="mixed-case"),
        pytest.param("user.id", True, id="php-reads-dot-as-underscore"),
        pytest.param("user id", True, id="php-reads-space-as-underscore"),
        pytest.param(" user_id", True, id="php-drops-leading-space"),
        pytest.param("user_id[]", True, id="rails-array"),
        pytest.param("user_id[x]", True, id="php-array"),
        pytest.param("user[id", True, id="php-unclosed-bracket-as-underscore"),
        pytest.param("API_KEY", True, id="static-param-in-another-case"),
        pytest.param("Event", True, id="renamed-alias-in-another-case"),
        pytest.param("TOKEN", True, id="secret-parameter-in-another-case"),
        pytest.param("Ymid", True, id="canonical-name-in-another-case"),
        pytest.param("EVENT_TYPE", True, id="canonical-event-type-upper"),
        pytest.param("zone.id", True, id="canonical-with-dot"),
        # Unicode case folding reads the Kelvin sign as k: dropped, the safe side
        pytest.param("api_\u212aey", True, id="kelvin-sign-folds-to-k"),
        pytest.param("userid", False, id="without-underscore"),
        pytest.param("user_idx", False, id="longer-name"),
        pytest.param("xuser_id", False, id="prefixed-name"),
        pytest.param("campaign", False, id="unrelated-extra"),
    ],
)
def test_extra_posing_as_a_written_name_is_dropped(name: str, dropped: bool) -> None:
    normalizer = Normalizer(ALIASES, WRITTEN)

    postback = normalizer.normalize([("uid", "u1"), (name, "victim")])

    assert postback.fields == {"ymid": "u1"}
    assert postback.extras == (() if dropped else ((name, "victim"),))
    assert postback.dropped == ((name,) if dropped else ())


def test_exact_alias_names_are_fields_not_drops() -> None:
    postback = Normalizer(ALIASES, WRITTEN).normalize([("event", "click"), ("uid", "u1")])

    assert postback.fields == {"event_type": "click", "ymid": "u1"}
    assert postback.dropped == ()


def test_drop_unknown_drops_everything_unknown_without_reporting() -> None:
    normalizer = Normalizer(ALIASES, WRITTEN, drop_unknown=True)

    postback = normalizer.normalize([("uid", "u1"), ("user_id", "victim"), ("campaign", "c")])

    assert (postback.extras, postback.dropped) == ((), ())


def test_parameters_that_are_not_utf8_are_refused_by_name() -> None:
    with pytest.raises(InvalidPostback) as caught:
        _normalizer().normalize([("uid", "u1")], ["zone", "%FFname"])

    assert caught.value.problems == [Problem("zone", NOT_UTF8), Problem("%FFname", NOT_UTF8)]


# -- look-alike text: one spelling of the same id ---------------------------------------------


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        pytest.param("cafe\u0301", "caf\u00e9", id="decomposed-is-composed"),
        pytest.param("caf\u00e9", "caf\u00e9", id="composed-stays"),
        pytest.param(
            "\uff21\uff11", "\uff21\uff11", id="full-width-is-not-folded"
        ),  # NFC, not NFKC
        pytest.param("user-42", "user-42", id="ascii-as-sent"),
    ],
)
def test_text_fields_are_put_in_one_unicode_spelling(sent: str, canonical: str) -> None:
    postback = _normalizer().normalize([("uid", sent), ("request_var", sent)])
    assert postback.fields["ymid"] == canonical
    assert postback.fields["request_var"] == canonical
