"""`python -m gateway check` on a config using the newer route keys: what the summary shows,
and that neither the template's key nor an upstream's static value is ever printed."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.configedit import edited
from tests.support.processes import REPO
from tests.support.tlscerts import make_certificate

pytestmark = pytest.mark.process

COMMAND_TIMEOUT = 30.0
ENV_SECRET = "check-env-secret-3141"  # MONETAG_SECRET: the route's first key
FILE_KEY = "check-file-key-2718"  # the rotation key written in the file and in the template
STATIC_VALUE = "static-value-1618"  # the app's own key, added to each forwarded request
STATIC_FROM_ENV = "static-env-value-1414"  # APP_TOKEN, another upstream's static value
HIDDEN = (ENV_SECRET, FILE_KEY, STATIC_VALUE, STATIC_FROM_ENV)

TEMPLATE = (
    "https://gw.example.com/postback/tapper?uid={ymid}&event={event_type}&zone={zone_id}"
    f"&value={{reward_event_type}}&token={FILE_KEY}"
)
CONFIG = f"""\
server:
  listen: 127.0.0.1:8080
  admin_listen: 127.0.0.1:9090
logging: {{format: text, level: debug}}
routes:
  tapper:
    path: /postback/tapper
    allow_ips: [203.0.113.0/24, 198.51.100.7]
    allow_ips_mode: log_only
    secret:
      query_param: token
      keys: ['${{MONETAG_SECRET}}', {FILE_KEY}]
    template: '{TEMPLATE}'
    match:
      event_type: [Click, impression]
      reward_event_type: VALUED
    drop_unknown: true
    upstreams:
      - url: http://127.0.0.1:3000/postback
        static_params: {{api_key: {STATIC_VALUE}}}
      - url: http://127.0.0.1:3001/copy
        static_params: {{app_token: '${{APP_TOKEN}}', version: 2}}
        keep_alive: false
  spinner:
    path: /postback/spinner
    allow_ips: [203.0.113.0/24]
    secret:
      query_param: key
      keys: ['${{MONETAG_SECRET}}']
    aliases: {{uid: ymid, zone_id: sub_zone_id}}
    dedup: {{key: [ymid, event_type]}}
    max_estimated_price: 0.25
    upstreams:
      - url: http://127.0.0.1:3000/spin
"""


def check(path: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway check --config PATH` from the repository."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("GATEWAY_CONFIG", "GATEWAY_LOG_LEVEL", "MONETAG_SECRET", "APP_TOKEN")
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        cwd=REPO,
        env={**env, "MONETAG_SECRET": ENV_SECRET, "APP_TOKEN": STATIC_FROM_ENV},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def route_sections(summary: str) -> dict[str, list[str]]:
    """`check` output split into the stripped lines under each `route NAME` line."""
    sections: dict[str, list[str]] = {}
    name = None
    for line in summary.splitlines():
        match = re.fullmatch(r"route (\S+)", line.strip())
        if match:
            name = match.group(1)
            sections[name] = []
        elif name is not None and line.startswith("  "):
            sections[name].append(line.strip())
    return sections


def line_starting(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def literal_after(line: str, label: str) -> object:
    """The Python literal printed after `label` on a summary line, e.g. `aliases   {...}`."""
    rest = line[len(label) :].strip()
    rest = re.sub(r"\s*\(from (template|aliases)\)$", "", rest)
    return ast.literal_eval(rest)


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(stdout, stderr, config text) of one `check` run on CONFIG."""
    path = tmp_path_factory.mktemp("check") / "config.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    result = check(path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout, result.stderr, CONFIG


def test_check_prints_the_checksum_of_the_file(summary: tuple[str, str, str]) -> None:
    stdout, _, text = summary
    expected = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    assert re.search(rf"\bchecksum {expected}\b", stdout), stdout


def test_check_shows_aliases_derived_from_the_template(summary: tuple[str, str, str]) -> None:
    tapper = route_sections(summary[0])["tapper"]
    aliases = line_starting(tapper, "aliases")
    assert aliases.endswith("(from template)"), aliases
    assert literal_after(aliases, "aliases") == {
        "uid": "ymid",
        "event": "event_type",
        "zone": "zone_id",
        "value": "reward_event_type",
    }


def test_check_says_aliases_came_from_aliases_on_a_route_without_template(
    summary: tuple[str, str, str],
) -> None:
    spinner = route_sections(summary[0])["spinner"]
    aliases = line_starting(spinner, "aliases")
    assert aliases.endswith("(from aliases)"), aliases
    assert literal_after(aliases, "aliases") == {"uid": "ymid", "zone_id": "sub_zone_id"}


@pytest.mark.parametrize(
    "route, never",
    [
        pytest.param(
            "tapper",
            {"sub_zone_id", "request_var", "telegram_id", "estimated_price"},
            id="template-carries-four-macros",
        ),
        pytest.param("spinner", {"zone_id"}, id="alias-renames-zone-id-away"),
    ],
)
def test_check_lists_the_fields_never_delivered(
    summary: tuple[str, str, str], route: str, never: set[str]
) -> None:
    line = line_starting(route_sections(summary[0])[route], "never delivered:")
    listed = line.removeprefix("never delivered:").strip()
    assert set(listed.split(", ")) == never, line


