"""The config document, section by section: server, routes and their parts."""

from __future__ import annotations

import re
import ssl
from types import MappingProxyType
from typing import Any

from ..addresses import AddressSet
from ..postback import CANONICAL_FIELDS, LOWERCASED_FIELDS
from ..secret import Secret, SecretCheck
from ..tls import describe_load_error, server_context
from ..validate import DEFAULT_MAX_ESTIMATED_PRICE, value_problem
from .model import (
    DEFAULT_REQUIRED,
    DEFAULT_UPSTREAM_RETRIES,
    DEFAULT_UPSTREAM_TIMEOUT,
    ENFORCE,
    EVERY_ADDRESS,
    FAIL_CLOSED,
    FAIL_OPEN,
    LOG_ONLY,
    MEMORY,
    QUEUED,
    REDIS,
    SYNC,
    DedupConfig,
    GatewayConfig,
    ListenAddress,
    LoggingConfig,
    QueueConfig,
    RedisUrl,
    RouteConfig,
    ServerConfig,
    StaticParams,
    StoreConfig,
    TlsConfig,
    UpstreamConfig,
)
from .template import PostbackTemplate, parse_template
from .values import ValueReader, key_path

_ROUTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _overlap(first: ListenAddress, second: ListenAddress) -> bool:
    """Would the two listeners fight over one port? (Port 0 means any free port.)"""
    wildcards = {"0.0.0.0", "::", "", EVERY_ADDRESS}
    return first.port == second.port != 0 and (
        first.host == second.host or bool({first.host, second.host} & wildcards)
    )


