"""config.yaml -> validated, frozen config objects.

Everything is checked before the server listens, and every error names its key path
(`routes.tapper.allow_ips[2]`). `${NAME}` and `${NAME:-default}` in string values are replaced
from the environment so secrets stay out of the file. The key names follow the contract in
`shared/design/config-contract.yaml`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from yarl import URL

from .addresses import AddressSet, IndexedValueError
from .postback import CANONICAL_FIELDS, EVENT_TYPE, YMID, ZONE_ID
from .secret import Secret, SecretCheck

DEFAULT_REQUIRED: tuple[str, ...] = (YMID, EVENT_TYPE)
DEFAULT_DEDUP_KEY: tuple[str, ...] = (YMID, EVENT_TYPE, ZONE_ID)
DEFAULT_DEDUP_TTL = 24 * 3600.0
DEFAULT_DEDUP_MAX_ENTRIES = 1_000_000
DEFAULT_UPSTREAM_TIMEOUT = 5.0
DEFAULT_UPSTREAM_RETRIES = 2
MAX_UPSTREAM_RETRIES = 10
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,128}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,128}")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(Exception):
    """The config cannot be used; `problems` lists each one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    listen: ListenAddress = ListenAddress("0.0.0.0", 8080)
    admin_listen: ListenAddress = ListenAddress("127.0.0.1", 9090)
    trusted_proxies: AddressSet = field(default_factory=AddressSet)


@dataclass(frozen=True)
class DedupConfig:
    key: tuple[str, ...] = DEFAULT_DEDUP_KEY
    ttl: float = DEFAULT_DEDUP_TTL
    max_entries: int = DEFAULT_DEDUP_MAX_ENTRIES


@dataclass(frozen=True)
class UpstreamConfig:
    url: URL
    timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    retries: int = DEFAULT_UPSTREAM_RETRIES
    rename: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class RouteConfig:
    name: str
    path: str
    upstreams: tuple[UpstreamConfig, ...]
    allow_ips: AddressSet | None = None
    secret: SecretCheck | None = None
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    required: tuple[str, ...] = DEFAULT_REQUIRED
    dedup: DedupConfig = field(default_factory=DedupConfig)
    insecure: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig
    routes: tuple[RouteConfig, ...]
    warnings: tuple[str, ...] = ()


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read, substitute and validate a config file; raise ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        message = f"cannot read config file {os.fspath(path)!r}: {error.strerror}"
        raise ConfigError([message]) from None
    return parse_config(text, os.environ if environ is None else environ)


def parse_config(text: str, environ: Mapping[str, str]) -> GatewayConfig:
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError([f"config is not valid YAML: {_describe_yaml_error(error)}"]) from None
    if document is None:
        raise ConfigError(["config is empty"])
    reader = _Reader(environ)
    config = reader.gateway(document)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or ["config is empty"])
    return config


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a repeated mapping key is an error instead of silently winning."""


def _construct_mapping_without_duplicates(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges are resolved by construct_mapping below
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates
)


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    """Where and what, never the offending source text: that line may hold a secret."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return type(error).__name__


class _FromEnvironment(str):
    """A string that came from ${VAR}: may stand for a number, as environment values do."""


T = TypeVar("T")


def _overlap(first: ListenAddress, second: ListenAddress) -> bool:
    """Would the two listeners fight over one port? (Port 0 means any free port.)"""
    wildcards = {"0.0.0.0", "::", ""}
    return first.port == second.port != 0 and (
        first.host == second.host or bool({first.host, second.host} & wildcards)
    )


def _key(parent: str, key: object) -> str:
    return f"{parent}.{key}" if parent else str(key)