def test_check_shows_the_match_rules_lower_cased(summary: tuple[str, str, str]) -> None:
    sections = route_sections(summary[0])
    match = line_starting(sections["tapper"], "match")
    assert literal_after(match, "match") == {
        "event_type": ["click", "impression"],
        "reward_event_type": ["valued"],
    }
    assert line_starting(sections["spinner"], "match") == "match     everything"


def test_check_says_when_a_route_forwards_canonical_fields_only(
    summary: tuple[str, str, str],
) -> None:
    sections = route_sections(summary[0])
    assert "forwards  canonical fields only (drop_unknown)" in sections["tapper"]
    assert not any("drop_unknown" in line for line in sections["spinner"])


def test_check_names_static_params_of_each_upstream(summary: tuple[str, str, str]) -> None:
    upstreams = [
        line for line in route_sections(summary[0])["tapper"] if line.startswith("upstream")
    ]
    assert len(upstreams) == 2, upstreams
    # the label: host and port, never a path or query that could hold the app's key
    assert upstreams[0].startswith("upstream  127.0.0.1:3000 (http, answers;"), upstreams[0]
    assert "/postback" not in upstreams[0]
    assert "static params ['api_key']" in upstreams[0]
    assert "static params ['app_token', 'version']" in upstreams[1]
    spinner_upstream = line_starting(route_sections(summary[0])["spinner"], "upstream")
    assert "static params" not in spinner_upstream


def test_check_says_the_allowlist_is_only_logged(summary: tuple[str, str, str]) -> None:
    sections = route_sections(summary[0])
    tapper = line_starting(sections["tapper"], "allow_ips")
    assert re.search(r"\b2 entr.*\(log_only: not enforced\)", tapper), tapper
    spinner = line_starting(sections["spinner"], "allow_ips")
    assert "not enforced" not in spinner


def test_check_prints_no_secret_and_no_static_value(summary: tuple[str, str, str]) -> None:
    stdout, stderr, _ = summary
    assert "route tapper" in stdout  # the summary was printed at all
    for value in HIDDEN:
        assert value not in stdout, stdout
        assert value not in stderr, stderr


@pytest.mark.parametrize(
    "old, new, key_path",
    [
        pytest.param(
            f"&token={FILE_KEY}",
            "&token=not-a-key-of-this-route",
            "routes.tapper.template",
            id="template-key-not-accepted",
        ),
        pytest.param(
            "/postback/tapper?",
            "/postback/elsewhere?",
            "routes.tapper.template",
            id="template-path-differs",
        ),
        pytest.param(
            "&zone={zone_id}",
            f"&zone={{zone_id}}&token={FILE_KEY}",
            "routes.tapper.template",
            id="secret-parameter-twice",
        ),
        pytest.param(
            "&zone={zone_id}", "", "routes.tapper.dedup.key", id="dedup-field-not-carried"
        ),
        pytest.param(
            "version: 2}",
            "version: 2, 'bad name': x}",
            "routes.tapper.upstreams[1].static_params.bad name",
            id="bad-static-name",
        ),
    ],
)
def test_check_of_a_bad_config_exits_2_without_secrets(
    tmp_path: Path, old: str, new: str, key_path: str
) -> None:
    assert old in CONFIG
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace(old, new, 1), encoding="utf-8")

    result = check(path)

    assert result.returncode == 2, (result.stdout, result.stderr)
    problems = [line.strip() for line in result.stderr.splitlines()]
    assert any(problem.startswith(f"{key_path}: ") for problem in problems), result.stderr
    for value in HIDDEN:
        assert value not in result.stdout + result.stderr, result.stderr


def test_check_says_whether_tls_is_on(summary: tuple[str, str, str]) -> None:
    assert "\n  tls off\n" in summary[0]


def test_check_shows_each_routes_price_bound(summary: tuple[str, str, str]) -> None:
    sections = route_sections(summary[0])
    assert line_starting(sections["tapper"], "price") == "price     at most 10 USD per event"
    assert line_starting(sections["spinner"], "price") == "price     at most 0.25 USD per event"


def test_check_says_which_upstreams_do_not_keep_connections(summary: tuple[str, str, str]) -> None:
    upstreams = [
        line for line in route_sections(summary[0])["tapper"] if line.startswith("upstream")
    ]
    assert "keep_alive: false" not in upstreams[0]
    assert "a new connection per postback (keep_alive: false)" in upstreams[1]


def test_check_names_the_certificate_when_tls_is_on(tmp_path: Path) -> None:
    certificate = make_certificate(tmp_path, "gateway")
    tls = {"cert_file": str(certificate.cert_file), "key_file": str(certificate.key_file)}
    path = tmp_path / "config.yaml"
    path.write_text(edited(yaml.safe_load(CONFIG), {"server.tls": tls}))

    result = check(path)

    assert result.returncode == 0, result.stderr
    assert f"\n  tls on, certificate {certificate.cert_file}\n" in result.stdout