class DocumentReader(ValueReader):
    # -- the document ---------------------------------------------------------------------

    def gateway(self, document: Any) -> GatewayConfig | None:
        keys = {"server", "routes", "logging", "store", "defaults"}
        top = self.mapping(document, "", keys, what="the config file")
        if top is None:
            return None
        self.dedup_defaults = self.defaults(top.get("defaults", {}), "defaults")
        server = self.server(top.get("server", {}), "server")
        routes = self.routes(top.get("routes"), "routes")
        logging = self.logging(top.get("logging", {}), "logging")
        store = self.optional(top, "store", "", self.store, None)
        if server is None or routes is None or logging is None:
            return None
        self.warn_about_plain_http(server, routes)
        if store is None and "store" not in top:
            for route in routes:
                if route.delivery == QUEUED:
                    self.problem(
                        f"routes.{route.name}.delivery",
                        "queued delivery needs a top-level `store: {path: ...}`",
                    )
        return GatewayConfig(server, routes, tuple(self.warnings), logging, store=store)

    def warn_about_plain_http(self, server: ServerConfig, routes: tuple[RouteConfig, ...]) -> None:
        """A key in the URL over plain HTTP can be read by every hop on the way."""
        if server.tls is not None or server.trusted_proxies or server.listen.loopback:
            return  # TLS here, or a proxy in front that (we trust) terminates it
        for route in routes:
            if route.secret is not None and route.secret.query_param is not None:
                self.warnings.append(
                    f"routes.{route.name}.secret: the key travels in the URL over plain HTTP "
                    "(no server.tls, no trusted_proxies in front): every hop can read it; "
                    "add server.tls or terminate TLS in a proxy listed in trusted_proxies"
                )

    def store(self, value: Any, path: str) -> StoreConfig | None:
        section = self.mapping(value, path, {"path"})
        if section is None:
            return None
        file_path = self.required_key(section, "path", path, self.string)
        if file_path is not None and not file_path.strip():
            self.problem(key_path(path, "path"), "is empty")
            return None
        return None if file_path is None else StoreConfig(file_path)

    def queue(self, value: Any, path: str) -> QueueConfig | None:
        keys = {"max_attempts", "max_age", "concurrency", "retry_base", "retry_cap"}
        section = self.mapping(value, path, keys)
        if section is None:
            return None
        defaults = QueueConfig()
        problems_before = len(self.problems)
        settings = {
            "max_attempts": self.optional(
                section, "max_attempts", path, self.positive_int, defaults.max_attempts
            ),
            "max_age": self.optional(section, "max_age", path, self.duration, defaults.max_age),
            "concurrency": self.optional(
                section, "concurrency", path, self.positive_int, defaults.concurrency
            ),
            "retry_base": self.optional(
                section, "retry_base", path, self.duration, defaults.retry_base
            ),
            "retry_cap": self.optional(
                section, "retry_cap", path, self.duration, defaults.retry_cap
            ),
        }
        if len(self.problems) > problems_before:
            return None
        return QueueConfig(**settings)  # type: ignore[arg-type]

    def logging(self, value: Any, path: str) -> LoggingConfig | None:
        section = self.mapping(value, path, {"format", "level"})
        if section is None:
            return None
        defaults = LoggingConfig()
        formats = ("json", "text")
        log_format = self.optional(
            section, "format", path, lambda v, p: self.choice(v, p, formats), defaults.format
        )
        level = self.optional(section, "level", path, self.log_level, defaults.level)
        if log_format is None or level is None:
            return None
        return LoggingConfig(log_format, level)

    def log_level(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        levels = ("DEBUG", "INFO", "WARNING", "ERROR")
        return None if text is None else self.choice(text.upper(), path, levels)

    def server(self, value: Any, path: str) -> ServerConfig | None:
        keys = {
            "listen", "admin_listen", "trusted_proxies", "max_in_flight", "shutdown_grace",
            "drain_delay", "client_timeout", "max_query_length", "reload_interval", "tls",
        }  # fmt: skip
        section = self.mapping(value, path, keys)
        if section is None:
            return None
        problems_before = len(self.problems)
        defaults = ServerConfig()
        listen = self.optional(section, "listen", path, self.listen_address, defaults.listen)
        admin = self.optional(
            section, "admin_listen", path, self.listen_address, defaults.admin_listen
        )
        proxies = self.optional(
            section, "trusted_proxies", path, self.address_set, defaults.trusted_proxies
        )
        tls = self.optional(section, "tls", path, self.tls, None)
        if listen and admin and _overlap(listen, admin):
            self.problem(key_path(path, "admin_listen"), "must not share server.listen's port")
        limits = {
            "max_in_flight": self.optional(
                section, "max_in_flight", path, self.positive_int, defaults.max_in_flight
            ),
            "shutdown_grace": self.optional(
                section, "shutdown_grace", path, self.duration_or_zero, defaults.shutdown_grace
            ),
            "drain_delay": self.optional(
                section, "drain_delay", path, self.duration_or_zero, defaults.drain_delay
            ),
            "client_timeout": self.optional(
                section, "client_timeout", path, self.duration, defaults.client_timeout
            ),
            "max_query_length": self.optional(
                section, "max_query_length", path, self.positive_int, defaults.max_query_length
            ),
            "reload_interval": self.optional(
                section, "reload_interval", path, self.duration_or_zero, defaults.reload_interval
            ),
        }
        if len(self.problems) > problems_before:
            return None
        assert listen is not None and admin is not None and proxies is not None
        return ServerConfig(listen, admin, proxies, tls=tls, **limits)  # type: ignore[arg-type]

    def tls(self, value: Any, path: str) -> TlsConfig | None:
        """Certificate and key files (PEM), loaded now so a bad pair is a config error."""
        section = self.mapping(value, path, {"cert_file", "key_file"})
        if section is None:
            return None
        cert_file = self.required_key(section, "cert_file", path, self.string)
        key_file = self.required_key(section, "key_file", path, self.string)
        if cert_file is None or key_file is None:
            return None
        config = TlsConfig(cert_file, key_file)
        try:
            server_context(config)
        except (OSError, ssl.SSLError) as error:
            self.problem(path, describe_load_error(error))
            return None
        return config

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
            route_path = key_path(path, name)
            if not isinstance(name, str) or not _ROUTE_NAME.fullmatch(name):
                self.problem(route_path, "a route name is letters, digits, '_', '.' or '-'")
                continue
            route = self.route(name, body, route_path)
            if route is None:
                continue
            if route.path in owner_of_path:
                self.problem(
                    key_path(route_path, "path"),
                    f"{route.path!r} is already the path of route {owner_of_path[route.path]!r}",
                )
            owner_of_path.setdefault(route.path, name)
            routes.append(route)
        return tuple(routes)

    def route(self, name: str, value: Any, path: str) -> RouteConfig | None:
        keys = {
            "path", "allow_ips", "secret", "aliases", "required", "dedup", "upstreams", "insecure",
            "allow_ips_mode", "match", "drop_unknown", "template", "delivery", "queue",
            "max_estimated_price",
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
        dedup = (
            self.optional(section, "dedup", path, self.dedup, None)
            if "dedup" in section
            else (self.dedup({}, key_path(path, "dedup")))
        )
        upstreams = self.required_key(section, "upstreams", path, self.upstreams)
        insecure = self.optional(section, "insecure", path, self.boolean, False)
        modes = (ENFORCE, LOG_ONLY)
        allow_ips_mode = self.optional(
            section, "allow_ips_mode", path, lambda v, p: self.choice(v, p, modes), ENFORCE
        )
        match = self.optional(section, "match", path, self.match, dict[str, frozenset[str]]())
        drop_unknown = self.optional(section, "drop_unknown", path, self.boolean, False)
        template = self.optional(section, "template", path, self.template, None)
        deliveries = (SYNC, QUEUED)
        delivery = self.optional(
            section, "delivery", path, lambda v, p: self.choice(v, p, deliveries), SYNC
        )
        queue = self.optional(section, "queue", path, self.queue, QueueConfig())
        max_price = self.optional(
            section, "max_estimated_price", path, self.decimal, DEFAULT_MAX_ESTIMATED_PRICE
        )
        if len(self.problems) > problems_before:
            return None
        assert url_path is not None and upstreams is not None and aliases is not None
        assert required is not None and dedup is not None and match is not None
        assert allow_ips_mode is not None and delivery is not None and queue is not None
        assert max_price is not None
        if template is not None:
            if "aliases" in section:
                self.problem(key_path(path, "aliases"), "give aliases or template, not both")
            aliases = template.aliases
            delivers = template.delivers
        else:
            delivers = frozenset(
                {name for name in CANONICAL_FIELDS if name not in aliases} | set(aliases.values())
            )
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
            allow_ips_mode=allow_ips_mode,
            match=MappingProxyType(match),
            drop_unknown=bool(drop_unknown),
            from_template=template is not None,
            delivers=delivers,
            delivery=delivery,
            queue=queue,
            max_estimated_price=max_price,
        )
        self.check_route_consistency(route, path)
        if template is not None:
            self.check_template(route, template, key_path(path, "template"))
        return route

    def check_route_consistency(self, route: RouteConfig, path: str) -> None:
        """Combinations that are each valid alone but can never work together."""
        enforced_allowlist = route.allow_ips is not None and route.allow_ips_mode == ENFORCE
        if not enforced_allowlist and route.secret is None and not route.insecure:
            self.problem(
                path,
                "has neither an enforced allow_ips nor a secret: anyone could grant rewards; "
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
                key_path(path, "secret.query_param"),
                f"{secret_param!r} is also a postback field name; the secret must have its own",
            )
        needed = [
            *((f"required[{index}]", name) for index, name in enumerate(route.required)),
            *((f"dedup.key[{index}]", name) for index, name in enumerate(route.dedup.key)),
            *((f"match.{name}", name) for name in route.match),
        ]
        for where, name in needed:
            if name in route.delivers:
                continue
            if route.from_template:
                why = "the template does not carry it"
            else:
                why = f"aliases rename incoming {name!r} to {route.aliases[name]!r}"
            self.problem(f"{path}.{where}", f"{name!r} can never be present: {why}")

    def check_template(self, route: RouteConfig, template: PostbackTemplate, path: str) -> None:
        """The registered URL must reach this route and carry a key this route accepts."""
        if template.path != route.path:
            self.problem(path, f"its path {template.path!r} is not the route's path {route.path!r}")
        secret_param = route.secret.query_param if route.secret else None
        if secret_param is None:
            return
        if secret_param not in template.fixed:
            self.problem(path, f"does not carry the secret parameter {secret_param!r}")
            return
        assert route.secret is not None
        if not route.secret.accepts(template.fixed[secret_param]):
            self.problem(path, f"its {secret_param!r} value is not one of secret.keys")

    def template(self, value: Any, path: str) -> PostbackTemplate | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            return parse_template(text)
        except ValueError as error:
            self.problem(path, str(error))
            return None

    def match(self, value: Any, path: str) -> dict[str, frozenset[str]] | None:
        section = self.mapping(value, path, None)
        if section is None:
            return None
        match: dict[str, frozenset[str]] = {}
        for name, accepted in section.items():
            entry = key_path(path, name)
            field_name = self.canonical_name(name, entry)
            items = accepted if isinstance(accepted, list) else [accepted]
            values = set()
            for item in items:
                text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
                text = self.string(text, entry)
                if text is None or field_name is None:
                    continue
                if field_name in LOWERCASED_FIELDS:
                    text = text.lower()
                problem = value_problem(field_name, text)
                if problem is not None:
                    self.problem(entry, f"{text!r} can never match: {field_name} {problem}")
                values.add(text)
            if field_name is not None and not items:
                self.problem(entry, "an empty list matches nothing")
            if field_name is not None:
                match[field_name] = frozenset(values)
        return match

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
            entry = key_path(path, incoming)
            name = self.param_name(incoming, entry)
            target = self.canonical_name(canonical, entry)
            if name is not None and target is not None and name != target:
                aliases[name] = target
        return aliases

    def dedup(self, value: Any, path: str) -> DedupConfig | None:
        """A route's dedup section, on top of `defaults.dedup` (its keys are validated there)."""
        keys = {"key", "ttl", "max_entries", "backend", "redis_url", "on_redis_error"}
        section = self.mapping(value, path, keys)
        if section is None:
            return None
        section = {**self.dedup_defaults, **section}
        defaults = DedupConfig()
        problems_before = len(self.problems)
        key = self.optional(section, "key", path, self.field_list, defaults.key)
        ttl = self.optional(section, "ttl", path, self.duration, defaults.ttl)
        max_entries = self.optional(
            section, "max_entries", path, self.positive_int, defaults.max_entries
        )
        backends = (MEMORY, REDIS)
        backend = self.optional(
            section, "backend", path, lambda v, p: self.choice(v, p, backends), MEMORY
        )
        redis_url = self.optional(section, "redis_url", path, self.redis_url, None)
        policies = (FAIL_CLOSED, FAIL_OPEN)
        on_error = self.optional(
            section, "on_redis_error", path, lambda v, p: self.choice(v, p, policies), FAIL_CLOSED
        )
        if key is not None and not key:
            self.problem(key_path(path, "key"), "needs at least one field")
        if backend == REDIS and redis_url is None and "redis_url" not in section:
            self.problem(key_path(path, "redis_url"), "is required with backend: redis")
        if len(self.problems) > problems_before:
            return None
        assert key is not None and ttl is not None and max_entries is not None
        assert backend is not None and on_error is not None
        return DedupConfig(key, ttl, max_entries, backend, redis_url, on_error)

    def redis_url(self, value: Any, path: str) -> RedisUrl | None:
        text = self.string(value, path, secret=True)
        if text is None:
            return None
        if not text.startswith(("redis://", "rediss://", "unix://")):
            self.problem(path, "must start with redis://, rediss:// or unix://")
            return None
        return RedisUrl(text)

    def defaults(self, value: Any, path: str) -> dict[str, Any]:
        """`defaults: {dedup: {...}}`: dedup settings every route starts from."""
        section = self.mapping(value, path, {"dedup"})
        if section is None or "dedup" not in section:
            return {}
        dedup = section["dedup"]
        if self.dedup(dedup, key_path(path, "dedup")) is None:
            return {}
        return dict(dedup)

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
        keys = {"url", "timeout", "retries", "rename", "static_params", "keep_alive"}
        section = self.mapping(value, path, keys)
        if section is None:
            return None
        no_params: tuple[tuple[str, str], ...] = ()
        static_params = self.optional(section, "static_params", path, self.static_params, no_params)
        url = self.required_key(section, "url", path, self.upstream_url)
        timeout = self.optional(section, "timeout", path, self.duration, DEFAULT_UPSTREAM_TIMEOUT)
        retries = self.optional(section, "retries", path, self.retries, DEFAULT_UPSTREAM_RETRIES)
        rename = self.optional(section, "rename", path, self.rename, dict[str, str]())
        keep_alive = self.optional(section, "keep_alive", path, self.boolean, True)
        if url is None or timeout is None or retries is None or rename is None:
            return None
        if static_params is None or keep_alive is None:
            return None
        return UpstreamConfig(
            url,
            timeout,
            retries,
            MappingProxyType(rename),
            StaticParams(static_params),
            keep_alive=keep_alive,
        )

    def static_params(self, value: Any, path: str) -> tuple[tuple[str, str], ...] | None:
        section = self.mapping(value, path, None)
        if section is None:
            return None
        pairs = []
        for name, param_value in section.items():
            entry = key_path(path, name)
            param = self.param_name(name, entry)
            if isinstance(param_value, int | float) and not isinstance(param_value, bool):
                param_value = str(param_value)
            text = self.string(param_value, entry, secret=True)
            if param is not None and text is not None:
                pairs.append((param, text))
        return tuple(pairs) if len(pairs) == len(section) else None

    def rename(self, value: Any, path: str) -> dict[str, str] | None:
        section = self.mapping(value, path, None)
        if section is None:
            return None
        rename: dict[str, str] = {}
        for canonical, outgoing in section.items():
            entry = key_path(path, canonical)
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
