"""Which event loop runs the gateway: uvloop where it is installed, asyncio's own otherwise.

uvloop (libuv, as uvicorn uses by default) ran the sync route in 14.7 % fewer instructions per
postback than asyncio's loop (bench/README.md). It is a dependency, so it is normally there; a
platform without a wheel for it still runs, on asyncio's loop. `GATEWAY_EVENT_LOOP=asyncio`
chooses asyncio's loop even where uvloop is installed: to rule uvloop out when chasing a bug,
and for the tests that run the gateway on both loops. The "listening" line says which runs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

LOOP_VARIABLE = "GATEWAY_EVENT_LOOP"
LOOPS = ("uvloop", "asyncio")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class UnknownEventLoop(ValueError):
    """GATEWAY_EVENT_LOOP names no loop the gateway knows."""


def loop_factory(environ: Mapping[str, str] = os.environ) -> LoopFactory:
    """What makes the loop to run on, for `asyncio.Runner(loop_factory=...)`."""
    wanted = environ.get(LOOP_VARIABLE) or "uvloop"
    if wanted not in LOOPS:
        raise UnknownEventLoop(f"{LOOP_VARIABLE}={wanted!r}: expected one of {', '.join(LOOPS)}")
    if wanted == "uvloop":
        try:
            import uvloop
        except ImportError:  # no wheel for this platform: asyncio's loop does the same work
            return asyncio.new_event_loop
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: the package of the loop's class, as the log says it."""
    return type(loop).__module__.partition(".")[0]
