"""The outbox in the embedded SQLite file: one process, one writer thread, group commit.

Every statement on the `events` and `deliveries` tables is here, each a function of a
connection run inside a `SqliteWriter` batch (`sqlite_writer.py`: one transaction per batch,
one fsync).
`SqliteOutbox` is the `Outbox` over them. One process writes the file, so `due` needs no
lease: the deliverer's own `busy` set keeps an attempt from being started twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from . import keys
from .outbox import (
    DEAD,
    DELIVERED,
    MAX_KEPT_BODY,
    Availability,
    Delivery,
    DeliveryResult,
    DeliveryState,
    DeliverySummary,
    EventDetail,
    NewEvent,
    RouteStats,
    postback_of,
    routes_stats,
)
from .sqlite_writer import SqliteWriter, probe

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
STORE_SCHEMA = SCHEMA + keys.SCHEMA  # the tables of a new store file


class SqliteOutbox:
    """The `Outbox` over an SQLite file (`store: {path: ...}`)."""

    def __init__(
        self,
        path: str,
        on_commit: Callable[[bool], None] = lambda ok: None,
        *,
        exclusive: bool = False,
    ) -> None:
        """`exclusive`: this is the gateway's store (locked and checked; see sqlite_writer.py)."""
        self.store = SqliteWriter(path, STORE_SCHEMA, on_commit=on_commit, exclusive=exclusive)
        self._keys = keys.StoreKeys(self.store)

    def keys_for(self, hold: float) -> keys.StoreKeys:
        """One process writes the file: no reservation to hold, the same keys for every route."""
        return self._keys

    @property
    def availability(self) -> Availability:
        return self.store.availability

    @property
    def available(self) -> bool:
        return self.store.availability.up

    async def open(self) -> None:
        await self.store.open()

    async def ping(self) -> None:
        await self.store.run(probe)  # a write: a read succeeds on a full disk

    async def close(self) -> None:
        await self.store.close()

    async def enqueue(self, event: NewEvent) -> bool:
        return await self.store.run(partial(enqueue, event=event)) is not None

    async def due(
        self,
        route: str,
        upstream: str,
        now: float,
        limit: int,
        busy: frozenset[int],
        lease: float,
    ) -> list[Delivery]:
        return await self.store.run(
            partial(due, route=route, upstream=upstream, now=now, limit=limit, busy=busy)
        )

    async def record(self, delivery: Delivery, attempt: DeliveryResult, now: float) -> bool:
        await self.store.run(partial(record_attempt, delivery=delivery, attempt=attempt, now=now))
        return True

    async def bury_orphans(self, targets: Mapping[str, Sequence[str]], now: float) -> int:
        return await self.store.run(partial(bury_orphans, targets=targets, now=now))

    async def relabel(self, renames: Mapping[str, Mapping[str, str]]) -> int:
        return await self.store.run(partial(relabel, renames=renames))

    async def stats(self) -> list[RouteStats]:
        return await self.store.run(stats)

    async def redrive(
        self, now: float, event_id: int | None = None, route: str | None = None
    ) -> int:
        return await self.store.run(partial(redrive, now=now, event_id=event_id, route=route))

    async def purge_delivered(self, older_than: float) -> int:
        return await self.store.run(partial(purge_delivered, older_than=older_than))

    async def purge_expired_keys(self, now: float) -> int:
        return await self.store.run(partial(keys.purge_expired, now=now))

    async def count_keys(self) -> int:
        return await self.store.run(keys.count)

    async def listing(
        self, state: str | None, route: str | None, limit: int
    ) -> list[DeliverySummary]:
        return await self.store.run(partial(listing, state=state, route=route, limit=limit))

    async def show(self, event_id: int) -> EventDetail | None:
        return await self.store.run(partial(show, event_id=event_id))

    def on_work(self, wake: Callable[[], None]) -> None:
        """Only this process writes the file: it wakes its deliverer itself."""


# -- statements ---------------------------------------------------------------------------------


def enqueue(connection: sqlite3.Connection, event: NewEvent) -> int | None:
    """Store the event, a pending delivery per upstream and its dedup key, atomically; None
    (nothing written) if the dedup key is already stored and not expired: a duplicate."""
    now = event.accepted_at
    if keys.known(connection, event.dedup_key, now):
        return None
    postback = event.postback
    cursor = connection.execute(
        "INSERT INTO events (route, idempotency_key, fields, extras, request_id, client,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.route,
            event.idempotency_key,
            json.dumps(postback.fields),
            json.dumps(postback.extras),
            event.request_id,
            event.client,
            now,
        ),
    )
    event_id = cursor.lastrowid
    assert event_id is not None
    connection.executemany(
        "INSERT INTO deliveries (event_id, upstream, state, next_attempt_at, since, updated_at)"
        " VALUES (?, ?, 'pending', ?, ?, ?)",
        [(event_id, upstream, now, now, now) for upstream in event.upstreams],
    )
    keys.remember(connection, event.dedup_key, event.dedup_expires_at)
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
    return Delivery(
        event_id,
        route,
        upstream,
        attempts,
        since,
        postback_of(fields, extras),
        request_id,
        client,
        key,
    )


