"""config.yaml -> GatewayConfig: the operators' contract, every rejection with its key path."""

from __future__ import annotations

import ast
import ipaddress
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, load_config, parse_config
from gateway.config.model import TlsConfig
from gateway.metrics import Metrics
from gateway.reload import ConfigWatcher
from gateway.runtime import Runtime
from gateway.tls import check_certificates
from tests.support.configedit import DROP, ConfigEdits, assert_problem_at
from tests.support.gatewayconfig import gateway_config, route
from tests.support.processes import REPO, SECRET
from tests.support.tlscerts import Certificate, make_certificate

CONTRACT = REPO / "tests/data/contract.yaml"  # the key names operators and outside tests use
SHIPPED = REPO / "config.yaml"
REFERENCE = REPO / "docs/config-reference.yaml"
ENV = {"MONETAG_SECRET": SECRET}

# A valid config every table case starts from; a case changes a few keys of it.
BASE: dict[str, Any] = {
    "server": {
        "listen": "127.0.0.1:8080",
        "admin_listen": "127.0.0.1:9090",
        "trusted_proxies": [],
    },
    "store": "memory",  # chosen: no warning about it
    "routes": {
        "tapper": {
            "path": "/postback/tapper",
            "allow_ips": ["203.0.113.0/24"],
            "secret": {"query_param": "token", "keys": ["${MONETAG_SECRET}"]},
            "aliases": {"event": "event_type", "uid": "ymid"},
            "upstreams": [{"url": "http://127.0.0.1:3000/postback", "timeout": "5s", "retries": 2}],
        }
    },
}


EDITS = ConfigEdits(BASE, ENV)
config_with, parse_with, problems_of = EDITS.text, EDITS.parse, EDITS.problems


# -- configs operators write -----------------------------------------------------------------


def test_contract_page_parses_to_the_documented_values() -> None:
    config = load_config(CONTRACT, ENV)

    assert str(config.server.listen) == "0.0.0.0:8080"
    assert str(config.server.admin_listen) == "127.0.0.1:9090"
    assert len(config.server.trusted_proxies) == 0
    assert [route.name for route in config.routes] == ["tapper"]
    (route,) = config.routes
    assert route.path == "/postback/tapper"
    assert route.allow_ips is not None and len(route.allow_ips) == 3
    assert route.secret is not None
    assert route.secret.query_param == "token"
    assert route.secret.header is None
    assert [key.reveal() for key in route.secret.keys] == [SECRET.encode()]
    assert dict(route.aliases) == {"event": "event_type", "uid": "ymid", "source": "request_var"}
    assert route.required == ("ymid", "event_type")
    assert route.dedup.key == ("ymid", "event_type", "zone_id")
    assert route.dedup.ttl == 86400.0
    assert route.dedup.max_entries == 1_000_000
    (upstream,) = route.upstreams
    assert str(upstream.url) == "http://127.0.0.1:3000/postback"
    assert upstream.timeout == 5.0
    assert upstream.retries == 2
    assert dict(upstream.rename) == {"event_type": "event"}
    assert route.insecure is False
    # 0.0.0.0, no TLS, key in the URL; and the contract leaves the store out
    assert config.warnings[0] == PLAIN_HTTP_WARNING
    assert config.warnings[1].startswith("store: none, so dedup lives in this process only")
    assert len(config.warnings) == 2


@pytest.mark.parametrize(
    "address, allowed",
    [
        pytest.param("203.0.113.77", True, id="inside-cidr"),
        pytest.param("198.51.100.10", True, id="first-of-range"),
        pytest.param("198.51.100.20", True, id="last-of-range"),
        pytest.param("198.51.100.21", False, id="just-after-range"),
        pytest.param("2001:db8:0:1::5", True, id="inside-ipv6-cidr"),
        pytest.param("2001:db9::1", False, id="outside-ipv6-cidr"),
        pytest.param("192.0.2.1", False, id="unlisted-ipv4"),
    ],
)
def test_contract_allowlist_accepts_cidrs_ranges_and_ipv6(address: str, allowed: bool) -> None:
    (route,) = load_config(CONTRACT, ENV).routes
    assert route.allow_ips is not None
    assert (ipaddress.ip_address(address) in route.allow_ips) is allowed


def test_contract_header_variant_of_the_secret_parses() -> None:
    text = CONTRACT.read_text(encoding="utf-8")
    text = text.replace("      query_param: token", "      # query_param: token")
    text = text.replace("      # header: X-Postback-Key", "      header: X-Postback-Key")
    assert "\n      header: X-Postback-Key" in text, "the contract page no longer shows a header"

    (route,) = parse_config(text, ENV).routes

    assert route.secret is not None
    assert route.secret.header == "X-Postback-Key"
    assert route.secret.query_param is None


def test_shipped_example_config_parses() -> None:
    config = load_config(SHIPPED, ENV)

    (route,) = config.routes
    assert route.name == "tapper"
    assert route.path == "/postback/tapper"
    assert route.allow_ips is not None and len(route.allow_ips) == 2
    assert route.secret is not None and route.secret.query_param == "token"
    assert dict(route.aliases)["uid"] == "ymid"
    assert config.warnings == (PLAIN_HTTP_WARNING,)


def test_shipped_example_config_needs_the_secret_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(SHIPPED, {})
    assert_problem_at(caught.value.problems, "routes.tapper.secret.keys[0]", "MONETAG_SECRET")


def test_load_config_of_a_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, ENV)
    assert str(missing) in str(caught.value)


def test_load_config_reads_the_file_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_with({"routes.tapper.path": "/from/file"}), encoding="utf-8")
    assert load_config(path, ENV).routes[0].path == "/from/file"


# -- rejections: each names its key path ------------------------------------------------------

OTHER_ROUTE = {"path": "/postback/other", "insecure": True, "upstreams": [{"url": "http://a/"}]}


