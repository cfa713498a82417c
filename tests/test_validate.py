"""gateway.checks.validate: field rules, each failure naming the parameter and the problem."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from gateway.checks.normalize import Normalizer
from gateway.checks.validate import Validator
from gateway.errors import InvalidPostback, Problem
from gateway.postback import Postback

REQUIRED = "is required"
EMPTY = "must not be empty"
EVENT_TYPES = "must be one of ['click', 'impression']"
REWARD_EVENT_TYPES = "must be one of ['not_valued', 'valued']"
WHOLE = "must be a whole number"
DECIMAL = "must be a non-negative decimal number"


def _problems(
    required: list[str], fields: dict[str, str], max_price: Decimal | None = None
) -> list[Problem]:
    """The problems Validator(required) reports for `fields` as they arrive (normalized first,
    as in the pipeline); [] when it accepts them."""
    validator = Validator(required) if max_price is None else Validator(required, max_price)
    try:
        validator.validate(Normalizer({}).normalize(fields.items()))
    except InvalidPostback as error:
        return error.problems
    return []


@pytest.mark.parametrize(
    ("required", "fields", "problems"),
    [
        pytest.param([], {}, [], id="nothing-required-nothing-given"),
        pytest.param(["ymid"], {"ymid": "u1"}, [], id="required-present"),
        pytest.param(["ymid"], {}, [Problem("ymid", REQUIRED)], id="required-missing"),
        pytest.param(["ymid"], {"ymid": ""}, [Problem("ymid", EMPTY)], id="required-empty"),
        pytest.param(
            ["ymid", "event_type"],
            {"ymid": ""},
            [Problem("ymid", EMPTY), Problem("event_type", REQUIRED)],
            id="empty-and-missing-distinct",
        ),
        pytest.param(
            ["zone_id"],
            {"zone_id": "x"},
            [Problem("zone_id", WHOLE)],
            id="required-present-but-bad-reports-only-the-value",
        ),
        pytest.param([], {"ymid": ""}, [], id="optional-empty-is-fine"),
        pytest.param([], {"ymid": " "}, [], id="ymid-is-free-text"),
    ],
)
def test_required_fields(
    required: list[str], fields: dict[str, str], problems: list[Problem]
) -> None:
    assert _problems(required, fields) == problems


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        pytest.param("event_type", "impression", None, id="event-impression"),
        pytest.param("event_type", "click", None, id="event-click"),
        pytest.param("event_type", "", None, id="event-empty-optional"),
        pytest.param("event_type", "Click", None, id="event-lower-cased-by-normalization"),
        pytest.param("event_type", "view", EVENT_TYPES, id="event-unknown"),
        pytest.param("event_type", "click ", EVENT_TYPES, id="event-trailing-space"),
        pytest.param("event_type", "valued", EVENT_TYPES, id="event-reward-value"),
        pytest.param("reward_event_type", "valued", None, id="reward-valued"),
        pytest.param("reward_event_type", "not_valued", None, id="reward-not-valued"),
        pytest.param("reward_event_type", "", None, id="reward-empty-optional"),
        pytest.param("reward_event_type", "not-valued", REWARD_EVENT_TYPES, id="reward-dash"),
        pytest.param("reward_event_type", "click", REWARD_EVENT_TYPES, id="reward-event-value"),
        pytest.param("reward_event_type", "true", REWARD_EVENT_TYPES, id="reward-boolean"),
        pytest.param("zone_id", "0", None, id="zone-zero"),
        pytest.param("zone_id", "1234567", None, id="zone-digits"),
        pytest.param("zone_id", "007", None, id="zone-leading-zeros"),
        pytest.param("zone_id", "", None, id="zone-empty-optional"),
        pytest.param("zone_id", "-1", WHOLE, id="zone-negative"),
        pytest.param("zone_id", "+1", WHOLE, id="zone-plus-sign"),
        pytest.param("zone_id", "1.0", WHOLE, id="zone-decimal"),
        pytest.param("zone_id", "1e3", WHOLE, id="zone-exponent"),
        pytest.param("zone_id", " 1", WHOLE, id="zone-leading-space"),
        pytest.param("zone_id", "1 ", WHOLE, id="zone-trailing-space"),
        pytest.param("zone_id", "1\n", WHOLE, id="zone-trailing-newline"),
        pytest.param("zone_id", "1_000", WHOLE, id="zone-underscore"),
        pytest.param("zone_id", "0x1f", WHOLE, id="zone-hex"),
        pytest.param("zone_id", "\u0661\u0662", WHOLE, id="zone-non-ascii-digits"),
        pytest.param("zone_id", "{zone_id}", None, id="zone-literal-macro-is-missing"),
        pytest.param("sub_zone_id", "42", None, id="sub-zone-digits"),
        pytest.param("sub_zone_id", "", None, id="sub-zone-empty-optional"),
        pytest.param("sub_zone_id", "-1", WHOLE, id="sub-zone-negative"),
        pytest.param("sub_zone_id", "abc", WHOLE, id="sub-zone-word"),
        pytest.param("telegram_id", "5000000000", None, id="telegram-large"),
        pytest.param("telegram_id", "", None, id="telegram-empty-optional"),
        pytest.param("telegram_id", "-1", WHOLE, id="telegram-negative"),
        pytest.param("telegram_id", "1.0", WHOLE, id="telegram-decimal"),
        pytest.param("telegram_id", "1e3", WHOLE, id="telegram-exponent"),
        pytest.param("telegram_id", " 1", WHOLE, id="telegram-leading-space"),
        pytest.param("estimated_price", "0.0023", None, id="price-small"),
        pytest.param("estimated_price", "1", None, id="price-whole"),
        pytest.param("estimated_price", "0", None, id="price-zero"),
        pytest.param("estimated_price", "1.", None, id="price-trailing-dot"),
        pytest.param("estimated_price", ".5", None, id="price-leading-dot"),
        pytest.param("estimated_price", "2.50", None, id="price-trailing-zero"),
        pytest.param("estimated_price", "", None, id="price-empty-optional"),
        pytest.param("estimated_price", "-0.1", DECIMAL, id="price-negative"),
        pytest.param("estimated_price", "-0", DECIMAL, id="price-negative-zero"),
        pytest.param("estimated_price", "+1", DECIMAL, id="price-plus-sign"),
        pytest.param("estimated_price", "1e-3", DECIMAL, id="price-exponent"),
        pytest.param("estimated_price", "NaN", DECIMAL, id="price-nan"),
        pytest.param("estimated_price", "inf", DECIMAL, id="price-inf"),
        pytest.param("estimated_price", "abc", DECIMAL, id="price-word"),
        pytest.param("estimated_price", ".", DECIMAL, id="price-only-dot"),
        pytest.param("estimated_price", "1.2.3", DECIMAL, id="price-two-dots"),
        pytest.param("estimated_price", "1,5", DECIMAL, id="price-decimal-comma"),
        pytest.param("estimated_price", " 1", DECIMAL, id="price-leading-space"),
        pytest.param("estimated_price", "1\n", DECIMAL, id="price-trailing-newline"),
        pytest.param("estimated_price", "\u0661.5", DECIMAL, id="price-non-ascii-digit"),
        pytest.param("ymid", "anything goes {}", None, id="ymid-free-text"),
        pytest.param("request_var", "-1.5e3", None, id="request-var-free-text"),
    ],
)
def test_optional_field_values(name: str, value: str, problem: str | None) -> None:
    expected = [] if problem is None else [Problem(name, problem)]

    assert _problems([], {name: value}) == expected


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        pytest.param("event_type", EMPTY, id="event-type"),
        pytest.param("telegram_id", EMPTY, id="telegram-id"),
        pytest.param("estimated_price", EMPTY, id="estimated-price"),
    ],
)
def test_empty_value_of_required_field_is_reported_once(name: str, problem: str) -> None:
    assert _problems([name], {name: ""}) == [Problem(name, problem)]


def test_several_problems_are_reported_together() -> None:
    fields = {
        "ymid": "",
        "event_type": "view",
        "zone_id": "-1",
        "estimated_price": "NaN",
        "telegram_id": "",
    }

    problems = _problems(["ymid", "reward_event_type", "event_type"], fields)

    assert problems == [
        Problem("ymid", EMPTY),
        Problem("reward_event_type", REQUIRED),
        Problem("event_type", EVENT_TYPES),
        Problem("zone_id", WHOLE),
        Problem("estimated_price", DECIMAL),
    ]


def test_extras_are_not_validated() -> None:
    postback = Postback({"ymid": "u1"}, (("zone_id", "not-a-number"), ("event_type", "x")))

    Validator(["ymid"]).validate(postback)  # no exception: extras are passed through as-is


def test_invalid_postback_body_names_the_first_problem_and_lists_all() -> None:
    with pytest.raises(InvalidPostback) as caught:
        Validator(["ymid"]).validate(Postback({"zone_id": "x", "estimated_price": "-1"}))

    body = caught.value.body()

    assert body == {
        "outcome": "invalid",
        "error": "invalid postback",
        "parameter": "ymid",
        "problem": REQUIRED,
        "problems": [
            {"parameter": "ymid", "problem": REQUIRED},
            {"parameter": "zone_id", "problem": WHOLE},
            {"parameter": "estimated_price", "problem": DECIMAL},
        ],
    }
    assert json.loads(json.dumps(body)) == body
    assert caught.value.status == 400
    assert caught.value.reason == "invalid_fields"
    assert caught.value.detail == (
        f"ymid: {REQUIRED}; zone_id: {WHOLE}; estimated_price: {DECIMAL}"
    )


CONTROL = "must not contain control characters"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("ymid", "u1\x00", id="nul"),
        pytest.param("ymid", "u1\nforged log line", id="newline"),
        pytest.param("ymid", "u1\r", id="carriage-return"),
        pytest.param("ymid", "\x1b[31mred", id="terminal-escape"),
        pytest.param("ymid", "u1\x7f", id="delete"),
        pytest.param("ymid", "u1\x85", id="c1-next-line"),
        pytest.param("request_var", "btn\tx", id="tab-in-request-var"),
    ],
)
def test_control_characters_in_text_fields_are_refused(name: str, value: str) -> None:
    assert _problems([], {name: value}) == [Problem(name, CONTROL)]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("ユーザー", id="japanese"),
        pytest.param("user \u2028 two", id="line-separator-is-not-a-control-character"),
        pytest.param("<img src=x onerror=alert(1)>", id="markup-is-text"),
    ],
)
def test_other_text_is_free(value: str) -> None:
    assert _problems([], {"ymid": value}) == []


PRICE_LIMIT = "must be at most 10 (max_estimated_price)"


@pytest.mark.parametrize(
    ("price", "max_price", "problems"),
    [
        pytest.param("10", None, [], id="default-limit-is-inclusive"),
        pytest.param("10.000", None, [], id="trailing-zeros-at-the-limit"),
        pytest.param("10.0001", None, [Problem("estimated_price", PRICE_LIMIT)], id="just-over"),
        pytest.param(
            "9" * 30, None, [Problem("estimated_price", PRICE_LIMIT)], id="thirty-digit-price"
        ),
        pytest.param(
            "0" * 20 + "11",
            None,
            [Problem("estimated_price", PRICE_LIMIT)],
            id="leading-zeros-do-not-hide-it",
        ),
        pytest.param(
            "0.5",
            Decimal("0.25"),
            [Problem("estimated_price", "must be at most 0.25 (max_estimated_price)")],
            id="configured-limit",
        ),
        pytest.param("abc", None, [Problem("estimated_price", DECIMAL)], id="only-one-problem"),
    ],
)
def test_estimated_price_has_an_upper_bound(
    price: str, max_price: Decimal | None, problems: list[Problem]
) -> None:
    assert _problems([], {"estimated_price": price}, max_price) == problems


@pytest.mark.parametrize(
    "ymid",
    [
        pytest.param("user\u200b42", id="zero-width-space"),
        pytest.param("user\u200d42", id="zero-width-joiner"),
        pytest.param("\u202euser42", id="right-to-left-override"),
        pytest.param("user\u00ad42", id="soft-hyphen"),
        pytest.param("\ufeffuser42", id="byte-order-mark"),
    ],
)
def test_invisible_format_characters_are_refused_in_ymid(ymid: str) -> None:
    """They make ids that look the same and dedup apart, and no normal form removes them."""
    with pytest.raises(InvalidPostback) as refused:
        Validator(["ymid"]).validate(Postback({"ymid": ymid, "request_var": "ok"}))
    body = refused.value.body()
    assert body["parameter"] == "ymid"
    assert body["problem"].startswith("must not contain invisible format characters")
    assert len(body["problems"]) == 1
