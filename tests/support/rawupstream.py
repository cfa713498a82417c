"""A raw upstream for tests: an asyncio server on loopback that reads request heads and answers
with exactly the bytes a test scripts, counting connections and noticing when the client closes
one. Used by the upstream client's tests and by the gateway's hostile-upstream tests."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from yarl import URL

GUARD = 5.0  # outer bound on every wait, so a hang fails the test instead of stalling it
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Accepted:
    """One connection the server accepted."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[bytes] = field(default_factory=list)
    asked: asyncio.Event = field(default_factory=asyncio.Event)  # a request head was read
    replied: asyncio.Event = field(default_factory=asyncio.Event)  # a reply wrote all it meant to
    go: asyncio.Event = field(default_factory=asyncio.Event)  # set by a test to let a reply go on
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    server_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:  # short, for assertion messages
        return f"<connection with {len(self.requests)} request(s)>"


# What the server does with one request it has read.
Reply = Callable[[Accepted], Awaitable[None]]


def send(data: bytes) -> Reply:
    """Write the answer and keep the connection open for the next request."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()

    return reply


def send_and_close(data: bytes) -> Reply:
    """Write the answer, then close the connection (the body may be framed by that)."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()
        connection.writer.close()

    return reply


def send_and_half_close(data: bytes) -> Reply:
    """Write the answer, shut down the sending side and wait for the client to close."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        connection.writer.write_eof()
        await connection.reader.read()
        connection.client_closed.set()
        connection.writer.close()

    return reply


def trickle(data: bytes, then: str = "keep") -> Reply:
    """Write the answer one byte at a time with pauses; `then` is "keep", "close" or "half"."""

    async def reply(connection: Accepted) -> None:
        for index in range(len(data)):
            connection.writer.write(data[index : index + 1])
            await connection.writer.drain()
            await asyncio.sleep(0.001)
        if then == "close":
            connection.writer.close()
        elif then == "half":
            connection.writer.write_eof()
            await connection.reader.read()
            connection.client_closed.set()
            connection.writer.close()

    return reply


def send_later(data: bytes, then: bytes, seconds: float) -> Reply:
    """Write the answer, then more bytes a little later, unasked, on the same connection."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()
        await asyncio.sleep(seconds)
        connection.writer.write(then)
        await connection.writer.drain()

    return reply


def send_when_told(data: bytes, then: bytes) -> Reply:
    """Write the answer, then, once the test sets `go` (the answer is read), unasked bytes."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()
        await connection.go.wait()
        connection.writer.write(then)
        await connection.writer.drain()

    return reply


def send_in_pieces(data: bytes, size: int) -> Reply:
    """Write the answer `size` bytes at a time, letting the client read between writes."""

    async def reply(connection: Accepted) -> None:
        for start in range(0, len(data), size):
            connection.writer.write(data[start : start + size])
            await connection.writer.drain()
            await asyncio.sleep(0)

    return reply


def send_and_reset(data: bytes) -> Reply:
    """Write `data`, then reset the connection (SO_LINGER 0: an RST, not a FIN)."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()
        await asyncio.sleep(0.05)  # let the bytes arrive before the reset overtakes them
        sock = connection.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.writer.transport.abort()

    return reply


def drip(head: bytes, body: bytes, interval: float) -> Reply:
    """Write `head` at once, then the body one byte per `interval` seconds (a stalling app)."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(head)
        await connection.writer.drain()
        for index in range(len(body)):
            await asyncio.sleep(interval)
            connection.writer.write(body[index : index + 1])
            await connection.writer.drain()

    return reply


def close_without_answer() -> Reply:
    async def reply(connection: Accepted) -> None:
        connection.writer.close()

    return reply


def send_then_stall(data: bytes = b"") -> Reply:
    """Write `data` (perhaps nothing) and never finish the answer; read until the client quits."""

    async def reply(connection: Accepted) -> None:
        connection.writer.write(data)
        await connection.writer.drain()
        await connection.reader.read()

    return reply


def answer_after(seconds: float, data: bytes = OK) -> Reply:
    async def reply(connection: Accepted) -> None:
        await asyncio.sleep(seconds)
        connection.writer.write(data)
        await connection.writer.drain()

    return reply


class RawServer:
    """asyncio.start_server on loopback; replies follow a script, then a default. With `tls`,
    over TLS (`https` URLs)."""

    def __init__(
        self, host: str, replies: list[Reply], default: Reply, tls: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self._tls = tls
        self.port = 0
        self.accepted: list[Accepted] = []
        self._replies = replies
        self._default = default
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._new_connection = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path_qs: str = "/cb") -> URL:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._tls else "http"
        return URL(f"{scheme}://{host}:{self.port}{path_qs}", encoded=True)

    async def connection(self, index: int) -> Accepted:
        """The connection accepted `index`-th, once it is."""
        while len(self.accepted) <= index:
            self._new_connection.clear()
            await until(self._new_connection)
        return self.accepted[index]

    @property
    def requests(self) -> list[bytes]:
        return [request for connection in self.accepted for request in connection.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        connection = Accepted(reader, writer)
        self.accepted.append(connection)
        self._new_connection.set()
        try:
            while not writer.is_closing():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except ConnectionError:  # reset: the client closed with bytes left unread
                    connection.client_closed.set()
                    break
                except asyncio.IncompleteReadError:
                    if not writer.is_closing():
                        connection.client_closed.set()
                    break
                connection.requests.append(head)
                connection.asked.set()
                reply = self._replies.pop(0) if self._replies else self._default
                try:
                    await reply(connection)
                except ConnectionError:  # reset by the client while answering
                    connection.client_closed.set()
                    break
                finally:
                    connection.replied.set()
        finally:
            writer.close()
            connection.server_closed.set()


ServerFactory = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    servers: list[RawServer] = []

    async def start(
        *replies: Reply,
        default: Reply | None = None,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> RawServer:
        server = RawServer(host, list(replies), default or send(OK), tls)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def until(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), GUARD)
