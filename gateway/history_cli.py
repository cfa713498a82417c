"""`monetag-gateway history ...`: search the record of every postback, trace one user's
rewards, export, reconcile with Monetag's statistics, and delete a user's records.

Works on the history beside the running gateway (its SQLite file, or the PostgreSQL every
replica writes), so every replica's postbacks are found from any one. Times are UTC. What came
from a sender or an app is printed with control characters escaped (`shown.printable`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .config import DURATION_EXAMPLES, GatewayConfig, duration_words, parse_duration
from .durable.outbox import StoreError
from .history.export import csv_lines, iso, json_lines, pages
from .history.search import MAX_LIMIT, Recorded, Search
from .history.sql import GROUPS
from .history.sqlite_history import history_path
from .history.store import HistoryStore, history_store
from .history.trace import user_trace
from .shown import printable, quoted

DEFAULT_SINCE = "7d"


def point_in_time(text: str) -> float:
    """`--since 7d` (that long ago) or `--since 2026-12-01T10:00:00Z` (UTC unless it says)."""
    seconds = parse_duration(text)
    if seconds is not None and math.isfinite(seconds):
        return time.time() - seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{quoted(text)} is neither a duration ({DURATION_EXAMPLES}) nor a date like "
            "2026-12-01 or 2026-12-01T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 6) or not (
        0 < int(text) <= MAX_LIMIT
    ):
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a limit from 1 to {MAX_LIMIT}")
    return int(text)


def _groups(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in GROUPS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(
            f"{quoted(text)}: give one or more of {', '.join(GROUPS)}, comma-separated"
        )
    return chosen


def _filters(command: argparse.ArgumentParser, *, since: str | None = DEFAULT_SINCE) -> None:
    command.add_argument("--telegram-id")
    command.add_argument("--ymid")
    command.add_argument("--request-id", help="the gateway's request id, or the caller's")
    command.add_argument("--route")
    command.add_argument("--outcome")
    command.add_argument("--reason")
    command.add_argument(
        "--since", default=since, help=f"a duration back from now, or a date (default {since})"
    )
    command.add_argument("--until", help="a duration back from now, or a date (default: now)")


def _user(command: argparse.ArgumentParser) -> None:
    who = command.add_mutually_exclusive_group(required=True)
    who.add_argument("--telegram-id")
    who.add_argument("--ymid")


def add_arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True)
    search = actions.add_parser("search", help="postbacks, newest first")
    _filters(search)
    search.add_argument("--limit", type=_limit, default=50, help=f"1 to {MAX_LIMIT}")
    trace = actions.add_parser("trace", help="one user's rewards: a verdict and a timeline")
    _user(trace)
    trace.add_argument("--since", default=DEFAULT_SINCE, help=f"default {DEFAULT_SINCE}")
    export = actions.add_parser("export", help="every matching postback as CSV or JSON lines")
    _filters(export, since="1d")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    report = actions.add_parser(
        "report", help="counts by outcome and event type, and valued revenue, per group"
    )
    report.add_argument("--by", type=_groups, default=["day"], help="day, zone, route")
    report.add_argument("--since", default="30d", help="default 30d")
    report.add_argument("--until")
    report.add_argument("--route")
    purge = actions.add_parser("purge", help="delete one user's records (a deletion request)")
    _user(purge)


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if config.store is None:
        print("this config has no `store:`, so there is no history")
        return 2
    try:
        since = point_in_time(args.since) if getattr(args, "since", None) else None
        until = point_in_time(args.until) if getattr(args, "until", None) else None
    except argparse.ArgumentTypeError as error:
        print(f"history: {error}", file=sys.stderr)
        return 2
    return asyncio.run(_run(config, args, since, until))


async def _run(
    config: GatewayConfig, args: argparse.Namespace, since: float | None, until: float | None
) -> int:
    return await with_history(config, lambda history: _action(history, args, since, until))


async def with_history(
    config: GatewayConfig, action: Callable[[HistoryStore], Awaitable[int]]
) -> int:
    """Run `action` on the history of the config's store; a history that is not there or that
    fails is said, exit status 2 (also for `allowlist suggest`)."""
    assert config.store is not None
    if config.store.path is not None and not Path(history_path(config.store.path)).exists():
        # reading must not create an empty history where the gateway does not keep one
        print(
            f"no history at {history_path(config.store.path)}: the gateway has not written "
            "one there (is store.path, e.g. $GATEWAY_STORE, the running gateway's?)",
            file=sys.stderr,
        )
        return 2
    history = history_store(config.store)
    try:
        await history.open()
    except StoreError as error:
        print(f"cannot open the store: {error}", file=sys.stderr)
        await history.close()
        return 2
    try:
        return await action(history)
    except StoreError as error:
        print(f"the store failed: {error}", file=sys.stderr)
        return 2
    finally:
        await history.close()


async def _action(
    history: HistoryStore, args: argparse.Namespace, since: float | None, until: float | None
) -> int:
    if args.action == "purge":
        count = await history.purge(telegram_id=args.telegram_id, ymid=args.ymid)
        print(f"{count} postback(s) deleted from the history")
        return 0
    if args.action == "trace":
        assert since is not None
        return await _trace(history, args, since)
    if args.action == "report":
        return await _report(history, args.by, Search(route=args.route, since=since, until=until))
    search = _search(args, since, until)
    if args.action == "export":
        header = True
        async for page in pages(history, search):
            sys.stdout.write(
                csv_lines(page, header=header) if args.format == "csv" else json_lines(page)
            )
            header = False
        if header and args.format == "csv":
            sys.stdout.write(csv_lines([], header=True))
        return 0
    rows = await history.search(search)
    _print_rows(rows)
    return 0 if rows else 1


async def _trace(history: HistoryStore, args: argparse.Namespace, since: float) -> int:
    found = await user_trace(
        history,
        telegram_id=args.telegram_id,
        ymid=args.ymid,
        since=since,
        window=_window(args.since),
    )
    print(printable(found.verdict))
    for event in found.events if len(found.events) > 1 else ():
        verdict = "rewarded" if event.rewarded else "not rewarded"
        print(f"  {verdict}: {printable(event.sentence)}")
    for moment in found.timeline:
        print(f"{iso(moment.at)}  {printable(moment.text)}  [{moment.request_id}]")
    return 0


async def _report(history: HistoryStore, groups: list[str], search: Search) -> int:
    for line in await history.report(groups, search):
        keys = "  ".join(f"{name}={value}" for name, value in line.groups.items())
        print(
            printable(
                f"{keys}  {line.outcome}  {line.event_type}  count={line.count}"
                f"  valued_revenue={line.revenue:g}"
            )
        )
    return 0


def _search(args: argparse.Namespace, since: float | None, until: float | None) -> Search:
    return Search(
        telegram_id=args.telegram_id,
        ymid=args.ymid,
        request_id=args.request_id,
        route=args.route,
        outcome=args.outcome,
        reason=args.reason,
        since=since,
        until=until,
        limit=getattr(args, "limit", MAX_LIMIT),
    )


def _print_rows(rows: Sequence[Recorded]) -> None:
    for row in rows:
        fields = " ".join(f"{name}={value}" for name, value in row.fields.items())
        sent = " (as sent)" if row.as_sent else ""
        repeats = f" x{row.repeats}" if row.repeats > 1 else ""
        why = f" ({row.reason})" if row.reason and row.reason != row.outcome else ""
        print(
            printable(
                f"{iso(row.at)}  {row.replica}  {row.route}  {row.outcome}"
                f"{why}{repeats}  status {row.status}  "
                f"{fields}{sent}  client {row.client}  request {row.request_id}"
            )
        )


def _window(text: str) -> str:
    """How `--since` is said in a sentence: "7 days", or "window (since 2026-12-01)"."""
    seconds = parse_duration(text)
    if seconds is None or not math.isfinite(seconds):
        return f"window (since {text})"
    return duration_words(seconds)
