"""A route compiled from its config: everything a request needs, decided once at load time,
and `verify`, the checks of the product description in order (used by the pipeline and by
`fire`, which predicts a postback's fate with the very same code)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from .checks.addresses import IPAddress, address_text
from .checks.clientip import ClientAddressResolver
from .checks.normalize import Normalizer
from .checks.query import Query
from .checks.secret import Pairs, Scrubbed
from .checks.validate import Validator
from .config import RouteConfig
from .config.model import AllowIpsMode, Delivery
from .dedup import DedupKey, RouteDedup, dedup_key, key_fields
from .errors import AddressNotAllowed, Filtered
from .forwarding.forward import Upstream
from .observe import RequestRecord
from .postback import ZONE_ID, Postback

# The checks `verify` runs, in order; `RequestRecord.passed` lists those a request passed.
STEPS = ("client", "allowlist", "secret", "normalize", "validate", "match")


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a request brings to the checks, apart from its route."""

    peer: str | None  # the TCP peer's address
    forwarded_for: Sequence[str]  # X-Forwarded-For header lines, in order
    query: Query
    headers: CIMultiDictProxy[str]


class CompiledRoute:
    def __init__(
        self, config: RouteConfig, dedup: RouteDedup, client_addresses: ClientAddressResolver
    ) -> None:
        self.name = config.name
        self.path = config.path
        self.config = config
        self._client_addresses = client_addresses
        self._allow_ips = config.allow_ips
        self.allowlist_log_only = config.allow_ips_mode == AllowIpsMode.LOG_ONLY
        self.queued = config.delivery == Delivery.QUEUED
        self.deadline = config.deadline
        self._secret = config.secret
        self.secret_param = config.secret.query_param if config.secret else None
        self.upstreams = tuple(Upstream(upstream, config.name) for upstream in config.upstreams)
        written = [name for upstream in self.upstreams for name in upstream.written_names]
        if self.secret_param is not None:
            written.append(self.secret_param)
        self.normalizer = Normalizer(config.aliases, written, config.drop_unknown)
        self.validator = Validator(config.required, config.max_estimated_price)
        self._match = tuple(config.match.items())
        # zones the config names, always their own series on the revenue counter
        self.named_zones = config.match.get(ZONE_ID, frozenset())
        self.dedup = dedup
        self._dedup_scope = config.dedup_scope
        self._dedup_fields = key_fields(config.dedup.key)

    def verify(self, arrival: Arrival, record: RequestRecord) -> Postback:
        """The checks in order, each noting in `record` what it found: the postback to deliver,
        or the failing step's error (a GatewayError)."""
        clean = self.without_secret(arrival.query.pairs)  # all that is ever logged or passed on
        record.query = clean.pairs
        record.dropped = clean.removed
        passed = record.passed

        record.peer = arrival.peer
        client = self._client_addresses.resolve(arrival.peer, arrival.forwarded_for)
        record.client = address_text(client)
        passed.append("client")
        self._check_allowlist(client, record)
        passed.append("allowlist")
        if self._secret is not None:
            self._secret.verify(arrival.query.pairs, arrival.headers)
        passed.append("secret")

        postback = self.normalizer.normalize(clean.pairs, arrival.query.undecodable)
        record.fields = postback.fields
        record.dropped += postback.dropped
        passed.append("normalize")
        self.validator.validate(postback)
        passed.append("validate")
        self.check_match(postback)
        passed.append("match")
        return postback

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
        return dedup_key(self._dedup_scope, self._dedup_fields, postback)

    def _check_allowlist(self, client: IPAddress, record: RequestRecord) -> None:
        if self._allow_ips is None or client in self._allow_ips:
            return
        if not self.allowlist_log_only:
            raise AddressNotAllowed(f"{client} is not in allow_ips")
        record.let_in_by_log_only = True
        record.detail = f"{client} is not in allow_ips (allow_ips_mode: log_only, let in)"
