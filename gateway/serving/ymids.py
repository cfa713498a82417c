"""The reward sessions' endpoints on the public port, for the Mini App's frontend:

    POST {sessions.path}            {"init_data": "...", "placement": "level_end"}
        -> 200 {"ymid": "...", "expires": 1764770000, "status_url": "{path}/{ymid}"}
    GET  {sessions.path}/{ymid}[?wait=10s]
        -> 200 {"ymid": "...", "state": "pending" | "rewarded" | "refused" | "expired", ...}
    OPTIONS {sessions.path}          the CORS preflight of the POST

Browsers call them cross-origin: only `sessions.allowed_origins` get CORS headers, any other
Origin is refused (403) before any work. Issuing is rate-limited per client address (before
initData is even read) and per Telegram user. Every refusal has a named reason, in the answer,
the log line and `gateway_ymid_requests_refused_total`; no answer or line carries initData,
the bot token or a signing key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import orjson
from aiohttp import web

from ..checks.addresses import address_text
from ..config.values import parse_duration
from ..durable.outbox import StoreError
from ..errors import GatewayError
from ..reward_sessions import IssueRefused, RewardSessions
from ..runtime import Runtime
from ..sessions.ymid import YmidRefused
from ..ymid_status import MAX_WAIT_SECONDS, Status

log = logging.getLogger("gateway.sessions")
MAX_BODY_BYTES = 16 * 1024  # initData is well under 1 KB; the JSON around it is small
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def answer_ymid(
    runtime: Runtime, sessions: RewardSessions, request: web.BaseRequest
) -> web.StreamResponse:
    """One request to a route's session path, or below it: a new ymid, a status, a
    preflight; every way it ends is an answer with its CORS headers, and a log line."""
    origin = request.headers.get("Origin")
    path = request.rel_url.raw_path
    try:
        if not sessions.origins.allows(origin):
            raise IssueRefused(403, "origin_not_allowed", "this page's origin is not listed")
        if path == sessions.path:
            if request.method == "OPTIONS":
                return _preflight(sessions, origin, request)
            if request.method != "POST":
                raise _method(request.method, "POST, OPTIONS")
            return await _issue(runtime, sessions, request, origin)
        if request.method not in ("GET", "HEAD"):
            raise _method(request.method, "GET")
        return await _status(runtime, sessions, request, origin, path[len(sessions.path) + 1 :])
    except IssueRefused as refused:
        runtime.metrics.ymid_requests_refused.labels(sessions.route, refused.reason).inc()
        log.info(
            "ymid request refused",
            extra={
                "route": sessions.route,
                "reason": refused.reason,
                "detail": refused.detail,
                "client": request.remote,
                "origin": origin if sessions.origins.allows(origin) else "(not listed)",
            },
        )
        headers = {**_NO_STORE, **sessions.origins.headers(origin)}
        if refused.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
        if refused.status == 405:
            headers["Allow"] = refused.detail.removeprefix("allowed: ")
        body = {"error": refused.reason, "detail": refused.detail}
        response = web.json_response(body, status=refused.status, headers=headers, dumps=_dumps)
        if refused.status in (408, 413):  # the rest of the body is not read: no keep-alive
            response.force_close()
        return response


def _method(method: str, allowed: str) -> IssueRefused:
    return IssueRefused(405, "method_not_allowed", f"allowed: {allowed}")


def _preflight(
    sessions: RewardSessions, origin: str | None, request: web.BaseRequest
) -> web.StreamResponse:
    headers = sessions.origins.preflight(
        origin, request.headers.get("Access-Control-Request-Method")
    )
    if headers is None:
        raise IssueRefused(403, "preflight_refused", "a preflight from a listed origin, for POST")
    return web.Response(status=204, headers={**_NO_STORE, **headers})


async def _issue(
    runtime: Runtime, sessions: RewardSessions, request: web.BaseRequest, origin: str | None
) -> web.StreamResponse:
    now = time.time()
    client = _client(runtime, request)
    sessions.take_address(client, now)
    try:  # a body that never ends must not hold the connection: the headers' own bound
        async with asyncio.timeout(runtime.config.server.client_timeout):
            init_data, placement = await _read_body(request)
    except TimeoutError:
        raise IssueRefused(
            408, "body_timeout", "the body did not arrive within server.client_timeout"
        ) from None
    issued = sessions.issue(init_data, placement, now)
    runtime.metrics.ymids_issued.labels(sessions.route, placement or "").inc()
    if runtime.history is not None:
        runtime.history.session_issued(sessions.route, issued, now)
    log.info(
        "ymid issued",
        extra={
            "route": sessions.route,
            "ymid": issued.ymid,
            "telegram_id": issued.telegram_id,
            "placement": placement,
            "client": client,
            "expires": issued.expires,
        },
    )
    body = {
        "ymid": issued.ymid,
        "expires": issued.expires,
        "status_url": f"{sessions.path}/{issued.ymid}",
    }
    headers = {**_NO_STORE, **sessions.origins.headers(origin)}
    return web.json_response(body, headers=headers, dumps=_dumps)


def _client(runtime: Runtime, request: web.BaseRequest) -> str:
    """The client's address as the postback path resolves it (trusted proxies included)."""
    try:
        address = runtime.gateway.client_addresses.resolve(
            request.remote, request.headers.getall("X-Forwarded-For", [])
        )
    except GatewayError as error:
        raise IssueRefused(403, error.reason, error.detail or "no client address") from None
    return address_text(address)


