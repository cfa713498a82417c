"""A lean HTTP/1.1 client for the one thing the gateway sends: a GET to an upstream.

Measured under wrk, aiohttp's ClientSession cost about 50 us of CPU per request on the
development machine, most of a pass-through proxy's time; the gateway needs none of its
generality (cookies, redirects, decompression, streaming, proxies). This client keeps a pool of
keep-alive connections per (scheme, host, port), writes the request in one call and parses the
answer in place: status, headers, and a body framed by Content-Length, chunked encoding, or
the connection closing.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL

MAX_BODY_BYTES = 1024 * 1024  # an app's answer to a postback is tiny; more is refused
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class UpstreamConnectionError(ConnectionError):
    """The connection could not be made, or broke before the answer was complete."""


class BadResponse(Exception):
    """The upstream answered something that is not HTTP/1.x we can read."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str | None


_Key = tuple[str, str, int]


class UpstreamClient:
    def __init__(self, connections_per_host: int = 256) -> None:
        self._idle: dict[_Key, list[_Connection]] = {}
        self._limits: dict[_Key, asyncio.Semaphore] = {}
        self._per_host = connections_per_host
        self._tls: ssl.SSLContext | None = None
        self.closed = False

    async def get(self, url: URL, headers: Mapping[str, str], timeout: float) -> Answer:
        """One GET. Raises TimeoutError, UpstreamConnectionError or BadResponse."""
        key = (url.scheme, url.raw_host or "", url.port or 80)
        request = _request_bytes(url, headers)
        limit = self._limits.get(key) or self._limits.setdefault(
            key, asyncio.Semaphore(self._per_host)
        )
        async with limit, asyncio.timeout(timeout):
            connection = self._idle_connection(key)
            if connection is not None:
                try:
                    answer = await connection.exchange(request)
                except UpstreamConnectionError:
                    if connection.answered_anything:
                        raise
                    # A kept-alive connection the upstream closed while idle: the request never
                    # reached it. Like browsers, send it once more on a new connection.
                    connection = None
                except BaseException:
                    connection.close()  # its state is unknown: never reuse it
                    raise
            if connection is None:
                connection = await self._connect(key)
                try:
                    answer = await connection.exchange(request)
                except BaseException:
                    connection.close()
                    raise
        if connection.reusable and not self.closed:
            self._idle.setdefault(key, []).append(connection)
        else:
            connection.close()
        return answer

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
            if connection.open:
                return connection
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


def _request_bytes(url: URL, headers: Mapping[str, str]) -> bytes:
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
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response per request written."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._lost = False
        self.reusable = False

    @property
    def open(self) -> bool:
        return not self._lost and self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    @property
    def answered_anything(self) -> bool:
        return bool(self._buffer)

    def exchange(self, request: bytes) -> asyncio.Future[Answer]:
        assert self._transport is not None
        self._buffer.clear()
        self.reusable = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_BODY_BYTES + 65536:
            self._fail(BadResponse("response too large"))
        else:
            self._try_complete(eof=False)

    def eof_received(self) -> bool | None:
        self._try_complete(eof=True)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._try_complete(eof=True)
        self._fail(UpstreamConnectionError(f"connection closed: {exc or 'by the upstream'}"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def _try_complete(self, *, eof: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = _parse(self._buffer, eof)
        except BadResponse as error:
            self._fail(error)
            return
        if parsed is not None:
            answer, keep_alive = parsed
            self.reusable = keep_alive and not eof
            waiter.set_result(answer)


def _parse(buffer: bytearray, eof: bool) -> tuple[Answer, bool] | None:
    """The complete answer in `buffer` and whether the connection can be reused, or None.

    Interim 1xx answers (100 Continue, 103 Early Hints) are dropped from the buffer."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > 65536:
                raise BadResponse("response headers too long")
            return None
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        version, _, rest = head[0].partition(" ")
        code = rest[:3]
        if (
            not version.startswith("HTTP/1.")
            or not _DIGITS.fullmatch(code)
            or rest[3:4]
            not in (
                "",
                " ",
            )
        ):
            raise BadResponse(f"not an HTTP/1.x status line: {head[0][:60]!r}")
        status = int(code)
        if 100 <= status < 200:
            del buffer[: end + 4]
            continue
        fields: dict[str, str] = {}
        for line in head[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise BadResponse(f"malformed header line: {line[:60]!r}")
            fields[name.strip().lower()] = value.strip()
        keep_alive = version == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        body = _body(buffer, end + 4, status, fields, eof)
        if body is None:
            return None
        chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        if "content-length" not in fields and not chunked:
            keep_alive = keep_alive and status in (204, 304)
        return Answer(status, body, fields.get("content-type")), keep_alive


def _body(
    buffer: bytearray, start: int, status: int, fields: dict[str, str], eof: bool
) -> bytes | None:
    """The body once complete (None until then), framed as the headers say."""
    if status in (204, 304):
        return b""
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return _dechunk(buffer, start)
    if "content-length" in fields:
        length = fields["content-length"]
        if not _DIGITS.fullmatch(length) or int(length) > MAX_BODY_BYTES:
            raise BadResponse(f"unusable Content-Length {length[:20]!r}")
        total = start + int(length)
        return bytes(buffer[start:total]) if len(buffer) >= total else None
    return bytes(buffer[start:]) if eof else None  # framed by the connection closing


def _dechunk(buffer: bytearray, start: int) -> bytes | None:
    body = bytearray()
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise BadResponse("malformed chunk size")
        size = int(size_text, 16)
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", position)
            while trailer_end > position:  # skip trailer fields up to the empty line
                position = trailer_end + 2
                trailer_end = buffer.find(b"\r\n", position)
            return bytes(body) if trailer_end == position else None
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2
        if len(body) > MAX_BODY_BYTES:
            raise BadResponse("response too large")
