"""The one place that turns a request's fate into its answer, its log line and its metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid

from aiohttp import web

from ..access_log import log_request
from ..errors import OUTCOME_WHEN_UNSET, GatewayError, MalformedRequest, Outcome, Overloaded, Reason
from ..pipeline import RECORD, Forwarded, Handled
from ..record import RequestRecord
from ..runtime import Runtime

log = logging.getLogger("gateway.outcome")

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PROCESS_PREFIX = uuid.uuid4().hex[:12]  # unique per process start, then a counter: cheap
_REQUEST_NUMBERS = itertools.count(1)


def new_request_id() -> str:
    """Unique per request: the app may rely on it, so a caller never chooses it."""
    return f"{_PROCESS_PREFIX}{next(_REQUEST_NUMBERS):08x}"


def caller_request_id(request: web.BaseRequest) -> str | None:
    """The caller's own X-Request-ID, if it is a sane token: logged beside ours, to correlate
    with a load balancer's logs. Never forwarded as ours (two events could share it)."""
    given = request.headers.get("X-Request-ID")
    return given if given is not None and _SAFE_REQUEST_ID.fullmatch(given) else None


async def answer(runtime: Runtime, request: web.BaseRequest) -> web.StreamResponse:
    """Run the pipeline on one postback; every way it can end becomes an answer here."""
    record = RequestRecord(new_request_id(), caller_request_id=caller_request_id(request))
    request[RECORD] = record
    runtime.in_flight += 1
    try:
        if runtime.in_flight > runtime.config.server.max_in_flight:
            # for logs and metrics
            record.route = runtime.gateway.route_name(request.rel_url.raw_path)
            raise Overloaded(runtime.config.server.max_in_flight)
        response = _handled_answer(record, await runtime.gateway.handle(request))
    except asyncio.CancelledError:
        _cut_off(runtime, record)  # every postback has its line, this one too
        raise
    except GatewayError as error:
        response = _error_answer(record, error)
    except Exception:
        # A bug, not a verdict: answer 500 so the sender retries, and say so loudly.
        log.exception("unexpected error", extra={"request_id": record.request_id})
        record.outcome, record.reason = Outcome.UPSTREAM_ERROR, GatewayError.reason
        response = web.json_response({"outcome": record.outcome, "error": "internal"}, status=500)
    finally:
        runtime.in_flight -= 1
    return _finish(runtime, record, response)


def answer_malformed(
    runtime: Runtime, request: web.BaseRequest, error: MalformedRequest
) -> web.StreamResponse:
    """A request aiohttp could not parse: our answer, one log line, counted; no bytes quoted."""
    record = RequestRecord(new_request_id(), client=request.remote)
    runtime.metrics.malformed.labels(error.problem).inc()
    return _finish(runtime, record, _error_answer(record, error))


_FATE_WHEN_CUT_OFF = {
    None: "before it reached the app: the app does not have it",
    "app": "while it was being forwarded: the app may have received it",
    "store": "while it was being stored: it may be queued (then it is delivered once)",
}


def _cut_off(runtime: Runtime, record: RequestRecord) -> None:
    """A postback still running when the shutdown deadline passed: no answer goes out, but
    its line says so, and whether the app may have it."""
    record.outcome, record.reason = Outcome.CUT_OFF, Reason.SHUTDOWN
    record.detail = f"cut off at shutdown {_FATE_WHEN_CUT_OFF[record.handed_to]}"
    log_request(record, None)
    seconds = time.perf_counter() - record.started
    runtime.metrics.request_done(record, Outcome.CUT_OFF, seconds)
    runtime.senders.note(record)
    if runtime.history is not None:
        runtime.history.add(record, None, seconds)


def _handled_answer(record: RequestRecord, handled: Handled) -> web.Response:
    """Forwarded: the app's answer as it is (a refusal too, with its reason); or queued."""
    if isinstance(handled, Forwarded):
        record.outcome = Outcome.FORWARDED
        if handled.refused:
            record.reason = Reason.UPSTREAM_REFUSED
        reply = handled.reply
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    record.outcome = Outcome.QUEUED
    return web.json_response({"outcome": Outcome.QUEUED})


def _error_answer(record: RequestRecord, error: GatewayError) -> web.Response:
    record.outcome = error.outcome
    record.reason = error.reason
    record.detail = error.detail or record.detail
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def _finish(
    runtime: Runtime, record: RequestRecord, response: web.StreamResponse
) -> web.StreamResponse:
    outcome = record.outcome or OUTCOME_WHEN_UNSET
    response.headers["X-Gateway-Outcome"] = outcome
    response.headers["X-Request-ID"] = record.request_id
    log_request(record, response.status)
    seconds = time.perf_counter() - record.started
    runtime.metrics.request_done(record, outcome, seconds)
    runtime.journal.add(record, response.status, seconds)
    runtime.senders.note(record)
    if runtime.history is not None:
        runtime.history.add(record, response.status, seconds)
    return response
