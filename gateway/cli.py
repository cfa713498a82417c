"""The operator's commands: `monetag-gateway init | run | check | health | fire | queue |
history | allowlist`. Every one but init reads the config named by --config."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.request
from collections.abc import Sequence

from . import allowlist_cli, history_cli, init_cli, queue_cli
from .config import ConfigError, ListenAddress, load_config
from .durable.outbox import StoreError
from .fire import FireError, fire, tls_context
from .serving.event_loop import UnknownEventLoop, loop_factory
from .serving.server import serve
from .summary import summarize
from .tls import check_certificates

EXIT_CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _command(argv)
    except BrokenPipeError:  # `history search ... | head`: the reader has what it wanted
        # Python would print a traceback flushing stdout at exit: point it at nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _command(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="monetag-gateway", description="Verification gateway for Monetag postbacks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # init writes a config (its --config is where), so it is not one of those that read it
    init = commands.add_parser("init", help=init_cli.SUMMARY, description=init_cli.SUMMARY)
    init_cli.add_arguments(init)
    for name, summary in (
        ("run", "start the gateway"),
        ("check", "validate a config and summarize its routes"),
        ("health", "exit 0 if the gateway on this config's admin port is alive"),
        ("fire", "send a postback like Monetag would and show each step's verdict"),
        ("queue", "inspect the outbox of queued routes and re-drive dead letters"),
        ("history", "search every postback, trace a user's rewards, export, report, purge"),
        ("allowlist", "suggest allow_ips from the networks each route's valid key came from"),
    ):
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument(
            "--config",
            default=os.environ.get("GATEWAY_CONFIG"),
            help="path to config.yaml (default: $GATEWAY_CONFIG)",
        )
        if name == "queue":
            queue_cli.add_arguments(command)
        if name == "history":
            history_cli.add_arguments(command)
        if name == "allowlist":
            allowlist_cli.add_arguments(command)
        if name == "fire":
            command.add_argument("--route", required=True, help="route name from the config")
            command.add_argument(
                "--url", help="gateway base URL (default: server.listen, https with server.tls)"
            )
            command.add_argument(
                "--dry-run", action="store_true", help="every check, nothing sent to the gateway"
            )
            command.add_argument("--cacert", help="CA file to trust an https gateway with")
            command.add_argument(
                "--insecure", action="store_true", help="https without checking the certificate"
            )
            command.add_argument(
                "fields", nargs="*", metavar="field=value", help="canonical field values"
            )
    args = parser.parse_args(argv)
    if args.command == "init":
        return init_cli.run(args)
    if not args.config:
        parser.error("no config: pass --config PATH or set GATEWAY_CONFIG")
    try:
        config = load_config(args.config)
        if args.command in ("run", "check"):  # the others never open the certificate
            check_certificates(config)
    except ConfigError as error:
        print(f"config error in {args.config}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.command == "check":
        print(summarize(config, args.config))
        return 0
    if args.command == "queue":
        return queue_cli.run(config, args)
    if args.command == "history":
        return history_cli.run(config, args)
    if args.command == "allowlist":
        return allowlist_cli.run(config, args)
    if args.command == "fire":
        try:
            tls = tls_context(args.cacert, args.insecure)
            return fire(config, args.route, args.fields, args.url, dry_run=args.dry_run, tls=tls)
        except FireError as error:
            print(f"fire: {error}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
    if args.command == "health":
        return probe_health(config.server.admin_listen)
    try:
        factory = loop_factory()
    except UnknownEventLoop as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        with asyncio.Runner(loop_factory=factory) as runner:  # asyncio.run takes none on 3.11
            runner.run(serve(config, args.config))
    except StoreError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    return 0


def probe_health(admin: ListenAddress) -> int:
    url = f"http://{admin.from_here}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = response.status
    except OSError as error:  # an answer other than 2xx too (urllib's HTTPError)
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    print(f"alive: {url} answered 200")
    return 0
