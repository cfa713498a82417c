"""A route compiled from its config: everything a request needs, decided once at load time,
and `verify`, the checks of the product description in order (used by the pipeline and by
`fire`, which predicts a postback's fate with the very same code).

The order lives in one place, `CompiledRoute.CHECKS`: `verify` runs it, the record notes the
names passed (and the one that failed), and `fire` and the inspector list it (`STEPS`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from multidict import CIMultiDictProxy

from .checks.addresses import IPAddress, address_text
from .checks.clientip import ClientAddressResolver
from .checks.normalize import Normalizer
from .checks.query import Query
from .checks.secret import Pairs, Scrubbed
from .checks.validate import Validator
from .config import RouteConfig
from .config.model import AllowIpsMode, DeliveryMode
from .dedup import DedupKey, RouteDedup, dedup_key, key_fields
from .errors import AddressNotAllowed, Filtered, GatewayError
from .forwarding.forward import Upstream
from .forwarding.queued import QueuedRoute
from .postback import ZONE_ID, Postback
from .record import RequestRecord
from .reward_sessions import RewardSessions, SessionLimits


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a request brings to the checks, apart from its route."""

    peer: str | None  # the TCP peer's address
    forwarded_for: Sequence[str]  # X-Forwarded-For header lines, in order
    query: Query
    headers: CIMultiDictProxy[str]


@dataclass(slots=True)
class Checking:
    """One request going through the checks: what it brought, and what they found so far."""

    arrival: Arrival
    record: RequestRecord
    clean: Scrubbed  # the query without the key: all that is ever logged or passed on
    client: IPAddress | None = None
    postback: Postback | None = None


class Check(NamedTuple):
    """One named step of `verify`: raises the GatewayError that refuses the request, or
    notes what it found in the `Checking`."""

    name: str
    run: Callable[[CompiledRoute, Checking], None]


class CompiledRoute:
    def __init__(
        self,
        config: RouteConfig,
        dedup: RouteDedup,
        client_addresses: ClientAddressResolver,
        session_limits: SessionLimits | None = None,
    ) -> None:
        self.name = config.name
        self.path = config.path
        self.config = config
        self._client_addresses = client_addresses
        self._allow_ips = config.allow_ips
        self.allowlist_log_only = config.allow_ips_mode == AllowIpsMode.LOG_ONLY
        self.deadline = config.deadline
        self._secret = config.secret
        self.secret_param = config.secret.query_param if config.secret else None
        self.upstreams = tuple(Upstream(upstream, config.name) for upstream in config.upstreams)
        # what the store needs of it, on a queued route (`delivery: queued`)
        self.queued = (
            QueuedRoute.of(config, self.upstreams)
            if config.delivery == DeliveryMode.QUEUED
            else None
        )
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
        self.sessions = (
            RewardSessions(config.name, config.sessions, session_limits)
            if config.sessions is not None
            else None
        )

    def verify(self, arrival: Arrival, record: RequestRecord) -> Postback:
        """The checks in order, each noting in `record` what it found: the postback to deliver,
        or the failing check's error (a GatewayError), its name in `record.failed_check`."""
        clean = self.without_secret(arrival.query.pairs)
        record.query = clean.pairs
        record.dropped = clean.removed
        checking = Checking(arrival, record, clean)
        passed = record.passed
        try:
            for name, run in self.CHECKS:
                run(self, checking)
                passed.append(name)
        except GatewayError:
            record.failed_check = STEPS[len(passed)]
            raise
        assert checking.postback is not None  # set by normalize
        return checking.postback

    def _resolve_client(self, checking: Checking) -> None:
        arrival, record = checking.arrival, checking.record
        record.peer = arrival.peer
        checking.client = self._client_addresses.resolve(arrival.peer, arrival.forwarded_for)
        record.client = address_text(checking.client)

    def _check_allowlist(self, checking: Checking) -> None:
        client = checking.client
        assert client is not None  # resolved by the check before
        if self._allow_ips is None or client in self._allow_ips:
            return
        record = checking.record
        record.outside_allowlist = True
        if not self.allowlist_log_only:
            # still refused, but whether it held the key says who sent it: a stranger, or
            # Monetag from an address the allowlist does not know yet (rewards being lost)
            record.key_valid = self._carries_key(checking)
            raise AddressNotAllowed(f"{client} is not in allow_ips")
        record.let_in_by_log_only = True
        record.detail = f"{client} is not in allow_ips (allow_ips_mode: log_only, let in)"

    def _check_secret(self, checking: Checking) -> None:
        if self._secret is not None:
            self._secret.verify(checking.arrival.query.pairs, checking.arrival.headers)
            checking.record.key_valid = True

    def _carries_key(self, checking: Checking) -> bool:
        """Whether the request holds one of the route's keys (False on a route without one),
        compared as the secret check does, in constant time."""
        if self._secret is None:
            return False
        try:
            self._secret.verify(checking.arrival.query.pairs, checking.arrival.headers)
        except GatewayError:
            return False
        return True

    def _normalize(self, checking: Checking) -> None:
        postback = self.normalizer.normalize(
            checking.clean.pairs, checking.arrival.query.undecodable
        )
        checking.postback = postback
        checking.record.fields = postback.fields
        checking.record.dropped += postback.dropped

    def _validate(self, checking: Checking) -> None:
        assert checking.postback is not None
        self.validator.validate(checking.postback)

    def _check_session(self, checking: Checking) -> None:
        """On a route with sessions: a ymid the gateway issued, to the user and placement the
        postback names, still valid (`sessions.mode: log_only` lets a refusal in, noted)."""
        if self.sessions is not None:
            assert checking.postback is not None
            self.sessions.check(checking.postback, checking.record, time.time())

    def _check_match(self, checking: Checking) -> None:
        """Raise Filtered when the postback is not one this route forwards (`match:`)."""
        postback = checking.postback
        assert postback is not None
        for name, accepted in self._match:
            value = postback.get(name)
            if value not in accepted:
                raise Filtered(f"{name}={value!r} is not in match.{name}")

    # the order of the product description; nothing else restates it
    CHECKS: ClassVar[tuple[Check, ...]] = (
        Check("client", _resolve_client),
        Check("allowlist", _check_allowlist),
        Check("secret", _check_secret),
        Check("normalize", _normalize),
        Check("validate", _validate),
        Check("session", _check_session),
        Check("match", _check_match),
    )

    def without_secret(self, query: Pairs) -> Scrubbed:
        """The query minus every trace of the key: what may be logged, normalized, forwarded."""
        if self._secret is None:
            return Scrubbed(list(query), [])
        return self._secret.scrub(query)

    def dedup_key(self, postback: Postback) -> DedupKey:
        return dedup_key(self._dedup_scope, self._dedup_fields, postback)


# the checks' names in order, as the record, `fire` and the inspector tell them
STEPS = tuple(check.name for check in CompiledRoute.CHECKS)
