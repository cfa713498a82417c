"""`monetag-gateway run`: listen, reload on change or SIGHUP, drain and stop on SIGTERM.

Stopping has one deadline, set at the signal: `drain_delay + shutdown_grace` of the config in
force. Draining (unready, still serving), the requests in flight, the copies, the deliverer's
attempts and the store each get what is left of it; what is still running then is cut off
(and logged as such), so the process exits when the operator's grace period says.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import Any

from aiohttp import web

from ..config import GatewayConfig, ListenAddress
from ..deadline import Deadline
from ..logs import configure_logging
from ..metrics import Metrics
from ..reload import ConfigWatcher
from ..runtime import Runtime
from ..tls import CertificateReloader
from .app import admin_runner, public_runner
from .event_loop import loop_name
from .listener import REFUSALS, GatewaySite, connection_cap

log = logging.getLogger("gateway")


async def serve(config: GatewayConfig, config_path: str) -> None:
    """Run until SIGTERM/SIGINT, then drain: unready, stop accepting, finish, exit."""
    configure_logging(config.logging.format, config.logging.level)
    for warning in config.warnings:
        log.warning("config warning", extra={"detail": warning})
    runtime = Runtime(config, Metrics())
    server = config.server
    certificates = (
        CertificateReloader(server.tls, runtime.metrics.tls_reloaded) if server.tls else None
    )
    if certificates is not None:
        runtime.metrics.watch_certificate(lambda: certificates.expires)
    watcher = ConfigWatcher(config_path, runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background: set[asyncio.Task[object]] = set()

    def in_background(task: asyncio.Task[object]) -> None:
        background.add(task)
        task.add_done_callback(background.discard)

    def reload_on_sighup() -> None:
        in_background(asyncio.create_task(watcher.reload("SIGHUP")))
        if certificates is not None:
            certificates.reload_if_changed()

    loop.add_signal_handler(signal.SIGHUP, reload_on_sighup)
    in_background(asyncio.create_task(watcher.watch()))
    in_background(asyncio.create_task(_flush_stdout_regularly()))
    if certificates is not None:
        interval = lambda: runtime.config.server.reload_interval  # noqa: E731 - read each time
        in_background(asyncio.create_task(certificates.watch(interval)))
    admin = admin_runner(runtime)
    public: web.ServerRunner | None = None
    deadline: Deadline | None = None  # set at the signal
    cap = connection_cap(server.max_connections)
    refused = runtime.metrics.connections_refused

    def site(runner: web.BaseRunner, port: str, address: ListenAddress, **tls: Any) -> GatewaySite:
        return GatewaySite(
            runner,
            address.bind_host,
            address.port,
            max_connections=cap,
            client_timeout=server.client_timeout,
            on_refused=lambda reason: refused.labels(port, reason).inc(),
            **tls,
        )

    for port, reason in ((port, reason) for port in ("public", "admin") for reason in REFUSALS):
        refused.labels(port, reason)
    try:
        await admin.setup()
        await site(admin, "admin", server.admin_listen).start()
        await runtime.start()  # opens the store: StoreError if it cannot
        public = public_runner(runtime)
        await public.setup()
        context = certificates.context if certificates else None
        await site(public, "public", server.listen, ssl_context=context).start()
        # What exists now (modules, config, pools) lives as long as the process: moved out of
        # the collector's sight, so a collection scans only what requests left behind (a long
        # collection was the p99 at 32 connections).
        gc.collect()
        gc.freeze()
        log.info(
            "listening",
            extra={
                "public": _bound(public),
                "admin": _bound(admin),
                "tls": certificates is not None,
                "event_loop": loop_name(loop),
                "routes": [route.path for route in config.routes],
                "config_checksum": config.checksum,
            },
        )
        await stop.wait()
        in_force = runtime.config.server
        deadline = Deadline(in_force.drain_delay + in_force.shutdown_grace)
        runtime.draining = True
        log.info(
            "draining",
            extra={
                "drain_delay": in_force.drain_delay,
                "shutdown_grace": in_force.shutdown_grace,
                "in_flight": runtime.in_flight,
            },
        )
        await asyncio.sleep(min(in_force.drain_delay, deadline.left()))
    finally:
        deadline = deadline or Deadline(runtime.config.server.shutdown_grace)
        for task in background:
            task.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
        if public is not None:
            await _stop_accepting(public)
            if not await runtime.requests_finished(deadline):
                log.warning(
                    "shutdown grace spent; cutting off what is in flight",
                    extra={"in_flight": runtime.in_flight},
                )
            await public.cleanup()  # closes idle connections, cancels what is left at once
        await runtime.close(deadline)
        await admin.cleanup()
    log.info("stopped")


async def _stop_accepting(runner: web.BaseRunner) -> None:
    """Close the listening sockets, and each kept-alive connection once its request is
    answered: requests in flight carry on, no new one starts."""
    for site in list(runner.sites):
        await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()


async def _flush_stdout_regularly() -> None:
    """Access lines are written without a flush each (hot path); a quiet gateway still shows
    them within half a second."""
    while True:
        await asyncio.sleep(0.5)
        sys.stdout.flush()


def _bound(runner: web.BaseRunner) -> list[str]:
    return [f"{address[0]}:{address[1]}" for address in runner.addresses]
