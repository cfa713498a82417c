"""The frozen config objects the gateway runs on, with their defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from yarl import URL

from ..addresses import AddressSet
from ..postback import EVENT_TYPE, YMID, ZONE_ID
from ..secret import SecretCheck

DEFAULT_REQUIRED: tuple[str, ...] = (YMID, EVENT_TYPE)
DEFAULT_DEDUP_KEY: tuple[str, ...] = (YMID, EVENT_TYPE, ZONE_ID)
DEFAULT_DEDUP_TTL = 24 * 3600.0
DEFAULT_DEDUP_MAX_ENTRIES = 1_000_000
DEFAULT_UPSTREAM_TIMEOUT = 5.0
DEFAULT_UPSTREAM_RETRIES = 2
MAX_UPSTREAM_RETRIES = 10


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
