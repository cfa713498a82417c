"""The postback handler: the steps of the product description, in order.

route -> client address -> allowlist -> secret -> normalize -> validate -> match -> dedup
-> forward. Each step either passes the request on or raises a GatewayError; the pipeline
returns what came of the rest (`Forwarded`, `Queued`). `outcome.py` answers, logs and counts
either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from .checks.clientip import ClientAddressResolver
from .checks.query import read_query
from .config import GatewayConfig
from .deadline import Deadline
from .dedup import DedupKey, RouteDedup
from .errors import (
    DuplicatePostback,
    MethodNotAllowed,
    QueryTooLong,
    RouteNotFound,
    UpstreamStatus,
    UpstreamUnavailable,
)
from .forwarding.forward import Forwarder, Upstream, UpstreamReply, delivery_headers
from .forwarding.policy import Verdict, sync_answer
from .forwarding.queued import QueuedRoute
from .forwarding.upstream_client import UpstreamClient
from .metrics import Metrics
from .postback import ESTIMATED_PRICE, REWARD_EVENT_TYPE, ZONE_ID, Postback
from .record import RequestRecord
from .reward_sessions import RewardSessions, SessionLimits
from .route import Arrival, CompiledRoute

log = logging.getLogger("gateway.pipeline")

RECORD = web.RequestKey("record", RequestRecord)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The first upstream's answer, the app's own: passed back to the sender as it is."""

    reply: UpstreamReply
    refused: bool  # the app said no (policy: REFUSED); still its answer


@dataclass(frozen=True, slots=True)
class Queued:
    """Stored durably; delivered in the background."""


Handled = Forwarded | Queued


class EventQueue(Protocol):
    """Where a queued route's events are stored (the durable store)."""

    async def enqueue(
        self, route: QueuedRoute, postback: Postback, key: DedupKey, request_id: str, client: str
    ) -> bool:
        """Store the event unless its dedup key is already stored; says whether it did."""
        ...