@pytest.mark.parametrize(
    "changes, environ, key_path, phrase",
    [
        pytest.param(
            {"metrics": {"port": 9100}}, ENV, "metrics", "unknown key", id="unknown-top-level-key"
        ),
        pytest.param(
            {"server.listne": "127.0.0.1:1"},
            ENV,
            "server.listne",
            "unknown key",
            id="unknown-server-key",
        ),
        pytest.param(
            {"routes.tapper.alow_ips": ["1.2.3.4"]},
            ENV,
            "routes.tapper.alow_ips",
            "unknown key",
            id="misspelt-route-key",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.timout": "1s"},
            ENV,
            "routes.tapper.upstreams[0].timout",
            "unknown key",
            id="misspelt-upstream-key",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.retries": "two"},
            ENV,
            "routes.tapper.upstreams[0].retries",
            "whole number",
            id="retries-is-a-word",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.retries": "3"},
            ENV,
            "routes.tapper.upstreams[0].retries",
            "whole number",
            id="retries-is-a-quoted-number-in-the-file",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.retries": True},
            ENV,
            "routes.tapper.upstreams[0].retries",
            "whole number",
            id="retries-is-a-bool",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.timeout": [1]},
            ENV,
            "routes.tapper.upstreams[0].timeout",
            "duration",
            id="timeout-is-a-list",
        ),
        pytest.param(
            {"routes.tapper.insecure": "yes"},
            ENV,
            "routes.tapper.insecure",
            "true or false",
            id="insecure-is-a-string",
        ),
        pytest.param(
            {"routes.tapper.allow_ips": "203.0.113.0/24"},
            ENV,
            "routes.tapper.allow_ips",
            "expected a list",
            id="allow-ips-is-not-a-list",
        ),
        pytest.param(
            {"routes.tapper.allow_ips": ["203.0.113.0/24", "::1", "10.0.0.0/33"]},
            ENV,
            "routes.tapper.allow_ips[2]",
            "10.0.0.0/33",
            id="bad-cidr-at-index-2",
        ),
        pytest.param(
            {"routes.tapper.allow_ips": ["1.2.3.4/24"]},
            ENV,
            "routes.tapper.allow_ips[0]",
            "'1.2.3.4/24' has host bits",
            id="cidr-with-host-bits",
        ),
        pytest.param(
            {"routes.tapper.allow_ips": ["1.2.3.4:80"]},
            ENV,
            "routes.tapper.allow_ips[0]",
            "1.2.3.4:80",
            id="address-with-port",
        ),
        pytest.param(
            {"routes.tapper.allow_ips": ["10.0.0.9-10.0.0.1"]},
            ENV,
            "routes.tapper.allow_ips[0]",
            "ends before it starts",
            id="backwards-range",
        ),
        pytest.param(
            {"routes.tapper.allow_ips": []},
            ENV,
            "routes.tapper.allow_ips",
            "allows nobody",
            id="empty-allowlist",
        ),
        pytest.param(
            {"server.trusted_proxies": ["lb.internal"]},
            ENV,
            "server.trusted_proxies[0]",
            "lb.internal",
            id="bad-trusted-proxy",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.timeout": "5 parsecs"},
            ENV,
            "routes.tapper.upstreams[0].timeout",
            "not a duration",
            id="unknown-unit",
        ),
        pytest.param(
            {"routes.tapper.dedup": {"ttl": "0s"}},
            ENV,
            "routes.tapper.dedup.ttl",
            "longer than zero",
            id="zero-duration",
        ),
        pytest.param(
            {"routes.tapper.dedup": {"ttl": 0}},
            ENV,
            "routes.tapper.dedup.ttl",
            "longer than zero",
            id="zero-bare-number",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.timeout": "-1s"},
            ENV,
            "routes.tapper.upstreams[0].timeout",
            "not a duration",
            id="negative-duration",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.timeout": -1},
            ENV,
            "routes.tapper.upstreams[0].timeout",
            "longer than zero",
            id="negative-bare-number",
        ),
        pytest.param(
            {"routes.tapper.secret.keys": ["${NOT_SET_ANYWHERE}"]},
            ENV,
            "routes.tapper.secret.keys[0]",
            "NOT_SET_ANYWHERE",
            id="unset-variable-without-default",
        ),
        pytest.param(
            {"routes.tapper.path": "${ROUTE_PATH}"},
            {},
            "routes.tapper.path",
            "environment variable ROUTE_PATH is not set",
            id="unset-variable-in-path",
        ),
        pytest.param(
            {"routes.tapper.secret.keys": ["${EMPTY_KEY:-}"]},
            ENV,
            "routes.tapper.secret.keys[0]",
            "empty",
            id="secret-from-empty-default",
        ),
        pytest.param(
            {"routes.tapper.path": "postback"},
            ENV,
            "routes.tapper.path",
            "absolute path",
            id="relative-path",
        ),
        pytest.param(
            {"routes.tapper.path": DROP},
            ENV,
            "routes.tapper.path",
            "is required",
            id="missing-path",
        ),
        pytest.param(
            {"routes.other": {**OTHER_ROUTE, "path": "/postback/tapper"}},
            ENV,
            "routes.other.path",
            "already the path of route 'tapper'",
            id="duplicate-path-across-routes",
        ),
        pytest.param(
            {"routes.tapper.allow_ips": DROP, "routes.tapper.secret": DROP},
            ENV,
            "routes.tapper",
            "neither an enforced allow_ips",
            id="unprotected-route",
        ),
        pytest.param(
            {"routes.tapper.secret.header": "X-Postback-Key"},
            ENV,
            "routes.tapper.secret",
            "exactly one of query_param or header",
            id="secret-in-query-and-header",
        ),
        pytest.param(
            {"routes.tapper.secret.query_param": DROP},
            ENV,
            "routes.tapper.secret",
            "exactly one of query_param or header",
            id="secret-with-no-location",
        ),
        pytest.param(
            {"routes.tapper.secret.keys": []},
            ENV,
            "routes.tapper.secret.keys",
            "at least one key",
            id="secret-without-keys",
        ),
        pytest.param(
            {"routes.tapper.secret.keys": DROP},
            ENV,
            "routes.tapper.secret.keys",
            "is required",
            id="secret-keys-missing",
        ),
        pytest.param(
            {"routes.tapper.secret.header": "X Key", "routes.tapper.secret.query_param": DROP},
            ENV,
            "routes.tapper.secret.header",
            "header name",
            id="header-name-with-space",
        ),
        pytest.param(
            {"routes.tapper.aliases": {"event": "evt_type"}},
            ENV,
            "routes.tapper.aliases.event",
            "not a canonical field",
            id="alias-to-unknown-field",
        ),
        pytest.param(
            {"routes.tapper.required": ["ymid", "user"]},
            ENV,
            "routes.tapper.required[1]",
            "not a canonical field",
            id="required-unknown-field",
        ),
        pytest.param(
            {"routes.tapper.dedup": {"key": ["uid"]}},
            ENV,
            "routes.tapper.dedup.key[0]",
            "not a canonical field",
            id="dedup-key-unknown-field",
        ),
        pytest.param(
            {"routes.tapper.dedup": {"key": []}},
            ENV,
            "routes.tapper.dedup.key",
            "at least one field",
            id="dedup-key-empty",
        ),
        pytest.param(
            {"routes.tapper.dedup": {"max_entries": 0}},
            ENV,
            "routes.tapper.dedup.max_entries",
            "at least 1",
            id="dedup-max-entries-zero",
        ),
        pytest.param(
            {
                "routes.tapper.aliases": {"zone_id": "sub_zone_id"},
                "routes.tapper.dedup": {"key": ["ymid", "zone_id"]},
            },
            ENV,
            "routes.tapper.dedup.key[1]",
            "can never be present",
            id="dedup-key-renamed-away-by-alias",
        ),
        pytest.param(
            {
                "routes.tapper.aliases": {"event_type": "reward_event_type"},
                "routes.tapper.dedup": {"key": ["ymid"]},
            },
            ENV,
            "routes.tapper.required",  # the default [ymid, event_type]: named as the cause
            "the default [ymid, event_type] names 'event_type', which can never be present",
            id="required-field-renamed-away-by-alias",
        ),
        pytest.param(
            {"routes.tapper.secret.query_param": "ymid"},
            ENV,
            "routes.tapper.secret.query_param",
            "postback field name",
            id="secret-param-is-a-canonical-field",
        ),
        pytest.param(
            {"routes.tapper.secret.query_param": "uid"},
            ENV,
            "routes.tapper.secret.query_param",
            "postback field name",
            id="secret-param-is-an-alias-source",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.url": "ftp://files.example/postback"},
            ENV,
            "routes.tapper.upstreams[0].url",
            "http:// or https://",
            id="upstream-not-http",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.url": "127.0.0.1:3000/postback"},
            ENV,
            "routes.tapper.upstreams[0].url",
            "http:// or https://",
            id="upstream-without-scheme",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.url": DROP},
            ENV,
            "routes.tapper.upstreams[0].url",
            "is required",
            id="upstream-without-url",
        ),
        pytest.param(
            {"routes.tapper.upstreams": []},
            ENV,
            "routes.tapper.upstreams",
            "at least one upstream",
            id="no-upstreams",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.retries": 11},
            ENV,
            "routes.tapper.upstreams[0].retries",
            "between 0 and 10",
            id="retries-above-range",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.retries": -1},
            ENV,
            "routes.tapper.upstreams[0].retries",
            "between 0 and 10",
            id="retries-below-range",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.rename": {"event": "evt"}},
            ENV,
            "routes.tapper.upstreams[0].rename.event",
            "not a canonical field",
            id="rename-of-unknown-field",
        ),
        pytest.param(
            {"server.listen": "8080"}, ENV, "server.listen", "not host:port", id="listen-port-only"
        ),
        pytest.param(
            {"server.listen": "localhost"},
            ENV,
            "server.listen",
            "not host:port",
            id="listen-host-only",
        ),
        pytest.param(
            {"server.listen": "127.0.0.1:70000"},
            ENV,
            "server.listen",
            "not host:port",
            id="listen-port-too-large",
        ),
        pytest.param(
            {"server.admin_listen": "127.0.0.1:8080"},
            ENV,
            "server.admin_listen",
            "must not share server.listen's port",
            id="admin-listen-equals-listen",
        ),
        pytest.param({"routes": DROP}, ENV, "routes", "at least one route", id="missing-routes"),
        pytest.param({"routes": {}}, ENV, "routes", "at least one route", id="empty-routes"),
        pytest.param(
            {"routes": ["tapper"]}, ENV, "routes", "expected a mapping", id="routes-is-a-list"
        ),
        pytest.param(
            {"routes.bad name": OTHER_ROUTE},
            ENV,
            "routes.bad name",
            "route name",
            id="route-name-with-space",
        ),
        pytest.param(
            {"routes.tapper.path": "/postback%2Ftapper"},
            ENV,
            "routes.tapper.path",
            "no %-escapes",
            id="path-with-an-escape",
        ),
        pytest.param(
            {"routes.tapper.path": "/postback/t\u00e4pper"},
            ENV,
            "routes.tapper.path",
            "absolute path",
            id="path-with-non-ascii",
        ),
        pytest.param(
            {"routes.tapper.path": "/post back"},
            ENV,
            "routes.tapper.path",
            "no spaces",
            id="path-with-a-space",
        ),
        pytest.param(
            {"routes.tapper.path": "/postback?x=1"},
            ENV,
            "routes.tapper.path",
            "no query",
            id="path-with-a-query",
        ),
        pytest.param(
            {"routes.tapper.path": "/postback#x"},
            ENV,
            "routes.tapper.path",
            "absolute path",
            id="path-with-a-fragment",
        ),
        pytest.param(
            {"routes.tapper.max_estimated_price": 0},
            ENV,
            "routes.tapper.max_estimated_price",
            "above zero",
            id="max-price-zero",
        ),
        pytest.param(
            {"routes.tapper.max_estimated_price": -1},
            ENV,
            "routes.tapper.max_estimated_price",
            "above zero",
            id="max-price-negative",
        ),
        pytest.param(
            {"routes.tapper.max_estimated_price": "lots"},
            ENV,
            "routes.tapper.max_estimated_price",
            "not a number",
            id="max-price-word",
        ),
        pytest.param(
            {"routes.tapper.max_estimated_price": math.inf},
            ENV,
            "routes.tapper.max_estimated_price",
            "finite",
            id="max-price-infinite",
        ),
        pytest.param(
            {"routes.tapper.max_estimated_price": True},
            ENV,
            "routes.tapper.max_estimated_price",
            "expected a number",
            id="max-price-boolean",
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.keep_alive": "no"},
            ENV,
            "routes.tapper.upstreams[0].keep_alive",
            "true or false",
            id="keep-alive-is-a-string",
        ),
        pytest.param(
            {"server.listen": "**:8080"},
            ENV,
            "server.listen",
            "not host:port",
            id="listen-two-stars",
        ),
    ],
)
def test_bad_config_is_rejected_naming_its_key_path(
    changes: dict[str, Any], environ: dict[str, str], key_path: str, phrase: str
) -> None:
    assert_problem_at(problems_of(config_with(changes), environ), key_path, phrase)


