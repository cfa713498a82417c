"""The first config of a publisher, made from the postback URL registered with Monetag
(`monetag-gateway init`): what the URL carries, where the key goes, and the commented YAML.

The URL says which parameter holds which macro, so it gives the route's path, its aliases and
the dedup key it can carry. The key is made here but never written into the config, which
reads it as `${MONETAG_SECRET}`: init puts it in an environment file. Nothing here prints.
"""

from __future__ import annotations

import json
import re
import secrets
import textwrap
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import yaml
from yarl import URL

from .config import GatewayConfig, parse_config
from .config.model import AllowIpsMode, TlsConfig
from .config.template import PostbackTemplate, parse_template
from .postback import CANONICAL_FIELDS, EVENT_TYPE, YMID, ZONE_ID
from .shown import quoted

SECRET_VARIABLE = "MONETAG_SECRET"
KEY_REFERENCE = "${" + SECRET_VARIABLE + "}"  # how the config, and a URL shown, name the key
DEFAULT_SECRET_PARAM = "token"
KEY_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 bits
# a literal parameter of the template named so is where the key goes: the publisher has
# reserved it (`token=CHANGE_ME`); any other literal is a fixed value passed to the app
_KEY_LIKE = re.compile(r"token|key|secret|sig|auth|pass", re.IGNORECASE)
_GENERIC_PATH_WORDS = frozenset({"postback", "postbacks", "callback", "webhook", "monetag"})
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
DEFAULT_ROUTE = "app"
UNIQUE_DEDUP_TTL = "24h"
USER_ID_DEDUP_TTL = "10m"
HISTORY_RETENTION = "30d"
UPSTREAM_TIMEOUT = "5s"
UPSTREAM_RETRIES = 2

# what the gateway cannot do without each field the dedup key needs
_WHY_NEEDED = {
    YMID: "it tells one ad call (or user) from another",
    EVENT_TYPE: "it tells an impression from a click",
}


class YmidUse(StrEnum):
    """What the app passes to the ad as ymid."""

    UNIQUE = "unique"  # a fresh id per ad call, as Monetag advises
    USER_ID = "user-id"  # the user's id, as Monetag's sample handlers suggest (reward_user(ymid))


def new_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


@dataclass(frozen=True)
class RegisteredUrl:
    """The postback URL template as the publisher registers it, and the parameter that
    carries the key. Its text is never shown as given: a literal value may be a key."""

    text: str = field(repr=False)
    template: PostbackTemplate
    secret_param: str

    @property
    def insecure(self) -> bool:
        """Plain http: Monetag would send the key across the internet readable."""
        return URL(self.text).scheme == "http"

    @property
    def port(self) -> int | None:
        """The port Monetag will call: the URL's own, or its scheme's (443 for https)."""
        return URL(self.text).port

    @property
    def fixed_params(self) -> list[str]:
        """The literal parameters other than the key's: passed to the app as they are."""
        return [name for name in self.template.fixed if name != self.secret_param]

    def with_key(self, key: str) -> str:
        """The URL to register: the secret parameter holding `key` (in place of the literal
        the template had, or added at the end), every other parameter as it was written."""
        base, _, query = self.text.partition("?")
        pairs = query.split("&")
        for index, pair in enumerate(pairs):
            raw_name = pair.partition("=")[0]
            if _decoded(raw_name) == self.secret_param:
                pairs[index] = f"{raw_name}={key}"
                break
        else:
            pairs.append(f"{self.secret_param}={key}")
        return f"{base}?{'&'.join(pairs)}"


def _decoded(name: str) -> str:
    """A parameter name as the gateway reads it (`%74oken` is token)."""
    return urllib.parse.unquote_plus(name)


def read_registered_url(text: str, secret_param: str | None = None) -> RegisteredUrl:
    """Raises ValueError saying what is wrong, and never quoting the URL (it may hold a key)."""
    text = text.strip()
    if any(character.isspace() or not character.isprintable() for character in text):
        raise ValueError("holds spaces or control characters: give the URL on one line as is")
    template = parse_template(text)
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be the full URL Monetag calls, starting with https:// and the host")
    if url.fragment:
        raise ValueError("has a #fragment, which never reaches a server: leave it out")
    for name, macro in template.aliases.items():
        if name in CANONICAL_FIELDS and name != macro:
            raise ValueError(
                f"parameter {quoted(name)} is named like the field {name} but carries "
                f"{{{macro}}}: the names collide; name it after what it carries"
            )
    for name in template.fixed:
        if name in CANONICAL_FIELDS:
            raise ValueError(
                f"parameter {quoted(name)} is a field's name but holds a fixed value, which "
                f"every postback would then carry as its {name}: write {name}={{{name}}}, or "
                "leave it out"
            )
    for field_name, why in _WHY_NEEDED.items():
        if field_name not in template.delivers:
            raise ValueError(
                f"does not carry {{{field_name}}}: add {field_name}={{{field_name}}} to it (any "
                f"parameter name will do); the gateway cannot dedup without it: {why}"
            )
    return RegisteredUrl(text, template, _secret_param(template, secret_param))


