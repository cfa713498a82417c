"""The one place that turns a request's fate into its answer, its log line and its metrics."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import GatewayError, Outcome, Overloaded
from .observe import RequestRecord, log_request
from .pipeline import RECORD
from .runtime import Runtime

log = logging.getLogger("gateway.outcome")

RUNTIME = web.AppKey("runtime", Runtime)
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


_PROCESS_PREFIX = uuid.uuid4().hex[:12]  # unique per process start, then a counter: cheap
_REQUEST_NUMBERS = itertools.count(1)


def request_id_of(request: web.Request) -> str:
    """The caller's X-Request-ID when it is a sane token (for correlation), else a new one."""
    given = request.headers.get("X-Request-ID")
    if given is not None and _SAFE_REQUEST_ID.fullmatch(given):
        return given
    return f"{_PROCESS_PREFIX}{next(_REQUEST_NUMBERS):08x}"


async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    record = RequestRecord(request_id_of(request))
    request[RECORD] = record
    runtime.in_flight += 1
    try:
        if runtime.in_flight > runtime.config.server.max_in_flight:
            record.route = runtime.gateway.route_name(request.path)  # for logs and metrics
            raise Overloaded(runtime.config.server.max_in_flight)
        response = await handler(request)
    except GatewayError as error:
        record.outcome = error.outcome
        record.reason = error.reason
        record.detail = error.detail or record.detail
        response = web.json_response(error.body(), status=error.status, headers=error.headers)
    except Exception:
        # A bug, not a verdict: answer 500 so the sender retries, and say so loudly.
        log.exception("unexpected error", extra={"request_id": record.request_id})
        record.outcome, record.reason = Outcome.UPSTREAM_ERROR, "internal_error"
        response = web.json_response({"outcome": record.outcome, "error": "internal"}, status=500)
    finally:
        runtime.in_flight -= 1
    outcome = record.outcome or Outcome.UPSTREAM_ERROR
    response.headers["X-Gateway-Outcome"] = outcome
    response.headers["X-Request-ID"] = record.request_id
    log_request(record, response.status)
    seconds = time.perf_counter() - record.started
    runtime.metrics.request_done(record.route, outcome, record.reason, seconds)
    return response