class _Reader:
    """Walks the YAML document, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- the document ---------------------------------------------------------------------

    def gateway(self, document: Any) -> GatewayConfig | None:
        top = self.mapping(document, "", {"server", "routes"}, what="the config file")
        if top is None:
            return None
        server = self.server(top.get("server", {}), "server")
        routes = self.routes(top.get("routes"), "routes")
        if server is None or routes is None:
            return None
        return GatewayConfig(server, routes, tuple(self.warnings))

    def server(self, value: Any, path: str) -> ServerConfig | None:
        section = self.mapping(value, path, {"listen", "admin_listen", "trusted_proxies"})
        if section is None:
            return None
        defaults = ServerConfig()
        listen = self.optional(section, "listen", path, self.listen_address, defaults.listen)
        admin = self.optional(
            section, "admin_listen", path, self.listen_address, defaults.admin_listen
        )
        proxies = self.optional(
            section, "trusted_proxies", path, self.address_set, defaults.trusted_proxies
        )
        if listen and admin and _overlap(listen, admin):
            self.problem(_key(path, "admin_listen"), "must not share server.listen's port")
        if listen is None or admin is None or proxies is None:
            return None
        return ServerConfig(listen, admin, proxies)

    def routes(self, value: Any, path: str) -> tuple[RouteConfig, ...] | None:
        if value is None:
            self.problem(path, "at least one route is required")
            return None
        section = self.mapping(value, path, None)
        if section is None:
            return None
        if not section:
            self.problem(path, "at least one route is required")
        routes: list[RouteConfig] = []
        owner_of_path: dict[str, str] = {}
        for name, body in section.items():
            route_path = _key(path, name)
            if not isinstance(name, str) or not _ROUTE_NAME.fullmatch(name):
                self.problem(route_path, "a route name is letters, digits, '_', '.' or '-'")
                continue
            route = self.route(name, body, route_path)
            if route is None:
                continue
            if route.path in owner_of_path:
                self.problem(
                    _key(route_path, "path"),
                    f"{route.path!r} is already the path of route {owner_of_path[route.path]!r}",
                )
            owner_of_path.setdefault(route.path, name)
            routes.append(route)
        return tuple(routes)

    def route(self, name: str, value: Any, path: str) -> RouteConfig | None:
        keys = {
            "path", "allow_ips", "secret", "aliases", "required", "dedup", "upstreams", "insecure",
        }  # fmt: skip
        section = self.mapping(value, path, keys)
        if section is None:
            return None
        problems_before = len(self.problems)
        url_path = self.required_key(section, "path", path, self.url_path)
        allow_ips = self.optional(section, "allow_ips", path, self.allowlist, None)
        secret = self.optional(section, "secret", path, self.secret, None)
        aliases = self.optional(section, "aliases", path, self.aliases, dict[str, str]())
        required = self.optional(section, "required", path, self.field_list, DEFAULT_REQUIRED)
        dedup = self.optional(section, "dedup", path, self.dedup, DedupConfig())
        upstreams = self.required_key(section, "upstreams", path, self.upstreams)
        insecure = self.optional(section, "insecure", path, self.boolean, False)
        if len(self.problems) > problems_before:
            return None
        assert url_path is not None and upstreams is not None and aliases is not None
        assert required is not None and dedup is not None
        route = RouteConfig(
            name=name,
            path=url_path,
            upstreams=upstreams,
            allow_ips=allow_ips,
            secret=secret,
            aliases=MappingProxyType(aliases),
            required=required,
            dedup=dedup,
            insecure=bool(insecure),
        )
        self.check_route_consistency(route, path)
        return route

    def check_route_consistency(self, route: RouteConfig, path: str) -> None:
        """Combinations that are each valid alone but can never work together."""
        if route.allow_ips is None and route.secret is None and not route.insecure:
            self.problem(
                path,
                "has neither allow_ips nor secret: anyone could grant rewards; "
                "add one, or write `insecure: true` if that is really meant",
            )
        elif route.allow_ips is None and not route.insecure:
            self.warnings.append(f"{path}: no allow_ips, so any address may call (secret only)")
        elif route.secret is None and not route.insecure:
            self.warnings.append(f"{path}: no secret, so the IP allowlist is the only check")
        elif route.insecure:
            self.warnings.append(f"{path}: insecure: true")
        secret_param = route.secret.query_param if route.secret else None
        incoming_names = {name for name in CANONICAL_FIELDS if name not in route.aliases} | set(
            route.aliases
        )
        if secret_param is not None and secret_param in incoming_names:
            self.problem(
                _key(path, "secret.query_param"),
                f"{secret_param!r} is also a postback field name; the secret must have its own",
            )
        reachable = {name for name in CANONICAL_FIELDS if name not in route.aliases}
        reachable |= set(route.aliases.values())
        for list_name, names in (("required", route.required), ("dedup.key", route.dedup.key)):
            for index, name in enumerate(names):
                if name not in reachable:
                    self.problem(
                        f"{path}.{list_name}[{index}]",
                        f"{name!r} can never be present: aliases rename incoming {name!r} "
                        f"to {route.aliases[name]!r}",
                    )

    # -- route parts ----------------------------------------------------------------------

    def secret(self, value: Any, path: str) -> SecretCheck | None:
        section = self.mapping(value, path, {"query_param", "header", "keys"})
        if section is None:
            return None
        query_param = self.optional(section, "query_param", path, self.param_name, None)
        header = self.optional(section, "header", path, self.header_name, None)
        if ("query_param" in section) == ("header" in section):
            self.problem(path, "give exactly one of query_param or header")
        keys = self.required_key(section, "keys", path, self.secret_keys)
        if keys is None or (query_param is None and header is None):
            return None
        return SecretCheck(keys, query_param=query_param, header=header)

    def secret_keys(self, value: Any, path: str) -> tuple[Secret, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        if not items:
            self.problem(path, "at least one key is required")
        keys = []
        for index, item in enumerate(items):
            text = self.string(item, f"{path}[{index}]", secret=True)
            if text is None:
                continue
            if not text:
                self.problem(f"{path}[{index}]", "is empty (an unset variable's empty default?)")
            elif not text.isascii() or not text.isprintable() or " " in text:
                self.problem(f"{path}[{index}]", "must be printable ASCII without spaces")
            else:
                keys.append(Secret(text))
        return tuple(keys) if len(keys) == len(items) else None

    def aliases(self, value: Any, path: str) -> dict[str, str] | None:
        section = self.mapping(value, path, None)
        if section is None:
            return None
        aliases: dict[str, str] = {}
        for incoming, canonical in section.items():
            entry = _key(path, incoming)
            name = self.param_name(incoming, entry)
            target = self.canonical_name(canonical, entry)
            if name is not None and target is not None and name != target:
                aliases[name] = target
        return aliases

    def dedup(self, value: Any, path: str) -> DedupConfig | None:
        section = self.mapping(value, path, {"key", "ttl", "max_entries"})
        if section is None:
            return None
        defaults = DedupConfig()
        key = self.optional(section, "key", path, self.field_list, defaults.key)
        ttl = self.optional(section, "ttl", path, self.duration, defaults.ttl)
        max_entries = self.optional(
            section, "max_entries", path, self.positive_int, defaults.max_entries
        )
        if key is not None and not key:
            self.problem(_key(path, "key"), "needs at least one field")
        if key is None or ttl is None or max_entries is None:
            return None
        return DedupConfig(key, ttl, max_entries)

    def upstreams(self, value: Any, path: str) -> tuple[UpstreamConfig, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        if not items:
            self.problem(path, "at least one upstream is required")
        upstreams = [self.upstream(item, f"{path}[{index}]") for index, item in enumerate(items)]
        if any(upstream is None for upstream in upstreams):
            return None
        return tuple(upstream for upstream in upstreams if upstream is not None)

    def upstream(self, value: Any, path: str) -> UpstreamConfig | None:
        section = self.mapping(value, path, {"url", "timeout", "retries", "rename"})
        if section is None:
            return None
        url = self.required_key(section, "url", path, self.upstream_url)
        timeout = self.optional(section, "timeout", path, self.duration, DEFAULT_UPSTREAM_TIMEOUT)
        retries = self.optional(section, "retries", path, self.retries, DEFAULT_UPSTREAM_RETRIES)
        rename = self.optional(section, "rename", path, self.rename, dict[str, str]())
        if url is None or timeout is None or retries is None or rename is None:
            return None
        return UpstreamConfig(url, timeout, retries, MappingProxyType(rename))

    def rename(self, value: Any, path: str) -> dict[str, str] | None:
        section = self.mapping(value, path, None)
        if section is None:
            return None
        rename: dict[str, str] = {}
        for canonical, outgoing in section.items():
            entry = _key(path, canonical)
            source = self.canonical_name(canonical, entry)
            target = self.param_name(outgoing, entry)
            if target in rename.values():
                self.problem(entry, f"{target!r} is already the name of another field")
            elif source is not None and target is not None:
                rename[source] = target
        return rename

    def allowlist(self, value: Any, path: str) -> AddressSet | None:
        addresses = self.address_set(value, path)
        if addresses is not None and not addresses:
            self.problem(path, "an empty list allows nobody; omit allow_ips to allow any address")
            return None
        return addresses

    # -- scalar kinds ---------------------------------------------------------------------

    def address_set(self, value: Any, path: str) -> AddressSet | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        texts = [self.string(item, f"{path}[{index}]") for index, item in enumerate(items)]
        if any(text is None for text in texts):
            return None
        try:
            return AddressSet.compile(text.strip() for text in texts if text is not None)
        except IndexedValueError as error:
            self.problem(f"{path}[{error.index}]", str(error))
            return None

    def listen_address(self, value: Any, path: str) -> ListenAddress | None:
        text = self.string(value, path)
        if text is None:
            return None
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", text)
        port = int(match.group(2) or match.group(4)) if match else -1
        if match is None or port > 65535:
            self.problem(path, f"{text!r} is not host:port (use [::]:8080 for IPv6)")
            return None
        return ListenAddress(match.group(1) or match.group(3), port)

    def url_path(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and (not text.startswith("/") or "?" in text or " " in text):
            self.problem(path, f"{text!r} must be an absolute path like /postback, without query")
            return None
        return text

    def upstream_url(self, value: Any, path: str) -> URL | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            url = URL(text)
        except ValueError as error:
            self.problem(path, f"{text!r} is not a URL: {error}")
            return None
        if url.scheme not in ("http", "https") or not url.host:
            self.problem(path, f"{text!r} must be an http:// or https:// URL with a host")
            return None
        return url

    def field_list(self, value: Any, path: str) -> tuple[str, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        names = [self.canonical_name(item, f"{path}[{index}]") for index, item in enumerate(items)]
        if any(name is None for name in names):
            return None
        return tuple(name for name in names if name is not None)

    def canonical_name(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and text not in CANONICAL_FIELDS:
            self.problem(path, f"{text!r} is not a canonical field ({', '.join(CANONICAL_FIELDS)})")
            return None
        return text

    def param_name(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not _PARAM_NAME.fullmatch(text):
            self.problem(path, f"{text!r} is not a usable query parameter name")
            return None
        return text

    def header_name(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not _HEADER_NAME.fullmatch(text):
            self.problem(path, f"{text!r} is not a usable header name")
            return None
        return text

    def duration(self, value: Any, path: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.problem(path, f"expected a duration like 500ms, 5s, 10m, 24h; got {value!r}")
            return None
        seconds: float | None = None
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            text = self.substitute(value, path)
            match = _DURATION.fullmatch(text.strip()) if text is not None else None
            if match is not None:
                seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            elif text is not None:
                self.problem(path, f"{text!r} is not a duration like 500ms, 5s, 10m, 24h")
                return None
        if seconds is not None and not 0 < seconds < float("inf"):
            self.problem(path, "must be longer than zero and finite")
            return None
        return seconds

    def retries(self, value: Any, path: str) -> int | None:
        number = self.integer(value, path)
        if number is not None and not 0 <= number <= MAX_UPSTREAM_RETRIES:
            self.problem(path, f"must be between 0 and {MAX_UPSTREAM_RETRIES}")
            return None
        return number

    def positive_int(self, value: Any, path: str) -> int | None:
        number = self.integer(value, path)
        if number is not None and number < 1:
            self.problem(path, "must be at least 1")
            return None
        return number

    def integer(self, value: Any, path: str) -> int | None:
        if isinstance(value, str):
            text = self.substitute(value, path)
            if text is None:
                return None  # the unset variable is already reported
            if isinstance(text, _FromEnvironment) and text.strip().isdigit():
                return int(text)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"expected a whole number, got {value!r}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {value!r}")
            return None
        return value

    def string(self, value: Any, path: str, *, secret: bool = False) -> str | None:
        if not isinstance(value, str):
            shown = "" if secret else f" {value!r}"  # a key written as a number stays unsaid
            self.problem(path, f"expected a string, got {type(value).__name__}{shown}")
            return None
        return self.substitute(value, path)

    def substitute(self, text: str, path: str) -> str | None:
        """Replace ${NAME} and ${NAME:-default}; an unset NAME without default is a problem."""
        if "${" not in text:
            return text
        missing: list[str] = []

        def value_of(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _ENV_REFERENCE.sub(value_of, text)
        for name in missing:
            self.problem(path, f"environment variable {name} is not set")
        return None if missing else _FromEnvironment(result)

    # -- structure ------------------------------------------------------------------------

    def mapping(
        self, value: Any, path: str, allowed: set[str] | None, what: str = ""
    ) -> dict[Any, Any] | None:
        if not isinstance(value, dict):
            where = path or what
            self.problem(where, f"expected a mapping, got {type(value).__name__}")
            return None
        for key in value:
            if allowed is not None and key not in allowed:
                self.problem(_key(path, key), f"unknown key (expected one of {sorted(allowed)})")
        return value

    def sequence(self, value: Any, path: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {type(value).__name__}")
            return None
        return value

    def optional(
        self,
        section: dict[Any, Any],
        key: str,
        path: str,
        read: Callable[[Any, str], T | None],
        default: T,
    ) -> T | None:
        if key not in section:
            return default
        return read(section[key], _key(path, key))

    def required_key(
        self, section: dict[Any, Any], key: str, path: str, read: Callable[[Any, str], T | None]
    ) -> T | None:
        if key not in section:
            self.problem(_key(path, key), "is required")
            return None
        return read(section[key], _key(path, key))
