"""A lean HTTP/1.1 client for the one thing the gateway sends: a GET to an upstream.

Measured under wrk, aiohttp's ClientSession cost about 50 us of CPU per request on the
development machine, most of a pass-through proxy's time; the gateway needs none of its
generality (cookies, redirects, decompression, streaming, proxies). This client keeps a pool of
keep-alive connections per (scheme, host, port), writes the request in one call and reads the
answer with httptools (llhttp, the parser of Node.js and uvicorn), fed as the bytes arrive.

The answer decides whether an event counts as delivered, so nothing doubtful is read as one.
Refused (BadResponse, connection closed): anything llhttp rejects (two Content-Lengths, even
equal ones; Content-Length with Transfer-Encoding; bare-LF line ends; folded header lines;
status codes that are not three digits), more than one Transfer-Encoding field or one that is
not exactly `chunked`, 101 (never asked for) and 1xx answers with a body, a final status
outside 200-599, versions other than HTTP/1.0 and 1.1, and a header block over 64 KiB. Other
interim 1xx answers (100 Continue, 103 Early Hints) are skipped for the final one.

Once the final answer's status line and headers are in, cleanly, the status is the app's
decision: the body then has `BODY_WAIT` more seconds, and if the connection breaks, the body
turns out garbled or that time runs out, the answer is returned as it stands (`complete`
False) and its connection closed. An app that said 200 took the event: calling that a failure
would make the sender send it again, and the app pay twice.

A connection is reused only while its state is certain: never after a byte nobody asked for
(after a complete answer, or while idle, checked again just before reuse), since a late second
answer would be taken as the answer to the next request; nor after a body framed by the close,
`Connection: close`, HTTP/1.0 without keep-alive, a cut-short body, an error or a timeout.
A reused connection that the upstream closed before answering a byte raises `StaleConnection`:
the request was written, so it counts as an attempt, and the caller may send it again on a new
connection (`fresh=True`).
"""

from __future__ import annotations

import asyncio
import base64
import select
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn, cast

import httptools
from yarl import URL

MAX_BODY_BYTES = 64 * 1024  # an app's answer to a postback is small; never buffer more
BODY_WAIT = 1.0  # seconds for the body once the head is in: the status is already known
MAX_HEAD_BYTES = 64 * 1024  # status lines and header fields, interim answers included
# Header fields read from an answer; the rest are only checked by llhttp.
_FIELDS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"content-type",
        b"content-encoding",
        b"x-idempotency-key",
    }
)


class UpstreamConnectionError(ConnectionError):
    """The connection could not be made, or broke before the answer's head was complete."""


class StaleConnection(UpstreamConnectionError):
    """A kept-alive connection the upstream had closed: the request was written to it and not
    a byte came back. Sending it again on a new connection is what browsers do; the app sees
    the same X-Idempotency-Key both times."""


