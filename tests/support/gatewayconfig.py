"""Gateway configs for tests, built from keyword arguments and dumped as YAML.

A test names only what it varies (`allow_ips=["203.0.113.7"]`, `server={"max_in_flight": 2}`,
`upstream(url, retries=0)`); everything else is the usual test route: loopback only, the
secret `${MONETAG_SECRET}` in the query parameter `token`, Monetag's short parameter names as
aliases, listeners on free loopback ports. Every setting is a key set in a mapping, so a
variation cannot silently miss the way an edit of YAML text can.

Values keep their YAML types: numbers as numbers (`max_in_flight: 2`), durations as strings
(`timeout: "300ms"`). `${NAME}` references are plain strings, substituted by the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = ["127.0.0.1", "::1"]
QUERY_SECRET = {"query_param": "token", "keys": ["${MONETAG_SECRET}"]}
MONETAG_ALIASES = {"uid": "ymid", "event": "event_type", "zone": "zone_id"}
ANY_FREE_PORT = {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}

UpstreamSetting = str | Mapping[str, Any]


class _Dumper(yaml.SafeDumper):
    """Writes a value used twice (the default secret of two routes) twice, not as an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def upstream(url: str, *, timeout: str = "1s", retries: int = 2, **settings: Any) -> dict[str, Any]:
    """One entry of a route's `upstreams`; `settings` are its other keys (rename=,
    static_params=, keep_alive=)."""
    return {"url": url, "timeout": timeout, "retries": retries, **settings}


def route(
    upstreams: Sequence[UpstreamSetting],
    *,
    allow_ips: Sequence[str] | None = tuple(LOOPBACK),
    secret: Mapping[str, Any] | None = QUERY_SECRET,
    aliases: Mapping[str, str] | None = MONETAG_ALIASES,
    **settings: Any,
) -> dict[str, Any]:
    """A route's keys. An upstream given as a URL gets `upstream`'s defaults; None leaves
    allow_ips, secret or aliases out. `settings` are the other route keys as config.yaml
    names them: path=, delivery=, queue=, dedup=, match=, template=, drop_unknown=,
    max_estimated_price=, allow_ips_mode=..."""
    keys: dict[str, Any] = {
        "allow_ips": None if allow_ips is None else list(allow_ips),
        "secret": None if secret is None else dict(secret),
        "aliases": None if aliases is None else dict(aliases),
        **settings,
        "upstreams": [
            upstream(entry) if isinstance(entry, str) else dict(entry) for entry in upstreams
        ],
    }
    return {name: value for name, value in keys.items() if value is not None}


def gateway_config(
    *upstreams: UpstreamSetting,
    routes: Mapping[str, Mapping[str, Any]] | None = None,
    server: Mapping[str, Any] | None = None,
    store: str | Path | None = None,
    logging: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    **tapper: Any,
) -> str:
    """The YAML text of a whole config.

    Either `routes` by name, or the one route `tapper` made by `route(upstreams, **tapper)`.
    A route without `path` is served at /postback/NAME. `server` keys go over listeners on
    free loopback ports; `store` is the store's path, or a postgresql:// URL.
    """
    if routes is None:
        routes = {"tapper": route(upstreams, **tapper)}
    else:
        assert not upstreams and not tapper, "give the routes, or one route's settings"
    document: dict[str, Any] = {"server": {**ANY_FREE_PORT, **(server or {})}}
    if logging is not None:
        document["logging"] = dict(logging)
    if store is not None:
        is_url = str(store).startswith(("postgresql://", "postgres://"))
        document["store"] = {"url": str(store)} if is_url else {"path": str(store)}
    if defaults is not None:
        document["defaults"] = dict(defaults)
    document["routes"] = {
        name: {"path": f"/postback/{name}", **settings} for name, settings in routes.items()
    }
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False)
