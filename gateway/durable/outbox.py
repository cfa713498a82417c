"""The durable outbox of a `delivery: queued` route: accepted events and their deliveries.

One row per accepted event, one delivery row per (event, upstream) with its own state:
`pending` (to send, at `next_attempt_at`), `delivered`, or `dead` (given up; re-drivable).
These functions take a connection and run inside a Store batch; the CLI calls them directly.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from ..postback import Postback
from . import keys

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    route TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fields TEXT NOT NULL,
    extras TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    upstream TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    since REAL NOT NULL,
    last_error TEXT,
    last_status INTEGER,
    last_body TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (event_id, upstream)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
"""

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
RETRY = "retry"  # an attempt's result, not a state: the delivery stays pending
MAX_KEPT_BODY = 2000


@dataclass(frozen=True)
class Delivery:
    """One event to send to one upstream."""

    event_id: int
    route: str
    upstream: str
    attempts: int
    since: float  # accepted, or re-driven: queue.max_age counts from here
    postback: Postback
    request_id: str
    client: str
    idempotency_key: str


def enqueue(
    connection: sqlite3.Connection,
    *,
    route: str,
    upstreams: list[str],
    postback: Postback,
    idempotency_key: str,
    request_id: str,
    client: str,
    now: float,
    dedup_key: bytes,
    dedup_expires_at: float,
) -> int | None:
    """Store the event, a pending delivery per upstream and its dedup key, atomically; None
    (nothing written) if the dedup key is already stored and not expired: a duplicate."""
    if keys.known(connection, dedup_key, now):
        return None
    cursor = connection.execute(
        "INSERT INTO events (route, idempotency_key, fields, extras, request_id, client,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            route, idempotency_key, json.dumps(postback.fields), json.dumps(postback.extras),
            request_id, client, now,
        ),
    )  # fmt: skip
    event_id = cursor.lastrowid
    assert event_id is not None
    connection.executemany(
        "INSERT INTO deliveries (event_id, upstream, state, next_attempt_at, since, updated_at)"
        " VALUES (?, ?, 'pending', ?, ?, ?)",
        [(event_id, upstream, now, now, now) for upstream in upstreams],
    )
    keys.remember(connection, dedup_key, dedup_expires_at)
    return event_id


def due(
    connection: sqlite3.Connection,
    route: str,
    upstream: str,
    now: float,
    limit: int,
    busy: frozenset[int],
) -> list[Delivery]:
    """Pending deliveries to this upstream whose time has come, oldest first, minus `busy`."""
    rows = connection.execute(
        "SELECT e.id, e.route, d.upstream, d.attempts, d.since, e.fields, e.extras,"
        " e.request_id, e.client, e.idempotency_key"
        " FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.state = 'pending' AND e.route = ? AND d.upstream = ? AND d.next_attempt_at <= ?"
        " ORDER BY d.next_attempt_at LIMIT ?",
        (route, upstream, now, limit + len(busy)),
    ).fetchall()
    deliveries = [_delivery_of(row) for row in rows if row[0] not in busy]
    return deliveries[:limit]


