"""The postback handler: the steps of the product description, in order.

route -> client address -> allowlist -> secret -> normalize -> validate -> dedup -> forward.
Each step either passes the request on or raises a GatewayError that `outcome.py` answers.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .clientip import ClientAddressResolver
from .config import GatewayConfig
from .dedup import DedupMemory
from .errors import MethodNotAllowed, Outcome, RouteNotFound, UpstreamUnavailable
from .forward import Forwarder, Upstream, UpstreamReply
from .observe import RequestRecord
from .postback import Postback
from .route import CompiledRoute

log = logging.getLogger("gateway.pipeline")

RECORD = web.RequestKey("record", RequestRecord)


class Gateway:
    """The running gateway: compiled routes, the client-address rule and the forwarder."""

    def __init__(
        self,
        config: GatewayConfig,
        forwarder: Forwarder,
        dedup_memories: dict[str, DedupMemory] | None = None,
    ) -> None:
        self.config = config
        self._forwarder = forwarder
        self._client_addresses = ClientAddressResolver(config.server.trusted_proxies)
        memories = dedup_memories if dedup_memories is not None else {}
        for route in config.routes:
            if route.name not in memories:
                memories[route.name] = DedupMemory(route.dedup.ttl, route.dedup.max_entries)
        self.routes = {
            route.path: CompiledRoute(route, memories[route.name]) for route in config.routes
        }
        self._copies: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = request[RECORD]
        route = self._route_for(request)
        record.route = route.name
        record.query = [(k, v) for k, v in request.query.items() if k != route.secret_param]

        client = self._client_addresses.resolve(
            request.remote, request.headers.getall("X-Forwarded-For", [])
        )
        record.client = str(client)
        route.check_allowed(client)
        route.check_secret(request.query, request.headers)

        postback = route.normalizer.normalize(request.query.items())
        record.fields = postback.fields
        route.validator.validate(postback)

        async with route.dedup.reserve(route.dedup_key(postback)) as reservation:
            headers = {"X-Forwarded-For": record.client, "X-Request-ID": record.request_id}
            reply = await self._deliver(route.upstreams[0], postback, headers, record)
            if reply.delivered:
                reservation.commit()
                self._send_copies(route.upstreams[1:], postback, headers)
        record.outcome = Outcome.FORWARDED
        return web.Response(
            status=reply.status,
            body=reply.body,
            headers={"Content-Type": reply.content_type} if reply.content_type else None,
        )

    def _route_for(self, request: web.Request) -> CompiledRoute:
        route = self.routes.get(request.path)
        if route is None:
            raise RouteNotFound()
        if request.method != "GET":
            raise MethodNotAllowed(request.method)
        return route

    async def _deliver(
        self, upstream: Upstream, postback: Postback, headers: dict[str, str], record: RequestRecord
    ) -> UpstreamReply:
        """The first upstream's reply when it is the app's answer (2xx or 4xx)."""
        reply = await self._forwarder.send(upstream, postback, headers)
        record.upstream_status = reply.status
        if not (200 <= reply.status < 300 or 400 <= reply.status < 500):
            raise UpstreamUnavailable(
                "upstream_status", f"{upstream.label} answered {reply.status}", timed_out=False
            )
        if not reply.delivered:
            record.reason = "upstream_refused"
        return reply

    def _send_copies(
        self, upstreams: tuple[Upstream, ...], postback: Postback, headers: dict[str, str]
    ) -> None:
        """Copies to the other upstreams go in the background; failures are logged only."""
        for upstream in upstreams:
            task = asyncio.create_task(self._send_copy(upstream, postback, headers))
            self._copies.add(task)
            task.add_done_callback(self._copies.discard)

    async def _send_copy(
        self, upstream: Upstream, postback: Postback, headers: dict[str, str]
    ) -> None:
        try:
            reply = await self._forwarder.send(upstream, postback, headers)
        except UpstreamUnavailable as error:
            log.warning("copy not delivered", extra=_copy_log(headers, upstream, error.detail))
            return
        if not reply.delivered:
            detail = f"answered {reply.status}"
            log.warning("copy not delivered", extra=_copy_log(headers, upstream, detail))

    async def finish_copies(self, timeout: float) -> None:
        """Wait for background copies (at shutdown) so none is cut off mid-request."""
        if self._copies:
            await asyncio.wait(set(self._copies), timeout=timeout)


def _copy_log(headers: dict[str, str], upstream: Upstream, detail: str) -> dict[str, str]:
    return {"request_id": headers["X-Request-ID"], "upstream": upstream.label, "detail": detail}
