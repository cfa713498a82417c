"""`monetag-gateway run | check | health`: start the gateway, validate a config, probe health."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import urllib.request
from collections.abc import Sequence

from aiohttp import web

from .app import create_admin_app, create_app
from .config import ConfigError, GatewayConfig, ListenAddress, load_config
from .observe import configure_logging

log = logging.getLogger("gateway")
SHUTDOWN_GRACE_SECONDS = 30.0
EXIT_CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="monetag-gateway", description="Verification gateway for Monetag postbacks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary in (
        ("run", "start the gateway"),
        ("check", "validate a config and summarize its routes"),
        ("health", "exit 0 if the gateway on this config's admin port is alive"),
    ):
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument(
            "--config",
            default=os.environ.get("GATEWAY_CONFIG"),
            help="path to config.yaml (default: $GATEWAY_CONFIG)",
        )
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("no config: pass --config PATH or set GATEWAY_CONFIG")
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"config error in {args.config}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.command == "check":
        print(summarize(config, args.config))
        return 0
    if args.command == "health":
        return probe_health(config.server.admin_listen)
    configure_logging(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    for warning in config.warnings:
        log.warning("config warning", extra={"detail": warning})
    asyncio.run(serve(config))
    return 0


def summarize(config: GatewayConfig, path: str) -> str:
    server = config.server
    lines = [
        f"config {path}: OK, {len(config.routes)} route(s)",
        f"  listen {server.listen}, admin {server.admin_listen}, "
        f"trusted proxies: {len(server.trusted_proxies)} entr(ies)",
    ]
    for route in config.routes:
        allow = f"{len(route.allow_ips)} entr(ies)" if route.allow_ips else "any address"
        secret = route.secret
        secret_at = f"{secret.location}, {len(secret.keys)} key(s)" if secret else "none"
        lines += [
            f"route {route.name}",
            f"  path      {route.path}",
            f"  allow_ips {allow}",
            f"  secret    {secret_at}",
            f"  aliases   {dict(route.aliases) or 'none'}",
            f"  required  {', '.join(route.required)}",
            f"  dedup     key [{', '.join(route.dedup.key)}], ttl {route.dedup.ttl:g}s, "
            f"max {route.dedup.max_entries} entries",
        ]
        for index, upstream in enumerate(route.upstreams):
            role = "answers" if index == 0 else "copy"
            rename = f", rename {dict(upstream.rename)}" if upstream.rename else ""
            url = upstream.url.with_query(None).with_user(None)
            lines.append(
                f"  upstream  {url} ({role}; timeout {upstream.timeout:g}s, "
                f"retries {upstream.retries}{rename})"
            )
    lines += [f"warning: {warning}" for warning in config.warnings]
    return "\n".join(lines)


def probe_health(admin: ListenAddress) -> int:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.host, admin.host)
    url = f"http://{ListenAddress(host, admin.port)}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1


async def serve(config: GatewayConfig) -> None:
    """Listen on the public and admin ports until SIGTERM or SIGINT."""
    public = create_app(config)
    runners = [
        web.AppRunner(public, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS),
        web.AppRunner(create_admin_app(public), access_log=None),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for runner, address in zip(
            runners, (config.server.listen, config.server.admin_listen), strict=True
        ):
            await runner.setup()
            await web.TCPSite(runner, address.host, address.port).start()
        log.info(
            "listening",
            extra={
                "public": _bound(runners[0]),
                "admin": _bound(runners[1]),
                "routes": [route.path for route in config.routes],
            },
        )
        await stop.wait()
        log.info("stopping")
    finally:
        for runner in runners:
            await runner.cleanup()
    log.info("stopped")


def _bound(runner: web.AppRunner) -> list[str]:
    return [f"{address[0]}:{address[1]}" for address in runner.addresses]
