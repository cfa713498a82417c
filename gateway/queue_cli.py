"""`monetag-gateway queue ...`: look into the outbox and re-drive dead letters.

Works on the store beside the running gateway (the SQLite file in WAL mode, or PostgreSQL);
the running gateway's deliverer picks re-driven deliveries up within a second. Event ids are
1 to 18 ASCII digits and limits positive, refused by argparse otherwise (`show ٣` is not event
3, and a 20-digit id is no OverflowError); every text that came from a sender or an app is
printed with its control characters escaped, so an answer cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from datetime import UTC, datetime

from .config import DURATION_EXAMPLES, GatewayConfig, parse_duration
from .durable.outbox import DEAD, PENDING, STATES, Outbox, StoreError
from .durable.service import open_outbox
from .shown import printable, quoted

MAX_LIMIT = 100_000


def _event_id(text: str) -> int:
    if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not an event id (1-18 digits)")
    return int(text)


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 6) or not (
        0 < int(text) <= MAX_LIMIT
    ):
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a limit from 1 to {MAX_LIMIT}")
    return int(text)


def add_arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True)
    actions.add_parser("stats", help="deliveries by state, oldest pending, dead letters")
    listing = actions.add_parser("list", help="deliveries, newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--route")
    listing.add_argument("--limit", type=_limit, default=50, help=f"1 to {MAX_LIMIT}")
    show = actions.add_parser("show", help="one event with its deliveries")
    show.add_argument("id", type=_event_id)
    retry = actions.add_parser("retry", help="send again: one event, or every dead letter")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=_event_id, nargs="?")
    target.add_argument("--dead", action="store_true", help="every dead letter")
    retry.add_argument("--route", help="with --dead: only this route")
    purge = actions.add_parser("purge", help="forget events delivered everywhere")
    purge.add_argument("--delivered", action="store_true", required=True)
    purge.add_argument("--older-than", required=True, help=f"a duration: {DURATION_EXAMPLES}")


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if config.store is None:
        print("this config has no `store:`, so there is no queue")
        return 2
    if args.action == "purge":
        _seconds(args.older_than)  # a bad duration is refused before touching the store
    return asyncio.run(_run(open_outbox(config.store), args))


async def _run(outbox: Outbox, args: argparse.Namespace) -> int:
    try:
        await outbox.open()
    except StoreError as error:
        print(f"cannot open the store: {error}")
        return 2
    try:
        if args.action == "stats":
            return await _stats(outbox)
        if args.action == "list":
            return await _list(outbox, args.state, args.route, args.limit)
        if args.action == "show":
            return await _show(outbox, args.id)
        if args.action == "retry":
            count = await outbox.redrive(time.time(), args.id, args.route)
            print(f"{count} deliver{'y' if count == 1 else 'ies'} pending again")
            return 0 if count else 1
        cutoff = time.time() - _seconds(args.older_than)
        print(f"{await outbox.purge_delivered(cutoff)} delivered event(s) purged")
        return 0
    finally:
        await outbox.close()


async def _stats(outbox: Outbox) -> int:
    now = time.time()
    for item in await outbox.stats():
        counts = ", ".join(f"{state} {count}" for state, count in sorted(item.counts.items()))
        route = printable(item.route)
        oldest = (
            f", oldest pending {now - item.oldest_pending_at:.0f}s"
            if item.oldest_pending_at
            else ""
        )
        print(f"route {route}: {counts}{oldest}")
    print(f"dedup keys stored: {await outbox.count_keys()}")
    for row in await outbox.listing(DEAD, None, 10):
        print(
            f"dead: event {row.event_id} -> {printable(row.upstream)}: "
            f"{printable(row.last_error or '')}"
        )
    return 0


async def _list(outbox: Outbox, state: str | None, route: str | None, limit: int) -> int:
    for row in await outbox.listing(state, route, limit):
        print(
            f"{row.event_id}\t{_when(row.accepted_at)}\t{printable(row.route)}\t{row.state}"
            f"\tattempts {row.attempts}\tstatus {row.last_status}\t{printable(row.upstream)}"
            f"\tymid={printable(str(row.ymid))}\t{printable(row.last_error or '')}"
        )
    return 0


async def _show(outbox: Outbox, event_id: int) -> int:
    event = await outbox.show(event_id)
    if event is None:
        print(f"no event {event_id}")
        return 1
    print(
        f"event {event_id} on route {printable(event.route)}, accepted {_when(event.accepted_at)}"
    )
    print(
        f"  idempotency key {event.idempotency_key}, request id {printable(event.request_id)},"
        f" client {printable(event.client)}"
    )
    print(f"  fields {printable(str(event.postback.fields))}")
    if event.postback.extras:
        print(f"  extras {printable(str([list(pair) for pair in event.postback.extras]))}")
    for delivery in event.deliveries:
        print(
            f"  -> {printable(delivery.upstream)}: {delivery.state}, {delivery.attempts}"
            f" attempt(s), last status {delivery.last_status}"
        )
        if delivery.last_error:
            print(f"     last error: {printable(delivery.last_error)}")
        if delivery.last_body:
            print(f"     last body: {printable(delivery.last_body[:300])}")
        if delivery.state == PENDING:
            print(f"     next attempt {_when(delivery.next_attempt_at)}")
    return 0


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(text: str) -> float:
    """`--older-than`, read as the config reads its durations (0 allowed: everything)."""
    seconds = parse_duration(text)
    if seconds is None or not math.isfinite(seconds):
        raise SystemExit(f"--older-than {quoted(text)}: not a duration like {DURATION_EXAMPLES}")
    return seconds
