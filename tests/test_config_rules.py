"""The newer config keys: server limits, logging, allow_ips_mode, match, drop_unknown, template,
static_params and the checksum; every rejection names its key path and leaks no secret."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.postback import CANONICAL_FIELDS
from tests.support.configedit import DROP, ConfigEdits, assert_problem_at, edited
from tests.support.processes import SECRET

FILE_KEY = "file-key-77aa"  # a second key written in the file (rotation)
STATIC_VALUE = "static-api-value-5e5e"
ENV = {"MONETAG_SECRET": SECRET}

BASE: dict[str, Any] = {
    "server": {"listen": "127.0.0.1:8080", "admin_listen": "127.0.0.1:9090"},
    "routes": {
        "tapper": {
            "path": "/postback/tapper",
            "allow_ips": ["203.0.113.0/24"],
            "secret": {"query_param": "token", "keys": ["${MONETAG_SECRET}", FILE_KEY]},
            "aliases": {"event": "event_type", "uid": "ymid"},
            "upstreams": [{"url": "http://127.0.0.1:3000/postback"}],
        }
    },
}

# The URL registered with Monetag for route tapper, carrying the default required and dedup
# fields; TEMPLATE_FOR(value) puts `value` in its secret slot.
TEMPLATE_URL = "https://gw.example.com/postback/tapper?uid={ymid}&event={event_type}&zone={zone_id}"


def template_for(secret: str) -> str:
    return f"{TEMPLATE_URL}&token={secret}"


TEMPLATE = template_for(FILE_KEY)
# Route tapper with its aliases replaced by TEMPLATE.
WITH_TEMPLATE: dict[str, Any] = {"routes.tapper.aliases": DROP, "routes.tapper.template": TEMPLATE}


EDITS = ConfigEdits(BASE, ENV)
config_with, parse_with, problems_of = EDITS.text, EDITS.parse, EDITS.problems


# -- defaults ---------------------------------------------------------------------------------


def test_new_server_keys_default_to_the_documented_values() -> None:
    server = parse_with({}).server
    assert server.max_in_flight == 1000
    assert server.shutdown_grace == 30.0
    assert server.drain_delay == 0.0
    assert server.client_timeout == 10.0
    assert server.max_query_length == 4096
    assert server.reload_interval == 2.0


def test_logging_defaults_to_json_at_info() -> None:
    logging = parse_with({}).logging
    assert (logging.format, logging.level) == ("json", "INFO")


def test_new_route_keys_default_to_enforce_everything_and_forward_all() -> None:
    (route,) = parse_with({}).routes
    assert route.allow_ips_mode == "enforce"
    assert dict(route.match) == {}
    assert route.drop_unknown is False
    assert route.from_template is False
    assert route.delivers == frozenset(CANONICAL_FIELDS)
    (upstream,) = route.upstreams
    assert not upstream.static_params
    assert upstream.static_params.names == []


def test_minimal_file_gets_every_new_default() -> None:
    text = "routes:\n  t:\n    path: /p\n    insecure: true\n    upstreams: [{url: 'http://a/'}]\n"
    config = parse_config(text, {})
    assert config.server.max_in_flight == 1000
    assert config.server.reload_interval == 2.0
    assert config.logging.format == "json"
    assert config.routes[0].allow_ips_mode == "enforce"


# -- server limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, written, environ, expected",
    [
        pytest.param("max_in_flight", 1, {}, 1, id="max-in-flight-one"),
        pytest.param("max_in_flight", 50_000, {}, 50_000, id="max-in-flight-large"),
        pytest.param(
            "max_in_flight",
            "${MAX_IN_FLIGHT}",
            {"MAX_IN_FLIGHT": "250"},
            250,
            id="max-in-flight-from-the-environment",
        ),
        pytest.param("max_query_length", 1, {}, 1, id="max-query-length-one"),
        pytest.param("max_query_length", 16384, {}, 16384, id="max-query-length-large"),
        pytest.param("shutdown_grace", 0, {}, 0.0, id="shutdown-grace-zero"),
        pytest.param("shutdown_grace", "45s", {}, 45.0, id="shutdown-grace-seconds"),
        pytest.param("shutdown_grace", "2m", {}, 120.0, id="shutdown-grace-minutes"),
        pytest.param("drain_delay", 0, {}, 0.0, id="drain-delay-zero"),
        pytest.param("drain_delay", 0.0, {}, 0.0, id="drain-delay-zero-float"),
        pytest.param("drain_delay", "5s", {}, 5.0, id="drain-delay-seconds"),
        pytest.param("drain_delay", "750ms", {}, 0.75, id="drain-delay-milliseconds"),
        pytest.param("client_timeout", "500ms", {}, 0.5, id="client-timeout-milliseconds"),
        pytest.param("client_timeout", 3, {}, 3.0, id="client-timeout-bare-seconds"),
        pytest.param("reload_interval", 0, {}, 0.0, id="reload-interval-zero-means-sighup-only"),
        pytest.param("reload_interval", "10s", {}, 10.0, id="reload-interval-seconds"),
        pytest.param(
            "reload_interval", "${RELOAD:-1m}", {}, 60.0, id="reload-interval-from-a-default"
        ),
        # Zero written the way every other duration is written: with a unit, or from ${VAR}.
        pytest.param("shutdown_grace", "0s", {}, 0.0, id="shutdown-grace-zero-with-unit"),
        pytest.param("drain_delay", "0s", {}, 0.0, id="drain-delay-zero-with-unit"),
        pytest.param("drain_delay", "0ms", {}, 0.0, id="drain-delay-zero-milliseconds"),
        pytest.param("reload_interval", "0s", {}, 0.0, id="reload-interval-zero-with-unit"),
        pytest.param(
            "reload_interval",
            "${RELOAD}",
            {"RELOAD": "0"},
            0.0,
            id="reload-interval-zero-from-the-environment",
        ),
    ],
)
def test_server_limit_is_read(
    key: str, written: Any, environ: dict[str, str], expected: float
) -> None:
    server = parse_with({f"server.{key}": written}, {**ENV, **environ}).server
    assert getattr(server, key) == expected


@pytest.mark.parametrize(
    "key, written, phrase",
    [
        pytest.param("max_in_flight", 0, "at least 1", id="max-in-flight-zero"),
        pytest.param("max_in_flight", -5, "at least 1", id="max-in-flight-negative"),
        pytest.param("max_in_flight", "many", "whole number", id="max-in-flight-a-word"),
        pytest.param("max_in_flight", True, "whole number", id="max-in-flight-a-bool"),
        pytest.param("max_in_flight", 2.5, "whole number", id="max-in-flight-a-fraction"),
        pytest.param("max_query_length", 0, "at least 1", id="max-query-length-zero"),
        pytest.param("max_query_length", "4k", "whole number", id="max-query-length-with-unit"),
        pytest.param("shutdown_grace", "-1s", "not a duration", id="shutdown-grace-negative"),
        pytest.param("shutdown_grace", "soon", "not a duration", id="shutdown-grace-a-word"),
        pytest.param("shutdown_grace", [30], "duration", id="shutdown-grace-a-list"),
        pytest.param("shutdown_grace", math.inf, "finite", id="shutdown-grace-infinite"),
        pytest.param("drain_delay", "5 parsecs", "not a duration", id="drain-delay-bad-unit"),
        pytest.param("drain_delay", True, "duration", id="drain-delay-a-bool"),
        pytest.param("drain_delay", math.nan, "finite", id="drain-delay-nan"),
        pytest.param("client_timeout", 0, "longer than zero", id="client-timeout-zero"),
        pytest.param("client_timeout", "0s", "longer than zero", id="client-timeout-zero-unit"),
        pytest.param("client_timeout", -3, "longer than zero", id="client-timeout-negative"),
        pytest.param("reload_interval", "often", "not a duration", id="reload-interval-a-word"),
        pytest.param("reload_interval", False, "duration", id="reload-interval-a-bool"),
        pytest.param("max_inflight", 10, "unknown key", id="misspelt-max-in-flight"),
    ],
)
def test_bad_server_limit_is_rejected_at_its_key(key: str, written: Any, phrase: str) -> None:
    assert_problem_at(problems_of(config_with({f"server.{key}": written})), f"server.{key}", phrase)


# -- logging ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, environ, log_format, level",
    [
        pytest.param({"format": "text"}, {}, "text", "INFO", id="text-format"),
        pytest.param({"format": "json"}, {}, "json", "INFO", id="json-format"),
        pytest.param({"level": "DEBUG"}, {}, "json", "DEBUG", id="debug"),
        pytest.param({"level": "debug"}, {}, "json", "DEBUG", id="level-in-lower-case"),
        pytest.param({"level": "Warning"}, {}, "json", "WARNING", id="level-in-mixed-case"),
        pytest.param({"level": "error", "format": "text"}, {}, "text", "ERROR", id="both-keys"),
        pytest.param({}, {}, "json", "INFO", id="empty-section"),
        pytest.param(
            {"level": "${LOG_LEVEL:-info}"},
            {},
            "json",
            "INFO",
            id="level-from-a-lower-case-default",
        ),
        pytest.param(
            {"level": "${LOG_LEVEL}"},
            {"LOG_LEVEL": "WARNING"},
            "json",
            "WARNING",
            id="level-from-the-environment",
        ),
        # Case-insensitive must hold for a level that comes from the environment too.
        pytest.param(
            {"level": "${LOG_LEVEL:-info}"},
            {"LOG_LEVEL": "debug"},
            "json",
            "DEBUG",
            id="lower-case-level-from-the-environment",
        ),
        pytest.param(
            {"format": "${LOG_FORMAT}"},
            {"LOG_FORMAT": "text"},
            "text",
            "INFO",
            id="format-from-the-environment",
        ),
    ],
)
def test_logging_section_is_read(
    section: dict[str, str], environ: dict[str, str], log_format: str, level: str
) -> None:
    logging = parse_with({"logging": section}, {**ENV, **environ}).logging
    assert (logging.format, logging.level) == (log_format, level)


@pytest.mark.parametrize(
    "logging, key_path, phrase",
    [
        pytest.param(
            {"format": "xml"},
            "logging.format",
            "'xml' is not one of json, text",
            id="unknown-format",
        ),
        pytest.param({"format": 1}, "logging.format", "expected a string", id="format-a-number"),
        pytest.param(
            {"level": "verbose"}, "logging.level", "is not one of DEBUG, INFO", id="unknown-level"
        ),
        pytest.param({"level": "TRACE"}, "logging.level", "is not one of", id="trace-level"),
        pytest.param({"level": 10}, "logging.level", "10", id="numeric-level"),
        pytest.param(
            {"level": "CRITICAL"},
            "logging.level",
            "is not one of",
            id="level-python-has-but-the-gateway-does-not",
        ),
        pytest.param({"colour": True}, "logging.colour", "unknown key", id="unknown-key"),
        pytest.param("debug", "logging", "expected a mapping", id="not-a-mapping"),
        pytest.param(["json"], "logging", "expected a mapping", id="a-list"),
    ],
)
def test_bad_logging_is_rejected_at_its_key(logging: Any, key_path: str, phrase: str) -> None:
    assert_problem_at(problems_of(config_with({"logging": logging})), key_path, phrase)


# -- allow_ips_mode, drop_unknown -------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, mode, drop_unknown",
    [
        pytest.param(
            {"routes.tapper.allow_ips_mode": "log_only"}, "log_only", False, id="log-only"
        ),
        pytest.param(
            {"routes.tapper.allow_ips_mode": "enforce"}, "enforce", False, id="enforce-written-out"
        ),
        pytest.param({"routes.tapper.drop_unknown": True}, "enforce", True, id="drop-unknown"),
        pytest.param(
            {"routes.tapper.drop_unknown": False}, "enforce", False, id="drop-unknown-false"
        ),
        pytest.param(
            {"routes.tapper.allow_ips_mode": "log_only", "routes.tapper.drop_unknown": True},
            "log_only",
            True,
            id="both",
        ),
    ],
)
def test_allow_ips_mode_and_drop_unknown_are_read(
    changes: dict[str, Any], mode: str, drop_unknown: bool
) -> None:
    (route,) = parse_with(changes).routes
    assert route.allow_ips_mode == mode
    assert route.drop_unknown is drop_unknown


@pytest.mark.parametrize(
    "changes, key_path, phrase",
    [
        pytest.param(
            {"routes.tapper.allow_ips_mode": "warn"},
            "routes.tapper.allow_ips_mode",
            "'warn' is not one of enforce, log_only",
            id="unknown-mode",
        ),
        pytest.param(
            {"routes.tapper.allow_ips_mode": True},
            "routes.tapper.allow_ips_mode",
            "expected a string",
            id="mode-a-bool",
        ),
        pytest.param(
            {"routes.tapper.drop_unknown": "yes"},
            "routes.tapper.drop_unknown",
            "true or false",
            id="drop-unknown-a-string",
        ),
        pytest.param(
            {"routes.tapper.drop_unknown": 1},
            "routes.tapper.drop_unknown",
            "true or false",
            id="drop-unknown-a-number",
        ),
    ],
)
def test_bad_mode_or_drop_unknown_is_rejected_at_its_key(
    changes: dict[str, Any], key_path: str, phrase: str
) -> None:
    assert_problem_at(problems_of(config_with(changes)), key_path, phrase)


# -- match ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "match, expected",
    [
        pytest.param({"event_type": "click"}, {"event_type": {"click"}}, id="one-value"),
        pytest.param(
            {"event_type": ["CLICK", "Impression"]},
            {"event_type": {"click", "impression"}},
            id="event-types-lower-cased",
        ),
        pytest.param(
            {"event_type": ["click", "CLICK"]},
            {"event_type": {"click"}},
            id="same-value-twice-after-lower-casing",
        ),
        pytest.param(
            {"reward_event_type": "VALUED"},
            {"reward_event_type": {"valued"}},
            id="reward-event-type-lower-cased",
        ),
        pytest.param(
            {"reward_event_type": ["valued", "not_valued"]},
            {"reward_event_type": {"valued", "not_valued"}},
            id="both-reward-types",
        ),
        pytest.param({"zone_id": 42}, {"zone_id": {"42"}}, id="int-zone-is-a-string"),
        pytest.param(
            {"zone_id": [1, "2", 3]}, {"zone_id": {"1", "2", "3"}}, id="ints-and-strings-mixed"
        ),
        pytest.param({"sub_zone_id": "9001"}, {"sub_zone_id": {"9001"}}, id="quoted-sub-zone"),
        pytest.param({"telegram_id": 123456789}, {"telegram_id": {"123456789"}}, id="telegram-id"),
        pytest.param({"ymid": "User-ABC"}, {"ymid": {"User-ABC"}}, id="ymid-keeps-its-case"),
        pytest.param(
            {"request_var": ["Bonus-Btn", "daily"]},
            {"request_var": {"Bonus-Btn", "daily"}},
            id="request-var-keeps-its-case",
        ),
        pytest.param({"estimated_price": "0.5"}, {"estimated_price": {"0.5"}}, id="quoted-price"),
        pytest.param(
            {"event_type": "click", "zone_id": 7},
            {"event_type": {"click"}, "zone_id": {"7"}},
            id="two-fields",
        ),
    ],
)
def test_match_is_read_as_canonical_field_to_accepted_values(
    match: dict[str, Any], expected: dict[str, set[str]]
) -> None:
    (route,) = parse_with({"routes.tapper.match": match}).routes
    assert dict(route.match) == {name: frozenset(values) for name, values in expected.items()}


def test_match_values_come_from_the_environment_and_are_lower_cased() -> None:
    (route,) = parse_with(
        {"routes.tapper.match": {"event_type": "${EVENT}"}}, {**ENV, "EVENT": "Click"}
    ).routes
    assert dict(route.match) == {"event_type": frozenset({"click"})}


@pytest.mark.parametrize(
    "match, key_path, phrase",
    [
        pytest.param(
            {"event_type": ["clik"]},
            "routes.tapper.match.event_type",
            "'clik' can never match",
            id="misspelt-event-type",
        ),
        pytest.param(
            {"event_type": ["click", "install"]},
            "routes.tapper.match.event_type",
            "'install' can never match",
            id="one-bad-value-among-good",
        ),
        pytest.param(
            {"event_type": "view"},
            "routes.tapper.match.event_type",
            "must be one of",
            id="bare-bad-event-type",
        ),
        pytest.param(
            {"reward_event_type": "paid"},
            "routes.tapper.match.reward_event_type",
            "'paid' can never match",
            id="bad-reward-event-type",
        ),
        pytest.param(
            {"zone_id": "abc"},
            "routes.tapper.match.zone_id",
            "'abc' can never match: zone_id must be a whole number",
            id="zone-a-word",
        ),
        pytest.param(
            {"sub_zone_id": -1},
            "routes.tapper.match.sub_zone_id",
            "whole number",
            id="negative-sub-zone",
        ),
        pytest.param(
            {"telegram_id": "12a"},
            "routes.tapper.match.telegram_id",
            "whole number",
            id="telegram-id-with-a-letter",
        ),
        pytest.param(
            {"estimated_price": "-1"},
            "routes.tapper.match.estimated_price",
            "non-negative decimal",
            id="negative-price",
        ),
        pytest.param(
            {"event_type": []},
            "routes.tapper.match.event_type",
            "an empty list matches nothing",
            id="empty-list",
        ),
        pytest.param(
            {"zone_id": []},
            "routes.tapper.match.zone_id",
            "an empty list matches nothing",
            id="empty-list-of-zones",
        ),
        pytest.param(
            {"zone": 1},
            "routes.tapper.match.zone",
            "not a canonical field",
            id="non-canonical-field",
        ),
        pytest.param(
            {"event": "click"},
            "routes.tapper.match.event",
            "not a canonical field",
            id="alias-name-instead-of-canonical",
        ),
        pytest.param(
            {"event_type": {"is": "click"}},
            "routes.tapper.match.event_type",
            "expected a string",
            id="value-a-mapping",
        ),
        pytest.param(
            {"ymid": True}, "routes.tapper.match.ymid", "expected a string", id="value-a-bool"
        ),
        pytest.param(
            ["event_type"], "routes.tapper.match", "expected a mapping", id="match-a-list"
        ),
    ],
)
def test_bad_match_is_rejected_at_its_field(match: Any, key_path: str, phrase: str) -> None:
    assert_problem_at(problems_of(config_with({"routes.tapper.match": match})), key_path, phrase)


def test_match_on_a_field_aliases_rename_away_is_rejected() -> None:
    problems = problems_of(
        config_with(
            {
                "routes.tapper.aliases": {
                    "event": "event_type",
                    "uid": "ymid",
                    "sub_zone_id": "zone_id",
                },
                "routes.tapper.match": {"sub_zone_id": 5},
            }
        )
    )
    assert_problem_at(problems, "routes.tapper.match.sub_zone_id", "can never be present")


# -- template: accepted -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, environ",
    [
        pytest.param(TEMPLATE, ENV, id="rotation-key-written-in-the-template"),
        pytest.param(template_for("${MONETAG_SECRET}"), ENV, id="key-from-the-environment"),
        pytest.param(template_for(SECRET), ENV, id="environment-key-written-literally"),
    ],
)
def test_template_replaces_aliases(template: str, environ: dict[str, str]) -> None:
    (route,) = parse_with({**WITH_TEMPLATE, "routes.tapper.template": template}, environ).routes
    assert route.from_template is True
    assert dict(route.aliases) == {"uid": "ymid", "event": "event_type", "zone": "zone_id"}
    assert route.delivers == frozenset({"ymid", "event_type", "zone_id"})


def test_template_on_a_route_with_a_header_secret_needs_no_secret_parameter() -> None:
    (route,) = parse_with(
        {
            **WITH_TEMPLATE,
            "routes.tapper.secret": {"header": "X-Postback-Key", "keys": ["${MONETAG_SECRET}"]},
            "routes.tapper.template": TEMPLATE_URL,
        }
    ).routes
    assert route.from_template is True
    assert route.delivers == frozenset({"ymid", "event_type", "zone_id"})


def test_template_may_carry_every_field_the_route_needs() -> None:
    template = TEMPLATE_URL + f"&value={{reward_event_type}}&token={FILE_KEY}"
    (route,) = parse_with(
        {
            **WITH_TEMPLATE,
            "routes.tapper.template": template,
            "routes.tapper.required": ["ymid", "event_type", "reward_event_type"],
            "routes.tapper.dedup": {"key": ["ymid", "zone_id"]},
            "routes.tapper.match": {"reward_event_type": "valued"},
        }
    ).routes
    assert route.delivers == frozenset({"ymid", "event_type", "zone_id", "reward_event_type"})
    assert dict(route.match) == {"reward_event_type": frozenset({"valued"})}


@pytest.mark.parametrize(
    "changes, delivers",
    [
        pytest.param({}, set(CANONICAL_FIELDS), id="aliases-that-rename-nothing-away"),
        pytest.param(
            {
                "routes.tapper.aliases": {
                    "uid": "ymid",
                    "zone_id": "sub_zone_id",
                    "event": "event_type",
                },
                "routes.tapper.dedup": {"key": ["ymid", "event_type"]},
            },
            set(CANONICAL_FIELDS) - {"zone_id"},
            id="alias-renames-zone-id-away",
        ),
        pytest.param(WITH_TEMPLATE, {"ymid", "event_type", "zone_id"}, id="template"),
    ],
)
def test_delivers_lists_the_fields_monetag_can_send(
    changes: dict[str, Any], delivers: set[str]
) -> None:
    (route,) = parse_with(changes).routes
    assert route.delivers == frozenset(delivers)


# -- template: rejected -----------------------------------------------------------------------

T = "routes.tapper.template"


@pytest.mark.parametrize(
    "changes, key_path, phrase",
    [
        pytest.param(
            {T: f"http://[::1/postback/tapper?uid={{ymid}}&token={FILE_KEY}"},
            T,
            "is not a URL",
            id="not-a-url",
        ),
        pytest.param(
            {T: "https://gw.example.com/postback/tapper"}, T, "with its query", id="no-query"
        ),
        pytest.param(
            {T: f"postback/tapper?uid={{ymid}}&token={FILE_KEY}"},
            T,
            "full postback URL",
            id="relative-path",
        ),
        pytest.param(
            {T: TEMPLATE + "&src={foo}"}, T, "'src' does not hold a Monetag", id="unknown-macro"
        ),
        pytest.param(
            {T: TEMPLATE + "&uid={request_var}"},
            T,
            "names parameter 'uid' twice",
            id="parameter-named-twice",
        ),
        pytest.param(
            {T: TEMPLATE + f"&token={FILE_KEY}"},
            T,
            "names parameter 'token' twice",
            id="secret-parameter-named-twice",
        ),
        pytest.param(
            {T: TEMPLATE + "&user={ymid}"}, T, "carries {ymid} twice", id="macro-carried-twice"
        ),
        pytest.param(
            {T: TEMPLATE.replace("/postback/tapper", "/postback/other")},
            T,
            "'/postback/other' is not the route's path '/postback/tapper'",
            id="template-path-differs-from-route-path",
        ),
        pytest.param(
            {T: TEMPLATE_URL},
            T,
            "does not carry the secret parameter 'token'",
            id="template-lacks-the-secret-parameter",
        ),
        pytest.param(
            {T: TEMPLATE.replace("&token=", "&key=")},
            T,
            "does not carry the secret parameter 'token'",
            id="secret-under-another-name",
        ),
        pytest.param(
            {T: template_for("not-a-key-of-this-route")},
            T,
            "value is not one of secret.keys",
            id="template-secret-is-not-a-key",
        ),
        pytest.param(
            {T: template_for("")}, T, "value is not one of secret.keys", id="template-secret-empty"
        ),
        pytest.param(
            {T: template_for("{ymid}")}, T, "carries {ymid} twice", id="secret-slot-holds-a-macro"
        ),
        pytest.param({T: 42}, T, "expected a string", id="template-a-number"),
        pytest.param(
            {T: template_for("${NOT_SET_ANYWHERE}")},
            T,
            "environment variable NOT_SET_ANYWHERE is not set",
            id="unset-variable",
        ),
        pytest.param(
            {"routes.tapper.aliases": {"uid": "ymid"}},
            "routes.tapper.aliases",
            "give aliases or template, not both",
            id="aliases-and-template",
        ),
        pytest.param(
            {T: template_for(FILE_KEY).replace("&zone={zone_id}", "")},
            "routes.tapper.dedup.key",  # never written: the default is the cause, and the fix
            "the default [ymid, event_type, zone_id] names 'zone_id', which can never be present: "
            "the template does not carry it; set dedup.key: [ymid, event_type] on the route, or "
            "add zone_id={zone_id} to the template",
            id="default-dedup-key-field-not-carried",
        ),
        pytest.param(
            {T: template_for(FILE_KEY).replace("event={event_type}", "ev=impression")},
            "routes.tapper.required",
            "the default [ymid, event_type] names 'event_type', which can never be present: the "
            "template does not carry it; set required: [ymid] on the route",
            id="default-required-field-not-carried",
        ),
        pytest.param(
            {"routes.tapper.required": ["ymid", "event_type", "telegram_id"]},
            "routes.tapper.required[2]",
            "the template does not carry it",
            id="required-field-not-carried",
        ),
        pytest.param(
            {"routes.tapper.dedup": {"key": ["ymid", "request_var"]}},
            "routes.tapper.dedup.key[1]",
            "the template does not carry it",
            id="dedup-key-field-not-carried",
        ),
        pytest.param(
            {"routes.tapper.match": {"reward_event_type": "valued"}},
            "routes.tapper.match.reward_event_type",
            "the template does not carry it",
            id="match-field-not-carried",
        ),
    ],
)
def test_bad_template_is_rejected_at_its_key(
    changes: dict[str, Any], key_path: str, phrase: str
) -> None:
    problems = problems_of(config_with({**WITH_TEMPLATE, **changes}))
    assert_problem_at(problems, key_path, phrase)
    shown = "\n".join(problems)
    assert FILE_KEY not in shown and SECRET not in shown, shown


# -- static_params ----------------------------------------------------------------------------

STATIC = "routes.tapper.upstreams.0.static_params"


@pytest.mark.parametrize(
    "static_params, environ, pairs",
    [
        pytest.param({"api_key": STATIC_VALUE}, {}, [("api_key", STATIC_VALUE)], id="one-string"),
        pytest.param(
            {"app": "tapper", "version": 3},
            {},
            [("app", "tapper"), ("version", "3")],
            id="int-becomes-a-string-order-kept",
        ),
        pytest.param(
            {"api_key": "${API_KEY}"},
            {"API_KEY": STATIC_VALUE},
            [("api_key", STATIC_VALUE)],
            id="value-from-the-environment",
        ),
        pytest.param(
            {"api_key": "${API_KEY:-dev-key}"},
            {},
            [("api_key", "dev-key")],
            id="value-from-a-default",
        ),
        pytest.param({}, {}, [], id="empty-mapping"),
    ],
)
def test_static_params_are_read_as_name_value_pairs(
    static_params: dict[str, Any], environ: dict[str, str], pairs: list[tuple[str, str]]
) -> None:
    (route,) = parse_with({STATIC: static_params}, {**ENV, **environ}).routes
    (upstream,) = route.upstreams
    assert list(upstream.static_params.pairs) == pairs
    assert upstream.static_params.names == [name for name, _ in pairs]


def test_static_params_belong_to_their_own_upstream() -> None:
    (route,) = parse_with(
        {
            "routes.tapper.upstreams": [
                {"url": "http://127.0.0.1:3000/a", "static_params": {"api_key": STATIC_VALUE}},
                {"url": "http://127.0.0.1:3001/b"},
            ]
        }
    ).routes
    first, second = route.upstreams
    assert first.static_params.names == ["api_key"]
    assert not second.static_params


@pytest.mark.parametrize(
    "static_params, key_path, phrase",
    [
        pytest.param(
            [f"api_key={STATIC_VALUE}"],
            STATIC.replace(".0.", "[0].", 1),
            "expected a mapping",
            id="a-list",
        ),
        pytest.param(
            {"bad name": STATIC_VALUE},
            "routes.tapper.upstreams[0].static_params.bad name",
            "not a usable query parameter name",
            id="name-with-a-space",
        ),
        pytest.param(
            {"api_key": True},
            "routes.tapper.upstreams[0].static_params.api_key",
            "expected a string",
            id="value-a-bool",
        ),
        pytest.param(
            {"api_key": [STATIC_VALUE]},
            "routes.tapper.upstreams[0].static_params.api_key",
            "expected a string",
            id="value-a-list",
        ),
        pytest.param(
            {"api_key": None},
            "routes.tapper.upstreams[0].static_params.api_key",
            "expected a string",
            id="value-missing",
        ),
        pytest.param(
            {"api_key": "${NO_SUCH_KEY}"},
            "routes.tapper.upstreams[0].static_params.api_key",
            "environment variable NO_SUCH_KEY is not set",
            id="unset-variable",
        ),
        pytest.param(
            {"good": STATIC_VALUE, "api_key": {"v": STATIC_VALUE}},
            "routes.tapper.upstreams[0].static_params.api_key",
            "expected a string",
            id="value-a-mapping-holding-the-value",
        ),
    ],
)
def test_bad_static_params_are_rejected_without_their_values(
    static_params: Any, key_path: str, phrase: str
) -> None:
    problems = problems_of(config_with({STATIC: static_params}))
    assert_problem_at(problems, key_path, phrase)
    assert STATIC_VALUE not in "\n".join(problems)


# -- nothing secret in repr(config) or in an error ---------------------------------------------


@pytest.mark.parametrize(
    "changes, environ, hidden",
    [
        pytest.param(WITH_TEMPLATE, ENV, [FILE_KEY, SECRET], id="template-with-a-literal-key"),
        pytest.param(
            {**WITH_TEMPLATE, T: template_for("${MONETAG_SECRET}")},
            ENV,
            [FILE_KEY, SECRET],
            id="template-with-the-key-from-the-environment",
        ),
        pytest.param(
            {STATIC: {"api_key": STATIC_VALUE}}, ENV, [STATIC_VALUE], id="static-param-in-the-file"
        ),
        pytest.param(
            {STATIC: {"api_key": "${API_KEY}"}},
            {**ENV, "API_KEY": STATIC_VALUE},
            [STATIC_VALUE],
            id="static-param-from-the-environment",
        ),
        pytest.param(
            {STATIC: {"account": 987654321}},
            ENV,
            ["987654321"],
            id="static-param-written-as-a-number",
        ),
    ],
)
def test_secret_and_static_values_never_appear_in_the_config_repr(
    changes: dict[str, Any], environ: dict[str, str], hidden: list[str]
) -> None:
    config = parse_with(changes, environ)
    shown = repr(config) + str(config) + "".join(config.warnings)
    for value in hidden:
        assert value not in shown, shown


def test_every_secret_in_the_config_hides_itself_the_same_way() -> None:
    """The admin token, the route keys and the secret URLs each show as `Type('**********')`
    in a repr: hidden by their type, not by each field that holds one."""
    admin_token, password = "admin-token-4f4f4f4f4f", "hunter2-store-password"
    config = parse_with(
        {
            "server.admin_token": admin_token,
            "routes.tapper.dedup": {"backend": "redis", "redis_url": f"redis://:{password}@r:6379"},
            "store": {"url": f"postgresql://gateway:{password}@db:5432/gateway"},
        }
    )
    shown = repr(config)
    assert admin_token not in shown and password not in shown and SECRET not in shown
    for expected in (
        "admin_token=Secret('**********')",
        "redis_url=RedisUrl('**********')",
        "url=PostgresUrl('**********')",
        "keys=(Secret('**********'),",
    ):
        assert expected in shown, shown


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"routes.tapper.allow_ips_mode": "warn"}, id="other-route-problem"),
        pytest.param({"server.max_in_flight": 0}, id="server-problem"),
        pytest.param({T: TEMPLATE.replace("/postback/tapper", "/elsewhere")}, id="template-path"),
        pytest.param({T: template_for("wrong-key")}, id="template-key-not-accepted"),
        pytest.param({"routes.tapper.match": {"zone_id": "abc"}}, id="match-problem"),
        pytest.param({"routes.tapper.upstreams.0.url": "ftp://x/"}, id="upstream-problem"),
        pytest.param(
            {STATIC: {"bad name": STATIC_VALUE, "api_key": STATIC_VALUE}},
            id="static-param-name-problem",
        ),
    ],
)
def test_secret_and_static_values_never_appear_in_a_config_error(
    changes: dict[str, Any],
) -> None:
    text = config_with({**WITH_TEMPLATE, STATIC: {"api_key": STATIC_VALUE}, **changes})
    with pytest.raises(ConfigError) as caught:
        parse_config(text, ENV)
    shown = str(caught.value)
    for value in (FILE_KEY, SECRET, STATIC_VALUE):
        assert value not in shown, shown


# -- checksum ---------------------------------------------------------------------------------


def test_checksum_is_16_hex_chars_of_the_sha256_of_the_text() -> None:
    text = config_with({})
    checksum = parse_config(text, ENV).checksum
    assert re.fullmatch(r"[0-9a-f]{16}", checksum), checksum
    assert checksum == hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def test_same_text_gives_the_same_checksum() -> None:
    text = config_with(WITH_TEMPLATE)
    assert parse_config(text, ENV).checksum == parse_config(text, dict(ENV)).checksum


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda text: text + "# a comment\n", id="comment-added"),
        pytest.param(lambda text: text + "\n", id="trailing-newline"),
        pytest.param(
            lambda _: config_with({"routes.tapper.path": "/postback/tapper2"}), id="value-changed"
        ),
        pytest.param(
            lambda _: config_with({"routes.tapper.allow_ips": ["203.0.113.0/25"]}),
            id="one-character-changed",
        ),
        pytest.param(lambda _: config_with({"server.max_in_flight": 999}), id="key-added"),
    ],
)
def test_any_edit_changes_the_checksum(edit: Any) -> None:
    text = config_with({})
    edited = edit(text)
    assert edited != text
    assert parse_config(edited, ENV).checksum != parse_config(text, ENV).checksum


def test_load_config_checksum_matches_the_file_contents(tmp_path: Path) -> None:
    text = config_with(WITH_TEMPLATE)
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("utf-8"))
    config = load_config(path, ENV)
    assert config.checksum == parse_config(text, ENV).checksum
    assert config.checksum == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_log_only_allowlist_without_secret_is_an_open_door() -> None:
    route = {
        "path": "/p",
        "allow_ips": ["203.0.113.0/24"],
        "allow_ips_mode": "log_only",
        "upstreams": [{"url": "http://127.0.0.1:3000/"}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(edited({"routes": {"tapper": route}}, {}), {})
    assert caught.value.problems == [
        "routes.tapper: has neither an enforced allow_ips nor a secret: anyone could grant "
        "rewards; add one, or write `insecure: true` if that is really meant"
    ]
    assert parse_config(edited({"routes": {"tapper": route}}, {"routes.tapper.insecure": True}), {})


def test_template_secret_in_braces_is_not_echoed() -> None:
    text = (
        "routes:\n  tapper:\n    path: /p\n    secret: {query_param: token, keys: ['{Sekrit}']}\n"
        "    template: 'https://gw/p?uid={ymid}&event={event_type}&token={Sekrit}'\n"
        "    upstreams: [{url: 'http://127.0.0.1:3000/'}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert "Sekrit" not in str(caught.value)
    assert "routes.tapper.template: parameter 'token' does not hold a Monetag macro" in str(
        caught.value
    )
