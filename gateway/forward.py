"""Sending a clean postback to the app behind the gateway.

One long-lived ClientSession (connection pooling) serves every upstream. Each attempt has the
upstream's `timeout`; connect errors, timeouts and 502/503/504 are retried `retries` times with
exponential backoff and full jitter. Any other status is the app's answer and is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .config import UpstreamConfig
from .errors import UpstreamUnavailable
from .postback import Postback

RETRYABLE_STATUSES = frozenset({502, 503, 504})
MAX_REPLY_BYTES = 64 * 1024  # an app's answer to a postback is small; never buffer more
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
USER_AGENT = "monetag-gateway"

log = logging.getLogger("gateway.forward")


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status: int
    body: bytes
    content_type: str | None

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


class Upstream:
    """One configured upstream with its URL parts and rename map prepared at config load."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.retries = config.retries
        self._rename = dict(config.rename)
        self._base = config.url.with_query(None).with_fragment(None)
        self._own_query = tuple(config.url.query.items())  # parameters the app's URL already has
        # for logs: never the URL's query or userinfo, which may hold the app's own key
        self.label = str(self._base.with_user(None))

    def url_for(self, postback: Postback) -> URL:
        """Canonical fields under this upstream's names, then the unknown extras, unchanged."""
        renamed = [(self._rename.get(name, name), value) for name, value in postback.fields.items()]
        return self._base.with_query([*self._own_query, *renamed, *postback.extras])


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self._session = session
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap

    async def send(
        self, upstream: Upstream, postback: Postback, headers: Mapping[str, str]
    ) -> UpstreamReply:
        """The upstream's reply, or UpstreamUnavailable once retries are spent."""
        url = upstream.url_for(postback)
        request_headers = CIMultiDict(headers)
        request_headers["User-Agent"] = USER_AGENT
        failure = ""
        timed_out = False
        for attempt in range(upstream.retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            try:
                reply = await self._attempt(upstream, url, request_headers)
            except TimeoutError:
                failure, timed_out = "timeout", True
            except aiohttp.ClientConnectionError as error:
                failure, timed_out = f"connection error: {type(error).__name__}", False
            except aiohttp.ClientError as error:
                raise UpstreamUnavailable(
                    "upstream_bad_response",
                    f"{upstream.label}: {type(error).__name__}",
                    timed_out=False,
                ) from None
            else:
                if reply.status not in RETRYABLE_STATUSES:
                    return reply
                failure, timed_out = f"status {reply.status}", False
            log.info(
                "upstream attempt failed",
                extra={"upstream": upstream.label, "attempt": attempt + 1, "failure": failure},
            )
        raise UpstreamUnavailable(
            "upstream_timeout" if timed_out else "upstream_unavailable",
            f"{upstream.label}: {failure} after {upstream.retries + 1} attempt(s)",
            timed_out=timed_out,
        )

    async def _attempt(
        self, upstream: Upstream, url: URL, headers: CIMultiDict[str]
    ) -> UpstreamReply:
        async with self._session.get(
            url, headers=headers, timeout=upstream.timeout, allow_redirects=False
        ) as response:
            body = await response.content.read(MAX_REPLY_BYTES)
            return UpstreamReply(response.status, body, response.headers.get("Content-Type"))

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return random.uniform(0, min(self._backoff_cap, self._backoff_base * 2**attempt))