async def _read_body(request: web.BaseRequest) -> tuple[str, str | None]:
    """`init_data` and the optional `placement` of a JSON object body, or IssueRefused."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise IssueRefused(413, "body_too_large", f"more than {MAX_BODY_BYTES} bytes")
    raw = b""
    while len(raw) <= MAX_BODY_BYTES:  # a read returns what has arrived: up to the end
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > MAX_BODY_BYTES:
        raise IssueRefused(413, "body_too_large", f"more than {MAX_BODY_BYTES} bytes")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise IssueRefused(
            400, "body_invalid", 'expected JSON: {"init_data": "...", "placement": "..."}'
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("init_data"), str):
        raise IssueRefused(400, "body_invalid", "init_data: expected Telegram.WebApp.initData")
    placement = body.get("placement")
    if placement is not None and not isinstance(placement, str):
        raise IssueRefused(400, "body_invalid", "placement: expected a string")
    return body["init_data"], placement  # "" is a placement too: listed, or refused


async def _status(
    runtime: Runtime,
    sessions: RewardSessions,
    request: web.BaseRequest,
    origin: str | None,
    ymid: str,
) -> web.StreamResponse:
    try:
        claims = sessions.claims(ymid)
    except YmidRefused as refused:
        raise IssueRefused(404, refused.reason, refused.detail) from None
    wait = _wait(request.rel_url.query.get("wait"))
    watch = runtime.status_watch
    if watch is None:
        raise IssueRefused(503, "no_history", "the history is off: restart with the store on")
    try:
        status = await watch.status(ymid, sessions.route, claims.expires)
        if wait and status.state == "pending" and not watch.full:
            status = await watch.changed(ymid, sessions.route, claims.expires, status, wait)
    except StoreError:  # told in the watch's log line; the public port says no more
        raise IssueRefused(
            503, "store_unavailable", "the store did not answer: ask again"
        ) from None
    return _status_answer(sessions, origin, ymid, claims.expires, status)


def _wait(text: str | None) -> float:
    if text is None:
        return 0.0
    seconds = parse_duration(text)
    if seconds is None:
        raise IssueRefused(400, "wait_invalid", "wait: a duration such as 10s")
    return min(seconds, MAX_WAIT_SECONDS)


def _status_answer(
    sessions: RewardSessions, origin: str | None, ymid: str, expires: int, status: Status
) -> web.StreamResponse:
    headers = {**_NO_STORE, **sessions.origins.headers(origin)}
    return web.json_response(status.body(ymid, expires), headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
