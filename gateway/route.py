"""A route compiled from its config: everything a request needs, decided once at load time."""

from __future__ import annotations

from multidict import CIMultiDictProxy, MultiMapping

from .addresses import IPAddress
from .config import RouteConfig
from .dedup import DedupKey, DedupMemory, dedup_key
from .errors import Forbidden
from .forward import Upstream
from .normalize import Normalizer
from .postback import Postback
from .validate import Validator


class CompiledRoute:
    def __init__(self, config: RouteConfig, dedup: DedupMemory) -> None:
        self.name = config.name
        self.path = config.path
        self.config = config
        self._allow_ips = config.allow_ips
        self._secret = config.secret
        self.secret_param = config.secret.query_param if config.secret else None
        self.normalizer = Normalizer(config.aliases, self.secret_param)
        self.validator = Validator(config.required)
        self.dedup = dedup
        self._dedup_fields = config.dedup.key
        self.upstreams = tuple(Upstream(upstream) for upstream in config.upstreams)

    def check_allowed(self, client: IPAddress) -> None:
        if self._allow_ips is not None and client not in self._allow_ips:
            raise Forbidden("ip", f"{client} is not in allow_ips")

    def check_secret(self, query: MultiMapping[str], headers: CIMultiDictProxy[str]) -> None:
        if self._secret is not None:
            self._secret.verify(query, headers)

    def dedup_key(self, postback: Postback) -> DedupKey:
        return dedup_key(self.name, self._dedup_fields, postback)
