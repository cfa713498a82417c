"""Both ports' HTTP server: aiohttp's low-level server, one handler, our own answer to
requests that are not valid HTTP.

On the public port there is exactly one thing to serve (a postback, routed by a dictionary
lookup on the exact path), so an `Application` with its router adds nothing; the admin port's
`Application` is served by the same server class (`AdminRunner`). When aiohttp's parser
refuses a request (a raw space or control byte in the request line, bare-LF line endings, an
over-long line), aiohttp would log the request line with a traceback and echo it in a
text/plain answer; the line may carry the key. Here such a request gets one short log line, a
metric and the gateway's own answer instead, naming the problem from a closed set and never
quoting the bytes. So does a request in an HTTP version other than 1.0 and 1.1, which llhttp
reads (HTTP/0.9, HTTP/2.0) and aiohttp would answer in that version: 505, in HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
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
_VERSIONS = (HttpVersion10, HttpVersion11)


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, with our answer where it would log and echo a parse error."""

    def __init__(self, manager: HttpServer, on_malformed: OnMalformed, **settings: Any) -> None:
        super().__init__(manager, **settings)
        self._on_malformed = on_malformed
        self._manager_of = manager

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

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        ended = self._manager_of.on_connection_lost
        if ended is not None:
            ended()


class HttpServer(web.Server):
    """`web.Server` whose connections answer parse errors, and HTTP versions other than 1.0
    and 1.1, through `on_malformed`."""

    def __init__(
        self,
        handler: Handler,
        on_malformed: OnMalformed,
        *,
        request_factory: Any = None,
        **settings: Any,
    ) -> None:
        async def versions_checked(request: web.BaseRequest) -> web.StreamResponse:
            if request.version in _VERSIONS:
                return await handler(request)
            # aiohttp writes the answer in the request's version, read through a cached
            # property: the answer's status line says HTTP/1.1 (tested)
            request._cache["version"] = HttpVersion11
            response = on_malformed(request, MalformedRequest(505, "http_version"))
            response.force_close()
            return response

        super().__init__(versions_checked, request_factory=request_factory, **settings)
        self._on_malformed = on_malformed
        self._settings = settings
        # told when a connection ends, by the site that counts them (listener.GatewaySite)
        self.on_connection_lost: Callable[[], None] | None = None

    def __call__(self) -> web.RequestHandler:
        return _Connection(
            self, self._on_malformed, loop=asyncio.get_running_loop(), **self._settings
        )


class AdminRunner(web.AppRunner):
    """The admin app's runner, on an `HttpServer`: its requests that are not valid HTTP get
    `on_malformed`'s answer, not aiohttp's echo."""

    def __init__(self, app: web.Application, on_malformed: OnMalformed, **settings: Any) -> None:
        super().__init__(app, **settings)
        self._on_malformed = on_malformed
        self._settings = {k: v for k, v in settings.items() if k != "shutdown_timeout"}

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the app started and frozen, its handler
        return HttpServer(
            made.request_handler,
            self._on_malformed,
            request_factory=made.request_factory,
            **self._settings,
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