@pytest.mark.parametrize(
    "changes, key_path",
    [
        pytest.param(
            {"routes.tapper.dedup": {"ttl": math.nan}}, "routes.tapper.dedup.ttl", id="nan-ttl"
        ),
        pytest.param(
            {"routes.tapper.upstreams.0.timeout": math.nan},
            "routes.tapper.upstreams[0].timeout",
            id="nan-timeout",
        ),
        # On Linux 127.0.0.1:8080 cannot be bound while 0.0.0.0:8080 listens, and the admin port
        # would be the public port on loopback: `check` passes, `run` dies on bind.
        pytest.param(
            {"server.listen": "0.0.0.0:8080", "server.admin_listen": "127.0.0.1:8080"},
            "server.admin_listen",
            id="admin-on-the-wildcard-public-port",
        ),
    ],
)
def test_config_that_cannot_work_at_run_time_is_rejected_at_load(
    changes: dict[str, Any], key_path: str
) -> None:
    problems = problems_of(config_with(changes))
    assert any(problem.startswith(f"{key_path}: ") for problem in problems), problems


@pytest.mark.parametrize(
    "text, phrases",
    [
        pytest.param("", ["config is empty"], id="empty-file"),
        pytest.param("# only a comment\n", ["config is empty"], id="comments-only"),
        pytest.param(
            "- tapper\n", ["the config file: expected a mapping, got list"], id="top-level-list"
        ),
        pytest.param("routes: [unclosed\n", ["not valid YAML"], id="invalid-yaml"),
        pytest.param("routes:\n\ttapper: {}\n", ["not valid YAML"], id="tab-indentation"),
        pytest.param(
            "!!python/object/apply:os.system ['true']\n",
            ["not valid YAML"],
            id="python-tag-is-not-executed",
        ),
        pytest.param(
            "routes:\n"
            "  tapper:\n"
            "    path: /postback/a\n    insecure: true\n    upstreams: [{url: 'http://a/'}]\n"
            "  tapper:\n"
            "    path: /postback/b\n    insecure: true\n    upstreams: [{url: 'http://b/'}]\n",
            ["'tapper'", "twice"],
            id="two-routes-with-the-same-name",
        ),
        pytest.param(
            "routes:\n"
            "  tapper:\n"
            "    path: /postback/a\n    insecure: true\n    upstreams: [{url: 'http://a/'}]\n"
            "    path: /postback/b\n",
            ["'path'", "twice"],
            id="same-key-twice-in-one-route",
        ),
    ],
)
def test_unusable_document_is_rejected(text: str, phrases: list[str]) -> None:
    problems = problems_of(text)
    assert any(all(phrase in problem for phrase in phrases) for problem in problems), problems