def _secret_param(template: PostbackTemplate, chosen: str | None) -> str:
    how = (
        "choose another --secret-param"
        if chosen
        else "name the key's parameter with --secret-param"
    )
    if chosen is None:
        key_like = [name for name in template.fixed if _KEY_LIKE.search(name)]
        if len(key_like) > 1:
            raise ValueError(
                f"has several literal parameters that could hold the key "
                f"({', '.join(map(quoted, key_like))}): name one with --secret-param"
            )
        chosen = key_like[0] if key_like else DEFAULT_SECRET_PARAM
    if chosen in template.aliases:
        raise ValueError(
            f"parameter {quoted(chosen)} carries {{{template.aliases[chosen]}}}, so it cannot "
            f"hold the key too: {how}"
        )
    if chosen in CANONICAL_FIELDS:
        raise ValueError(f"the key's parameter {quoted(chosen)} is a field's name: {how}")
    return chosen


def app_url_problem(text: str) -> str | None:
    """What keeps `text` from being the app's URL, in words that never quote it (its query
    may hold the app's key)."""
    try:
        url = URL(text.strip())
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a URL"
    if url.scheme not in ("http", "https") or not url.host:
        return "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/postback"
    return None


def route_name_for(path: str) -> str:
    """The path's last word when it names something (`/postback/tapper`: tapper), else app."""
    words = [word.rsplit(".", 1)[0] for word in path.split("/") if word]
    last = words[-1].lower() if words else ""
    if last in _GENERIC_PATH_WORDS or not _ROUTE_NAME.fullmatch(last):
        return DEFAULT_ROUTE
    return last


@dataclass(frozen=True)
class Setup:
    """Everything the config is written from; paths as they go into the file."""

    url: RegisteredUrl
    app_url: str
    route: str
    ymid: YmidUse
    store: str
    env_file: str  # where the key is, as the comments name it
    config_file: str  # as the comments name it
    listen: str
    admin_listen: str
    tls: TlsConfig | None
    trusted_proxies: tuple[str, ...] = ()  # a TLS proxy in front, on this host or next to it

    @property
    def dedup_key(self) -> list[str]:
        carried = self.url.template.delivers
        return [YMID, EVENT_TYPE, *([ZONE_ID] if ZONE_ID in carried else [])]

    @property
    def dedup_ttl(self) -> str:
        return USER_ID_DEDUP_TTL if self.ymid == YmidUse.USER_ID else UNIQUE_DEDUP_TTL


def loaded(text: str, key: str, environ: Mapping[str, str]) -> GatewayConfig:
    """The config as the gateway reads `text` in `environ` with `key` as the secret;
    ConfigError if it would not: init writes no config that `check` would refuse."""
    return parse_config(text, {**environ, SECRET_VARIABLE: key})


def env_file_text(key: str, config_file: str, env_file: str) -> str:
    return (
        "# monetag-gateway's secrets as VAR=value lines (keep this file mode 0600), written by\n"
        f"# `monetag-gateway init` for {config_file}. Load it with\n"
        f"#   set -a; . {env_file}; set +a\n"
        "# or systemd's EnvironmentFile=. The key is also in the postback URL registered with\n"
        "# Monetag: a new key means registering the URL again.\n"
        f"{SECRET_VARIABLE}={key}\n"
    )


def scalar(text: str) -> str:
    """`text` as a YAML scalar reading back as this very string: plain when it is, else in
    double quotes (JSON's escapes are YAML's)."""
    if re.fullmatch(r"[A-Za-z0-9_/][A-Za-z0-9_./:@+-]*", text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)


def _flow(items: list[str]) -> str:
    return f"[{', '.join(scalar(item) for item in items)}]"