class Gateway:
    """One loaded config, running: compiled routes, the client-address rule, one upstream pool.

    A reload builds a new Gateway (sharing the dedup memories) and retires the old one once
    the requests it accepted have finished.
    """

    def __init__(
        self,
        config: GatewayConfig,
        client: UpstreamClient,
        metrics: Metrics,
        dedup: Mapping[str, RouteDedup],
        queue: EventQueue | None = None,
        session_limits: Mapping[str, SessionLimits] | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._metrics = metrics
        self._forwarder = Forwarder(client, metrics)
        self.client_addresses = ClientAddressResolver(config.server.trusted_proxies)
        self._max_query_length = config.server.max_query_length
        limits = session_limits or {}
        self.routes = {
            route.path: CompiledRoute(
                route, dedup[route.name], self.client_addresses, limits.get(route.name)
            )
            for route in config.routes
        }
        # the routes' session paths (reward_sessions.py): a ymid is asked for, and its status
        self.sessions = {
            route.sessions.path: route.sessions
            for route in self.routes.values()
            if route.sessions is not None
        }
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._copies: set[asyncio.Task[None]] = set()
        self._queue = queue

    async def handle(self, request: web.BaseRequest) -> Handled:
        self._active += 1
        self._idle.clear()
        try:
            return await self._handle(request)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _handle(self, request: web.BaseRequest) -> Handled:
        record = request[RECORD]
        route = self._route_for(request, record)
        arrival = Arrival(
            request.remote,
            request.headers.getall("X-Forwarded-For", []),
            read_query(request.rel_url),
            request.headers,
        )
        postback = route.verify(arrival, record)  # client, allowlist, secret, ..., match

        key = record.dedup_key = route.dedup_key(postback)
        if route.queued:
            return await self._accept_for_queue(route, postback, key, record)
        async with route.dedup.reserve(key) as reservation:
            headers = delivery_headers(record.request_id, record.client or "", key.hex())
            record.handed_to = "app"
            forwarded = await self._deliver(route, postback, headers, record)
            if forwarded.reply.delivered:
                reservation.commit()
                self._delivered(route, postback)
                self._send_copies(route, postback, headers, record)
        return forwarded

    async def _accept_for_queue(
        self, route: CompiledRoute, postback: Postback, key: DedupKey, record: RequestRecord
    ) -> Queued:
        """`delivery: queued`: answered 200 once the event is durably stored, delivered later."""
        assert self._queue is not None  # config validation: queued routes need a store
        async with route.dedup.reserve(key, queued=True) as reservation:
            record.handed_to = "store"
            assert route.queued is not None
            accepted = await self._queue.enqueue(
                route.queued, postback, key, record.request_id, record.client or ""
            )
            reservation.commit()  # stored now, or known to the store from before
            if not accepted:
                raise DuplicatePostback()
        self._delivered(route, postback)
        return Queued()

    def sessions_at(self, raw_path: str) -> RewardSessions | None:
        """The sessions whose path this is, or is under (a ymid's status), if any. Callers
        test `self.sessions` first: a config without sessions pays no call."""
        return self.sessions.get(raw_path) or self.sessions.get(raw_path.rpartition("/")[0])

    def route_name(self, raw_path: str) -> str | None:
        route = self.routes.get(raw_path)
        return route.name if route else None

    def _route_for(self, request: web.BaseRequest, record: RequestRecord) -> CompiledRoute:
        """The route for the path exactly as sent (`/postback%2Ftapper` is not
        `/postback/tapper`), for a GET whose query, as sent, is within the limit."""
        url = request.rel_url
        route = self.routes.get(url.raw_path)
        if route is None:
            raise RouteNotFound()
        record.route = route.name
        if request.method != "GET":
            raise MethodNotAllowed(request.method)
        if len(url.raw_query_string) > self._max_query_length:
            raise QueryTooLong(len(url.raw_query_string), self._max_query_length)
        return route

    async def _deliver(
        self,
        route: CompiledRoute,
        postback: Postback,
        headers: dict[str, str],
        record: RequestRecord,
    ) -> Forwarded:
        """The first upstream's reply when it is the app's answer (delivered or refused, as
        `policy.sync_answer` says), within the route's deadline."""
        upstream = route.upstreams[0]
        reply = await self._forwarder.send(
            upstream, postback, headers, record.attempts, route.deadline
        )
        record.upstream_status = reply.status
        verdict = sync_answer(reply.status)
        if verdict not in (Verdict.DELIVERED, Verdict.REFUSED):
            raise UpstreamStatus(f"{upstream.label} answered {reply.status}")
        return Forwarded(reply, refused=verdict is Verdict.REFUSED)

    def _delivered(self, route: CompiledRoute, postback: Postback) -> None:
        if postback.get(REWARD_EVENT_TYPE) == "valued":
            self._metrics.valued_event_delivered(
                route.name, postback.get(ZONE_ID), postback.get(ESTIMATED_PRICE), route.named_zones
            )

    def _send_copies(
        self,
        route: CompiledRoute,
        postback: Postback,
        headers: dict[str, str],
        record: RequestRecord,
    ) -> None:
        """Copies to the other upstreams go in the background, each within the route's
        deadline; failures are logged only (and their tries noted in the record, which the
        inspector may still show)."""
        for upstream in route.upstreams[1:]:
            copy = self._send_copy(upstream, postback, headers, record, route.deadline)
            task = asyncio.create_task(copy)
            self._copies.add(task)
            task.add_done_callback(self._copies.discard)

    async def _send_copy(
        self,
        upstream: Upstream,
        postback: Postback,
        headers: dict[str, str],
        record: RequestRecord,
        budget: float,
    ) -> None:
        try:
            reply = await self._forwarder.send(upstream, postback, headers, record.attempts, budget)
        except UpstreamUnavailable as error:
            log.warning("copy not delivered", extra=_copy_log(headers, upstream, error.detail))
            return
        if not reply.delivered:
            detail = f"answered {reply.status}"
            log.warning("copy not delivered", extra=_copy_log(headers, upstream, detail))

    async def finished(self, deadline: Deadline) -> bool:
        """Wait, until the deadline, for the requests this config accepted to be answered."""
        try:
            async with asyncio.timeout(deadline.left()):  # not wait_for: see Deliverer.run
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def retire(self, deadline: Deadline) -> None:
        """Let accepted requests and copies finish (until the deadline), then close the pool."""
        if not await self.finished(deadline):
            log.warning("retiring with requests still in flight", extra={"count": self._active})
        unsent = set(self._copies)
        if unsent and deadline.left():
            _, unsent = await asyncio.wait(unsent, timeout=deadline.left())
        if unsent:
            log.warning("copies not sent before the deadline", extra={"count": len(unsent)})
        await self._client.close()


def _copy_log(headers: dict[str, str], upstream: Upstream, detail: str) -> dict[str, str]:
    return {"request_id": headers["X-Request-ID"], "upstream": upstream.label, "detail": detail}