def test_yaml_anchors_and_merge_keys_are_still_plain_yaml() -> None:
    text = config_with({"routes.tapper.upstreams": DROP}) + (
        "    upstreams:\n"
        "      - &first {url: 'http://127.0.0.1:3000/a', timeout: 2s, retries: 1, name: a}\n"
        "      - <<: *first\n"
        "        url: http://127.0.0.1:3000/b\n"
        "        name: b\n"
    )

    (route,) = parse_config(text, ENV).routes

    assert [str(upstream.url) for upstream in route.upstreams] == [
        "http://127.0.0.1:3000/a",
        "http://127.0.0.1:3000/b",
    ]
    assert [upstream.timeout for upstream in route.upstreams] == [2.0, 2.0]
    assert [upstream.retries for upstream in route.upstreams] == [1, 1]


def test_every_problem_in_a_file_is_reported_not_only_the_first() -> None:
    text = config_with(
        {
            "logging": "debug",
            "server.listen": "nope",
            "server.trusted_proxies": ["bogus"],
            "routes.tapper.allow_ips": ["203.0.113.0/24", "1.2.3.4/24"],
            "routes.tapper.upstreams.0.retries": 99,
            "routes.tapper.upstreams.0.timeout": "5 parsecs",
            "routes.other": {**OTHER_ROUTE, "upstreams": [{"url": "ftp://x/"}]},
        }
    )
    paths = {problem.split(": ", 1)[0] for problem in problems_of(text)}
    assert paths >= {
        "logging",
        "server.listen",
        "server.trusted_proxies[0]",
        "routes.tapper.allow_ips[1]",
        "routes.tapper.upstreams[0].retries",
        "routes.tapper.upstreams[0].timeout",
        "routes.other.upstreams[0].url",
    }


def test_config_error_message_lists_every_problem_on_its_own_line() -> None:
    text = config_with({"server.listen": "nope", "routes.tapper.upstreams.0.retries": 99})
    with pytest.raises(ConfigError) as caught:
        parse_config(text, ENV)
    assert str(caught.value).splitlines() == caught.value.problems
    assert len(caught.value.problems) == 2


# -- what valid values mean -------------------------------------------------------------------


@pytest.mark.parametrize(
    "written, seconds",
    [
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("5s", 5.0, id="seconds"),
        pytest.param("1.5s", 1.5, id="fractional-seconds"),
        pytest.param("10m", 600.0, id="minutes"),
        pytest.param("24h", 86400.0, id="hours"),
        pytest.param(3, 3.0, id="bare-integer-is-seconds"),
        pytest.param(0.25, 0.25, id="bare-float-is-seconds"),
        pytest.param("7", 7.0, id="unitless-string-is-seconds"),
    ],
)
def test_duration_is_read_as_seconds(written: str | float, seconds: float) -> None:
    config = parse_with(
        {"routes.tapper.upstreams.0.timeout": written, "routes.tapper.dedup": {"ttl": written}}
    )
    (route,) = config.routes
    assert route.upstreams[0].timeout == seconds
    assert route.dedup.ttl == seconds


@pytest.mark.parametrize(
    "written, environ, expected",
    [
        pytest.param("${ROUTE_PATH}", {"ROUTE_PATH": "/from/env"}, "/from/env", id="set-variable"),
        pytest.param("${ROUTE_PATH:-/by/default}", {}, "/by/default", id="default-when-unset"),
        pytest.param(
            "${ROUTE_PATH:-/by/default}",
            {"ROUTE_PATH": "/from/env"},
            "/from/env",
            id="set-variable-beats-default",
        ),
        pytest.param(
            "/postback/${ROUTE_NAME}",
            {"ROUTE_NAME": "tapper"},
            "/postback/tapper",
            id="variable-inside-a-string",
        ),
        pytest.param("/${A}/${B:-b}", {"A": "a"}, "/a/b", id="two-variables-in-one-string"),
        pytest.param("/plain", {"PLAIN": "x"}, "/plain", id="no-reference-is-left-alone"),
    ],
)
def test_environment_references_are_substituted(
    written: str, environ: dict[str, str], expected: str
) -> None:
    config = parse_with({"routes.tapper.path": written}, {**ENV, **environ})
    assert config.routes[0].path == expected


def test_secret_key_comes_from_the_environment() -> None:
    (route,) = parse_with({}).routes
    assert route.secret is not None
    assert [key.reveal() for key in route.secret.keys] == [SECRET.encode()]


