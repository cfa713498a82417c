"""What `monetag-gateway check` prints: each route as the gateway understood it."""

from __future__ import annotations

from .config import GatewayConfig, RouteConfig, StoreConfig, duration_words
from .config.model import AllowIpsMode, DedupBackend, ServerConfig, SessionsConfig
from .postback import CANONICAL_FIELDS


def summarize(config: GatewayConfig, path: str) -> str:
    server = config.server
    lines = [
        f"config {path}: OK, {len(config.routes)} route(s), checksum {config.checksum}",
        f"  listen {server.listen}, admin {server.admin_listen}, "
        f"trusted proxies: {len(server.trusted_proxies)} entr(ies)",
        f"  tls {f'on, certificate {server.tls.cert_file}' if server.tls else 'off'}",
        f"  max in flight {server.max_in_flight}, shutdown grace {server.shutdown_grace:g}s, "
        f"reload check every {server.reload_interval:g}s, "
        f"logs {config.logging.format}/{config.logging.level}",
        f"  store {_store(config.store)}",
        f"  history {_history(config)}",
        f"  inspector http://{server.admin_listen}/ {_inspector(server)}",
    ]
    for route in config.routes:
        lines += _route_lines(route, config.store)
    lines += [f"warning: {warning}" for warning in config.warnings]
    return "\n".join(lines)


def _route_lines(route: RouteConfig, store: StoreConfig | None) -> list[str]:
    allow = f"{len(route.allow_ips)} entr(ies)" if route.allow_ips else "any address"
    if route.allow_ips_mode != AllowIpsMode.ENFORCE:
        allow += f" ({route.allow_ips_mode}: not enforced)"
    secret = route.secret
    secret_at = f"{secret.location}, {len(secret.keys)} key(s)" if secret else "none"
    source = "from template" if route.from_template else "from aliases"
    never = [name for name in CANONICAL_FIELDS if name not in route.delivers]
    match = {name: sorted(values) for name, values in route.match.items()}
    lines = [
        f"route {route.name}",
        f"  path      {route.path}",
        f"  allow_ips {allow}",
        f"  secret    {secret_at}",
        f"  aliases   {dict(route.aliases) or 'none: the URL uses the canonical names'} ({source})",
        f"  never delivered: {', '.join(never) or 'none'}",
        f"  required  {', '.join(route.required)}",
        f"  match     {match or 'everything'}",
        f"  price     at most {route.max_estimated_price} USD per event",
        f"  dedup     key [{', '.join(route.dedup.key)}], scope {route.dedup_scope}, "
        f"ttl {route.dedup.ttl:g}s, "
        f"max {route.dedup.max_entries} entries, {_dedup_backend(route, store)}",
    ]
    if route.drop_unknown:
        lines.append("  forwards  canonical fields only (drop_unknown)")
    if route.sessions is not None:
        lines.append(_sessions_line(route.sessions))
    for index, upstream in enumerate(route.upstreams):
        role = "answers" if index == 0 else "copy"
        rename = f", rename {dict(upstream.rename)}" if upstream.rename else ""
        static = f", static params {upstream.static_params.names}" if upstream.static_params else ""
        if not upstream.keep_alive:
            static += ", a new connection per postback (keep_alive: false)"
        # its label only: the URL's path or query may hold the app's key (`shown.py`)
        lines.append(
            f"  upstream  {upstream.label} ({upstream.url.scheme}, {role}; "
            f"timeout {upstream.timeout:g}s, "
            f"retries {upstream.retries}{rename}{static})"
        )
    return lines


def _sessions_line(sessions: SessionsConfig) -> str:
    """Counts only of the secrets: the bot token and signing keys never show."""
    origins = ", ".join(sessions.allowed_origins) or "none (browsers refused)"
    placements = ", ".join(sessions.placements) or "none bound"
    return (
        f"  sessions  {sessions.mode}, ymids at {sessions.path} (POST; GET {sessions.path}/"
        f"<ymid> for the status), {len(sessions.signing_keys)} signing key(s), ttl "
        f"{sessions.ttl:g}s, initData at most {sessions.init_data_max_age:g}s old, origins "
        f"{origins}, placements {placements}, per user {sessions.per_user_per_minute}/min, "
        f"per address {sessions.per_address_per_minute}/min, no_postback after "
        f"{sessions.no_postback_after:g}s"
    )


def _inspector(server: ServerConfig) -> str:
    access = "admin_token required" if server.admin_token is not None else "open: no admin_token"
    metrics = ", /metrics too" if server.metrics_need_token else ""
    kept = server.recent_postbacks
    recent = f"keeps the last {kept} postbacks" if kept else "recent list off"
    return f"({access}{metrics}; {recent})"


def _history(config: GatewayConfig) -> str:
    if config.store is None:
        return "none (it needs a store)"
    if not config.history.enabled:
        return "off (history.enabled: false)"
    return f"every postback kept {duration_words(config.history.retention)} in the store"


def _store(store: StoreConfig | None) -> str:
    if store is None:
        return "none: in memory only (no history, no queued routes)"
    if store.url is not None:
        return f"PostgreSQL {store.shown}, shared by every replica"
    return f"SQLite file {store.path}, this replica only"


def _dedup_backend(route: RouteConfig, store: StoreConfig | None) -> str:
    places = ["this process"]
    if store is not None:
        places.append("PostgreSQL (every replica)" if store.url is not None else "the store file")
    dedup = route.dedup
    if dedup.backend == DedupBackend.REDIS and dedup.redis_url is not None:
        places.append(f"Redis {dedup.redis_url.shown} ({dedup.on_redis_error})")
    return ", then ".join(places)