class _Document:
    """YAML lines, each comment wrapped to WIDTH above what it is about."""

    WIDTH = 96

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, depth: int, text: str, hang: int = 0) -> None:
        """`text` as comment lines at `depth` levels of indentation; a line it wraps onto is
        indented `hang` more (an item's text under its number). A word longer than a line
        (the URL) stays whole."""
        indent = "  " * depth + "# "
        self.lines += textwrap.wrap(
            text,
            self.WIDTH,
            initial_indent=indent,
            subsequent_indent=indent + " " * hang,
            break_long_words=False,
            break_on_hyphens=False,
        )

    def example(self, depth: int, text: str) -> None:
        """One comment line as it is, never wrapped: a command, a URL, YAML to uncomment."""
        self.lines.append("  " * depth + "# " + text)

    def paragraph_break(self) -> None:
        self.lines.append("#")

    def key(self, depth: int, text: str) -> None:
        self.lines.append("  " * depth + text)

    def blank(self) -> None:
        self.lines.append("")

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def config_text(setup: Setup) -> str:
    """The commented config.yaml."""
    document = _Document()
    _header(document, setup)
    _server(document, setup)
    _store(document, setup)
    document.blank()
    document.key(0, "routes:")
    _route(document, setup)
    return document.text


def _header(document: _Document, setup: Setup) -> None:
    document.comment(
        0,
        "Written by `monetag-gateway init` for one route, behind the postback URL registered "
        "with Monetag (below). Every key, with its default: docs/config-reference.yaml.",
    )
    document.paragraph_break()
    document.comment(
        0,
        f'The route\'s key is not in this file: `keys: ["{KEY_REFERENCE}"]` reads it from the '
        f"environment, and init wrote it to {setup.env_file} (mode 0600). Load it, then check:",
    )
    document.example(0, f"  set -a; . {setup.env_file}; set +a")
    document.example(0, f"  monetag-gateway check --config {setup.config_file}")
    document.comment(
        0,
        "In production the line goes into the service's environment file instead "
        "(deploy/systemd/monetag-gateway.service: EnvironmentFile=/etc/monetag-gateway/env).",
    )
    document.blank()


def _server(document: _Document, setup: Setup) -> None:
    document.key(0, "server:")
    document.comment(1, 'where Monetag\'s postbacks arrive; "*:8080" listens on IPv4 and IPv6')
    document.key(1, f"listen: {scalar(setup.listen)}")
    document.comment(
        1,
        "/healthz, /readyz, /metrics and the inspector: keep it on loopback (reachable from "
        "other machines, it needs server.admin_token)",
    )
    document.key(1, f"admin_listen: {scalar(setup.admin_listen)}")
    document.comment(
        1,
        "a load balancer or TLS proxy in front: list its address, or every postback seems to "
        "come from it (and `allowlist suggest` sees only the proxy)",
    )
    document.key(1, f"trusted_proxies: {_flow(list(setup.trusted_proxies))}")
    if setup.tls is None:
        document.comment(
            1,
            "The key travels in the URL, so Monetag must call https: terminate TLS here, or in "
            "a proxy listed in trusted_proxies (`check` warns until one of the two is done):",
        )
        document.example(1, "tls:")
        document.example(1, "  cert_file: /etc/monetag-gateway/tls/fullchain.pem")
        document.example(1, "  key_file: /etc/monetag-gateway/tls/privkey.pem")
        return
    document.comment(
        1,
        "the key travels in the URL: TLS keeps it from every hop (PEM files, re-read when they "
        "change: a renewal needs no restart)",
    )
    document.key(1, "tls:")
    document.key(2, f"cert_file: {scalar(setup.tls.cert_file)}")
    document.key(2, f"key_file: {scalar(setup.tls.key_file)}")


def _store(document: _Document, setup: Setup) -> None:
    document.blank()
    document.comment(
        0,
        "The embedded store, an SQLite file created at the first start: dedup that survives "
        "restarts, and the history of every postback (`monetag-gateway history`, the "
        "inspector, `allowlist suggest`). Here a file you can write without root; in "
        "production the systemd unit sets GATEWAY_STORE=/var/lib/monetag-gateway/gateway.db "
        "(deploy/systemd). Replicas share PostgreSQL instead: `store: {url: ...}`.",
    )
    document.key(0, "store:")
    document.key(1, f"path: {scalar('${GATEWAY_STORE:-' + setup.store + '}')}")
    document.key(0, "history:")
    document.key(1, "enabled: true")
    document.comment(1, "then deleted; `history purge` for a user's deletion request")
    document.key(1, f"retention: {HISTORY_RETENTION}")