def test_numbers_from_the_environment_are_accepted() -> None:
    config = parse_with(
        {
            "routes.tapper.upstreams.0.retries": "${RETRIES}",
            "routes.tapper.upstreams.0.timeout": "${TIMEOUT:-750ms}",
            "routes.tapper.dedup": {"max_entries": "${DEDUP_MAX}", "ttl": "${DEDUP_TTL}"},
        },
        {**ENV, "RETRIES": "3", "DEDUP_MAX": "5000", "DEDUP_TTL": "2h"},
    )
    (route,) = config.routes
    assert route.upstreams[0].retries == 3
    assert route.upstreams[0].timeout == 0.75
    assert route.dedup.max_entries == 5000
    assert route.dedup.ttl == 7200.0


def test_non_number_from_the_environment_is_rejected_for_retries() -> None:
    problems = problems_of(
        config_with({"routes.tapper.upstreams.0.retries": "${RETRIES}"}), {**ENV, "RETRIES": "x"}
    )
    assert_problem_at(problems, "routes.tapper.upstreams[0].retries", "whole number")


@pytest.mark.parametrize(
    "written, host, port",
    [
        pytest.param("0.0.0.0:8080", "0.0.0.0", 8080, id="ipv4-wildcard"),
        pytest.param("127.0.0.1:0", "127.0.0.1", 0, id="any-free-port"),
        pytest.param("[::]:8080", "::", 8080, id="ipv6-in-brackets"),
        pytest.param("localhost:9000", "localhost", 9000, id="host-name"),
        pytest.param("*:8080", "*", 8080, id="every-address-both-families"),
    ],
)
def test_listen_address_is_host_and_port(written: str, host: str, port: int) -> None:
    listen = parse_with({"server.listen": written}).server.listen
    assert (listen.host, listen.port) == (host, port)


@pytest.mark.parametrize(
    ("written", "bind_host"),
    [
        pytest.param("*:8080", None, id="star-binds-every-address-of-both-families"),
        pytest.param("0.0.0.0:8080", "0.0.0.0", id="ipv4-wildcard-is-ipv4-only"),
        pytest.param("[::]:8080", "::", id="ipv6-wildcard-is-ipv6-only"),
    ],
)
def test_listen_address_says_what_to_bind(written: str, bind_host: str | None) -> None:
    assert parse_with({"server.listen": written}).server.listen.bind_host == bind_host


@pytest.mark.parametrize(
    ("written", "reached_at"),
    [
        pytest.param("*:8080", "127.0.0.1:8080", id="every-address-is-reached-on-ipv4-loopback"),
        pytest.param("0.0.0.0:8080", "127.0.0.1:8080", id="ipv4-wildcard"),
        pytest.param("[::]:8080", "[::1]:8080", id="ipv6-wildcard-on-ipv6-loopback"),
        pytest.param("127.0.0.2:8080", "127.0.0.2:8080", id="an-address-stays"),
        pytest.param("[::1]:8080", "[::1]:8080", id="ipv6-loopback-stays"),
        pytest.param("gateway.internal:8080", "gateway.internal:8080", id="a-name-stays"),
    ],
)
def test_a_wildcard_listener_is_reached_from_here_on_loopback(
    written: str, reached_at: str
) -> None:
    listen = parse_with({"server.listen": written}).server.listen
    assert str(listen.from_here) == reached_at
    assert listen.wildcard == (reached_at != written)


def test_admin_port_may_not_share_the_public_port_of_every_address() -> None:
    problems = problems_of(
        config_with({"server.listen": "*:8080", "server.admin_listen": "127.0.0.1:8080"})
    )
    assert any(problem.startswith("server.admin_listen: ") for problem in problems), problems


@pytest.mark.parametrize(
    ("written", "limit"),
    [
        pytest.param(None, Decimal(10), id="default-ten-usd"),
        pytest.param(0.5, Decimal("0.5"), id="yaml-float"),
        pytest.param(100, Decimal(100), id="yaml-integer"),
        pytest.param("2.5", Decimal("2.5"), id="string"),
        pytest.param("${MAX_PRICE}", Decimal("3"), id="from-the-environment"),
    ],
)
def test_max_estimated_price_is_read(written: Any, limit: Decimal) -> None:
    changes = {} if written is None else {"routes.tapper.max_estimated_price": written}
    (route,) = parse_with(changes, {**ENV, "MAX_PRICE": "3"}).routes
    assert route.max_estimated_price == limit


def test_keep_alive_defaults_to_true_and_can_be_turned_off() -> None:
    (route,) = parse_with({}).routes
    assert route.upstreams[0].keep_alive is True
    (route,) = parse_with({"routes.tapper.upstreams.0.keep_alive": False}).routes
    assert route.upstreams[0].keep_alive is False


def test_both_ports_may_be_zero_to_pick_free_ones() -> None:
    config = parse_with({"server.listen": "127.0.0.1:0", "server.admin_listen": "127.0.0.1:0"})
    assert config.server.listen.port == config.server.admin_listen.port == 0


def test_defaults_fill_what_a_minimal_route_leaves_out() -> None:
    text = "routes:\n  tapper:\n    path: /p\n    insecure: true\n    upstreams: [{url: 'http://a/'}]\n"
    config = parse_config(text, {})
    (route,) = config.routes
    assert str(config.server.listen) == "0.0.0.0:8080"
    assert str(config.server.admin_listen) == "127.0.0.1:9090"
    assert route.required == ("ymid", "event_type")
    assert route.dedup.key == ("ymid", "event_type", "zone_id")
    assert route.dedup.ttl == 86400.0
    assert route.upstreams[0].timeout == 5.0
    assert route.upstreams[0].retries == 2
    assert dict(route.aliases) == {}


# -- warnings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, phrases",
    [
        pytest.param(
            {"routes.tapper.secret": DROP}, ["routes.tapper", "no secret"], id="allowlist-only"
        ),
        pytest.param(
            {"routes.tapper.allow_ips": DROP}, ["routes.tapper", "no allow_ips"], id="secret-only"
        ),
        pytest.param(
            {
                "routes.tapper.allow_ips": DROP,
                "routes.tapper.secret": DROP,
                "routes.tapper.insecure": True,
            },
            ["routes.tapper", "insecure"],
            id="neither-but-insecure",
        ),
    ],
)
def test_route_with_one_check_parses_with_a_warning(
    changes: dict[str, Any], phrases: list[str]
) -> None:
    warnings = parse_with(changes).warnings
    assert len(warnings) == 1, warnings
    assert all(phrase in warnings[0] for phrase in phrases), warnings


