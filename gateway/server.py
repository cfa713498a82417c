"""`monetag-gateway run`: listen, reload on change or SIGHUP, drain and stop on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from .app import create_admin_app, create_app
from .config import GatewayConfig
from .observe import configure_logging
from .reload import ConfigWatcher
from .runtime import Runtime

log = logging.getLogger("gateway")
MAX_REQUEST_LINE = 64 * 1024  # above any max_query_length we answer 414 ourselves


async def serve(config: GatewayConfig, config_path: str) -> None:
    """Run until SIGTERM/SIGINT, then drain: unready, stop accepting, finish, exit."""
    configure_logging(config.logging.format, config.logging.level)
    for warning in config.warnings:
        log.warning("config warning", extra={"detail": warning})
    runtime = Runtime(config)
    server = config.server
    public = web.AppRunner(
        create_app(runtime, server.shutdown_grace),
        access_log=None,
        shutdown_timeout=server.shutdown_grace,
        keepalive_timeout=server.client_timeout,  # also bounds waiting for request headers
        max_line_size=MAX_REQUEST_LINE,
    )
    admin = web.AppRunner(create_admin_app(runtime), access_log=None, shutdown_timeout=1)
    watcher = ConfigWatcher(config_path, runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def reload_on_sighup() -> None:
        task = asyncio.create_task(watcher.reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_sighup)
    watching = asyncio.create_task(watcher.watch())
    flushing = asyncio.create_task(_flush_stdout_regularly())
    try:
        await admin.setup()
        await web.TCPSite(admin, server.admin_listen.host, server.admin_listen.port).start()
        await public.setup()
        await web.TCPSite(public, server.listen.host, server.listen.port).start()
        log.info(
            "listening",
            extra={
                "public": _bound(public),
                "admin": _bound(admin),
                "routes": [route.path for route in config.routes],
                "config_checksum": config.checksum,
            },
        )
        await stop.wait()
        runtime.draining = True
        delay = runtime.config.server.drain_delay
        log.info("draining", extra={"drain_delay": delay, "in_flight": runtime.in_flight})
        await asyncio.sleep(delay)
    finally:
        watching.cancel()
        flushing.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
        await public.cleanup()  # stop accepting; wait up to shutdown_grace for requests
        await admin.cleanup()
    log.info("stopped")


async def _flush_stdout_regularly() -> None:
    """Access lines are written without a flush each (hot path); a quiet gateway still shows
    them within half a second."""
    while True:
        await asyncio.sleep(0.5)
        sys.stdout.flush()


def _bound(runner: web.AppRunner) -> list[str]:
    return [f"{address[0]}:{address[1]}" for address in runner.addresses]
