"""The listening sockets, with an accept loop of our own.

asyncio's `create_server` cannot be told what the gateway needs here, measured on `main`: idle
or half-finished TLS handshakes were held 55-60 s each (its own 60 s default, whatever
`client_timeout` said); nothing capped open connections, so 1,100 of them under a 1,024 open-
files limit left genuine postbacks unserved and made asyncio log `socket.accept() out of system
resource` with a traceback 55,732 times in 15 s; and plain HTTP sent to the TLS port was
dropped without a word. So `GatewaySite` accepts by itself:
- at most `server.max_connections` open connections per port (lowered to what the open-files
  limit leaves room for); one beyond is closed at once;
- on the TLS port, the first byte decides: a TLS record starts the handshake, bounded by
  `client_timeout`; anything else is plain HTTP, answered 400 as nginx does; nothing within
  `client_timeout` closes the connection;
- accept failing for want of descriptors pauses accepting for a moment;
- every refusal is counted (`gateway_connections_refused_total{reason}`) and logged once a
  minute, never once per connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("gateway.listener")

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record that starts a handshake
ACCEPT_PAUSE = 0.25  # seconds without accepting after the process ran out of descriptors
ACCEPTS_PER_WAKEUP = 64
RESERVED_DESCRIPTORS = 320  # the store, Redis, upstream pools, logs: room kept for them
REFUSALS = ("over_capacity", "out_of_descriptors", "plain_http_on_tls", "tls_handshake", "idle")
PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 48\r\n\r\nThe plain HTTP request was sent to HTTPS port.\r\n"
)
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_cap(wanted: int) -> int:
    """`wanted` open connections per port, or fewer if the open-files limit has no room for
    two ports of them beside what the process needs otherwise (the soft limit is raised to
    the hard one first, where the hard one allows it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * wanted + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    cap = max(8, (soft - RESERVED_DESCRIPTORS) // 2)
    log.warning(
        "the open-files limit leaves room for fewer connections than max_connections",
        extra={"max_connections": wanted, "connections_per_port": cap, "open_files": soft},
    )
    return cap


class Refusals:
    """Connections refused, counted at once and logged once a minute, per reason."""

    def __init__(self, count: Callable[[str], None], port: str) -> None:
        self._count = count
        self._port = port
        self._since: dict[str, tuple[float, int]] = {}  # reason -> (window start, refusals)

    def __call__(self, reason: str) -> None:
        self._count(reason)
        now = time.monotonic()
        started, refused = self._since.get(reason, (0.0, 0))
        if now - started >= 60.0:
            log.warning(
                "connections refused",
                extra={"port": self._port, "reason": reason, "since_last_said": refused + 1},
            )
            self._since[reason] = (now, 0)
        else:
            self._since[reason] = (started, refused + 1)


class _Listening:
    """What aiohttp's runner expects of a site's server: its sockets, and `close`."""

    def __init__(self, sockets: list[socket.socket], stop: Callable[[], None]) -> None:
        self.sockets = sockets
        self._stop = stop

    def close(self) -> None:
        self._stop()


class GatewaySite(web.BaseSite):
    """A TCP site on `host:port` (None: every address of both families) with the accept loop
    above. The runner's server must be an `HttpServer`, which tells it when a connection
    ends (`on_connection_lost`)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        max_connections: int,
        client_timeout: float,
        on_refused: Callable[[str], None],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self._cap = max_connections
        self._timeout = client_timeout
        self._refused = Refusals(on_refused, f"{host or '*'}:{port}")
        self._open = 0
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host or '*'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None and hasattr(server, "on_connection_lost")
        server.on_connection_lost = self._ended
        self._sockets = _bound_sockets(self._host, self._port)
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)
        self._server = _Listening(self._sockets, self._close)  # type: ignore[assignment]

    def _close(self) -> None:
        assert self._loop is not None
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                connection, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    self._refused("out_of_descriptors")
                    self._pause(listening)
                return  # ECONNABORTED and the like: the client gave up; next one
            if self._open >= self._cap:
                self._refused("over_capacity")
                connection.close()
                continue
            connection.setblocking(False)
            self._open += 1
            task = asyncio.ensure_future(self._serve(connection), loop=self._loop)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pause(self, listening: socket.socket) -> None:
        assert self._loop is not None
        self._loop.remove_reader(listening.fileno())

        def resume() -> None:
            if listening.fileno() != -1:  # not closed meanwhile
                assert self._loop is not None
                self._loop.add_reader(listening.fileno(), self._accept, listening)

        self._loop.call_later(ACCEPT_PAUSE, resume)

    async def _serve(self, connection: socket.socket) -> None:
        """Hand the connection to the HTTP server: at once, or over TLS once its first byte
        says it is TLS. Until the protocol has it, a failure here ends the count."""
        assert self._loop is not None
        server = self._runner.server
        assert server is not None
        handed = False
        try:
            if self._ssl_context is None:
                await self._loop.connect_accepted_socket(server, connection)
            else:
                first = await self._first_byte(connection)
                if first is None:
                    self._refused("idle")
                    return
                if first != TLS_HANDSHAKE:
                    self._refused("plain_http_on_tls")
                    await _answer_plain(self._loop, connection)
                    return
                await self._loop.connect_accepted_socket(
                    server,
                    connection,
                    ssl=self._ssl_context,
                    ssl_handshake_timeout=self._timeout,
                )
            handed = True
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            self._refused("tls_handshake")
        finally:
            if not handed:
                self._open -= 1
                connection.close()

    async def _first_byte(self, connection: socket.socket) -> int | None:
        """The connection's first byte, left unread; None if none came within the timeout."""
        assert self._loop is not None
        readable: asyncio.Future[None] = self._loop.create_future()

        def arrived() -> None:
            if not readable.done():
                readable.set_result(None)

        self._loop.add_reader(connection.fileno(), arrived)
        try:
            async with asyncio.timeout(self._timeout):
                await readable
        except TimeoutError:
            return None
        finally:
            self._loop.remove_reader(connection.fileno())
        peeked = connection.recv(1, socket.MSG_PEEK)
        return peeked[0] if peeked else None

    def _ended(self) -> None:
        self._open -= 1


async def _answer_plain(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
    """nginx's answer to plain HTTP on its TLS port: 400, a line saying so, closed."""
    try:
        async with asyncio.timeout(2):
            await loop.sock_sendall(connection, PLAIN_HTTP_ON_TLS)
    except (OSError, TimeoutError):
        pass


def _bound_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets as `loop.create_server` makes them: every address `host` resolves to
    (None: every address, IPv4 and IPv6), SO_REUSEADDR, IPv6 sockets IPv6 only; port 0 is one
    free port, the same for every address."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(1024)
            sock.setblocking(False)
            port = sock.getsockname()[1]
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