def record_attempt(
    connection: sqlite3.Connection, delivery: Delivery, attempt: DeliveryResult, now: float
) -> None:
    if attempt.state == DELIVERED:
        assert attempt.status is not None
        mark_delivered(connection, delivery, attempt.status, now, attempt.sends)
    elif attempt.state == DEAD:
        mark_dead(
            connection,
            delivery,
            attempt.error or "",
            attempt.status,
            attempt.body,
            now,
            attempt.sends,
        )
    else:
        assert attempt.retry_at is not None
        error = attempt.error or ""
        mark_retry(
            connection, delivery, error, attempt.status, attempt.retry_at, now, attempt.sends
        )


def mark_delivered(
    connection: sqlite3.Connection, delivery: Delivery, status: int, now: float, sends: int = 1
) -> None:
    connection.execute(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + ?, last_status = ?,"
        " last_error = NULL, updated_at = ? WHERE event_id = ? AND upstream = ?",
        (sends, status, now, delivery.event_id, delivery.upstream),
    )


def mark_retry(
    connection: sqlite3.Connection,
    delivery: Delivery,
    error: str,
    status: int | None,
    next_attempt_at: float,
    now: float,
    sends: int = 1,
) -> None:
    connection.execute(
        "UPDATE deliveries SET attempts = attempts + ?, last_error = ?, last_status = ?,"
        " next_attempt_at = ?, updated_at = ? WHERE event_id = ? AND upstream = ?",
        (sends, error, status, next_attempt_at, now, delivery.event_id, delivery.upstream),
    )


def mark_dead(
    connection: sqlite3.Connection,
    delivery: Delivery,
    error: str,
    status: int | None,
    body: str | None,
    now: float,
    sends: int = 1,
) -> None:
    connection.execute(
        "UPDATE deliveries SET state = 'dead', attempts = attempts + ?, last_error = ?,"
        " last_status = ?, last_body = ?, updated_at = ? WHERE event_id = ? AND upstream = ?",
        (
            sends,
            error,
            status,
            body[:MAX_KEPT_BODY] if body else body,
            now,
            delivery.event_id,
            delivery.upstream,
        ),
    )


def bury_orphans(
    connection: sqlite3.Connection, targets: Mapping[str, Sequence[str]], now: float
) -> int:
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


def relabel(connection: sqlite3.Connection, renames: Mapping[str, Mapping[str, str]]) -> int:
    moved = 0
    for route, labels in renames.items():
        for old, new in labels.items():
            moved += connection.execute(
                "UPDATE OR IGNORE deliveries SET upstream = ? WHERE upstream = ?"
                " AND event_id IN (SELECT id FROM events WHERE route = ?)",
                (new, old, route),
            ).rowcount
    return moved


def stats(connection: sqlite3.Connection) -> list[RouteStats]:
    rows = connection.execute(
        "SELECT e.route, d.state, COUNT(*),"
        " MIN(CASE WHEN d.state = 'pending' THEN e.created_at END)"
        " FROM deliveries d JOIN events e ON e.id = d.event_id GROUP BY e.route, d.state"
    ).fetchall()
    return routes_stats(rows)


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


def listing(
    connection: sqlite3.Connection, state: str | None, route: str | None, limit: int
) -> list[DeliverySummary]:
    rows = connection.execute(
        "SELECT e.id, e.created_at, e.route, d.upstream, d.state, d.attempts, d.last_status,"
        " d.last_error, e.fields FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE (? IS NULL OR d.state = ?) AND (? IS NULL OR e.route = ?)"
        " ORDER BY e.id DESC, d.upstream LIMIT ?",
        (state, state, route, route, limit),
    ).fetchall()
    return [_summary(*row) for row in rows]


def _summary(
    event_id: int,
    accepted_at: float,
    route: str,
    upstream: str,
    state: str,
    attempts: int,
    last_status: int | None,
    last_error: str | None,
    fields: str,
) -> DeliverySummary:
    """A `queue list` row: the delivery's columns, and the ymid from the event's fields."""
    ymid = json.loads(fields).get("ymid")
    return DeliverySummary(
        event_id, accepted_at, route, upstream, state, attempts, last_status, last_error, ymid
    )


def show(connection: sqlite3.Connection, event_id: int) -> EventDetail | None:
    event = connection.execute(
        "SELECT route, idempotency_key, request_id, client, created_at, fields, extras"
        " FROM events WHERE id = ?",
        (event_id,),
    ).fetchone()
    if event is None:
        return None
    route, key, request_id, client, created, fields, extras = event
    deliveries = [
        DeliveryState(*row)
        for row in connection.execute(
            "SELECT upstream, state, attempts, last_status, last_error, last_body,"
            " next_attempt_at FROM deliveries WHERE event_id = ? ORDER BY upstream",
            (event_id,),
        )
    ]
    postback = postback_of(fields, extras)
    return EventDetail(event_id, route, key, request_id, client, created, postback, deliveries)
