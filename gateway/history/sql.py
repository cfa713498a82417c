"""The history's statements, written once for both stores: they differ only in how a
parameter is written (`?` in SQLite, `$1` in PostgreSQL) and in a few column types.

Every lookup support makes goes through an index: the user (`telegram_id` or `ymid`, then
time), a request id (ours or the caller's), or time alone. Nothing a sender controls is ever
part of a statement's text: values travel as parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..senders import HOUR
from .search import COLUMNS, DELIVERY_COLUMNS, Search
from .sessions import MISSED_COLUMNS, SESSION_COLUMNS

Placeholder = Callable[[int], str]  # the n-th parameter (1-based) as the store writes it
GROUPS = {"day": "day", "zone": "zone_id", "route": "route"}  # `history report --by`


def qmark(_: int) -> str:
    return "?"


def dollar(number: int) -> str:
    return f"${number}"


def tables(identity: str, real: str) -> list[str]:
    """CREATE statements; `identity` is the id column's type, `real` a float's."""
    return [
        f"""CREATE TABLE IF NOT EXISTS history (
            id {identity},
            at {real} NOT NULL,
            replica TEXT NOT NULL,
            route TEXT,
            request_id TEXT NOT NULL,
            caller_request_id TEXT,
            client TEXT,
            outcome TEXT NOT NULL,
            reason TEXT,
            status INTEGER,
            ymid TEXT,
            telegram_id TEXT,
            zone_id TEXT,
            sub_zone_id TEXT,
            event_type TEXT,
            reward_event_type TEXT,
            estimated_price TEXT,
            request_var TEXT,
            dedup_key TEXT,
            repeats INTEGER NOT NULL DEFAULT 1,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS history_at ON history (at)",
        "CREATE INDEX IF NOT EXISTS history_telegram_id ON history (telegram_id, at) "
        "WHERE telegram_id IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS history_ymid ON history (ymid, at) WHERE ymid IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS history_request_id ON history (request_id)",
        "CREATE INDEX IF NOT EXISTS history_caller_request_id ON history (caller_request_id) "
        "WHERE caller_request_id IS NOT NULL",
        f"""CREATE TABLE IF NOT EXISTS history_deliveries (
            id {identity},
            at {real} NOT NULL,
            replica TEXT NOT NULL,
            request_id TEXT NOT NULL,
            route TEXT,
            upstream TEXT NOT NULL,
            state TEXT NOT NULL,
            status INTEGER,
            error TEXT,
            latency_ms {real},
            body_head TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS history_deliveries_request ON history_deliveries (request_id)",
        "CREATE INDEX IF NOT EXISTS history_deliveries_at ON history_deliveries (at)",
        # senders seen (senders.py): a row per route, network, replica and hour, its counts
        # added to by each batch of that hour; a few dozen networks make a few thousand rows a
        # week, read whole by `allowlist suggest`
        f"""CREATE TABLE IF NOT EXISTS history_senders (
            route TEXT NOT NULL,
            network TEXT NOT NULL,
            replica TEXT NOT NULL,
            at {real} NOT NULL,
            first {real} NOT NULL,
            last {real} NOT NULL,
            postbacks BIGINT NOT NULL,
            outside BIGINT NOT NULL,
            PRIMARY KEY (route, network, replica, at)
        )""",
        "CREATE INDEX IF NOT EXISTS history_senders_at ON history_senders (at)",
        # reward sessions (sessions.py): a row per ymid issued or answered, merged by
        # add_sessions; no_postback_at is set by the sweep alone
        f"""CREATE TABLE IF NOT EXISTS history_sessions (
            ymid TEXT PRIMARY KEY,
            route TEXT NOT NULL,
            placement TEXT,
            telegram_id TEXT NOT NULL,
            replica TEXT NOT NULL,
            expires {real} NOT NULL,
            issued_at {real},
            postback_at {real},
            no_postback_at {real}
        )""",
        # the sweep's: only the ymids still waiting, so it stays small however long the table
        "CREATE INDEX IF NOT EXISTS history_sessions_waiting ON history_sessions (issued_at) "
        "WHERE postback_at IS NULL AND no_postback_at IS NULL",
        "CREATE INDEX IF NOT EXISTS history_sessions_issued ON history_sessions (issued_at)",
        "CREATE INDEX IF NOT EXISTS history_sessions_telegram_id ON history_sessions (telegram_id)",
        "CREATE INDEX IF NOT EXISTS history_sessions_expires ON history_sessions (expires)",
    ]


SENDER_COLUMNS = ("route", "network", "replica", "at", "first", "last", "postbacks", "outside")


def add_senders(placeholder: Placeholder) -> str:
    """One SenderRow into its hour's row: a replica's first and last only move forward."""
    return (
        f"{insert('history_senders', SENDER_COLUMNS, placeholder)} "
        "ON CONFLICT (route, network, replica, at) DO UPDATE SET last = excluded.last, "
        "postbacks = history_senders.postbacks + excluded.postbacks, "
        "outside = history_senders.outside + excluded.outside"
    )


def senders(since: float, route: str | None, placeholder: Placeholder) -> Statement:
    """Each network's rows since the hour `since` falls in, of one route or all, added up
    across replicas and hours."""
    arguments: list[Any] = [since // HOUR * HOUR]
    of_route = ""
    if route is not None:
        arguments.append(route)
        of_route = f" AND route = {placeholder(2)}"
    return Statement(
        # PostgreSQL's SUM of a BIGINT is a NUMERIC: cast back, for both stores' sake
        "SELECT route, network, MIN(first), MAX(last), CAST(SUM(postbacks) AS BIGINT), "
        "CAST(SUM(outside) AS BIGINT), "
        f"COUNT(DISTINCT replica) FROM history_senders WHERE at >= {placeholder(1)}{of_route} "
        "GROUP BY route, network ORDER BY route, network",
        arguments,
    )


def expire_senders(placeholder: Placeholder) -> str:
    """The hours older than the cutoff: few rows, one statement."""
    return f"DELETE FROM history_senders WHERE at < {placeholder(1)}"


def add_sessions(placeholder: Placeholder) -> str:
    """One SessionRow merged into its ymid's row, the same whichever of the issue and the
    postback comes first: issued_at is the issue's, postback_at the earliest, and route,
    placement, telegram_id, replica and expires are the issue's once it is there (a placement
    of None included); before it, the first non-null value written."""
    issued = "history_sessions.issued_at IS NOT NULL"
    by_issue = ", ".join(
        f"{column} = CASE WHEN {issued} THEN history_sessions.{column} "
        f"WHEN excluded.issued_at IS NOT NULL THEN excluded.{column} "
        f"ELSE COALESCE(history_sessions.{column}, excluded.{column}) END"
        for column in ("route", "placement", "telegram_id", "replica", "expires")
    )
    # SQLite's MIN(a, b) is NULL when either is, PostgreSQL's LEAST ignores NULLs: this
    # comparison reads the same in both
    earliest = (
        "COALESCE(CASE WHEN excluded.postback_at < history_sessions.postback_at "
        "THEN excluded.postback_at ELSE history_sessions.postback_at END, excluded.postback_at)"
    )
    return (
        f"{insert('history_sessions', SESSION_COLUMNS, placeholder)} "
        f"ON CONFLICT (ymid) DO UPDATE SET {by_issue}, "
        "issued_at = COALESCE(history_sessions.issued_at, excluded.issued_at), "
        f"postback_at = {earliest}"
    )


def session_events(among: str) -> str:
    """The history's rows of some ymids, oldest first, each with its latest delivery state.
    `among` is the store's condition for "history.ymid is one of the ymids given", all of them
    in its first parameter (an array, or a JSON list): one statement, one text, whatever the
    count. `ymid IS NOT NULL` says outright what the partial index history_ymid requires, so
    a generic plan uses it too."""
    latest = (
        "(SELECT delivery.state FROM history_deliveries AS delivery "
        "WHERE delivery.request_id = history.request_id "
        "ORDER BY delivery.at DESC, delivery.id DESC LIMIT 1)"
    )
    return (
        "SELECT ymid, route, at, outcome, reason, status, event_type, request_id, "
        f"{latest} FROM history WHERE ymid IS NOT NULL AND ymid {among} ORDER BY at, id"
    )


def no_postback(
    route: str, issued_before: float, now: float, limit: int, lock: str, placeholder: Placeholder
) -> Statement:
    """Mark the oldest ymids of the route (each route has its own `no_postback_after`)
    issued by the cutoff and still waiting for a postback as missed, at most `limit`, and
    return them. `lock` keeps two sweeps from taking the same rows:
    PostgreSQL's ` FOR UPDATE SKIP LOCKED` (each replica takes the rows no other has
    locked), nothing in SQLite (its one writer runs one sweep at a time).

    The batch is picked once, MATERIALIZED: as `IN (subquery)` PostgreSQL ran the locking
    subquery again for each row it updated, each run skipping the rows this statement had
    just updated and picking the next, so LIMIT bounded nothing (seen: 5 marked of limit 2).
    The outer condition is checked again on a row another sweep changed meanwhile: a row
    is marked, and returned, once."""
    waiting = "postback_at IS NULL AND no_postback_at IS NULL"
    return Statement(
        "WITH batch AS MATERIALIZED (SELECT ymid FROM history_sessions "
        f"WHERE issued_at <= {placeholder(1)} AND route = {placeholder(2)} AND {waiting} "
        f"ORDER BY issued_at LIMIT {placeholder(3)}{lock}) "
        f"UPDATE history_sessions SET no_postback_at = {placeholder(4)} "
        f"WHERE {waiting} AND ymid IN (SELECT ymid FROM batch) "
        f"RETURNING {', '.join(MISSED_COLUMNS)}",
        [issued_before, route, limit, now],  # in the order they appear: SQLite's are `?`
    )


def fill_rates(since: float, route: str | None, placeholder: Placeholder) -> Statement:
    """Per route and placement, of the ymids issued since then: how many, how many got a
    postback, how many were missed. No placement sorts first in both stores."""
    arguments: list[Any] = [since]
    of_route = ""
    if route is not None:
        arguments.append(route)
        of_route = f" AND route = {placeholder(2)}"
    return Statement(
        "SELECT route, placement, COUNT(*), COUNT(postback_at), COUNT(no_postback_at) "
        f"FROM history_sessions WHERE issued_at >= {placeholder(1)}{of_route} "
        "GROUP BY route, placement ORDER BY route, placement NULLS FIRST",
        arguments,
    )


def expire_sessions(placeholder: Placeholder) -> str:
    """At most a batch of the sessions that expired before the cutoff. By `expires`, which
    every row has: a ymid answered whose issue was never written has no issued_at."""
    return (
        "DELETE FROM history_sessions WHERE ymid IN (SELECT ymid FROM history_sessions "
        f"WHERE expires < {placeholder(1)} ORDER BY expires LIMIT {placeholder(2)})"
    )


def insert(table: str, columns: Sequence[str], placeholder: Placeholder) -> str:
    marks = ", ".join(placeholder(n) for n in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


@dataclass
class Statement:
    text: str
    arguments: list[Any]


def where(search: Search, placeholder: Placeholder) -> Statement:
    """The WHERE clause (and its arguments) of a search."""
    parts: list[str] = []
    arguments: list[Any] = []

    def add(condition: str, *values: Any) -> None:
        marks = [placeholder(len(arguments) + n) for n in range(1, len(values) + 1)]
        parts.append(condition.format(*marks))
        arguments.extend(values)

    for column, value in search.conditions():
        add(f"{column} = {{}}", value)
    if search.request_id:
        add("(request_id = {} OR caller_request_id = {})", search.request_id, search.request_id)
    if search.since is not None:
        add("at >= {}", search.since)
    if search.until is not None:
        add("at < {}", search.until)
    if search.before_id is not None:
        add("id < {}", search.before_id)
    return Statement(" WHERE " + " AND ".join(parts) if parts else "", arguments)


def select(search: Search, placeholder: Placeholder) -> Statement:
    """Newest first; paging (`before_id`) goes by id, which is never out of order, where two
    replicas' clocks or batches can put `at` slightly out of order."""
    clause = where(search, placeholder)
    limit = placeholder(len(clause.arguments) + 1)
    order = "id DESC" if search.before_id is not None else "at DESC, id DESC"
    return Statement(
        f"SELECT id, {', '.join(COLUMNS)} FROM history{clause.text} ORDER BY {order} LIMIT {limit}",
        [*clause.arguments, search.limit],
    )


