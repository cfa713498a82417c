"""A route's reward sessions, compiled from its `sessions:` config: issuing a ymid to a Telegram
user the Mini App's initData proves, and checking the ymid a postback carries.

The ymid binds the user, a nonce, an expiry and optionally the placement (sessions/ymid.py);
on the postback it must verify, be the same user Monetag names (when it sends telegram_id)
and the same placement, and the app then receives the verified user as `telegram_id` (under
the name its `rename` gives). With `mode: log_only` a ymid that would be refused is noted in
the record and counted, and the postback goes on as before: the way to roll sessions out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config.model import SessionsConfig, SessionsMode
from .errors import YMID_REFUSALS, PlacementMismatch, TelegramIdMismatch
from .postback import REQUEST_VAR, TELEGRAM_ID, YMID, Postback
from .record import RequestRecord
from .sessions.initdata import InitDataRefused, telegram_user
from .sessions.limits import RateLimit
from .sessions.origins import OriginPolicy
from .sessions.ymid import Claims, YmidRefused, YmidSigner, placement_hash

VERIFIED = "verified"  # gateway_ymid_checks_total's result for a ymid that pays


class IssueRefused(Exception):
    """A ymid request the gateway will not answer with a ymid: its status, a reason for logs,
    metrics and the frontend, a detail for people, and for a rate limit when to try again."""

    def __init__(self, status: int, reason: str, detail: str, retry_after: float = 0) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class SessionLimits:
    """A route's rate limits, kept by the runtime across reloads (a reload must not give every
    user and address a fresh burst), made anew only when their rates change."""

    per_user: RateLimit
    per_address: RateLimit

    @classmethod
    def of(cls, config: SessionsConfig) -> SessionLimits:
        return cls(RateLimit(config.per_user_per_minute), RateLimit(config.per_address_per_minute))

    def fit(self, config: SessionsConfig) -> bool:
        return (self.per_user.per_minute, self.per_address.per_minute) == (
            config.per_user_per_minute,
            config.per_address_per_minute,
        )


@dataclass(frozen=True)
class Issued:
    ymid: str
    telegram_id: int
    placement: str | None
    expires: int


class RewardSessions:
    def __init__(
        self, route: str, config: SessionsConfig, limits: SessionLimits | None = None
    ) -> None:
        self.route = route
        self.config = config
        self.path = config.path
        self.enforced = config.mode == SessionsMode.ENFORCE
        self.origins = OriginPolicy(config.allowed_origins)
        self._signer = signer_of(route, config)
        self._bot_token = config.bot_token.reveal().decode()
        # the runtime's, kept across reloads while their rates stay (Runtime._build decides)
        self.limits = limits or SessionLimits.of(config)

    # -- issuing ----------------------------------------------------------------------------

    def take_address(self, client: str, now: float) -> None:
        """Count one request from this address against its limit (before any work on it): an
        IPv6 client by its /64, which one host commonly holds whole."""
        key = client
        if ":" in client:
            key = str(ipaddress.ip_network(f"{client}/64", strict=False))
        wait = self.limits.per_address.take(key, now)
        if wait is not None:
            raise IssueRefused(
                429, "rate_limited_address", "too many ymids asked from this address", wait
            )

    def issue(self, init_data: str, placement: str | None, now: float) -> Issued:
        """A new ymid for the user the initData proves, or IssueRefused."""
        try:
            user = telegram_user(
                init_data, self._bot_token, max_age=self.config.init_data_max_age, now=now
            )
        except InitDataRefused as refused:
            raise IssueRefused(403, refused.reason, refused.detail) from None
        if placement is not None and placement not in self.config.placements:
            raise IssueRefused(
                400,
                "placement_unknown",
                "not one of sessions.placements"
                if self.config.placements
                else "this route binds no placement (sessions.placements is empty)",
            )
        wait = self.limits.per_user.take(str(user.id), now)
        if wait is not None:
            raise IssueRefused(429, "rate_limited_user", "too many ymids for this user", wait)
        expires = int(now + self.config.ttl)
        ymid = self._signer.issue(user.id, expires=expires, request_var=placement)
        return Issued(ymid, user.id, placement, expires)

    def claims(self, ymid: str) -> Claims:
        """What a ymid of ours says, expired or not (the status endpoint's question), or
        YmidRefused (not ours, forged)."""
        return self._signer.verify(ymid, now=float("-inf"))

    # -- the postback ---------------------------------------------------------------------

    def check(self, postback: Postback, record: RequestRecord, now: float) -> Claims | None:
        """The ymid's claims once it verified (the postback then carries the bound user as
        telegram_id); a refusal raised (enforce) or noted in the record (log_only, None)."""
        record.ymid_check_enforced = self.enforced
        try:
            claims = self._verified(postback, now)
        except YmidRefused as refused:
            record.ymid_check = refused.reason
            if self.enforced:
                raise YMID_REFUSALS[refused.reason](refused.detail) from None
            record.detail = f"{refused.detail} (sessions.mode: log_only, let in)"
            return None
        record.ymid_check = VERIFIED
        record.ymid_expires = claims.expires
        postback.fields[TELEGRAM_ID] = str(claims.user_id)
        return claims

    def _verified(self, postback: Postback, now: float) -> Claims:
        claims = self._signer.verify(postback.get(YMID) or "", now=now)
        sent = postback.get(TELEGRAM_ID)
        if sent is not None and sent != str(claims.user_id):
            raise YmidRefused(
                TelegramIdMismatch.reason, "telegram_id is not the user the ymid was issued to"
            )
        placed = claims.placement
        if placed is not None and placement_hash(postback.get(REQUEST_VAR) or "") != placed:
            raise YmidRefused(
                PlacementMismatch.reason,
                "request_var is not the placement the ymid was issued for",
            )
        return claims


def signer_of(route: str, config: SessionsConfig) -> YmidSigner:
    """The route's signer: its keys, and its name as the context every MAC covers (a ymid of
    one route is refused on another; renaming a route retires the ymids issued under the old
    name, as a key rotation would)."""
    return YmidSigner([key.reveal() for key in config.signing_keys], context=route)
