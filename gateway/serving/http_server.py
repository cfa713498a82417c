"""The public port's HTTP server: aiohttp's low-level server, one handler, our own answer to
requests that are not valid HTTP.

There is exactly one thing to serve (a postback, routed by a dictionary lookup on the exact
path), so an `Application` with its router adds nothing. And when aiohttp's parser refuses a
request (a raw space or control byte in the request line, bare-LF line endings, an over-long
line), aiohttp would log the request line with a traceback and echo it in the answer; the line
may carry the key. Here such a request gets one short log line, a metric and the gateway's own
answer instead, naming the problem from a closed set and never quoting the bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from ..errors import MalformedRequest

MAX_REQUEST_LINE = 64 * 1024  # above any max_query_length, which is answered 414 by routing
MAX_HEADER_LINE = 8190  # aiohttp's default for one header line

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
OnMalformed = Callable[[web.BaseRequest, MalformedRequest], web.StreamResponse]


def classify(status: int, error: BaseException | None) -> MalformedRequest:
    """aiohttp's parse error -> our status and a problem name fit for a metric label."""
    if isinstance(error, LineTooLong):
        if error.args[1:2] == (MAX_REQUEST_LINE,):
            return MalformedRequest(414, "request_line_too_long")
        return MalformedRequest(431, "header_too_long")
    for kind, problem in _PROBLEMS:
        if isinstance(error, kind):
            return MalformedRequest(400, problem)
    if status >= 500:
        return MalformedRequest(500, "internal_error")
    return MalformedRequest(400, "bad_request")


_PROBLEMS: tuple[tuple[type[BaseException], str], ...] = (
    (BadHttpMethod, "bad_method"),  # before BadStatusLine, its parent
    (BadStatusLine, "bad_request_line"),
    (InvalidURLError, "bad_target"),
    (InvalidHeader, "bad_header"),
    (PayloadEncodingError, "bad_body_framing"),
    (BadHttpMessage, "bad_request"),
)
PROBLEMS = frozenset(
    {problem for _, problem in _PROBLEMS}
    | {"request_line_too_long", "header_too_long", "internal_error"}
)


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, with our answer where it would log and echo a parse error."""

    def __init__(self, manager: web.Server, on_malformed: OnMalformed, **settings: Any) -> None:
        super().__init__(manager, **settings)
        self._on_malformed = on_malformed

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = self._on_malformed(request, classify(status, exc))
        response.force_close()  # the rest of the stream cannot be trusted
        response.headers["Connection"] = "close"
        return response


class PublicServer(web.Server):
    """`web.Server` whose connections answer parse errors through `on_malformed`."""

    def __init__(self, handler: Handler, on_malformed: OnMalformed, **settings: Any) -> None:
        super().__init__(handler, **settings)
        self._on_malformed = on_malformed
        self._settings = settings

    def __call__(self) -> web.RequestHandler:
        return _Connection(
            self, self._on_malformed, loop=asyncio.get_running_loop(), **self._settings
        )


class QuietHttpLogger(logging.Logger):
    """aiohttp's error logger for the admin port: a request it cannot handle becomes one short
    line naming the error's kind, with no traceback and none of the request's bytes."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__(target.name)
        self._target = target

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._note(logging.DEBUG, kwargs.get("exc_info"))

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._note(logging.WARNING, kwargs.get("exc_info"))

    def _note(self, level: int, error: object) -> None:
        kind = type(error).__name__ if isinstance(error, BaseException) else None
        self._target.log(level, "request not handled", extra={"detail": kind})
