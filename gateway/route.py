"""A route compiled from its config: everything a request needs, decided once at load time."""

from __future__ import annotations

from multidict import CIMultiDictProxy

from .addresses import IPAddress
from .config import RouteConfig
from .config.model import AllowIpsMode, Delivery
from .dedup import DedupKey, RouteDedup, dedup_key
from .errors import Filtered
from .forward import Upstream
from .normalize import Normalizer
from .postback import Postback
from .secret import Pairs, Scrubbed
from .validate import Validator


class CompiledRoute:
    def __init__(self, config: RouteConfig, dedup: RouteDedup) -> None:
        self.name = config.name
        self.path = config.path
        self.config = config
        self._allow_ips = config.allow_ips
        self.allowlist_log_only = config.allow_ips_mode == AllowIpsMode.LOG_ONLY
        self.queued = config.delivery == Delivery.QUEUED
        self._secret = config.secret
        self.secret_param = config.secret.query_param if config.secret else None
        self.upstreams = tuple(Upstream(upstream, config.name) for upstream in config.upstreams)
        written = [name for upstream in self.upstreams for name in upstream.written_names]
        if self.secret_param is not None:
            written.append(self.secret_param)
        self.normalizer = Normalizer(config.aliases, written, config.drop_unknown)
        self.validator = Validator(config.required, config.max_estimated_price)
        self._match = tuple(config.match.items())
        self.dedup = dedup
        self._dedup_fields = config.dedup.key

    def admits(self, client: IPAddress) -> bool:
        return self._allow_ips is None or client in self._allow_ips

    def check_secret(self, query: Pairs, headers: CIMultiDictProxy[str]) -> None:
        if self._secret is not None:
            self._secret.verify(query, headers)

    def without_secret(self, query: Pairs) -> Scrubbed:
        """The query minus every trace of the key: what may be logged, normalized, forwarded."""
        if self._secret is None:
            return Scrubbed(list(query), [])
        return self._secret.scrub(query)

    def check_match(self, postback: Postback) -> None:
        """Raise Filtered when the postback is not one this route forwards (`match:`)."""
        for name, accepted in self._match:
            value = postback.get(name)
            if value not in accepted:
                raise Filtered(f"{name}={value!r} is not in match.{name}")

    def dedup_key(self, postback: Postback) -> DedupKey:
        return dedup_key(self.name, self._dedup_fields, postback)
