"""Wiring: the public server (postbacks, and the reward sessions' ymids) and the admin app
(health, readiness, metrics)."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import MalformedRequest
from ..inspector.access import Access
from ..inspector.views import SECURITY_HEADERS, Inspector, security_headers
from ..runtime import Runtime
from .http_server import (
    MAX_HEADER_LINE,
    MAX_REQUEST_LINE,
    AdminRunner,
    HttpServer,
    QuietHttpLogger,
)
from .outcome import answer, answer_malformed
from .ymids import answer_ymid

admin_log = logging.getLogger("gateway.admin")
CUT_OFF_SECONDS = 0.1  # for a request still running when the shutdown deadline has passed


def public_runner(runtime: Runtime) -> web.ServerRunner:
    """The public port's runner. The runtime is started and closed by the caller, around it."""
    server = runtime.config.server

    async def postback(request: web.BaseRequest) -> web.StreamResponse:
        gateway = runtime.gateway
        if gateway.sessions:  # a route has sessions: is this the Mini App's frontend?
            sessions = gateway.sessions_at(request.rel_url.raw_path)
            if sessions is not None:  # a ymid, or its status
                return await answer_ymid(runtime, sessions, request)
        return await answer(runtime, request)

    def malformed(request: web.BaseRequest, error: MalformedRequest) -> web.StreamResponse:
        return answer_malformed(runtime, request, error)

    handler = HttpServer(
        postback,
        malformed,
        access_log=None,  # our own line replaces aiohttp's (outcome.py)
        keepalive_timeout=server.client_timeout,  # also bounds waiting for request headers
        max_line_size=MAX_REQUEST_LINE,
        max_field_size=MAX_HEADER_LINE,
    )
    # `serve` waits for requests in flight itself, by its one deadline; what cleanup finds
    # still running then is cut off after this long
    return web.ServerRunner(handler, shutdown_timeout=CUT_OFF_SECONDS)


def create_admin_app(runtime: Runtime) -> web.Application:
    """Health, readiness, metrics and the inspector on the admin port; never on the public
    one. The token (server.admin_token) guards all but the probes."""
    refused = runtime.metrics.admin_refusals
    access = Access(
        lambda: runtime.config.server,
        on_failure=lambda reason: refused.labels(reason).inc(),
        on_misdirected=refused.labels("misdirected").inc,
    )
    admin = web.Application(middlewares=[security_headers, access.middleware()])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        status = runtime.readiness()
        body: dict[str, object] = {"status": status, "config_checksum": runtime.config.checksum}
        if runtime.store is not None:
            body["store"] = "up" if runtime.store.available else "down"
        if runtime.restart_pending:  # keys of that config still waiting for a restart
            body["restart_pending"] = runtime.restart_pending
        return web.json_response(body, status=200 if status == "ready" else 503)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(runtime.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    Inspector(runtime, access).add_to(admin)
    return admin


def admin_runner(runtime: Runtime) -> web.AppRunner:
    """The admin port's runner: the same header deadline as the public port, so a connection
    that sends half a request line is closed at `client_timeout` instead of held forever, and
    the same answer to what is not valid HTTP (no echo of the bytes; the pages' headers)."""

    def malformed(request: web.BaseRequest, error: MalformedRequest) -> web.StreamResponse:
        runtime.metrics.admin_refusals.labels("malformed").inc()
        admin_log.info("admin request not valid HTTP", extra={"problem": error.problem})
        body = {"error": "malformed request", "problem": error.problem}
        return web.json_response(body, status=error.status, headers=SECURITY_HEADERS)

    return AdminRunner(
        create_admin_app(runtime),
        malformed,
        access_log=None,
        shutdown_timeout=1,
        keepalive_timeout=runtime.config.server.client_timeout,
        logger=QuietHttpLogger(admin_log),
    )
