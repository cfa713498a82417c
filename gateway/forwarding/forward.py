"""Sending a clean postback to the app behind the gateway.

One long-lived client (keep-alive pools, `upstream_client.py`) serves every upstream. Each
attempt has the upstream's `timeout`, cut by the send's deadline (the route's `deadline`:
every attempt and backoff together); what is retried, `retries` times with exponential backoff
and full jitter, is `policy.py`'s to say (connect errors, timeouts, 502/503/504). Every
request written to the app is an attempt, counted and noted: a kept-alive connection the app
had closed is one, and the request goes again at once on a new connection (not counted against
`retries`: the app answered nothing).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from yarl import URL

from ..config import UpstreamConfig
from ..errors import UpstreamBadResponse, UpstreamDown, UpstreamTimeout
from ..metrics import Metrics, status_class
from ..postback import CANONICAL_FIELDS, Postback
from ..record import UpstreamAttempt
from . import policy
from .policy import SYNC_BACKOFF_BASE, SYNC_BACKOFF_CAP, Verdict
from .upstream_client import (
    Answer,
    BadResponse,
    StaleConnection,
    UpstreamClient,
    UpstreamConnectionError,
)

# a Content-Type passed back to the sender: visible ASCII and spaces, nothing aiohttp would
# refuse to write (a bare LF or NUL would drop the sender's connection with no answer)
_SAFE_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{1,200}")
_CODING = re.compile(r"[A-Za-z0-9._-]{1,32}(?:, ?[A-Za-z0-9._-]{1,32}){0,3}")  # gzip, br...
USER_AGENT = "monetag-gateway"
BODY_CUT_SHORT = "body cut short after the head (connection broke, garbled or too slow)"

log = logging.getLogger("gateway.forward")


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status: int
    body: bytes
    content_type: str | None
    complete: bool = True  # False: the body was cut short after a clean head (the status stands)
    content_encoding: str | None = None  # passed back with the body it describes

    @property
    def headers(self) -> dict[str, str] | None:
        """What the sender is told about the body, beside the body itself."""
        headers = {}
        if self.content_type:
            headers["Content-Type"] = self.content_type
        if self.content_encoding:
            headers["Content-Encoding"] = self.content_encoding
        return headers or None

    @property
    def delivered(self) -> bool:
        return policy.delivered(self.status)


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """An attempt that got no usable answer."""

    detail: str
    timed_out: bool
    malformed: bool = False  # an answer that is not clean HTTP (policy.py: not retried sync)
    stale: bool = False  # a kept-alive connection closed before answering: send again at once


def attempt_of(
    upstream: Upstream, result: UpstreamReply | AttemptFailure, seconds: float
) -> UpstreamAttempt:
    """An attempt's result as the inspector shows it."""
    if isinstance(result, UpstreamReply):
        note = None if result.complete else BODY_CUT_SHORT
        return UpstreamAttempt.answered(upstream.label, result.status, result.body, seconds, note)
    return UpstreamAttempt.failed(upstream.label, result.detail, seconds)


def delivery_headers(request_id: str, client: str, idempotency_key: str) -> dict[str, str]:
    """The headers every forwarded postback carries, sync or queued, first try or retry."""
    return {
        "X-Forwarded-For": client,
        "X-Request-ID": request_id,
        "X-Idempotency-Key": idempotency_key,
    }


def _with_user_agent(headers: Mapping[str, str]) -> dict[str, str]:
    return {**headers, "User-Agent": USER_AGENT}


class AnswerOfAnotherEvent(Exception):
    """The app echoed an X-Idempotency-Key that is not the one sent: this answer belongs to
    another request (a late answer on a reused connection). Retrying is safe with such an app:
    it recognises the key."""


def _reply_of(answer: Answer, sent_key: str | None) -> UpstreamReply:
    if answer.idempotency_key is not None and answer.idempotency_key != sent_key:
        raise AnswerOfAnotherEvent(f"echoed X-Idempotency-Key is not {sent_key}")
    content_type, coding = answer.content_type, answer.content_encoding
    if content_type is not None and not _passable(content_type):
        content_type = None  # not passed on; the answer itself still is
    if coding is not None and not _CODING.fullmatch(coding):
        coding = None  # a body whose coding cannot be said is passed on as it is
    return UpstreamReply(answer.status, answer.body, content_type, answer.complete, coding)


@lru_cache(maxsize=64)  # an app answers with the same one or two content types
def _passable(content_type: str) -> bool:
    return _SAFE_CONTENT_TYPE.fullmatch(content_type) is not None


class Upstream:
    """One configured upstream with its URL parts and rename map prepared at config load."""

    def __init__(self, config: UpstreamConfig, route: str = "") -> None:
        self.route = route
        self.timeout = config.timeout
        self.retries = config.retries
        self.keep_alive = config.keep_alive
        self._rename = dict(config.rename)
        self._base = config.url.with_query(None).with_fragment(None)
        # the app's own parameters: those in its URL, then static_params (often its API key)
        self._own_query = (*config.url.query.items(), *config.static_params.pairs)
        # every name this upstream's requests carry that the gateway writes itself; an incoming
        # parameter posing as one of them is dropped by normalization
        self.written_names = (
            *(name for name, _ in self._own_query),
            *(self._rename.get(name, name) for name in CANONICAL_FIELDS),
        )
        self.label = config.label  # for logs and metric labels: never a key

    def url_for(self, postback: Postback) -> URL:
        """The app's own parameters, canonical fields under this upstream's names, then extras
        (none of which poses as a name written here: see `written_names`)."""
        renamed = [(self._rename.get(name, name), value) for name, value in postback.fields.items()]
        return self._base.with_query([*self._own_query, *renamed, *postback.extras])