class BadResponse(Exception):
    """The upstream answered something that is not a clean HTTP/1.x answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes  # at most the get's max_body: longer bodies are cut
    content_type: str | None
    idempotency_key: str | None = None  # X-Idempotency-Key, if the app echoed it
    # False: the connection broke, the body was garbled or it took longer than BODY_WAIT after
    # a clean head; the status stands, the body is what had arrived
    complete: bool = True
    content_encoding: str | None = None  # the body as it came (gzip...): never decoded here


_Key = tuple[str, str, int]


class UpstreamClient:
    def __init__(self, connections_per_host: int = 256) -> None:
        self._idle: dict[_Key, list[_Connection]] = {}
        self._limits: dict[_Key, asyncio.Semaphore] = {}
        self._per_host = connections_per_host
        self._tls: ssl.SSLContext | None = None
        self.closed = False

    async def get(
        self,
        url: URL,
        headers: Mapping[str, str],
        timeout: float,
        *,
        keep_alive: bool = True,
        max_body: int = MAX_BODY_BYTES,
        fresh: bool = False,
        deadline: float | None = None,
    ) -> Answer:
        """One GET. Raises TimeoutError, UpstreamConnectionError (StaleConnection if a reused
        connection had been closed) or BadResponse, only while the answer's head is not in.

        `timeout` covers waiting for a free connection to the host, connecting and the head;
        the body then has BODY_WAIT seconds. `deadline` (the event loop's clock) cuts both. A
        body longer than `max_body` is cut to `max_body` bytes and the answer returned, its
        connection closed: the status is known, and a 2xx means the app took the event, which
        a failure would make the sender send again (and perhaps reward twice). With
        `keep_alive=False` the request says `Connection: close` and its connection is closed
        after the answer, for apps known to misbehave on kept-alive connections. `fresh`: a
        new connection, never an idle one.
        """
        key = (url.scheme, url.raw_host or "", url.port or 80)
        request = _request_bytes(url, headers, keep_alive)
        limit = self._limits.get(key) or self._limits.setdefault(
            key, asyncio.Semaphore(self._per_host)
        )
        head_by = asyncio.get_running_loop().time() + timeout
        if deadline is not None:
            head_by = min(head_by, deadline)
        connection: _Connection | None = None
        acquired = False
        try:
            # one timer for the wait for a free connection, connecting and the head
            async with asyncio.timeout_at(head_by):
                await limit.acquire()
                acquired = True
                connection = None if fresh else self._idle_connection(key)
                exchange, connection = await self._send(key, connection, request, max_body)
            answer = await self._rest_of(exchange, connection, deadline)
        except BaseException:
            if connection is not None:
                connection.close()  # its state is unknown: never reuse it
            raise
        finally:
            if acquired:
                limit.release()
        if keep_alive and connection.reusable and not self.closed:
            self._idle.setdefault(key, []).append(connection)
        else:
            connection.close()
        return answer

    async def _send(
        self, key: _Key, connection: _Connection | None, request: bytes, max_body: int
    ) -> tuple[_Exchange, _Connection]:
        """Write the request (on `connection`, or a new one) and wait for the answer's head."""
        reused = connection is not None
        if connection is None:
            connection = await self._connect(key)
        exchange = connection.exchange(request, max_body)
        try:
            await exchange.head
        except UpstreamConnectionError:
            connection.close()
            if reused and not connection.answered_anything:
                raise StaleConnection("kept-alive connection closed before an answer") from None
            raise
        except BaseException:
            connection.close()
            raise
        return exchange, connection

    async def _rest_of(
        self, exchange: _Exchange, connection: _Connection, deadline: float | None
    ) -> Answer:
        """The whole answer, or, if the body takes longer than BODY_WAIT (or the deadline),
        the answer as it stands, its connection closed. Most answers are complete already."""
        if exchange.answer is not None:
            return exchange.answer
        body_by = asyncio.get_running_loop().time() + BODY_WAIT
        if deadline is not None:
            body_by = min(body_by, deadline)
        try:
            async with asyncio.timeout_at(body_by):
                await exchange.rest()
        except TimeoutError:
            connection.close()  # the rest of the body is not read: never reuse it
            exchange.finish(exchange.so_far())
        assert exchange.answer is not None
        return exchange.answer

    async def close(self) -> None:
        self.closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _idle_connection(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.clean:
                return connection
            connection.close()  # closed by the upstream, or it sent something while idle
        return None

    async def _connect(self, key: _Key) -> _Connection:
        scheme, host, port = key
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, host, port, ssl=tls, server_hostname=host if tls else None
            )
        except OSError as error:
            raise UpstreamConnectionError(f"connect {host}:{port}: {error}") from None
        return connection


def _request_bytes(url: URL, headers: Mapping[str, str], keep_alive: bool) -> bytes:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port:
        host = f"{host}:{url.port}"
    lines = [f"GET {url.raw_path_qs} HTTP/1.1", f"Host: {host}"]
    if url.user is not None:
        credentials = f"{url.user}:{url.password or ''}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(credentials).decode()}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Exchange:
    """One request's answer as it arrives: `head` is done once the final answer's status line
    and headers are in (or failed); `answer` is set once the answer is complete or stands as
    it is. A caller still waiting for the body then waits on `rest()`, made only for that
    (most answers arrive whole, and a future per exchange is all they cost)."""

    __slots__ = ("_rest", "answer", "head", "reader")

    def __init__(self, reader: _ResponseReader) -> None:
        self.reader = reader
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answer: Answer | None = None
        self._rest: asyncio.Future[None] | None = None

    def so_far(self) -> Answer:
        """The answer as it stands: its status and the body that arrived (head complete)."""
        return self.reader.so_far()

    def rest(self) -> asyncio.Future[None]:
        """Done once `answer` is set."""
        if self._rest is None:
            self._rest = asyncio.get_running_loop().create_future()
            if self.answer is not None:
                self._rest.set_result(None)
        return self._rest

    def finish(self, answer: Answer) -> None:
        if self.answer is not None:
            return
        self.answer = answer
        if not self.head.done():
            self.head.set_result(None)
        if self._rest is not None and not self._rest.done():
            self._rest.set_result(None)

    def fail(self, error: Exception) -> None:
        """No clean head: the attempt failed (only ever before the head was in)."""
        if not self.head.done():
            self.head.set_exception(error)


class _Connection(asyncio.Protocol):
    """One connection: a request written, its answer read, and not a byte more accepted."""

    def __init__(self) -> None:
        self._transport: asyncio.WriteTransport | None = None
        self._unread: select.poll | None = None  # tells whether the socket holds unread bytes
        self._exchange: _Exchange | None = None
        self._lost = False
        self.reusable = False
        self.answered_anything = False

    @property
    def open(self) -> bool:
        return not self._lost and self._transport is not None and not self._transport.is_closing()

    @property
    def clean(self) -> bool:
        """Open, and nothing arrived since the last answer, not even bytes not yet read.

        Over TLS a record that carries no data (a late session ticket) counts too: the cost is
        a new connection, never a wrong answer.
        """
        return self.open and not (self._unread is not None and self._unread.poll(0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport (create_connection makes no other): it writes, closes and says
        # whether it is closing. Not asserted by isinstance: uvloop's transports have the same
        # methods without deriving from asyncio's classes.
        self._transport = cast(asyncio.WriteTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._unread = select.poll()
            self._unread.register(sock.fileno(), select.POLLIN)

    def exchange(self, request: bytes, max_body: int) -> _Exchange:
        """Write the request; its answer arrives in the exchange. On failure the caller closes
        this connection."""
        assert self._transport is not None
        self._exchange = _Exchange(_ResponseReader(max_body))
        self.reusable = False
        self.answered_anything = False
        self._transport.write(request)
        return self._exchange

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None or exchange.answer is not None:
            # Nobody asked for these bytes; on reuse they would pass for the next answer.
            self.reusable = False
            self.close()
            return
        self.answered_anything = True
        reader = exchange.reader
        try:
            reader.feed(data)
        except BadResponse as error:
            self.close()
            if reader.head_complete:
                exchange.finish(reader.so_far())  # a garbled body: the status stands
            else:
                exchange.fail(error)
            return
        if reader.answer is not None:
            self.reusable = reader.keep_alive
            if not self.reusable:
                self.close()  # stop reading what will not be kept
            exchange.finish(reader.answer)
        elif reader.head_complete and not exchange.head.done():
            exchange.head.set_result(None)

    def eof_received(self) -> bool | None:
        self._upstream_closed(None)
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._upstream_closed(exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _upstream_closed(self, exc: Exception | None) -> None:
        self.reusable = False
        exchange = self._exchange
        if exchange is None or exchange.answer is not None:
            return
        reader = exchange.reader
        if reader.feed_eof():
            assert reader.answer is not None
            exchange.finish(reader.answer)
        elif reader.head_complete:
            exchange.finish(reader.so_far())  # broke during the body: the status stands
        else:
            exchange.fail(UpstreamConnectionError(f"connection closed: {exc or 'by the upstream'}"))


class _ResponseReader:
    """Reads one answer, after any interim 1xx, from bytes given as they arrive.

    `answer` is set once it is complete; `keep_alive` then says whether the connection may
    carry another request. The on_* methods are llhttp's callbacks, through httptools; llhttp
    goes on parsing whatever follows the answer, which they ignore.
    """

    def __init__(self, max_body: int) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = max_body
        self._head_bytes = 0  # given to the parser before the final answer's head was complete
        self._final_head = False
        self._until_close = False  # the body is framed by the connection closing
        self._fields: dict[bytes, bytes] = {}  # of the current answer: interim ones are dropped
        self._body = bytearray()
        self._refusal: BadResponse | None = None
        self.answer: Answer | None = None
        self.keep_alive = False

    def feed(self, data: bytes) -> None:
        """Parse the next bytes; BadResponse if they are not a clean answer."""
        piece: bytes | memoryview = data
        if data[-1] in b"\r\n":
            # llhttp skips CR and LF after an answer unseen (any other byte starts a new answer:
            # on_message_begin), so such a last byte is parsed on its own: an answer complete
            # before it was followed by bytes nobody asked for.
            view = memoryview(data)
            self._parse(view[:-1])
            if self.answer is not None:
                self.keep_alive = False
                return
            piece = view[-1:]
        self._parse(piece)

    @property
    def head_complete(self) -> bool:
        """The final answer's status line and headers are in, and were clean."""
        return self._final_head

    def so_far(self) -> Answer:
        """The answer as it stands, body cut where it stopped (the head must be complete)."""
        return self._answer(complete=False)

    def feed_eof(self) -> bool:
        """Whether the answer is complete now that the upstream closed (a body up to the close)."""
        if self.answer is None and self._final_head and self._until_close:
            self._complete(keep_alive=False)
        return self.answer is not None

    def _parse(self, piece: bytes | memoryview) -> None:
        if not self._final_head:
            room = MAX_HEAD_BYTES - self._head_bytes
            self._head_bytes += len(piece)
            if len(piece) > room:
                self._run(piece[:room])
                if not self._final_head and self.answer is None:
                    self._refuse(f"header block over {MAX_HEAD_BYTES} bytes")
                piece = piece[room:]
        self._run(piece)

    def _run(self, piece: bytes | memoryview) -> None:
        if not piece or self.answer is not None:
            return
        try:
            self._parser.feed_data(piece)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            if self.answer is not None:
                return  # what followed the answer is not read (and the connection is closed)
            if self._refusal is not None:
                raise self._refusal from None
            if isinstance(error, httptools.HttpParserCallbackError):
                raise  # a callback failed: a bug here, not the upstream's
            raise BadResponse(f"malformed answer: {error}") from None

    def _refuse(self, reason: str) -> NoReturn:
        self._refusal = BadResponse(reason)
        raise self._refusal

    def _complete(self, *, keep_alive: bool) -> None:
        self.answer = self._answer(complete=True)
        self.keep_alive = keep_alive

    def _answer(self, *, complete: bool) -> Answer:
        return Answer(
            self._parser.get_status_code(),
            bytes(self._body),
            self._text(b"content-type"),
            self._text(b"x-idempotency-key"),
            complete,
            self._text(b"content-encoding"),
        )

    def _text(self, name: bytes) -> str | None:
        value = self._fields.get(name)
        return None if value is None else value.decode("latin-1")

    # --- llhttp callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.answer is not None:
            self.keep_alive = False  # a byte after the answer: nobody asked for it

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _FIELDS or self.answer is not None:
            return
        if name == b"transfer-encoding" and name in self._fields:
            self._refuse("more than one Transfer-Encoding field")
        value = value.strip(b" \t")  # llhttp drops the whitespace before a value, not after
        earlier = self._fields.get(name)
        # Repeated fields are joined as HTTP allows; the caller sees both values.
        self._fields[name] = value if earlier is None else earlier + b", " + value

    def on_headers_complete(self) -> None:
        if self.answer is not None:
            return
        status = self._parser.get_status_code()
        if self._parser.get_http_version() not in ("1.0", "1.1"):
            self._refuse(f"HTTP/{self._parser.get_http_version()} answer")  # llhttp takes 0.9
        coding = self._fields.get(b"transfer-encoding")
        if coding is not None and b"content-length" in self._fields:
            # llhttp refuses it too; said here, so that a head this callback passes is clean
            # and an error after it is the body's
            self._refuse("Content-Length with Transfer-Encoding")
        if coding is not None and coding.lower() != b"chunked":
            # llhttp would read such a body up to the close, unable to undo what it encodes.
            self._refuse(f"Transfer-Encoding {coding[:40]!r}")
        if 100 <= status < 200:
            if status == 101:
                self._refuse("101 Switching Protocols: the client never asks to upgrade")
            if coding is not None or b"content-length" in self._fields:
                self._refuse(f"interim {status} answer with a body")
            return  # interim: its end starts the next answer
        if not 200 <= status <= 599:
            self._refuse(f"status {status}")  # llhttp takes any three digits
        self._final_head = True
        self._until_close = (
            status not in (204, 304) and coding is None and b"content-length" not in self._fields
        )

    def on_body(self, body: bytes) -> None:
        if self.answer is not None:
            return
        room = self._max_body - len(self._body)
        if len(body) > room:
            self._body += body[:room]
            self._complete(keep_alive=False)  # the rest is left unread: close the connection
        else:
            self._body += body

    def on_message_complete(self) -> None:
        if self.answer is not None:
            return
        if not self._final_head:
            self._fields.clear()  # an interim answer; the final one follows
            return
        self._complete(keep_alive=self._parser.should_keep_alive())