def test_route_with_both_checks_has_no_warning() -> None:
    assert parse_with({}).warnings == ()


PLAIN_HTTP_WARNING = (
    "routes.tapper.secret: the key travels in the URL over plain HTTP (no server.tls, no "
    "trusted_proxies in front): every hop can read it; add server.tls or terminate TLS in a "
    "proxy listed in trusted_proxies"
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"), "gateway")


def _tls(certificate: Certificate) -> dict[str, str]:
    return {"cert_file": str(certificate.cert_file), "key_file": str(certificate.key_file)}


# paths only: reading a config never opens its certificate files
UNOPENED_TLS = {"cert_file": "/nonexistent/tls.crt", "key_file": "/nonexistent/tls.key"}


@pytest.mark.parametrize(
    ("changes", "warned"),
    [
        pytest.param({"server.listen": "0.0.0.0:8080"}, True, id="public-plain-query-key"),
        pytest.param({"server.listen": "*:8080"}, True, id="every-address-plain-query-key"),
        pytest.param({"server.listen": "127.0.0.1:8080"}, False, id="loopback-only"),
        pytest.param({"server.listen": "[::1]:8080"}, False, id="ipv6-loopback-only"),
        pytest.param(
            {"server.listen": "0.0.0.0:8080", "server.trusted_proxies": ["10.0.0.0/8"]},
            False,
            id="behind-a-proxy-that-terminates-tls",
        ),
        pytest.param(
            {
                "server.listen": "0.0.0.0:8080",
                "routes.tapper.secret": {"header": "X-Key", "keys": ["${MONETAG_SECRET}"]},
            },
            False,
            id="key-in-a-header",
        ),
        pytest.param(
            {"server.listen": "0.0.0.0:8080", "server.tls": UNOPENED_TLS}, False, id="tls"
        ),
    ],
)
def test_plain_http_with_the_key_in_the_url_is_warned_about(
    changes: dict[str, Any], warned: bool
) -> None:
    warnings = parse_with(changes).warnings

    assert warnings == ((PLAIN_HTTP_WARNING,) if warned else ())


def test_tls_files_are_named_by_the_config_and_loaded_only_by_their_check() -> None:
    """`queue stats` and the other commands that only read a config need no certificate;
    `check` and `run` (and a reload) try it with `check_certificates`."""
    config = parse_with({"server.tls": UNOPENED_TLS})

    assert config.server.tls is not None
    assert config.server.tls.cert_file == UNOPENED_TLS["cert_file"]
    with pytest.raises(ConfigError) as caught:
        check_certificates(config)
    assert caught.value.problems == ["server.tls: cannot read: No such file or directory"]


def test_a_certificate_that_loads_passes_its_check(certificate: Certificate) -> None:
    check_certificates(parse_with({"server.tls": _tls(certificate)}))
    check_certificates(parse_with({}))  # no TLS: nothing to load


async def test_a_reload_whose_certificate_does_not_load_keeps_the_running_config(
    tmp_path: Path, certificate: Certificate
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_with({"server.tls": _tls(certificate)}))
    runtime = Runtime(load_config(path, ENV), Metrics())
    path.write_text(config_with({"server.tls": UNOPENED_TLS}))
    watcher = ConfigWatcher(str(path), runtime)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MONETAG_SECRET", SECRET)
        assert await watcher.reload("test") is False

    assert runtime.reload_error == ["server.tls: cannot read: No such file or directory"]
    assert runtime.config.server.tls == TlsConfig(**_tls(certificate))


def tls_problems(tls: dict[str, str]) -> list[str]:
    """What `check` reports about a `server.tls` section: reading's problems, else loading's."""
    try:
        check_certificates(parse_with({"server.tls": tls}))
    except ConfigError as error:
        return error.problems
    return []


def test_tls_problems_name_the_key_and_never_quote_the_files(
    tmp_path: Path, certificate: Certificate
) -> None:
    other = make_certificate(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nsecret-looking-bytes\n")
    cases = {
        "missing-file": (
            {**_tls(certificate), "cert_file": str(tmp_path / "nope.crt")},
            "server.tls: cannot read",
        ),
        "key-of-another-certificate": (
            {**_tls(certificate), "key_file": str(other.key_file)},
            "server.tls: not a usable certificate and key",
        ),
        "garbage-key": (
            {**_tls(certificate), "key_file": str(garbage)},
            "server.tls: not a usable certificate and key",
        ),
        "no-key-file": (
            {"cert_file": str(certificate.cert_file)},
            "server.tls.key_file: is required",
        ),
        "unknown-key": ({**_tls(certificate), "ciphers": "ALL"}, "server.tls.ciphers: unknown key"),
    }
    for name, (tls, expected) in cases.items():
        problems = tls_problems(tls)
        assert any(problem.startswith(expected) for problem in problems), (name, problems)
        assert not any("secret-looking" in problem for problem in problems), name


# -- secrets stay secret ----------------------------------------------------------------------

LITERAL_SECRET = "topsecret-value-123"


@pytest.mark.parametrize(
    "changes, environ",
    [
        pytest.param({"routes.tapper.secret.keys": [LITERAL_SECRET]}, {}, id="key-in-the-file"),
        pytest.param({}, {"MONETAG_SECRET": LITERAL_SECRET}, id="key-from-the-environment"),
        pytest.param(
            {
                "routes.tapper.secret": {
                    "header": "X-Postback-Key",
                    "keys": ["old-key-0", LITERAL_SECRET],
                }
            },
            ENV,
            id="second-key-in-a-header-secret",
        ),
    ],
)
def test_secret_never_appears_in_the_config_repr(
    changes: dict[str, Any], environ: dict[str, str]
) -> None:
    config = parse_with(changes, environ)
    assert LITERAL_SECRET not in repr(config)
    assert LITERAL_SECRET not in str(config)
    assert all(LITERAL_SECRET not in warning for warning in config.warnings)


@pytest.mark.parametrize(
    "text, environ",
    [
        pytest.param(
            config_with(
                {
                    "routes.tapper.secret.keys": [LITERAL_SECRET],
                    "routes.tapper.upstreams.0.retries": 99,
                }
            ),
            {},
            id="other-problem-in-a-file-with-a-key",
        ),
        pytest.param(
            config_with({"routes.tapper.secret.keys": [LITERAL_SECRET + " x"]}),
            {},
            id="key-with-a-space",
        ),
        pytest.param(
            config_with({"routes.tapper.secret.keys": [LITERAL_SECRET + "\u00e9"]}),
            {},
            id="non-ascii-key",
        ),
        pytest.param(
            config_with({"routes.tapper.secret.keys": "${MONETAG_SECRET}"}),
            {"MONETAG_SECRET": LITERAL_SECRET},
            id="keys-not-a-list",
        ),
        pytest.param(
            config_with(
                {
                    "routes.tapper.secret.keys": ["${MONETAG_SECRET}"],
                    "routes.tapper.secret.query_param": "uid",
                }
            ),
            {"MONETAG_SECRET": LITERAL_SECRET},
            id="key-from-env-route-rejected",
        ),
        pytest.param(
            config_with({"routes.tapper.secret.keys": [9_123_456_789]}),
            {},
            id="key-written-as-a-number",
        ),
        pytest.param(
            config_with({}) + f"    - [{LITERAL_SECRET}\n",
            {},
            id="yaml-syntax-error-on-the-key-line",
        ),
    ],
)
def test_secret_never_appears_in_a_config_error(text: str, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ)
    shown = str(caught.value)
    for secret in (LITERAL_SECRET, "9123456789"):
        assert secret not in shown, shown


# -- the reference config: every key, loaded so it cannot rot ----------------------------------


def reference_environment(certificate: Certificate) -> dict[str, str]:
    return {
        **ENV,
        "TLS_CERT_FILE": str(certificate.cert_file),
        "TLS_KEY_FILE": str(certificate.key_file),
        "APP_API_KEY": "app-key",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "ADMIN_TOKEN": "reference-admin-token-0123",
        "TELEGRAM_BOT_TOKEN": "123456789:reference-bot-token-0123456789abc",
        "YMID_SIGNING_KEY": "reference-signing-key-0123456789abcdef",
    }


def test_reference_config_is_a_working_config(certificate: Certificate) -> None:
    config = load_config(REFERENCE, reference_environment(certificate))
    check_certificates(config)  # as `check` does

    assert [route.name for route in config.routes] == ["tapper", "runner", "miniapp"]
    assert config.server.tls is not None and config.store is not None
    assert config.warnings == ()


# Every mapping whose keys the reader checks: (where to put a key it does not know, the path of
# that mapping in the reference config; "*" stands for every route or every upstream).
CHECKED_SECTIONS = {
    "": "",
    "server": "server",
    "server.tls": "server.tls",
    "logging": "logging",
    "store": "store",
    "defaults": "defaults",
    "defaults.dedup": "routes.*.dedup",  # the same keys as a route's dedup
    "routes.tapper": "routes.*",
    "routes.tapper.secret": "routes.*.secret",
    "routes.tapper.dedup": "routes.*.dedup",
    "routes.tapper.queue": "routes.*.queue",
    "routes.tapper.sessions": "routes.*.sessions",
    "routes.tapper.upstreams.0": "routes.*.upstreams.*",
}


EXCLUSIVE_KEYS = {"store": ("path", "url")}  # exactly one of them in a config


def keys_the_reader_accepts(section: str) -> set[str]:
    """Ask the reader itself: a key it does not know is reported with the ones it does."""
    bogus = f"{section}.zz_not_a_key" if section else "zz_not_a_key"
    problems = problems_of(config_with({bogus: 1}))
    (message,) = [problem for problem in problems if "zz_not_a_key: unknown key" in problem]
    listed = re.search(r"expected one of (\[.*\])", message)
    assert listed is not None, message
    return set(ast.literal_eval(listed.group(1)))


def keys_in_reference(document: Any, path: str) -> set[str]:
    nodes = [document]
    for part in path.split(".") if path else []:
        step = []
        for node in nodes:
            if part == "*":
                step += list(node.values()) if isinstance(node, dict) else list(node)
            elif isinstance(node, dict) and part in node:
                step.append(node[part])
        nodes = step
    return {key for node in nodes if isinstance(node, dict) for key in node}


@pytest.mark.parametrize(("section", "reference_path"), CHECKED_SECTIONS.items())
def test_reference_config_shows_every_key_the_gateway_accepts(
    section: str, reference_path: str
) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    # of keys that exclude each other, the reference sets one and shows the others commented
    shown_commented = {
        key
        for key in EXCLUSIVE_KEYS.get(section, ())
        if re.search(rf"^\s*# {key}: \S", text, re.MULTILINE)
    }

    missing = (
        keys_the_reader_accepts(section)
        - keys_in_reference(document, reference_path)
        - shown_commented
    )

    assert not missing, f"docs/config-reference.yaml lacks {sorted(missing)} under {section!r}"


def test_routes_sharing_a_dedup_scope_must_remember_events_the_same_way() -> None:
    routes = {
        "old": route(["http://127.0.0.1:3000/cb"], dedup={"scope": "tapper", "ttl": "24h"}),
        "new": route(["http://127.0.0.1:3000/cb"], dedup={"scope": "tapper", "ttl": "1h"}),
    }
    problems = problems_of(gateway_config(routes=routes))
    assert_problem_at(problems, "routes.new.dedup", "shares dedup.scope 'tapper' with route 'old'")


def test_routes_sharing_a_dedup_scope_with_the_same_settings_are_fine_in_any_key_order() -> None:
    routes = {
        "old": route(["http://127.0.0.1:3000/cb"], dedup={"scope": "tapper"}),
        "new": route(
            ["http://127.0.0.1:3000/cb"],
            dedup={"scope": "tapper", "key": ["zone_id", "event_type", "ymid"]},
        ),
    }
    config = parse_config(gateway_config(routes=routes), ENV)
    assert {route.dedup_scope for route in config.routes} == {"tapper"}


def test_a_routes_dedup_scope_is_its_path_unless_given() -> None:
    config = parse_config(gateway_config("http://127.0.0.1:3000/cb"), ENV)
    (tapper,) = config.routes
    assert tapper.dedup_scope == "/postback/tapper"


def test_upstreams_of_a_route_that_look_the_same_need_names() -> None:
    # Their queued deliveries were one row: every postback refused by a UNIQUE constraint,
    # /readyz down for the whole replica, while `check` said OK.
    twins = [
        {"url": "http://127.0.0.1:3000/q?dest=app"},
        {"url": "http://127.0.0.1:3000/q?dest=analytics"},
    ]
    problems = problems_of(gateway_config(twins[0], twins[1]))
    assert_problem_at(problems, "routes.tapper.upstreams[1]", "give each a distinct `name:`")

    named = [{**twins[0], "name": "app"}, {**twins[1], "name": "analytics"}]
    config = parse_config(gateway_config(*named), ENV)
    assert [upstream.label for upstream in config.routes[0].upstreams] == ["app", "analytics"]


def test_an_upstream_name_is_a_plain_label() -> None:
    problems = problems_of(gateway_config({"url": "http://127.0.0.1:3000/q", "name": "a b"}))
    assert_problem_at(problems, "routes.tapper.upstreams[0].name", "letters, digits")


# -- lists that let everyone in --------------------------------------------------------------


@pytest.mark.parametrize(
    "everyone",
    [
        pytest.param(["0.0.0.0/0", "::/0"], id="both-families"),
        pytest.param(["0.0.0.0-255.255.255.255"], id="a-range-of-every-ipv4-address"),
        pytest.param(["0.0.0.0/1", "128.0.0.0/1"], id="two-halves"),
        pytest.param(["::/0"], id="every-ipv6-address"),
    ],
)
def test_an_allowlist_that_takes_in_everyone_is_no_allowlist(everyone: list[str]) -> None:
    """Before: it started without `insecure: true` and without a secret."""
    changes = {"routes.tapper.allow_ips": everyone, "routes.tapper.secret": DROP}
    assert_problem_at(problems_of(config_with(changes)), "routes.tapper", "takes in every address")
    config = parse_with({**changes, "routes.tapper.insecure": True})
    assert config.routes[0].insecure
    with_secret = parse_with({"routes.tapper.allow_ips": everyone})
    assert any("any address may call" in warning for warning in with_secret.warnings)


@pytest.mark.parametrize(
    ("proxies", "opt_in", "where", "phrase"),
    [
        pytest.param(
            ["0.0.0.0/0"], False, "server.trusted_proxies", "every address", id="every-address"
        ),
        pytest.param(
            ["0.0.0.0/0"],
            True,
            "server.trusted_proxies",
            "every address",
            id="every-address-even-with-the-opt-in",
        ),
        pytest.param(
            ["10.0.0.0/8", "203.0.113.0/24"],
            False,
            "server.trusted_proxies[1]",
            "trust_public_proxies",
            id="a-public-range",
        ),
        pytest.param(
            ["2001:db8::/32"],
            False,
            "server.trusted_proxies[0]",
            "trust_public_proxies",
            id="a-public-ipv6-range",
        ),
    ],
)
def test_trusted_proxies_that_anyone_could_be_are_refused(
    proxies: list[str], opt_in: bool, where: str, phrase: str
) -> None:
    """Before: `trusted_proxies: [0.0.0.0/0]` was accepted, and `X-Forwarded-For: 203.0.113.5`
    then turned a 403 into a forwarded postback."""
    changes: dict[str, Any] = {"server.trusted_proxies": proxies}
    if opt_in:
        changes["server.trust_public_proxies"] = True
    assert_problem_at(problems_of(config_with(changes)), where, phrase)


def test_private_proxies_need_nothing_and_public_ones_an_opt_in() -> None:
    private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.1.1", "127.0.0.1", "fd00::/8"]
    assert len(parse_with({"server.trusted_proxies": private}).server.trusted_proxies) == 5
    cdn = {"server.trusted_proxies": ["173.245.48.0/20"], "server.trust_public_proxies": True}
    assert parse_with(cdn).server.trust_public_proxies


# -- store and Redis URLs as operators write them --------------------------------------------


@pytest.mark.parametrize(
    ("key", "url"),
    [
        pytest.param(
            "redis_url",
            "unix:///run/redis/redis.sock?db=0&password=PwInQuery1",
            id="redis-unix-socket",
        ),
        pytest.param(
            "redis_url",
            "rediss://:Pw%23With%2FMarks@redis.internal:6380/1",
            id="redis-encoded-password",
        ),
        pytest.param(
            "store", "postgresql:///gateway?host=/run/postgresql&user=gw", id="postgres-socket-dsn"
        ),
        pytest.param("store", "postgresql://gw:Pw%23%3F%2F@db:5432/gateway", id="postgres-encoded"),
    ],
)
def test_documented_url_forms_load_and_show_without_their_secrets(key: str, url: str) -> None:
    """Before: `check` and `run` crashed with yarl's ValueError on these."""
    config = parse_with(_url_change(key, url))
    shown = config.store.shown if key == "store" and config.store else ""
    if key == "redis_url":
        shown = config.routes[0].dedup.redis_url.shown  # type: ignore[union-attr]
    for secret in ("PwInQuery1", "Pw%23With%2FMarks", "Pw%23%3F%2F"):
        assert secret not in shown, shown


@pytest.mark.parametrize(
    ("key", "url"),
    [
        pytest.param("store", "postgresql://gw:Xyzzy#ss@db:5432/gateway", id="a-raw-hash"),
        pytest.param("store", "postgresql://gw:Xyzzy/ss@db:5432/gateway", id="a-raw-slash"),
        pytest.param("store", "postgresql://gw:12/Xyzzy@db:5432/gateway", id="a-raw-slash-digits"),
        pytest.param("redis_url", "redis://:Xyzzy?ss@redis:6379/0", id="a-raw-question-mark"),
    ],
)
def test_a_password_that_breaks_its_url_is_refused_saying_how_to_write_it(
    key: str, url: str
) -> None:
    problems = problems_of(config_with(_url_change(key, url)))
    where = "store.url" if key == "store" else "routes.tapper.dedup.redis_url"
    assert_problem_at(problems, where, "must be percent-encoded")
    assert not any("Xyzzy" in problem for problem in problems)


def _url_change(key: str, url: str) -> dict[str, Any]:
    if key == "store":
        return {"store": {"url": url}}
    return {"routes.tapper.dedup": {"backend": "redis", "redis_url": url}}


def test_no_store_is_warned_about_unless_chosen() -> None:
    warned = parse_with({"store": DROP}).warnings
    assert [w for w in warned if w.startswith("store: none")], warned
    assert "store: memory" in warned[-1]
    assert not [w for w in parse_with({}).warnings if w.startswith("store")]  # `store: memory`


def test_store_memory_cannot_serve_a_queued_route() -> None:
    problems = problems_of(config_with({"routes.tapper.delivery": "queued"}))
    assert any("queued delivery needs a top-level `store:`" in p for p in problems), problems


def test_history_keys_parse_and_are_checked() -> None:
    config = parse_with({"history": {"retention": "7d"}})
    assert (config.history.enabled, config.history.retention) == (True, 7 * 86400)
    assert parse_with({}).history.retention == 30 * 86400  # the documented default
    problems = problems_of(config_with({"history": {"retention": "soon", "enabled": "yes"}}))
    assert any(p.startswith("history.retention") for p in problems), problems
    assert any(p.startswith("history.enabled") for p in problems), problems
