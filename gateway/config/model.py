"""The frozen config objects the gateway runs on, with their defaults.

Each dataclass field is a key of its section in config.yaml, with the same name, unless its
metadata says `DERIVED` (worked out by the reader, never written by operators). The reader
takes the keys it accepts and every default from here, so a new key is one field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from yarl import URL

from ..checks.addresses import AddressSet
from ..checks.secret import HIDDEN, Secret, SecretCheck
from ..checks.validate import DEFAULT_MAX_ESTIMATED_PRICE
from ..postback import CANONICAL_FIELDS, EVENT_TYPE, YMID, ZONE_ID
from ..shown import shown_url

DEFAULT_REQUIRED: tuple[str, ...] = (YMID, EVENT_TYPE)
DEFAULT_DEDUP_KEY: tuple[str, ...] = (YMID, EVENT_TYPE, ZONE_ID)
DEFAULT_DEDUP_TTL = 24 * 3600.0
DEFAULT_HISTORY_RETENTION = 30 * 24 * 3600.0
DEFAULT_DEDUP_MAX_ENTRIES = 1_000_000
DEFAULT_UPSTREAM_TIMEOUT = 5.0
DEFAULT_UPSTREAM_RETRIES = 2
# a sync postback's whole answer, every attempt and backoff included: below what webhook
# senders commonly wait (5-30 s), so the sender hears the gateway's answer, not its own timeout
DEFAULT_DEADLINE = 10.0
MAX_UPSTREAM_RETRIES = 10
DERIVED: Mapping[str, Any] = MappingProxyType({"yaml": False})  # field metadata: not a key


def yaml_keys(section: type[Any]) -> frozenset[str]:
    """The keys operators may write in the section that `section` (a dataclass) is read from."""
    return frozenset(f.name for f in fields(section) if f.init and f.metadata.get("yaml", True))


class DedupBackend(StrEnum):
    MEMORY = "memory"  # this process (and the store, if any)
    REDIS = "redis"  # shared by every replica


class OnRedisError(StrEnum):
    FAIL_CLOSED = "fail_closed"  # answer 503: better no reward than two
    FAIL_OPEN = "fail_open"  # carry on with this replica's memory


class AllowIpsMode(StrEnum):
    ENFORCE = "enforce"
    LOG_ONLY = "log_only"  # let everyone in, log and count whom allow_ips would reject


class DeliveryMode(StrEnum):
    SYNC = "sync"  # forward, then answer with the app's answer
    QUEUED = "queued"  # answer once durably stored, deliver in the background


class SessionsMode(StrEnum):
    ENFORCE = "enforce"
    LOG_ONLY = "log_only"  # a ymid that would be refused is logged and counted, then let in


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists each one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


EVERY_ADDRESS = "*"  # `listen: "*:8080"`: every local address, IPv4 and IPv6
# each wildcard host, and the loopback address a client on this machine reaches it at: the one
# place that knows which hosts are wildcards
_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", EVERY_ADDRESS: "127.0.0.1"}


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def bind_host(self) -> str | None:
        """What to bind: None (every address of both families) for `*`, else the host.
        `0.0.0.0` is IPv4 only and `::` IPv6 only, as in nginx."""
        return None if self.host == EVERY_ADDRESS else self.host

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")

    @property
    def wildcard(self) -> bool:
        """Whether it listens on every address of a family (or of both, `*`)."""
        return self.host in _LOOPBACK_FOR

    @property
    def from_here(self) -> ListenAddress:
        """Where a client on this machine reaches the listener (`health`, `fire`, the
        inspector's links): a wildcard becomes loopback of its family."""
        return ListenAddress(_LOOPBACK_FOR.get(self.host, self.host), self.port)


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the public port: PEM files, re-read when they change (renewals, no restart)."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class ServerConfig:
    listen: ListenAddress = ListenAddress("0.0.0.0", 8080)
    admin_listen: ListenAddress = ListenAddress("127.0.0.1", 9090)
    trusted_proxies: AddressSet = field(default_factory=AddressSet)
    # trusted_proxies may hold public addresses (a CDN or cloud load balancer in front)
    trust_public_proxies: bool = False
    max_in_flight: int = 1000  # beyond this, 503 with Retry-After rather than a queue
    max_connections: int = 4096  # open connections per port; one more is closed at once
    shutdown_grace: float = 30.0  # how long requests in flight may take after SIGTERM
    drain_delay: float = 0.0  # keep serving, unready, this long after SIGTERM (for LBs)
    client_timeout: float = 10.0  # a client must send its request headers within this
    max_query_length: int = 4096  # longer query strings are answered 414
    reload_interval: float = 2.0  # how often the config file is checked; 0 = only SIGHUP
    tls: TlsConfig | None = None  # terminate TLS on the public port (1.2 and newer)
    # The inspector on the admin port: its token (from the environment), whether /metrics
    # needs it too, and how many recent postbacks each process keeps in memory (0: none).
    admin_token: Secret | None = None
    admin_insecure: bool = False  # a non-loopback admin port without a token, on purpose
    metrics_need_token: bool = False
    recent_postbacks: int = 1000
    # names the admin port may be asked for besides IP addresses and localhost (a Host header
    # naming anything else is refused: DNS rebinding), and how long a sign-in lasts
    admin_hosts: tuple[str, ...] = ()
    admin_session_ttl: float = 12 * 3600.0


@dataclass(frozen=True)
class HistoryConfig:
    """The record of every postback, in the store (none without one): how long it is kept."""

    enabled: bool = True
    retention: float = DEFAULT_HISTORY_RETENTION


@dataclass(frozen=True)
class LoggingConfig:
    format: LogFormat = LogFormat.JSON
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class DedupConfig:
    key: tuple[str, ...] = DEFAULT_DEDUP_KEY
    # whose events these are: routes with one scope share their dedup (None: the route's path,
    # so renaming a route keeps its delivered events known)
    scope: str | None = None
    ttl: float = DEFAULT_DEDUP_TTL
    max_entries: int = DEFAULT_DEDUP_MAX_ENTRIES
    backend: DedupBackend = DedupBackend.MEMORY
    redis_url: RedisUrl | None = None
    on_redis_error: OnRedisError = OnRedisError.FAIL_CLOSED


class SecretUrl(str):
    """A URL that may carry a password or a key: never shown whole (`shown_url`), and its repr
    hides it as `Secret`'s does. Text (a str), since the clients that connect take it so.
    The base of every secret URL in the config: a new one is a subclass."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{HIDDEN}')"

    @property
    def shown(self) -> str:
        """For logs, `check` and pages: userinfo and query values masked."""
        return shown_url(self)


class RedisUrl(SecretUrl):
    """A Redis URL: redis://, rediss:// or unix://."""


@dataclass(frozen=True)
class UpstreamConfig:
    url: URL
    timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    retries: int = DEFAULT_UPSTREAM_RETRIES
    rename: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    static_params: StaticParams = field(default_factory=lambda: StaticParams(()))
    keep_alive: bool = True  # false: a new connection per request, for apps that garble them
    # how logs, metrics, the inspector and the queue name it; by default its host and port.
    # Unique within a route: a queued event has one delivery per upstream.
    name: str | None = None

    @property
    def label(self) -> str:
        """`name`, or host:port: never the path or the query, which may hold a key (a bot
        token in the path: /bot123456:AAH.../cb)."""
        return self.name if self.name is not None else self.address

    @property
    def address(self) -> str:
        """host:port, the label of an upstream without a name."""
        host = self.url.raw_host or ""
        return f"[{host}]:{self.url.port}" if ":" in host else f"{host}:{self.url.port}"

    @property
    def labels_before(self) -> tuple[str, ...]:
        """Labels its deliveries may be stored under from before: the URL without query and
        userinfo (earlier versions' label), and host:port if it has a name now."""
        earlier = str(self.url.with_query(None).with_fragment(None).with_user(None))
        return (earlier, self.address) if self.name is not None else (earlier,)


class StaticParams:
    """Fixed parameters added to every forwarded request (often the app's own key).

    Values never show in a repr, a log line or `check`: only the names do.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.pairs = pairs

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.pairs]

    def __repr__(self) -> str:
        return f"StaticParams(names={self.names})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticParams) and self.pairs == other.pairs

    def __hash__(self) -> int:
        return hash(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)


@dataclass(frozen=True)
class QueueConfig:
    """How a `delivery: queued` route retries before an event becomes a dead letter."""

    max_attempts: int = 100  # per upstream
    max_age: float = 72 * 3600.0  # since the event was accepted
    concurrency: int = 8  # deliveries in flight per upstream
    retry_base: float = 1.0  # first backoff; doubles per attempt, with full jitter
    retry_cap: float = 600.0  # longest backoff


class PostgresUrl(SecretUrl):
    """A PostgreSQL URL (a socket DSN too: postgresql:///db?host=/run/postgresql)."""


@dataclass(frozen=True)
class StoreConfig:
    """The durable store: the queue of queued routes and dedup keys that survive restarts.
    Exactly one of `path` (an embedded SQLite file, one replica) or `url` (PostgreSQL, shared
    by every replica)."""

    path: str | None = None
    url: PostgresUrl | None = None

    @property
    def shown(self) -> str:
        """What `check` and logs may print."""
        return self.url.shown if self.url is not None else f"sqlite file {self.path}"


@dataclass(frozen=True)
class SessionsConfig:
    """A route's reward sessions (`sessions:`): the Mini App's frontend asks `path` for a ymid
    with Telegram's initData; a postback on the route must carry one the gateway issued."""

    bot_token: Secret  # the Mini App's bot: what Telegram signs initData with
    signing_keys: tuple[Secret, ...]  # the first signs new ymids; all verify (rotation)
    mode: SessionsMode = SessionsMode.ENFORCE
    path: str = ""  # the issuing endpoint; the reader makes "" /ymid/<route>
    allowed_origins: tuple[str, ...] = ()  # the Mini App's page origins, for CORS
    init_data_max_age: float = 3600.0  # initData signed longer ago is refused
    ttl: float = 3600.0  # a ymid is paid only this long after it was issued
    placements: tuple[str, ...] = ()  # request_var values a ymid may be bound to
    per_user_per_minute: int = 30  # ymids one Telegram user may be issued
    per_address_per_minute: int = 120  # ymids one address may be issued
    no_postback_after: float = 900.0  # an issued ymid with no postback by then is counted


@dataclass(frozen=True)
class RouteConfig:
    name: str = field(metadata=DERIVED)  # the route's key under `routes:`
    path: str
    upstreams: tuple[UpstreamConfig, ...]
    allow_ips: AddressSet | None = None
    secret: SecretCheck | None = None
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    required: tuple[str, ...] = DEFAULT_REQUIRED
    dedup: DedupConfig = field(default_factory=DedupConfig)
    insecure: bool = False
    allow_ips_mode: AllowIpsMode = AllowIpsMode.ENFORCE
    match: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    drop_unknown: bool = False  # forward canonical fields only
    # aliases were derived from the route's `template:` key (read, then not kept)
    from_template: bool = field(default=False, metadata=DERIVED)
    # canonical fields Monetag can deliver on this route (from the template or the aliases)
    delivers: frozenset[str] = field(default=frozenset(CANONICAL_FIELDS), metadata=DERIVED)
    delivery: DeliveryMode = DeliveryMode.SYNC
    queue: QueueConfig = field(default_factory=QueueConfig)
    # the most one event may claim to be worth, in USD; more is refused (400), so a forged
    # or garbled price cannot poison the revenue figures
    max_estimated_price: Decimal = DEFAULT_MAX_ESTIMATED_PRICE
    # a sync postback is answered within this, every attempt and backoff to the first upstream
    # included (each attempt gets what is left, at most its own timeout); copies get as long
    deadline: float = DEFAULT_DEADLINE
    sessions: SessionsConfig | None = None

    @property
    def dedup_scope(self) -> str:
        """Whose events the route's dedup keys identify: `dedup.scope`, or its path."""
        return self.dedup.scope if self.dedup.scope is not None else self.path

    @property
    def dedup_identity(self) -> tuple[str, frozenset[str]]:
        """What an event's key is made of: a change here starts a new dedup window."""
        return self.dedup_scope, frozenset(self.dedup.key)


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig
    routes: tuple[RouteConfig, ...]
    warnings: tuple[str, ...] = field(default=(), metadata=DERIVED)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # of the config text, so a deploy can confirm which config is live
    checksum: str = field(default="", metadata=DERIVED)
    store: StoreConfig | None = None
    history: HistoryConfig = field(default_factory=HistoryConfig)
