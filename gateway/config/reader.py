"""The config document, section by section: server, routes and their parts."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Set
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from ..checks.addresses import AddressSet
from ..checks.normalize import canonical_names
from ..checks.secret import Secret, SecretCheck
from ..checks.validate import value_problem
from ..postback import EVENT_TYPE, LOWERCASED_FIELDS, REQUEST_VAR, YMID
from ..sessions.origins import parse_origin
from ..shown import quoted
from .model import (
    AllowIpsMode,
    DedupBackend,
    DedupConfig,
    DeliveryMode,
    GatewayConfig,
    HistoryConfig,
    ListenAddress,
    LogFormat,
    LoggingConfig,
    LogLevel,
    OnRedisError,
    PostgresUrl,
    QueueConfig,
    RedisUrl,
    RouteConfig,
    ServerConfig,
    SessionsConfig,
    SessionsMode,
    StaticParams,
    StoreConfig,
    TlsConfig,
    UpstreamConfig,
    yaml_keys,
)
from .template import PostbackTemplate, parse_template
from .values import Reader, ValueReader, key_path

MIN_ADMIN_TOKEN = 16  # characters: guessing it over the network must be hopeless
MIN_SIGNING_KEY = 32  # characters of a ymid signing key: a MAC key worth its 96 bits
SESSION_DEDUP_KEY = (YMID, EVENT_TYPE)  # with sessions, an issued ymid pays once per event type
_BOT_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,100}")  # Telegram's shape: id:secret
MAX_PLACEMENT = 64  # characters of a placement name (a request_var value)
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def _url_problem(text: str) -> str | None:
    """Why a store or Redis URL cannot be read as meant, in words that never quote it. The
    usual cause: a password with a raw '#', '/' or '?', which ends the host part early."""
    encode = "a password with '#', '/', '?' or '@' must be percent-encoded (%23, %2F, %3F, %40)"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"does not parse as a URL (not shown): {encode}"
    if parts.fragment or "@" in parts.path + parts.query:
        return f"has text after the host that looks like the rest of a password: {encode}"
    return None


def _same_dedup(first: DedupConfig, second: DedupConfig) -> bool:
    """One memory can serve both: the same fields (in any order) and the same settings."""
    return replace(first, key=tuple(sorted(first.key))) == replace(
        second, key=tuple(sorted(second.key))
    )


def _overlap(first: ListenAddress, second: ListenAddress) -> bool:
    """Would the two listeners fight over one port? (Port 0 means any free port.)"""
    return first.port == second.port != 0 and (
        first.host == second.host or first.wildcard or second.wildcard
    )


IN_MEMORY = "memory"  # `store: memory`: no store, chosen


class DocumentReader(ValueReader):
    # -- the document ---------------------------------------------------------------------

    def gateway(self, document: Any) -> GatewayConfig | None:
        keys = yaml_keys(GatewayConfig) | {"defaults"}
        top = self.mapping(document, "", keys, what="the config file")
        if top is None:
            return None
        self.dedup_defaults = self.defaults(top.get("defaults", {}), "defaults")
        server = self.server(top.get("server", {}), "server")
        routes = self.routes(top.get("routes"), "routes")
        logging = self.logging(top.get("logging", {}), "logging")
        in_memory = top.get("store") == IN_MEMORY  # chosen, not forgotten: no warning
        store = None if in_memory else self.optional(top, "store", "", self.store, None)
        history = self.history(top.get("history", {}), "history")
        if server is None or routes is None or logging is None or history is None:
            return None
        self.warn_about_plain_http(server, routes)
        if "store" not in top:
            self.warnings.append(
                "store: none, so dedup lives in this process only (after a restart a delivered "
                "event's retry is forwarded, and rewarded, again), no postback is kept in the "
                "history and delivery: queued is unavailable; set store.path (an SQLite file) "
                f"or store.url (PostgreSQL), or `store: {IN_MEMORY}` to choose this"
            )
        if store is None and ("store" not in top or in_memory):
            for route in routes:
                if route.delivery == DeliveryMode.QUEUED:
                    self.problem(
                        f"routes.{route.name}.delivery",
                        "queued delivery needs a top-level `store:` (path or url)",
                    )
        if store is None or not history.enabled:
            for route in routes:
                if route.sessions is not None:
                    self.problem(
                        f"routes.{route.name}.sessions",
                        "needs the store (store.path or store.url) with the history on: "
                        "the status of a ymid and the postbacks that never came are kept there",
                    )
        return GatewayConfig(
            server, routes, tuple(self.warnings), logging, store=store, history=history
        )

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
        readers: dict[str, Reader] = {"path": self.string, "url": self.postgres_url}
        values = self.section(value, path, StoreConfig, readers)
        if values is None:
            return None
        if ("path" in values) == ("url" in values):
            self.problem(path, "give exactly one of path (SQLite) or url (PostgreSQL)")
            return None
        if "path" in values and not values["path"].strip():
            self.problem(key_path(path, "path"), "is empty")
            return None
        return StoreConfig(**values)

    def postgres_url(self, value: Any, path: str) -> PostgresUrl | None:
        text = self.string(value, path, secret=True)
        if text is None:
            return None
        if not text.startswith(("postgresql://", "postgres://")):
            self.problem(path, "must start with postgresql:// (or postgres://)")
            return None
        if (problem := _url_problem(text)) is not None:
            self.problem(path, problem)
            return None
        return PostgresUrl(text)

    def queue(self, value: Any, path: str) -> QueueConfig | None:
        readers: dict[str, Reader] = {
            "max_attempts": self.positive_int,
            "max_age": self.duration,
            "concurrency": self.positive_int,
            "retry_base": self.duration,
            "retry_cap": self.duration,
        }
        values = self.section(value, path, QueueConfig, readers)
        return None if values is None else QueueConfig(**values)

    def logging(self, value: Any, path: str) -> LoggingConfig | None:
        readers: dict[str, Reader] = {"format": self.chooser(LogFormat), "level": self.log_level}
        values = self.section(value, path, LoggingConfig, readers)
        return None if values is None else LoggingConfig(**values)

    def history(self, value: Any, path: str) -> HistoryConfig | None:
        readers: dict[str, Reader] = {"enabled": self.boolean, "retention": self.duration}
        values = self.section(value, path, HistoryConfig, readers)
        return None if values is None else HistoryConfig(**values)

    def log_level(self, value: Any, path: str) -> LogLevel | None:
        text = self.string(value, path)
        return None if text is None else self.choice(text.upper(), path, LogLevel)

    def server(self, value: Any, path: str) -> ServerConfig | None:
        readers: dict[str, Reader] = {
            "listen": self.listen_address,
            "admin_listen": self.listen_address,
            "trusted_proxies": self.address_set,
            "max_in_flight": self.positive_int,
            "max_connections": self.positive_int,
            "shutdown_grace": self.duration_or_zero,
            "drain_delay": self.duration_or_zero,
            "client_timeout": self.duration,
            "max_query_length": self.positive_int,
            "reload_interval": self.duration_or_zero,
            "tls": self.tls,
            "admin_token": self.admin_token,
            "admin_insecure": self.boolean,
            "metrics_need_token": self.boolean,
            "recent_postbacks": self.count,
            "admin_hosts": self.host_names,
            "admin_session_ttl": self.duration,
            "trust_public_proxies": self.boolean,
        }
        values = self.section(value, path, ServerConfig, readers)
        if values is None:
            return None
        server = ServerConfig(**values)
        self.check_trusted_proxies(server, key_path(path, "trusted_proxies"))
        if _overlap(server.listen, server.admin_listen):
            self.problem(key_path(path, "admin_listen"), "must not share server.listen's port")
            return None
        if server.admin_token is None and not server.admin_listen.loopback:
            if not server.admin_insecure:
                self.problem(
                    key_path(path, "admin_listen"),
                    f"{server.admin_listen} is reachable from other machines: set "
                    "server.admin_token (e.g. ${ADMIN_TOKEN}) to protect the inspector and its "
                    "actions, or admin_insecure: true if something else protects the port",
                )
                return None
            self.warnings.append(
                f"server.admin_listen: {server.admin_listen} without admin_token "
                "(admin_insecure: true): anyone who reaches it sees recent postbacks and "
                "can re-send dead letters"
            )
        if server.metrics_need_token and server.admin_token is None:
            self.problem(key_path(path, "metrics_need_token"), "needs server.admin_token")
            return None
        return server

    def check_trusted_proxies(self, server: ServerConfig, path: str) -> None:
        """A proxy's X-Forwarded-For decides who the client is: believing it from everyone
        (0.0.0.0/0) lets any sender choose its address; from a public address, only on
        purpose (a CDN in front)."""
        proxies = server.trusted_proxies
        if proxies.covers_every_address:
            self.problem(
                path,
                "takes in every address: any sender could then name its own client address "
                "in X-Forwarded-For and pass allow_ips; list only your load balancers",
            )
            return
        if server.trust_public_proxies:
            return
        for index in proxies.public_entries():
            self.problem(
                f"{path}[{index}]",
                f"{quoted(proxies.entries[index])} holds public addresses: what they send in "
                "X-Forwarded-For would be believed; if that is a CDN or cloud load balancer "
                "in front of the gateway, set server.trust_public_proxies: true",
            )

    def host_names(self, value: Any, path: str) -> tuple[str, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        names = []
        for index, item in enumerate(items):
            text = self.string(item, f"{path}[{index}]")
            if text is None:
                continue
            name = text.strip().lower().rstrip(".")
            if not _HOST_NAME.fullmatch(name):
                self.problem(f"{path}[{index}]", "is not a host name (letters, digits, '-', '.')")
                continue
            names.append(name)
        return tuple(names) if len(names) == len(items) else None

    def admin_token(self, value: Any, path: str) -> Secret | None:
        token = self.string(value, path, secret=True)
        if token is None:
            return None
        if len(token) < MIN_ADMIN_TOKEN:
            self.problem(path, f"must be at least {MIN_ADMIN_TOKEN} characters")
            return None
        return Secret(token)

    def tls(self, value: Any, path: str) -> TlsConfig | None:
        """The paths of the certificate and key files (PEM), not the files: serving loads them
        (`gateway/tls.py`), and `check`, `run` and a reload try them first, so a bad pair is
        still a config problem there, while commands that only read the config (`queue`)
        need no certificate."""
        readers: dict[str, Reader] = {"cert_file": self.string, "key_file": self.string}
        values = self.section(value, path, TlsConfig, readers, required=("cert_file", "key_file"))
        return None if values is None else TlsConfig(**values)

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
                    f"{quoted(route.path)} is already the path of route "
                    f"{quoted(owner_of_path[route.path])}",
                )
            owner_of_path.setdefault(route.path, name)
            routes.append(route)
        self.check_shared_scopes(routes, path)
        self.check_session_paths(routes, path)
        return tuple(routes)

    def check_session_paths(self, routes: list[RouteConfig], path: str) -> None:
        """A session path answers POST (a new ymid) and GET under it (a ymid's status): it
        must be no route's path, nor a prefix of one, nor another route's session path."""
        postback_paths = {route.path: route.name for route in routes}
        session_owner: dict[str, str] = {}
        for route in routes:
            if route.sessions is None:
                continue
            where = key_path(key_path(path, route.name), "sessions.path")
            own = route.sessions.path
            clash = postback_paths.get(own) or next(
                (name for other, name in postback_paths.items() if other.startswith(own + "/")),
                None,
            )
            if clash is not None:
                self.problem(where, f"{quoted(own)} would answer on route {quoted(clash)}'s path")
            elif own in session_owner:
                self.problem(
                    where, f"{quoted(own)} is already route {quoted(session_owner[own])}'s"
                )
            session_owner.setdefault(own, route.name)

    def check_shared_scopes(self, routes: list[RouteConfig], path: str) -> None:
        """Routes that share a dedup scope share one memory: it must identify events, and
        remember them, the same way for all of them."""
        first_of: dict[str, RouteConfig] = {}
        for route in routes:
            first = first_of.setdefault(route.dedup_scope, route)
            if first is route or _same_dedup(first.dedup, route.dedup):
                continue
            self.problem(
                key_path(key_path(path, route.name), "dedup"),
                f"shares dedup.scope {quoted(route.dedup_scope)} with route {quoted(first.name)} "
                "but not "
                "its dedup settings (key fields, ttl, max_entries, backend): give both the "
                "same, or each its own scope",
            )

    def route(self, name: str, value: Any, path: str) -> RouteConfig | None:
        readers: dict[str, Reader] = {
            "path": self.url_path,
            "upstreams": self.upstreams,
            "allow_ips": self.allowlist,
            "secret": self.secret,
            "aliases": self.aliases,
            "required": self.field_list,
            "dedup": self.dedup,
            "insecure": self.boolean,
            "allow_ips_mode": self.chooser(AllowIpsMode),
            "match": self.match,
            "drop_unknown": self.boolean,
            "delivery": self.chooser(DeliveryMode),
            "queue": self.queue,
            "max_estimated_price": self.decimal,
            "template": self.template,
            "deadline": self.duration,
            "sessions": lambda item, where: self.sessions(item, where, name),
        }
        values = self.section(
            value,
            path,
            RouteConfig,
            readers,
            extra=frozenset({"template"}),
            required=("path", "upstreams"),
        )
        if values is None:
            return None
        if "dedup" not in values:  # `defaults.dedup` still applies
            values["dedup"] = self.dedup({}, key_path(path, "dedup"))
            if values["dedup"] is None:
                return None
        # the lists the config leaves to their defaults: with sessions, the dedup key's is
        # SESSION_DEDUP_KEY; a problem with either names the default as its cause
        written_key = isinstance(value.get("dedup"), dict) and "key" in value["dedup"]
        defaulted = {
            "required": "required" not in value,
            "dedup.key": not written_key and "key" not in self.dedup_defaults,
        }
        if values.get("sessions") is not None and defaulted["dedup.key"]:
            values["dedup"] = replace(values["dedup"], key=SESSION_DEDUP_KEY)
        template: PostbackTemplate | None = values.pop("template", None)
        given_aliases = "aliases" in values
        aliases: dict[str, str] = values.pop("aliases", {})
        if template is not None:
            if given_aliases:
                self.problem(key_path(path, "aliases"), "give aliases or template, not both")
            aliases = template.aliases
            delivers = template.delivers
        else:
            delivers = frozenset(canonical_names(aliases).values())
        route = RouteConfig(
            name=name,
            aliases=MappingProxyType(aliases),
            match=MappingProxyType(values.pop("match", {})),
            from_template=template is not None,
            delivers=delivers,
            **values,
        )
        self.check_route_consistency(route, path, {k for k, unset in defaulted.items() if unset})
        if route.sessions is not None:
            self.check_sessions(route, path)
        if template is not None:
            self.check_template(route, template, key_path(path, "template"))
        return route

    def check_route_consistency(
        self, route: RouteConfig, path: str, defaulted: Set[str] = frozenset()
    ) -> None:
        """Combinations that are each valid alone but can never work together. `defaulted`:
        the lists (`required`, `dedup.key`) the config left to their defaults, so a problem
        with one says the default is the cause, not a key the operator never wrote."""
        enforced = route.allow_ips_mode == AllowIpsMode.ENFORCE
        everyone = route.allow_ips is not None and route.allow_ips.covers_every_address
        enforced_allowlist = route.allow_ips is not None and enforced and not everyone
        if not enforced_allowlist and route.secret is None and not route.insecure:
            self.problem(
                path,
                (
                    "allow_ips takes in every address and there is no secret"
                    if everyone
                    else "has neither an enforced allow_ips nor a secret"
                )
                + ": anyone could grant rewards; add one, or write `insecure: true` if that "
                "is really meant",
            )
        elif (route.allow_ips is None or everyone) and not route.insecure:
            self.warnings.append(f"{path}: no allow_ips, so any address may call (secret only)")
        elif route.secret is None and not route.insecure:
            self.warnings.append(f"{path}: no secret, so the IP allowlist is the only check")
        elif route.insecure:
            self.warnings.append(f"{path}: insecure: true")
        secret_param = route.secret.query_param if route.secret else None
        if secret_param is not None and secret_param in canonical_names(route.aliases):
            self.problem(
                key_path(path, "secret.query_param"),
                f"{quoted(secret_param)} is also a postback field name; the secret must have its "
                "own",
            )
        lists = {"required": route.required, "dedup.key": route.dedup.key}
        needed = [
            *(
                (key, index, name)
                for key, names in lists.items()
                for index, name in enumerate(names)
            ),
            *((f"match.{name}", None, name) for name in route.match),
        ]
        for key, index, name in needed:
            if name in route.delivers:
                continue
            if route.from_template:
                why = "the template does not carry it"
                fix = f", or add {name}={{{name}}} to the template"
            else:
                why = f"aliases rename incoming {quoted(name)} to {quoted(route.aliases[name])}"
                fix = ""
            if key in defaulted:  # not written: the default is what to change
                rest = ", ".join(other for other in lists[key] if other in route.delivers)
                self.problem(
                    f"{path}.{key}",
                    f"the default [{', '.join(lists[key])}] names {quoted(name)}, which can "
                    f"never be present: {why}; set {key}: [{rest}] on the route{fix}",
                )
                continue
            where = f"{key}[{index}]" if index is not None else key
            self.problem(f"{path}.{where}", f"{quoted(name)} can never be present: {why}")

    def check_sessions(self, route: RouteConfig, path: str) -> None:
        """What sessions promise, each issued ymid paid at most once per event type, holds
        only if dedup keys on exactly that and remembers for as long as a ymid is valid."""
        sessions = route.sessions
        assert sessions is not None
        route_path, path = path, key_path(path, "sessions")
        if frozenset(route.dedup.key) != frozenset(SESSION_DEDUP_KEY):
            self.problem(
                key_path(route_path, "dedup.key"),
                f"with sessions the dedup key is {list(SESSION_DEDUP_KEY)} (each issued ymid "
                f"pays once per event type); the route's is {list(route.dedup.key)}: remove "
                "routes.*.dedup.key, or set it so",
            )
        if route.dedup.ttl < sessions.ttl:
            self.problem(
                key_path(path, "ttl"),
                f"is longer than the route's dedup.ttl ({route.dedup.ttl:g}s): a postback "
                "replayed after dedup forgot it, while its ymid is still valid, would pay "
                "again; make dedup.ttl at least as long",
            )
        if not sessions.allowed_origins:
            self.warnings.append(
                f"{path}.allowed_origins: none, so a browser page is refused its ymids (only "
                "requests without an Origin header are answered): list the Mini App's origin"
            )
        if sessions.mode == SessionsMode.LOG_ONLY:
            self.warnings.append(
                f"{path}.mode: log_only, so a ymid the gateway did not issue is logged and "
                "counted but still paid"
            )

    def sessions(self, value: Any, path: str, route: str) -> SessionsConfig | None:
        readers: dict[str, Reader] = {
            "bot_token": self.bot_token,
            "signing_keys": self.signing_keys,
            "mode": self.chooser(SessionsMode),
            "path": self.url_path,
            "allowed_origins": self.origins,
            "init_data_max_age": self.duration,
            "ttl": self.duration,
            "placements": self.placements,
            "per_user_per_minute": self.positive_int,
            "per_address_per_minute": self.positive_int,
            "no_postback_after": self.duration,
        }
        values = self.section(
            value, path, SessionsConfig, readers, required=("bot_token", "signing_keys")
        )
        if values is None:
            return None
        values.setdefault("path", f"/ymid/{route}")
        return SessionsConfig(**values)

    def bot_token(self, value: Any, path: str) -> Secret | None:
        token = self.string(value, path, secret=True)
        if token is None:
            return None
        if not _BOT_TOKEN.fullmatch(token):
            self.problem(path, "is not a bot token as @BotFather gives it (digits:letters)")
            return None
        return Secret(token)

    def signing_keys(self, value: Any, path: str) -> tuple[Secret, ...] | None:
        keys = self.secret_keys(value, path)
        if keys is None:
            return None
        short = [index for index, key in enumerate(keys) if len(key.reveal()) < MIN_SIGNING_KEY]
        for index in short:
            self.problem(
                f"{path}[{index}]",
                f"must be at least {MIN_SIGNING_KEY} characters (openssl rand -hex 32)",
            )
        if len({key.digest for key in keys}) != len(keys):
            self.problem(path, "lists one key twice")
            return None
        return None if short else keys

    def origins(self, value: Any, path: str) -> tuple[str, ...] | None:
        def origin(text: str, where: str) -> str | None:
            try:
                return parse_origin(text)
            except ValueError as error:
                self.problem(where, f"{quoted(text)} {error}")
                return None

        return self.distinct_strings(value, path, origin)

    def placements(self, value: Any, path: str) -> tuple[str, ...] | None:
        def placement(text: str, where: str) -> str | None:
            if not text or len(text) > MAX_PLACEMENT or value_problem(REQUEST_VAR, text):
                self.problem(
                    where, f"a placement is a request_var value of 1 to {MAX_PLACEMENT} characters"
                )
                return None
            return text

        return self.distinct_strings(value, path, placement)

    def distinct_strings(
        self, value: Any, path: str, read: Callable[[str, str], str | None]
    ) -> tuple[str, ...] | None:
        """A list of strings, each as `read` makes it (None: it said the problem), repeats
        dropped; None if any item is wrong."""
        items = self.sequence(value, path)
        if items is None:
            return None
        read_items: list[str] = []
        for index, item in enumerate(items):
            text = self.string(item, f"{path}[{index}]")
            made = None if text is None else read(text, f"{path}[{index}]")
            if made is not None:
                read_items.append(made)
        return tuple(dict.fromkeys(read_items)) if len(read_items) == len(items) else None

    def check_template(self, route: RouteConfig, template: PostbackTemplate, path: str) -> None:
        """The registered URL must reach this route and carry a key this route accepts."""
        if template.path != route.path:
            self.problem(
                path,
                f"its path {quoted(template.path)} is not the route's path {quoted(route.path)}",
            )
        secret_param = route.secret.query_param if route.secret else None
        if secret_param is None:
            return
        if secret_param not in template.fixed:
            self.problem(path, f"does not carry the secret parameter {quoted(secret_param)}")
            return
        assert route.secret is not None
        if not route.secret.accepts(template.fixed[secret_param]):
            self.problem(path, f"its {quoted(secret_param)} value is not one of secret.keys")

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
                    self.problem(entry, f"{quoted(text)} can never match: {field_name} {problem}")
                values.add(text)
            if field_name is not None and not items:
                self.problem(entry, "an empty list matches nothing")
            if field_name is not None:
                match[field_name] = frozenset(values)
        return match

    # -- route parts ----------------------------------------------------------------------

    def secret(self, value: Any, path: str) -> SecretCheck | None:
        readers: dict[str, Reader] = {
            "query_param": self.param_name,
            "header": self.header_name,
            "keys": self.secret_keys,
        }
        values = self.section(value, path, SecretCheck, readers, required=("keys",))
        if values is None:
            return None
        if ("query_param" in values) == ("header" in values):
            self.problem(path, "give exactly one of query_param or header")
            return None
        return SecretCheck(**values)

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
        readers: dict[str, Reader] = {
            "key": self.field_list,
            "scope": self.dedup_scope,
            "ttl": self.duration,
            "max_entries": self.positive_int,
            "backend": self.chooser(DedupBackend),
            "redis_url": self.redis_url,
            "on_redis_error": self.chooser(OnRedisError),
        }
        if isinstance(value, dict):
            value = {**self.dedup_defaults, **value}
        values = self.section(value, path, DedupConfig, readers)
        if values is None:
            return None
        dedup = DedupConfig(**values)
        if not dedup.key:
            self.problem(key_path(path, "key"), "needs at least one field")
            return None
        if dedup.backend == DedupBackend.REDIS and dedup.redis_url is None:
            self.problem(key_path(path, "redis_url"), "is required with backend: redis")
            return None
        return dedup

    def dedup_scope(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not text.strip():
            self.problem(path, "is empty: omit it to use the route's path")
            return None
        return text

    def redis_url(self, value: Any, path: str) -> RedisUrl | None:
        text = self.string(value, path, secret=True)
        if text is None:
            return None
        if not text.startswith(("redis://", "rediss://", "unix://")):
            self.problem(path, "must start with redis://, rediss:// or unix://")
            return None
        if (problem := _url_problem(text)) is not None:
            self.problem(path, problem)
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
        found = tuple(upstream for upstream in upstreams if upstream is not None)
        first_with: dict[str, int] = {}
        for index, upstream in enumerate(found):
            earlier = first_with.setdefault(upstream.label, index)
            if earlier != index:
                self.problem(
                    f"{path}[{index}]",
                    f"is named like upstreams[{earlier}] ({quoted(upstream.label)}: URLs differing "
                    "only in their query look the same in logs, metrics and the queue): give "
                    "each a distinct `name:`",
                )
        return found

    def upstream(self, value: Any, path: str) -> UpstreamConfig | None:
        readers: dict[str, Reader] = {
            "url": self.upstream_url,
            "timeout": self.duration,
            "retries": self.retries,
            "rename": self.rename,
            "static_params": self.static_params,
            "keep_alive": self.boolean,
            "name": self.upstream_name,
        }
        values = self.section(value, path, UpstreamConfig, readers, required=("url",))
        if values is None:
            return None
        if "rename" in values:
            values["rename"] = MappingProxyType(values["rename"])
        if "static_params" in values:
            values["static_params"] = StaticParams(values["static_params"])
        return UpstreamConfig(**values)

    def upstream_name(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not _ROUTE_NAME.fullmatch(text):
            self.problem(path, "an upstream name is letters, digits, '_', '.' or '-'")
            return None
        return text

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
                self.problem(entry, f"{quoted(target)} is already the name of another field")
            elif source is not None and target is not None:
                rename[source] = target
        return rename

    def allowlist(self, value: Any, path: str) -> AddressSet | None:
        addresses = self.address_set(value, path)
        if addresses is not None and not addresses:
            self.problem(path, "an empty list allows nobody; omit allow_ips to allow any address")
            return None
        return addresses