def _delivery_of(row: tuple[Any, ...]) -> Delivery:
    event_id, route, upstream, attempts, since, fields, extras, request_id, client, key = row
    postback = Postback(
        json.loads(fields), tuple((name, value) for name, value in json.loads(extras))
    )
    return Delivery(event_id, route, upstream, attempts, since, postback, request_id, client, key)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery attempt came to: DELIVERED, DEAD (with why), or RETRY at `retry_at`."""

    state: str
    error: str | None = None
    status: int | None = None
    body: str | None = None  # the app's answer, kept with a dead letter
    retry_at: float | None = None


def record_attempt(
    connection: sqlite3.Connection, delivery: Delivery, attempt: Attempt, now: float
) -> None:
    if attempt.state == DELIVERED:
        assert attempt.status is not None
        mark_delivered(connection, delivery, attempt.status, now)
    elif attempt.state == DEAD:
        mark_dead(connection, delivery, attempt.error or "", attempt.status, attempt.body, now)
    else:
        assert attempt.retry_at is not None
        error = attempt.error or ""
        mark_retry(connection, delivery, error, attempt.status, attempt.retry_at, now)


def mark_delivered(
    connection: sqlite3.Connection, delivery: Delivery, status: int, now: float
) -> None:
    connection.execute(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_status = ?,"
        " last_error = NULL, updated_at = ? WHERE event_id = ? AND upstream = ?",
        (status, now, delivery.event_id, delivery.upstream),
    )


def mark_retry(
    connection: sqlite3.Connection,
    delivery: Delivery,
    error: str,
    status: int | None,
    next_attempt_at: float,
    now: float,
) -> None:
    connection.execute(
        "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, last_status = ?,"
        " next_attempt_at = ?, updated_at = ? WHERE event_id = ? AND upstream = ?",
        (error, status, next_attempt_at, now, delivery.event_id, delivery.upstream),
    )


def mark_dead(
    connection: sqlite3.Connection,
    delivery: Delivery,
    error: str,
    status: int | None,
    body: str | None,
    now: float,
) -> None:
    connection.execute(
        "UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?,"
        " last_status = ?, last_body = ?, updated_at = ? WHERE event_id = ? AND upstream = ?",
        (
            error, status, body[:MAX_KEPT_BODY] if body else body, now, delivery.event_id,
            delivery.upstream,
        ),
    )  # fmt: skip


def bury_orphans(connection: sqlite3.Connection, targets: dict[str, list[str]], now: float) -> int:
    """Dead-letter pending deliveries whose route or upstream is no longer configured.

    `targets` maps each queued route to its upstream labels. They stay re-drivable with
    `queue retry --dead` once the config has them again.
    """
    pending = connection.execute(
        "SELECT d.event_id, d.upstream, e.route FROM deliveries d"
        " JOIN events e ON e.id = d.event_id WHERE d.state = 'pending'"
    ).fetchall()
    orphans = [
        (event_id, upstream)
        for event_id, upstream, route in pending
        if upstream not in targets.get(route, [])
    ]
    connection.executemany(
        "UPDATE deliveries SET state = 'dead', last_error = 'route or upstream no longer in"
        " config', updated_at = ? WHERE event_id = ? AND upstream = ?",
        [(now, event_id, upstream) for event_id, upstream in orphans],
    )
    return len(orphans)


@dataclass(frozen=True)
class RouteStats:
    route: str
    counts: dict[str, int]  # state -> deliveries
    oldest_pending_at: float | None


def stats(connection: sqlite3.Connection) -> list[RouteStats]:
    rows = connection.execute(
        "SELECT e.route, d.state, COUNT(*),"
        " MIN(CASE WHEN d.state = 'pending' THEN e.created_at END)"
        " FROM deliveries d JOIN events e ON e.id = d.event_id GROUP BY e.route, d.state"
    ).fetchall()
    by_route: dict[str, RouteStats] = {}
    for route, state, count, oldest in rows:
        current = by_route.setdefault(route, RouteStats(route, {}, None))
        current.counts[state] = count
        if oldest is not None:
            by_route[route] = RouteStats(route, current.counts, oldest)
    return sorted(by_route.values(), key=lambda item: item.route)


def redrive(
    connection: sqlite3.Connection,
    now: float,
    event_id: int | None = None,
    route: str | None = None,
) -> int:
    """Dead (or one event's undelivered) deliveries back to pending, with a fresh budget."""
    where, args = "state = 'dead'", list[object]()
    if event_id is not None:
        where, args = "state != 'delivered' AND event_id = ?", [event_id]
    if route is not None:
        where += " AND event_id IN (SELECT id FROM events WHERE route = ?)"
        args.append(route)
    return connection.execute(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, since = ?,"
        f" updated_at = ? WHERE {where}",
        [now, now, now, *args],
    ).rowcount


def purge_delivered(connection: sqlite3.Connection, older_than: float) -> int:
    """Forget events delivered to every upstream before `older_than`; returns events removed."""
    return connection.execute(
        "DELETE FROM events WHERE id IN (SELECT event_id FROM deliveries GROUP BY event_id"
        " HAVING SUM(state != 'delivered') = 0 AND MAX(updated_at) < ?)",
        (older_than,),
    ).rowcount