def _route(document: _Document, setup: Setup) -> None:
    url = setup.url
    document.key(1, f"{scalar(setup.route)}:")
    document.key(2, f"path: {scalar(url.template.path)}")
    _allowlist(document, setup)
    document.key(2, "secret:")
    document.key(3, f"query_param: {scalar(url.secret_param)}")
    document.comment(3, "during a rotation, the new key too")
    document.key(3, f'keys: ["{KEY_REFERENCE}"]')
    document.comment(2, f"The postback URL registered with Monetag, the key as {KEY_REFERENCE}:")
    document.example(2, f"  {url.with_key(KEY_REFERENCE)}")
    renamed = {name: field for name, field in url.template.aliases.items() if name != field}
    document.comment(
        2,
        ("Its parameters -> the canonical names (Monetag's macro names). " if renamed else "")
        + "The app receives the canonical names, as Monetag's sample handlers read them "
        "($_GET['ymid'], $_GET['event_type']); an upstream's `rename:` gives an app names of "
        "its own." + ("" if renamed else " The URL already uses the canonical names: no aliases."),
    )
    if renamed:
        document.key(2, "aliases:")
        for name, field_name in renamed.items():
            document.key(3, f"{scalar(name)}: {field_name}")
    if url.fixed_params:
        document.comment(
            2, f"fixed parameters, passed to the app as they are: {', '.join(url.fixed_params)}"
        )
    document.comment(2, "refused (400) without them: the dedup key needs both")
    document.key(2, f"required: {_flow([YMID, EVENT_TYPE])}")
    _dedup(document, setup)
    document.key(2, "upstreams:")
    document.key(3, f"- url: {scalar(setup.app_url)}")
    document.key(4, f"timeout: {UPSTREAM_TIMEOUT}")
    document.comment(4, "extra attempts on a connect error, a timeout or 502/503/504")
    document.key(4, f"retries: {UPSTREAM_RETRIES}")


def _allowlist(document: _Document, setup: Setup) -> None:
    document.comment(
        2,
        "Monetag publishes no list of the addresses it sends from, so the route starts without "
        "allow_ips: any address may call and the key alone decides (`check` warns about it). "
        "To add the allowlist once real postbacks have arrived for some days:",
    )
    steps = [
        f"1. monetag-gateway allowlist suggest --config {setup.config_file} prints the networks "
        "the valid key came from, as an `allow_ips:` block;",
        "2. paste it here. Under log_only an address it does not list is still let in, and "
        "logged and counted (gateway_allowlist_log_only_total);",
        "3. when only strangers show up there, switch to allow_ips_mode: enforce "
        "(docs/allowlist.md).",
    ]
    for step in steps:
        document.comment(2, f"  {step}", hang=5)
    document.key(2, f"allow_ips_mode: {AllowIpsMode.LOG_ONLY}")


def _dedup(document: _Document, setup: Setup) -> None:
    document.key(2, "dedup:")
    if ZONE_ID in setup.dedup_key:
        document.comment(3, "one event: one ad call's click (or impression) in one zone")
    else:
        document.comment(
            3,
            "the URL carries no {zone_id}, so one ymid's event counts once whatever the zone; "
            "add zone={zone_id} to it and zone_id here to tell zones apart",
        )
    document.key(3, f"key: {_flow(setup.dedup_key)}")
    if setup.ymid == YmidUse.UNIQUE:
        document.comment(
            3,
            "ymid is unique per ad call (init --ymid unique): a repeat within ttl, Monetag's "
            "retry or a replay, is answered `duplicate` and never reaches the app",
        )
    else:
        ttl = USER_ID_DEDUP_TTL
        document.comment(
            3,
            "ymid is the user's id (init --ymid user-id), so each click of one user looks like "
            "the last: ttl only has to outlast a quick repeat of one postback (minutes), and "
            f"the user's next ad after it pays. The cost: a genuine click within {ttl} of the "
            f"last is dropped, and a postback replayed after {ttl} pays again. The real fix: a "
            "unique ymid per ad call, which reward sessions issue (docs/sessions.md); then "
            f"ttl: {UNIQUE_DEDUP_TTL}.",
        )
    document.key(3, f"ttl: {setup.dedup_ttl}")
