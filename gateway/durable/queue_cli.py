"""`monetag-gateway queue ...`: look into the outbox and re-drive dead letters.

Works on the store file directly (SQLite in WAL mode lets it run beside the gateway); the
running gateway's deliverer picks re-driven deliveries up within a second.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from datetime import UTC, datetime

from ..config import GatewayConfig
from . import keys, outbox
from .service import STORE_SCHEMA
from .store import connect

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_arguments(command: argparse.ArgumentParser) -> None:
    actions = command.add_subparsers(dest="action", required=True)
    actions.add_parser("stats", help="deliveries by state, oldest pending, dead letters")
    listing = actions.add_parser("list", help="deliveries, newest first")
    listing.add_argument("--state", choices=[outbox.PENDING, outbox.DELIVERED, outbox.DEAD])
    listing.add_argument("--route")
    listing.add_argument("--limit", type=int, default=50)
    show = actions.add_parser("show", help="one event with its deliveries")
    show.add_argument("id", type=int)
    retry = actions.add_parser("retry", help="send again: one event, or every dead letter")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?")
    target.add_argument("--dead", action="store_true", help="every dead letter")
    retry.add_argument("--route", help="with --dead: only this route")
    purge = actions.add_parser("purge", help="forget events delivered everywhere")
    purge.add_argument("--delivered", action="store_true", required=True)
    purge.add_argument("--older-than", required=True, help="e.g. 7d, 12h")


def run(config: GatewayConfig, args: argparse.Namespace) -> int:
    if config.store is None:
        print("this config has no `store:`, so there is no queue")
        return 2
    try:
        connection = connect(config.store.path, STORE_SCHEMA)
    except sqlite3.Error as error:
        print(f"cannot open store {config.store.path}: {error}")
        return 2
    try:
        if args.action == "stats":
            return _stats(connection)
        if args.action == "list":
            return _list(connection, args.state, args.route, args.limit)
        if args.action == "show":
            return _show(connection, args.id)
        if args.action == "retry":
            count = outbox.redrive(connection, time.time(), args.id, args.route)
            print(f"{count} deliver{'y' if count == 1 else 'ies'} pending again")
            return 0 if count else 1
        cutoff = time.time() - _seconds(args.older_than)
        print(f"{outbox.purge_delivered(connection, cutoff)} delivered event(s) purged")
        return 0
    finally:
        connection.close()


def _stats(connection: sqlite3.Connection) -> int:
    now = time.time()
    for item in outbox.stats(connection):
        counts = ", ".join(f"{state} {count}" for state, count in sorted(item.counts.items()))
        oldest = (
            f", oldest pending {now - item.oldest_pending_at:.0f}s"
            if item.oldest_pending_at
            else ""
        )
        print(f"route {item.route}: {counts}{oldest}")
    print(f"dedup keys stored: {keys.count(connection)}")
    for row in connection.execute(
        "SELECT event_id, upstream, last_status, last_error FROM deliveries WHERE state = 'dead'"
        " ORDER BY updated_at DESC LIMIT 10"
    ):
        print(f"dead: event {row[0]} -> {row[1]}: {row[3]}")
    return 0


def _list(connection: sqlite3.Connection, state: str | None, route: str | None, limit: int) -> int:
    rows = connection.execute(
        "SELECT e.id, e.route, d.upstream, d.state, d.attempts, d.last_status, d.last_error,"
        " e.created_at, e.fields FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE (? IS NULL OR d.state = ?) AND (? IS NULL OR e.route = ?)"
        " ORDER BY e.id DESC LIMIT ?",
        (state, state, route, route, limit),
    ).fetchall()
    for event_id, route_name, upstream, row_state, attempts, status, error, created, fields in rows:
        ymid = json.loads(fields).get("ymid")
        print(
            f"{event_id}\t{_when(created)}\t{route_name}\t{row_state}\tattempts {attempts}"
            f"\tstatus {status}\t{upstream}\tymid={ymid}\t{error or ''}"
        )
    return 0


def _show(connection: sqlite3.Connection, event_id: int) -> int:
    event = connection.execute(
        "SELECT route, idempotency_key, request_id, client, created_at, fields, extras"
        " FROM events WHERE id = ?",
        (event_id,),
    ).fetchone()
    if event is None:
        print(f"no event {event_id}")
        return 1
    route, key, request_id, client, created, fields, extras = event
    print(f"event {event_id} on route {route}, accepted {_when(created)}")
    print(f"  idempotency key {key}, request id {request_id}, client {client}")
    print(f"  fields {json.loads(fields)}")
    if json.loads(extras):
        print(f"  extras {json.loads(extras)}")
    for row in connection.execute(
        "SELECT upstream, state, attempts, last_status, last_error, last_body, next_attempt_at"
        " FROM deliveries WHERE event_id = ?",
        (event_id,),
    ):
        upstream, state, attempts, status, error, body, next_at = row
        print(f"  -> {upstream}: {state}, {attempts} attempt(s), last status {status}")
        if error:
            print(f"     last error: {error}")
        if body:
            print(f"     last body: {body[:300]}")
        if state == outbox.PENDING:
            print(f"     next attempt {_when(next_at)}")
    return 0


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(text: str) -> float:
    unit = text[-1:]
    if unit not in _UNITS or not text[:-1].isdigit():
        raise SystemExit(f"--older-than {text!r}: use a number and s, m, h or d (e.g. 7d)")
    return int(text[:-1]) * _UNITS[unit]
