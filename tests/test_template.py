"""parse_template: the postback URL registered with Monetag, read back into aliases and fixed
parameters; every rejection says what is wrong without quoting the secret it carries."""

from __future__ import annotations

import pytest

from gateway.config.template import parse_template
from gateway.postback import CANONICAL_FIELDS
from tests.support.processes import SECRET

HOST = "https://gw.example.com"


# -- what a template says -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, aliases, fixed",
    [
        pytest.param(
            f"{HOST}/postback/tapper?uid={{ymid}}&event={{event_type}}&token={SECRET}",
            "/postback/tapper",
            {"uid": "ymid", "event": "event_type"},
            {"token": SECRET},
            id="names-chosen-by-the-publisher-plus-the-secret",
        ),
        pytest.param(
            f"{HOST}/postback?zone={{zone_id}}&event={{event_type}}"
            "&value={reward_event_type}&amount={estimated_price}",
            "/postback",
            {
                "zone": "zone_id",
                "event": "event_type",
                "value": "reward_event_type",
                "amount": "estimated_price",
            },
            {},
            id="the-configuration-page-example-without-a-secret",
        ),
        pytest.param(
            "/postback/tapper?uid={ymid}&token=" + SECRET,
            "/postback/tapper",
            {"uid": "ymid"},
            {"token": SECRET},
            id="path-only-template",
        ),
        pytest.param(
            "https://gw.example.com:8443/a/b/c?uid={ymid}",
            "/a/b/c",
            {"uid": "ymid"},
            {},
            id="port-in-the-url-is-not-part-of-the-path",
        ),
        pytest.param(
            f"{HOST}/p?" + "&".join(f"{name}={{{name}}}" for name in CANONICAL_FIELDS),
            "/p",
            {name: name for name in CANONICAL_FIELDS},
            {},
            id="every-macro-under-its-own-name",
        ),
        pytest.param(
            f"{HOST}/p?zone_id={{sub_zone_id}}",
            "/p",
            {"zone_id": "sub_zone_id"},
            {},
            id="canonical-name-carrying-another-macro",
        ),
        pytest.param(
            f"{HOST}/p?uid=%7Bymid%7D&token={SECRET}",
            "/p",
            {"uid": "ymid"},
            {"token": SECRET},
            id="percent-encoded-braces-as-a-browser-copies-them",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&src=monetag&token={SECRET}",
            "/p",
            {"uid": "ymid"},
            {"src": "monetag", "token": SECRET},
            id="several-fixed-parameters",
        ),
    ],
)
def test_template_yields_path_aliases_and_fixed_parameters(
    text: str, path: str, aliases: dict[str, str], fixed: dict[str, str]
) -> None:
    template = parse_template(text)
    assert template.path == path
    assert template.aliases == aliases
    assert template.fixed == fixed


@pytest.mark.parametrize(
    "text, delivers",
    [
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&event={{event_type}}&token={SECRET}",
            {"ymid", "event_type"},
            id="two-macros-and-a-secret",
        ),
        pytest.param(f"{HOST}/p?token={SECRET}&z={{zone_id}}", {"zone_id"}, id="one-macro"),
        pytest.param(f"{HOST}/p?token={SECRET}", set(), id="no-macro-delivers-nothing"),
        pytest.param(
            f"{HOST}/p?" + "&".join(f"f{i}={{{n}}}" for i, n in enumerate(CANONICAL_FIELDS)),
            set(CANONICAL_FIELDS),
            id="all-eight",
        ),
    ],
)
def test_delivers_is_the_set_of_macros_the_template_carries(text: str, delivers: set[str]) -> None:
    assert parse_template(text).delivers == frozenset(delivers)


def test_fixed_parameters_are_not_delivered_fields() -> None:
    # `event_type=click` is a literal, not a macro: Monetag does not fill it in.
    template = parse_template(f"{HOST}/p?uid={{ymid}}&event_type=click&token={SECRET}")
    assert template.delivers == frozenset({"ymid"})
    assert template.fixed == {"event_type": "click", "token": SECRET}


def test_secret_value_is_not_in_the_template_repr() -> None:
    template = parse_template(f"{HOST}/p?uid={{ymid}}&token={SECRET}")
    assert SECRET not in repr(template)
    assert SECRET not in str(template)
    assert "uid" in repr(template)  # the repr still says something useful


# -- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, phrase",
    [
        pytest.param(
            f"http://[::1/p?uid={{ymid}}&token={SECRET}", "is not a URL", id="unclosed-ipv6-bracket"
        ),
        pytest.param(
            f"postback?uid={{ymid}}&token={SECRET}", "full postback URL", id="relative-path"
        ),
        pytest.param(f"{HOST}/postback/{SECRET}", "with its query", id="no-query"),
        pytest.param(f"{HOST}/postback?", "with its query", id="empty-query"),
        pytest.param("", "full postback URL", id="empty-text"),
        pytest.param(
            f"{HOST}/p?uid={{foo}}&token={SECRET}",
            "'uid' does not hold a Monetag",
            id="unknown-macro",
        ),
        pytest.param(
            f"{HOST}/p?uid={{YMID}}&token={SECRET}",
            "'uid' does not hold a Monetag",
            id="macro-in-upper-case",
        ),
        pytest.param(
            f"{HOST}/p?uid={{user_id}}&token={SECRET}",
            "ymid, zone_id",
            id="unknown-macro-lists-the-real-ones",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&uid={{zone_id}}&token={SECRET}",
            "names parameter 'uid' twice",
            id="parameter-named-twice-with-macros",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&token={SECRET}&token={SECRET}",
            "names parameter 'token' twice",
            id="secret-parameter-named-twice",
        ),
        pytest.param(
            f"{HOST}/p?token={SECRET}&uid={{ymid}}&token=other",
            "names parameter 'token' twice",
            id="fixed-parameter-then-macro-name-twice",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&user={{ymid}}&token={SECRET}",
            "carries {ymid} twice",
            id="macro-carried-twice",
        ),
        pytest.param(
            f"{HOST}/p?uid={{ymid}}&token={{ymid}}",
            "carries {ymid} twice",
            id="macro-carried-twice-in-the-secret-slot",
        ),
    ],
)
def test_bad_template_is_rejected_without_quoting_the_secret(text: str, phrase: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_template(text)
    message = str(caught.value)
    assert phrase in message, message
    assert SECRET not in message, message