def by_request_id(placeholder: Placeholder) -> str:
    """One postback by the gateway's own request id, never the caller's (a sender chooses
    that one, and could make it name another postback)."""
    return (
        f"SELECT id, {', '.join(COLUMNS)} FROM history "
        f"WHERE request_id = {placeholder(1)} ORDER BY id DESC LIMIT 1"
    )


def deliveries(count: int, placeholder: Placeholder) -> str:
    marks = ", ".join(placeholder(n) for n in range(1, count + 1))
    return (
        f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM history_deliveries "
        f"WHERE request_id IN ({marks}) ORDER BY at, id"
    )


def purge(column: str, placeholder: Placeholder) -> list[str]:
    """A user's deletion request: their postbacks' later deliveries, their sessions, then
    the postbacks (last: the count a purge answers is that statement's)."""
    assert column in ("telegram_id", "ymid")
    mark = placeholder(1)
    return [
        "DELETE FROM history_deliveries WHERE request_id IN "
        f"(SELECT request_id FROM history WHERE {column} = {mark})",
        f"DELETE FROM history_sessions WHERE {column} = {mark}",
        f"DELETE FROM history WHERE {column} = {mark}",
    ]


def expire(table: str, placeholder: Placeholder) -> str:
    """Delete at most a batch of the oldest rows older than the cutoff: short transactions,
    so writes never wait long behind retention."""
    return (
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
        f"WHERE at < {placeholder(1)} ORDER BY at LIMIT {placeholder(2)})"
    )


def report(
    groups: Sequence[str], day: str, real: str, search: Search, placeholder: Placeholder
) -> Statement:
    """Counts by outcome and event type within the groups, and the sum of estimated_price of
    the valued events the app took (forwarded and not refused, or queued): what Monetag's
    statistics should show. `day` is the store's expression for the UTC day of `at`, `real`
    its float type."""
    keys = [day if name == "day" else GROUPS[name] for name in groups]
    chosen = [f"{expression} AS {name}" for expression, name in zip(keys, groups, strict=True)]
    clause = where(search, placeholder)
    group_by = ", ".join([*keys, "outcome", "event_type"])
    taken = "((outcome = 'forwarded' AND reason IS NULL) OR outcome = 'queued')"
    return Statement(
        f"SELECT {', '.join([*chosen, 'outcome', 'event_type'])}, SUM(repeats) AS count, "
        f"SUM(CASE WHEN reward_event_type = 'valued' AND {taken} "
        f"THEN CAST(estimated_price AS {real}) ELSE 0 END) AS revenue "
        f"FROM history{clause.text} GROUP BY {group_by} ORDER BY {group_by}",
        clause.arguments,
    )
