"""`monetag-gateway allowlist suggest`: the `allow_ips:` that would let in every network the
route's valid key came from, learned from the history every replica writes (allowlist.py),
and what the current allow_ips refuses of it.

Exit status: 0 when a suggestion was printed for every route asked, 1 when a route has seen
no postback with its key in the window (nothing to suggest), 2 when there is no history.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .allowlist import advise, allow_ips_text, when
from .config import GatewayConfig
from .history.store import HistoryStore
from .history_cli import point_in_time, with_history
from .shown import quoted

DEFAULT_SINCE = "7d"


def add_arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True)
    suggest = actions.add_parser(
        "suggest", help="allow_ips learned from the networks each route's valid key came from"
    )
    # `allowlist suggest --config C` reads as well as `allowlist --config C suggest`
    suggest.add_argument("--config", default=argparse.SUPPRESS, help="path to config.yaml")
    suggest.add_argument("--route", help="one route (default: every route with a key)")
    suggest.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        help=f"a duration back from now, or a date (default {DEFAULT_SINCE})",
    )


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if config.store is None:
        print(
            "allowlist: this config has no `store:`, so no history keeps the senders seen; "
            "the inspector's Senders page shows what each replica saw since it started",
            file=sys.stderr,
        )
        return 2
    routes = [route for route in config.routes if route.secret is not None]
    if args.route is not None:
        routes = [route for route in config.routes if route.name == args.route]
        if not routes:
            names = ", ".join(route.name for route in config.routes)
            print(f"allowlist: no route {quoted(args.route)} (routes: {names})", file=sys.stderr)
            return 2
        if routes[0].secret is None:
            print(
                f"allowlist: route {args.route} has no key: a postback there proves nothing "
                "about its sender, so none is counted (give it `secret:` first)",
                file=sys.stderr,
            )
            return 2
    if not routes:
        print("allowlist: no route has a key (`secret:`): nothing is counted", file=sys.stderr)
        return 2
    try:
        since = point_in_time(args.since)
    except argparse.ArgumentTypeError as error:
        print(f"allowlist: {error}", file=sys.stderr)
        return 2

    async def suggest(history: HistoryStore) -> int:
        senders = await history.senders(since, args.route)
        seen = f"since {when(since)}, every replica's history"
        advice = [advise(route, senders) for route in routes]
        print("\n".join(allow_ips_text(each, seen) for each in advice), end="")
        return 0 if all(each.blocks for each in advice) else 1

    return asyncio.run(with_history(config, suggest))