class Forwarder:
    def __init__(
        self,
        client: UpstreamClient,
        metrics: Metrics,
        backoff_base: float = SYNC_BACKOFF_BASE,
        backoff_cap: float = SYNC_BACKOFF_CAP,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap

    async def send(
        self,
        upstream: Upstream,
        postback: Postback,
        headers: Mapping[str, str],
        tries: list[UpstreamAttempt] | None = None,
        budget: float | None = None,
    ) -> UpstreamReply:
        """The upstream's reply, or UpstreamUnavailable once retries or the `budget` (seconds
        for every attempt and backoff together) are spent. Each try is noted in `tries`, if
        given (the request's record, for the inspector)."""
        url = upstream.url_for(postback)
        request_headers = _with_user_agent(headers)
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        failure = AttemptFailure("", timed_out=False)
        attempts = 0
        for attempt in range(upstream.retries + 1):
            if attempt:
                pause = self._backoff(attempt)
                if deadline is not None and loop.time() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
            if deadline is not None and loop.time() >= deadline:
                break
            attempts += 1
            result = await self._try(upstream, url, request_headers, tries, deadline)
            if isinstance(result, UpstreamReply):
                if policy.sync_answer(result.status) is not Verdict.RETRY:
                    return result
                failure = AttemptFailure(f"status {result.status}", timed_out=False)
            elif policy.sync_failure(result) is Verdict.RETRY:
                failure = result
            else:
                raise UpstreamBadResponse(f"{upstream.label}: {result.detail}")
            log.info(
                "upstream attempt failed",
                extra={
                    "upstream": upstream.label,
                    "attempt": attempt + 1,
                    "failure": failure.detail,
                },
            )
        gave_up = UpstreamTimeout if failure.timed_out else UpstreamDown
        spent = "" if attempts == upstream.retries + 1 else f", deadline {budget:g}s spent"
        raise gave_up(f"{upstream.label}: {failure.detail} after {attempts} attempt(s){spent}")

    async def attempt_once(
        self,
        upstream: Upstream,
        postback: Postback,
        headers: Mapping[str, str],
        tries: list[UpstreamAttempt] | None = None,
    ) -> UpstreamReply | AttemptFailure:
        """One attempt, no retries: the outbox schedules its own. Noted in `tries`, if given
        (two notes when a stale kept-alive connection made it send twice)."""
        url, request_headers = upstream.url_for(postback), _with_user_agent(headers)
        return await self._try(upstream, url, request_headers, tries, None)

    async def _try(
        self,
        upstream: Upstream,
        url: URL,
        headers: dict[str, str],
        tries: list[UpstreamAttempt] | None,
        deadline: float | None,
    ) -> UpstreamReply | AttemptFailure:
        """One attempt, timed once for both its metrics and its note in `tries`; on a stale
        kept-alive connection, sent once more on a new one (each send noted)."""
        for fresh in (False, True):
            started = time.perf_counter()
            result, result_class = await self._result_of(upstream, url, headers, deadline, fresh)
            seconds = time.perf_counter() - started
            self._metrics.upstream_attempt(upstream.route, upstream.label, result_class, seconds)
            if tries is not None:
                tries.append(attempt_of(upstream, result, seconds))
            if not (isinstance(result, AttemptFailure) and result.stale):
                break
        return result

    async def _result_of(
        self,
        upstream: Upstream,
        url: URL,
        headers: dict[str, str],
        deadline: float | None,
        fresh: bool,
    ) -> tuple[UpstreamReply | AttemptFailure, str]:
        """The attempt's reply or failure, and its metric's status_class."""
        try:
            answer = await self._client.get(
                url,
                headers,
                upstream.timeout,
                keep_alive=upstream.keep_alive,
                fresh=fresh,
                deadline=deadline,
            )
            reply = _reply_of(answer, headers.get("X-Idempotency-Key"))
        except TimeoutError:
            return AttemptFailure("timeout", timed_out=True), "timeout"
        except StaleConnection as error:
            detail = f"connection error: {error}; sent again on a new connection"
            return AttemptFailure(detail, timed_out=False, stale=True), "connection_error"
        except (UpstreamConnectionError, OSError) as error:
            failure = AttemptFailure(f"connection error: {error}", timed_out=False)
            return failure, "connection_error"
        except BadResponse as error:
            failure = AttemptFailure(f"bad response: {error}", timed_out=False, malformed=True)
            return failure, "connection_error"
        except AnswerOfAnotherEvent as error:
            return AttemptFailure(f"bad response: {error}", timed_out=False), "connection_error"
        return reply, status_class(reply.status)

    def _backoff(self, retry: int) -> float:
        return policy.backoff(retry, self._backoff_base, self._backoff_cap)
