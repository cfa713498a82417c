"""The app behind the gateway in tests: a real HTTP server on 127.0.0.1 that records every
request and answers as the test scripts it.

It runs an aiohttp server on an event loop of its own, in a thread, so one class serves every
kind of test: in-process gateways on the test's own loop, and `python -m gateway` subprocesses
driven by synchronous tests. Hostile answers (exact bytes, broken framing) are `rawupstream`'s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict, MultiDict

START_TIMEOUT = 10.0
T = TypeVar("T")


@dataclass
class Received:
    """One request as the upstream saw it, and the status it answered (None: dropped)."""

    path: str
    query: MultiDict[str]
    query_string: str
    headers: CIMultiDict[str]
    answered: int | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def ymid(self) -> str:
        return self.query.get("ymid", "")

    @property
    def key(self) -> str:
        """The X-Idempotency-Key the gateway sent ("" if none)."""
        return self.headers.get("X-Idempotency-Key", "")


@dataclass(frozen=True)
class Answer:
    """What to answer one request: a status after `delay` seconds, or no answer at all."""

    status: int = 200
    body: str | None = None  # None: the upstream's `body` for 2xx, "nope" otherwise
    delay: float = 0.0  # the status is recorded at once; the answer goes after the delay
    drop: bool = False  # close the connection without answering


DROP = Answer(drop=True)

# A scripted behaviour: a status, an Answer, or a function of (request number, the request).
Behaviour = int | Answer | Callable[[int, Received], int | Answer]


class RecordingUpstream:
    """Answers each request with the next `script` entry, then with `default`; both may be
    changed while it runs. `url` has no path: tests add the one their route forwards to."""

    def __init__(
        self,
        script: list[Behaviour] | None = None,
        default: Behaviour = 200,
        body: str = "OK",
        port: int = 0,
    ) -> None:
        self.script: list[Behaviour] = list(script or [])
        self.default: Behaviour = default
        self.body = body
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._handling: list[web.Request] = []  # requests not answered yet
        self._most_at_once = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="recording-upstream", daemon=True
        )
        self._thread.start()
        self._runner = self._call(self._start(port))
        self.port: int = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def postback_url(self) -> str:
        """`url` with the path most tests' routes forward to."""
        return f"{self.url}/postback"

    @property
    def label(self) -> str:
        """How the gateway names it in logs and metrics when it has no `name:`: host:port."""
        return f"127.0.0.1:{self.port}"

    # -- what it received

    @property
    def received(self) -> list[Received]:
        """Every request so far, oldest first (a copy: the server thread keeps appending)."""
        with self._lock:
            return list(self._received)

    def count(self) -> int:
        with self._lock:
            return len(self._received)

    def ymids(self) -> set[str]:
        return {request.ymid for request in self.received}

    def keys(self) -> set[str]:
        return {request.key for request in self.received}

    def for_ymid(self, ymid: str) -> list[Received]:
        return [request for request in self.received if request.ymid == ymid]

    @property
    def most_at_once(self) -> int:
        """The most requests it was handling at the same time so far. A request counts until
        it is answered or its sender hangs up: a sender may give up on a delayed answer."""
        with self._lock:
            return self._most_at_once

    def accepted_per_key(self) -> Counter[str]:
        """How many times each idempotency key was answered 2xx."""
        return Counter(request.key for request in self.received if _accepted(request))

    # -- running it

    def close(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(START_TIMEOUT)

    async def _start(self, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    async def _stop(self) -> None:
        await self._runner.cleanup()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._handling.append(request)
            # counted as each request arrives: a sender that hung up before (its connection
            # closing) was seen to hang up by then, its FIN having come before the new request
            at_once = sum(1 for handled in self._handling if _connected(handled))
            self._most_at_once = max(self._most_at_once, at_once)
        try:
            return await self._answer(request)
        finally:
            with self._lock:
                self._handling.remove(request)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        received = Received(
            request.path,
            MultiDict(request.query),
            request.query_string,
            CIMultiDict(request.headers),
        )
        with self._lock:
            number = len(self._received)
            self._received.append(received)
            behaviour = self.script.pop(0) if self.script else self.default
        answer = _answer_of(behaviour, number, received)
        if answer.drop:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        received.answered = answer.status
        if answer.delay:
            await asyncio.sleep(answer.delay)
        body = answer.body
        if body is None:
            body = self.body if answer.status < 300 else "nope"
        return web.Response(status=answer.status, text=body)


def _connected(request: web.Request) -> bool:
    return request.transport is not None and not request.transport.is_closing()


def _answer_of(behaviour: Behaviour, number: int, received: Received) -> Answer:
    if callable(behaviour):
        behaviour = behaviour(number, received)
    return Answer(behaviour) if isinstance(behaviour, int) else behaviour


def _accepted(request: Received) -> bool:
    return request.answered is not None and 200 <= request.answered < 300
