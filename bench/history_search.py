"""History search: lookup times in a history of 10 million postbacks, on SQLite and PostgreSQL,
the bytes a postback costs there, and what writing a batch costs at that size.

1. Generates `--records` postbacks over the last 30 days, oldest first as the recorder writes
   them, each row the one `gateway.history.rows.row_of` makes from a `RequestRecord` shaped
   as the pipeline leaves it (the query without its key, the checks passed, the attempts);
   for speed the values are put into a row row_of made with placeholders, and one row in
   CHECK_EVERY is compared with row_of's own. Their values:
   - 200,000 users (telegram_id) of skewed activity: the n-th busiest sends in proportion to
     1/sqrt(n), so at 10M the busiest has about 11,000 postbacks, the median user about 35;
   - outcomes 90 % forwarded, 4 % duplicate (the ymid and key of a recent forward), 3 % queued
     (each with one later delivery), 2 % rejected (a wrong key: the fields as sent), 0.5 %
     invalid, 0.5 % upstream_error (three timed-out tries);
   - two replicas, whose request ids are the gateway's (a 12-hex prefix per process start, a
     restart every 3 days, then an 8-hex counter), and on every postback a caller's
     X-Request-ID of 32 hex (what ingress-nginx adds by default).
2. Loads them through the store's own `write`, LOAD_CHUNK rows a transaction, into the tables
   and indexes the store's `open` made (gateway/history/sql.py), so the indexes grow as they do
   in service. SQLite: the history's own file and writer thread (`SqliteHistory`), with a larger
   page cache for the load only; PostgreSQL: COPY, on a throwaway server started as the tests
   start theirs (tests/support/postgres.py), then VACUUM ANALYZE as autovacuum would.
3. Reopens the store as the gateway does (SQLite: its default settings; no ANALYZE, which the
   gateway never runs) and times `search` and `report` through asyncio, as the inspector and
   the CLI call them (decoding the rows included): `--lookups` each, after WARMUP unmeasured,
   keys drawn from random rows (users from the last 7 days, so each has rows to find).
4. Bytes per postback: the file (SQLite, after its last checkpoint) or pg_total_relation_size
   of both history tables, divided by the postbacks loaded; and each index's share.
5. Write cost: `store.write` of WRITE_BATCH rows made by `row_of` (what the recorder's flush
   does each time), `--write-batches` times in a row, into the full table; and the bytes
   that wrote a row (SQLite: what it handed write() for the WAL and the checkpoints' copies
   into the file, /proc/self/io `wchar`; PostgreSQL: its WAL).

Prints a table (lookups in ms; `rows`: the mean found) and writes the same as JSON (`--json`).
`--explain` also prints each lookup's plan. PostgreSQL needs the server (Debian package
`postgresql`; ./scripts/test installs it). At 10M the load takes about 10 minutes per store
and 10 GB of disk (PostgreSQL up to 8 GB more of WAL); a store's files go before the next's.

    .venv/bin/python bench/history_search.py [--records 10000000] [--store sqlite|postgres|both]
        [--lookups 200] [--write-batches 50] [--json FILE] [--explain] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import asyncpg
import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))  # run from a checkout; tests.support.postgres for the server

from common import machine  # noqa: E402

from gateway.config.model import PostgresUrl  # noqa: E402
from gateway.durable.outbox import StoreError  # noqa: E402
from gateway.history import postgres_history, sql, sqlite_history  # noqa: E402
from gateway.history.postgres_history import PostgresHistory  # noqa: E402
from gateway.history.rows import DeliveryRow, Row, delivery_row_of, row_of  # noqa: E402
from gateway.history.search import FIELD_COLUMNS, Search  # noqa: E402
from gateway.history.sqlite_history import SqliteHistory, history_path  # noqa: E402
from gateway.history.store import HistoryStore  # noqa: E402
from gateway.record import RequestRecord, UpstreamAttempt  # noqa: E402
from gateway.route import STEPS  # noqa: E402

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

DAY = 86_400.0
DAYS = 30
USERS = 200_000
REPORT_BY = ["day", "zone"]
WARMUP = 5  # lookups of each kind before the measured ones: connections opened, plans cached
LOAD_CHUNK = {"sqlite": 500_000, "postgres": 20_000}  # rows a transaction while loading
BLOCK = 10_000  # rows made at once (the random draws' order depends on it)
LONG_REPORTS = 10  # of the 7-day report, each reading 2.3M rows at 10M postbacks
SQLITE_LOAD_CACHE_KIB = 6_000_000  # the writer's page cache while loading: a chunk's pages
WRITE_BATCH = 1000  # the recorder's BATCH
# the bench server's settings beside the tests' (fsync stays on): memory a server holding
# 10M postbacks would be given, and checkpoints far enough apart not to dominate the load
POSTGRES_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min"}


class Kind(NamedTuple):
    outcome: str
    reason: str | None
    status: int
    route: str  # `rewards`: delivery queued
    share: float


KINDS = (
    Kind("forwarded", None, 200, "tapper", 0.90),
    Kind("duplicate", "duplicate", 200, "tapper", 0.04),
    Kind("queued", None, 200, "rewards", 0.03),
    Kind("rejected", "secret_wrong", 403, "tapper", 0.02),
    Kind("invalid", "invalid_fields", 400, "tapper", 0.005),
    Kind("upstream_error", "upstream_timeout", 504, "tapper", 0.005),
)
KIND_WEIGHTS = list(itertools.accumulate(kind.share for kind in KINDS))
# the sent names (config.yaml's aliases, and two canonical ones) -> canonical, as sent
ALIASES = {
    "uid": "ymid",
    "event": "event_type",
    "zone": "zone_id",
    "sub_zone_id": "sub_zone_id",
    "source": "request_var",
    "telegram_id": "telegram_id",
    "value": "reward_event_type",
    "amount": "estimated_price",
}
ZONES = {"8123456": 0.7, "8123457": 0.2, "8240113": 0.1}
SOURCES = ("level_end", "daily_bonus", "extra_life", "shop", "spin")
PEER, CLIENT = "10.0.3.17", "203.0.113.45"  # a load balancer; Monetag's sending address
REPLICAS = ("monetag-gateway-7c9d5f8b6-2xk4q", "monetag-gateway-7c9d5f8b6-9hv7m")
APP_ANSWER = '{"ok":true}'
CHECK_EVERY = 1000  # one generated row in this many is compared with row_of's
PLACEHOLDER_NUMBERS = {"latency_ms": 1111.125, "took": 2222.125, "tried_at": 3333333333.125}
REPEATED = (*ALIASES.values(), "dedup_key")  # what a duplicate has of the postback it repeats

# What one postback's row is made of: its FIELD_COLUMNS, `at`, `replica`, `request_id`,
# `caller_request_id`, `dedup_key` (bytes), `latency_ms`, and its try's `took` and `tried_at`.
Values = dict[str, Any]


def names_of(route: str) -> Mapping[str, str]:
    return ALIASES


def record_of(kind: Kind, values: Values) -> RequestRecord:
    """The record the pipeline leaves for a postback of this kind: the query as sent minus its
    key, the checks it passed, the app's answers."""
    record = RequestRecord(
        values["request_id"],
        caller_request_id=values["caller_request_id"],
        route=kind.route,
        peer=PEER,
        client=CLIENT,
        outcome=kind.outcome,
        reason=kind.reason,
    )
    fields = {name: values[name] for name in ALIASES.values()}
    record.query = [(sent, fields[canonical]) for sent, canonical in ALIASES.items()]
    if kind.outcome == "rejected":  # refused before normalizing: row_of keeps fields as sent
        record.passed, record.failed_check = ["client", "allowlist"], "secret"
        record.detail = "wrong key in query"
        return record
    record.fields = fields
    if kind.outcome == "invalid":
        record.passed, record.failed_check = list(STEPS[:4]), "validate"
        record.detail = "estimated_price: not a decimal number"
        return record
    record.passed, record.dedup_key = list(STEPS), values["dedup_key"]
    if kind.outcome == "forwarded":
        record.upstream_status = 200
        answered = UpstreamAttempt("app", 200, None, values["took"], APP_ANSWER, values["tried_at"])
        record.attempts = [answered]
    elif kind.outcome == "upstream_error":
        timed_out = UpstreamAttempt("app", None, "timeout after 5s", 5000.0, "", values["tried_at"])
        record.attempts = [timed_out] * 3
    return record


def real_row(kind: Kind, values: Values) -> Row:
    """The row the recorder writes for this postback."""
    record = record_of(kind, values)
    return row_of(
        record, kind.status, values["at"], values["latency_ms"], values["replica"], names_of
    )


class FastRow:
    """`real_row`'s row for postbacks of one kind, several times faster: the values put into
    the row `row_of` made for one with placeholders. Compared with `real_row` as it goes."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        placeholders: Values = {name: f"@{name}@" for name in (*ALIASES.values(), "request_id")}
        placeholders |= {"at": 0.0, "replica": "", "caller_request_id": "", "dedup_key": b""}
        detail = real_row(kind, placeholders | PLACEHOLDER_NUMBERS)[-1].replace("%", "%%")
        for name in ALIASES.values():
            detail = detail.replace(f'"@{name}@"', f'"%({name})s"')
        for name, number in PLACEHOLDER_NUMBERS.items():
            detail = detail.replace(orjson.dumps(number).decode(), f"%({name})s")
        assert "@" not in detail and detail.count("%(") > len(ALIASES), detail
        self._detail = detail
        self._keyed = kind.outcome not in ("rejected", "invalid")

    def row(self, values: Values) -> Row:
        kind = self.kind
        return (
            values["at"],
            values["replica"],
            kind.route,
            values["request_id"],
            values["caller_request_id"],
            CLIENT,
            kind.outcome,
            kind.reason,
            kind.status,
            *[values[name] for name in FIELD_COLUMNS],
            values["dedup_key"].hex() if self._keyed else None,
            1,
            self._detail % values,
        )


class Replica:
    """Request ids as one replica makes them: a prefix per process start, then a counter."""

    def __init__(self, name: str, start: float, rng: random.Random) -> None:
        self.name = name
        self._rng = rng
        self._restart_at = start
        self._prefix = ""
        self._count = 0

    def request_id(self, at: float) -> str:
        if at >= self._restart_at:
            self._restart_at += 3 * DAY * (0.5 + self._rng.random())
            self._prefix, self._count = f"{self._rng.getrandbits(48):012x}", 0
        self._count += 1
        return f"{self._prefix}{self._count:08x}"


class Postbacks:
    """The generated history: its rows oldest first, a chunk at a time, and the keys of the
    rows drawn for lookups (`keys`: telegram_id, ymid, request_id, caller_request_id)."""

    def __init__(self, records: int, end: float, lookups: int, seed: int) -> None:
        rng = self._rng = random.Random(seed)
        self.records, self.end = records, end
        self._start = end - DAYS * DAY
        self._step = DAYS * DAY / records
        self._users = [str(rng.randrange(5_000_000_000, 8_000_000_000)) for _ in range(USERS)]
        self._user_weights = list(itertools.accumulate(n**-0.5 for n in range(1, USERS + 1)))
        self._prices = [f"{rng.lognormvariate(-6, 0.8):.6f}" for _ in range(512)]
        self._latencies = [round(rng.lognormvariate(1.2, 0.5), 2) for _ in range(1024)]
        self._replicas = [Replica(name, self._start, rng) for name in REPLICAS]
        self._fast = {kind: FastRow(kind) for kind in KINDS}
        self._recent: deque[Values] = deque(maxlen=2000)  # forwarded: what duplicates repeat
        self._index = 0
        recent = int(records * (DAYS - 7) / DAYS)
        self._drawn = set(rng.sample(range(records), min(lookups, records)))
        self._drawn_users = set(rng.sample(range(recent, records), min(lookups, records - recent)))
        self.keys: dict[str, list[str]] = {
            "telegram_id": [],
            "ymid": [],
            "request_id": [],
            "caller_request_id": [],
        }

    def chunks(self, size: int) -> Iterator[tuple[list[Row], list[DeliveryRow]]]:
        """The whole history, about `size` rows at a time; made BLOCK rows at a time, so that
        it is the same history whatever the size (each store loads the same postbacks)."""
        while self._index < self.records:
            rows: list[Row] = []
            deliveries: list[DeliveryRow] = []
            while len(rows) < size and self._index < self.records:
                more, later = self.chunk(min(BLOCK, self.records - self._index))
                rows += more
                deliveries += later
            yield rows, deliveries

    def chunk(self, size: int, since: float | None = None) -> tuple[list[Row], list[DeliveryRow]]:
        """The next `size` rows of the history in time order. `since`: new rows from then on,
        a millisecond apart, each made by row_of, none drawn for lookups."""
        rng = self._rng
        if since is None:
            first, self._index = self._index, self._index + size
            indices: Sequence[int] = range(first, first + size)
            times = [self._start + (index + rng.random()) * self._step for index in indices]
        else:
            indices, times = [-1] * size, [since + n / 1000 for n in range(size)]
        rows: list[Row] = []
        deliveries: list[DeliveryRow] = []
        for index, at, kind, values in zip(
            indices,
            times,
            rng.choices(KINDS, cum_weights=KIND_WEIGHTS, k=size),
            self._values(size),
            strict=True,
        ):
            replica = self._replicas[rng.getrandbits(1)]
            if kind.outcome == "duplicate" and self._recent:
                repeated = self._recent[rng.randrange(len(self._recent))]
                values |= {name: repeated[name] for name in REPEATED}
            elif kind.outcome == "forwarded":
                self._recent.append(values)
            values["at"] = values["tried_at"] = at
            values["replica"], values["request_id"] = replica.name, replica.request_id(at)
            if since is not None:
                rows.append(real_row(kind, values))
            else:
                rows.append(self._fast[kind].row(values))
                if index % CHECK_EVERY == 0:
                    assert rows[-1] == real_row(kind, values), (rows[-1], real_row(kind, values))
            if kind.outcome == "queued":
                later = at + 0.3
                tried = UpstreamAttempt("app", 200, None, values["took"], APP_ANSWER, later)
                deliveries.append(
                    delivery_row_of(
                        values["request_id"], kind.route, "delivered", tried, replica.name, later
                    )
                )
            if index in self._drawn:
                for name in ("ymid", "request_id", "caller_request_id"):
                    self.keys[name].append(values[name])
            if index in self._drawn_users:
                self.keys["telegram_id"].append(values["telegram_id"])
        return rows, deliveries

    def _values(self, size: int) -> Iterator[Values]:
        """The values of `size` new postbacks, apart from their time and request id."""
        rng = self._rng
        columns = zip(
            rng.choices(self._users, cum_weights=self._user_weights, k=size),
            rng.choices(list(ZONES), list(ZONES.values()), k=size),
            rng.choices(("impression", "click"), (85, 15), k=size),
            rng.choices(("valued", "not_valued"), (80, 20), k=size),
            rng.choices(SOURCES, k=size),
            rng.choices(self._prices, k=size),
            strict=True,
        )
        for user, zone, event, reward, source, price in columns:
            yield {
                "ymid": f"{rng.getrandbits(64):016x}",
                "event_type": event,
                "zone_id": zone,
                "sub_zone_id": str(9_100_000 + rng.getrandbits(5)),
                "request_var": source,
                "telegram_id": user,
                "reward_event_type": reward,
                "estimated_price": price,
                "caller_request_id": f"{rng.getrandbits(128):032x}",
                "dedup_key": rng.getrandbits(128).to_bytes(16, "big"),
                "latency_ms": self._latencies[rng.getrandbits(10)],
                "took": self._latencies[rng.getrandbits(10)],
            }


# -- the stores ---------------------------------------------------------------------------------


class BenchStore(Protocol):
    name: str

    async def load(self, postbacks: Postbacks) -> float:
        """Write the whole history: the seconds spent waiting for rows to be made."""

    def opened(self) -> contextlib.AbstractAsyncContextManager[HistoryStore]: ...

    async def sizes(self) -> dict[str, int]:
        """Bytes on disk: `total`, then the table and each index (names from sql.py)."""

    async def plan(self, search: Search, report: bool) -> str:
        """How the store runs the lookup's statement (`report`: a report's)."""

    async def written(self) -> int:
        """A count of bytes written so far: SQLite's write() calls (WAL frames and the
        checkpoints' copies), PostgreSQL's WAL."""

    def remove(self) -> None: ...


async def load(history: HistoryStore, postbacks: Postbacks, chunk: int) -> float:
    """Write every chunk with the store's own `write`, making the next one meanwhile: the
    seconds spent waiting for a chunk to be made (the rest went to writing)."""
    chunks = postbacks.chunks(chunk)
    waited = 0.0
    pending = asyncio.create_task(asyncio.to_thread(next, chunks, None))
    while True:
        started = time.perf_counter()
        rows = await pending
        waited += time.perf_counter() - started
        if rows is None:
            return waited
        pending = asyncio.create_task(asyncio.to_thread(next, chunks, None))
        await history.write(*rows)


class SqliteStore:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.store_path = directory / "gateway.db"  # the store's file; the history is beside
        self.path = Path(history_path(str(self.store_path)))

    async def load(self, postbacks: Postbacks) -> float:
        async with self._opened(SQLITE_LOAD_CACHE_KIB) as history:
            return await load(history, postbacks, LOAD_CHUNK[self.name])

    def opened(self) -> contextlib.AbstractAsyncContextManager[HistoryStore]:
        return self._opened(None)

    @contextlib.asynccontextmanager
    async def _opened(self, cache_kib: int | None) -> AsyncIterator[HistoryStore]:
        """The store as a gateway opens it; `cache_kib`: the writer's page cache, if not the
        default (the file is the same either way)."""
        history = SqliteHistory(str(self.store_path))
        assert history.path == str(self.path)
        try:
            await history.open()
            if cache_kib is not None:
                await history._writer.run(lambda c: c.execute(f"PRAGMA cache_size=-{cache_kib}"))
            yield history
        finally:
            await history.close()  # its writer, the last connection: the WAL is checkpointed

    async def sizes(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.path)) as connection:
            parts = connection.execute(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            ).fetchall()
        wal = self.path.with_name(self.path.name + "-wal")
        total = self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return {"total": total, **{name: int(size) for name, size in parts}}

    async def plan(self, search: Search, report: bool) -> str:
        statement = (
            sql.report(REPORT_BY, sqlite_history.DAY, "REAL", search, sql.qmark)
            if report
            else sql.select(search, sql.qmark)
        )
        with contextlib.closing(sqlite3.connect(self.path)) as connection:
            found = connection.execute(f"EXPLAIN QUERY PLAN {statement.text}", statement.arguments)
            return "\n".join(str(row[-1]) for row in found)

    async def written(self) -> int:
        # wchar: what this process passed to write() (nothing but SQLite writes meanwhile);
        # not write_bytes, which counts the page-cache flushes this process happens to submit
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
        raise RuntimeError("no wchar in /proc/self/io")

    def remove(self) -> None:
        for path in self.path.parent.glob(self.path.name + "*"):
            path.unlink()


class PostgresStore:
    name = "postgres"

    def __init__(self) -> None:
        from tests.support.postgres import PostgresCluster

        self.cluster: PostgresCluster = PostgresCluster()
        try:
            self.cluster.start()
            for setting, value in POSTGRES_SETTINGS.items():
                self.cluster.sql(f"ALTER SYSTEM SET {setting} = '{value}'")
            self.cluster.stop()
            self.cluster.start()
            self.url = self.cluster.create_database("history_bench")
        except BaseException:
            self.cluster.remove()
            raise
        names = ("server_version", "fsync", "synchronous_commit", *POSTGRES_SETTINGS)
        self.settings = {name: self.cluster.sql(f"SHOW {name}").strip() for name in names}

    async def load(self, postbacks: Postbacks) -> float:
        async with self.opened() as history:
            waited = await load(history, postbacks, LOAD_CHUNK[self.name])
        connection = await asyncpg.connect(self.url)
        try:
            for table in ("history", "history_deliveries"):
                await connection.execute(f"VACUUM ANALYZE {table}", timeout=3600)
            await connection.execute("CHECKPOINT", timeout=3600)
        finally:
            await connection.close()
        return waited

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[HistoryStore]:
        history = PostgresHistory(PostgresUrl(self.url))
        try:
            await history.open()
            yield history
        finally:
            await history.close()

    async def sizes(self) -> dict[str, int]:
        connection = await asyncpg.connect(self.url)
        try:
            total = await connection.fetchval(
                "SELECT pg_total_relation_size('history') "
                "+ pg_total_relation_size('history_deliveries')"
            )
            parts = await connection.fetch(
                "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') ORDER BY 2 DESC"
            )
        finally:
            await connection.close()
        return {"total": int(total), **{row[0]: int(row[1]) for row in parts}}

    async def plan(self, search: Search, report: bool) -> str:
        statement = (
            sql.report(REPORT_BY, postgres_history.DAY, postgres_history.REAL, search, sql.dollar)
            if report
            else sql.select(search, sql.dollar)
        )
        connection = await asyncpg.connect(self.url)
        try:
            found = await connection.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS) {statement.text}", *statement.arguments
            )
        finally:
            await connection.close()
        return "\n".join(row[0] for row in found)

    async def written(self) -> int:
        connection = await asyncpg.connect(self.url)
        try:
            return int(await connection.fetchval("SELECT pg_current_wal_lsn() - '0/0'"))
        finally:
            await connection.close()

    def remove(self) -> None:
        self.cluster.remove()


# -- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lookup:
    name: str
    searches: list[Search]
    run: Callable[[HistoryStore, Search], Awaitable[int]]  # how many rows (or report lines)
    warmup: int = WARMUP


async def _search(store: HistoryStore, search: Search) -> int:
    return len(await store.search(search))


async def _report(store: HistoryStore, search: Search) -> int:
    return len(await store.report(REPORT_BY, search))


def lookups(postbacks: Postbacks, count: int) -> list[Lookup]:
    keys, end = postbacks.keys, postbacks.end
    repeated = [Search()] * count
    return [
        Lookup(
            "telegram_id, since 7d",
            [Search(telegram_id=user, since=end - 7 * DAY) for user in keys["telegram_id"]],
            _search,
        ),
        Lookup("ymid", [Search(ymid=ymid) for ymid in keys["ymid"]], _search),
        Lookup("request_id (ours)", [Search(request_id=i) for i in keys["request_id"]], _search),
        Lookup(
            "request_id (caller's)",
            [Search(request_id=i) for i in keys["caller_request_id"]],
            _search,
        ),
        Lookup("newest, no filter", repeated, _search),
        Lookup(
            "outcome=forwarded, since 1d",
            [Search(outcome="forwarded", since=end - DAY)] * count,
            _search,
        ),
        Lookup(
            "outcome=rejected, since 1d",
            [Search(outcome="rejected", since=end - DAY)] * count,
            _search,
        ),
        Lookup("report day,zone, 1 day", [Search(since=end - DAY)] * count, _report),
        Lookup(
            "report day,zone, 7 days",
            [Search(since=end - 7 * DAY)] * min(count, LONG_REPORTS),
            _report,
            warmup=1,
        ),
    ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


async def time_lookup(store: HistoryStore, lookup: Lookup) -> dict[str, Any]:
    """Times to the answer, or to the StoreError (a statement timeout), which is counted."""
    seconds, found, failures = [], [], []
    for number, search in enumerate([*lookup.searches[: lookup.warmup], *lookup.searches]):
        started = time.perf_counter()
        try:
            rows, failure = await lookup.run(store, search), None
        except StoreError as error:
            rows, failure = 0, str(error)
        if number >= lookup.warmup:
            seconds.append(time.perf_counter() - started)
            found.append(rows)
            if failure is not None:
                failures.append(failure)
    return {
        "p50_ms": percentile(seconds, 0.5) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
        "max_ms": max(seconds) * 1000,
        "mean_rows": sum(found) / len(found),
        "empty": sum(1 for n in found if n == 0),
        "count": len(found),
        "failed": len(failures),
        "error": failures[-1] if failures else None,
    }


async def time_writes(
    bench: BenchStore, store: HistoryStore, postbacks: Postbacks, batches: int
) -> dict[str, float]:
    """The recorder's flush into the full table: batches of row_of rows, one at a time."""
    made = [postbacks.chunk(WRITE_BATCH, since=time.time()) for _ in range(batches)]
    seconds = []
    written = await bench.written()
    for rows, deliveries in made:
        started = time.perf_counter()
        await store.write(rows, deliveries)
        seconds.append(time.perf_counter() - started)
    written = await bench.written() - written
    return {
        "rows_per_second": batches * WRITE_BATCH / sum(seconds),
        "bytes_written_per_row": written / (batches * WRITE_BATCH),
        "batch_p50_ms": percentile(seconds, 0.5) * 1000,
        "batch_p99_ms": percentile(seconds, 0.99) * 1000,
        "batches": batches,
    }


async def measure(bench: BenchStore, args: argparse.Namespace) -> dict[str, Any]:
    postbacks = Postbacks(args.records, time.time(), args.lookups, args.seed)
    started = time.perf_counter()
    waited = await bench.load(postbacks)
    loaded = time.perf_counter() - started
    print(
        f"{bench.name}: {args.records:,} postbacks loaded in {loaded:.0f} s, {waited:.0f} s of"
        " them waiting for rows to be made",
        file=sys.stderr,
        flush=True,
    )
    sizes = await bench.sizes()
    result: dict[str, Any] = {
        "load_seconds": loaded,
        "load_seconds_waiting_for_rows": waited,
        "bytes": sizes,
        "bytes_per_postback": per_postback(sizes, args.records),
        "lookups": {},
        "plans": {},
    }
    async with bench.opened() as store:
        for lookup in lookups(postbacks, args.lookups):
            result["lookups"][lookup.name] = await time_lookup(store, lookup)
            report = lookup.run is _report
            result["plans"][lookup.name] = await bench.plan(lookup.searches[0], report)
        result["write"] = await time_writes(bench, store, postbacks, args.write_batches)
    if isinstance(bench, PostgresStore):
        result["postgres"] = bench.settings
    return result


# -- the report -----------------------------------------------------------------------------------


def show(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    stores = list(results)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {machine()}")
    print(
        f"history of {args.records:,} postbacks over {DAYS} days, {USERS:,} users; "
        f"{args.lookups} lookups each after {WARMUP} unmeasured; times in ms"
    )
    for name, result in results.items():
        if "postgres" in result:
            shown = ", ".join(f"{key}={value}" for key, value in result["postgres"].items())
            print(f"{name}: PostgreSQL {shown}")
    print(f"{'':<30}" + "".join(f"{name:>26}" for name in stores))
    print(f"{'lookup':<30}" + f"{'p50':>9}{'p99':>9}{'rows':>8}" * len(stores))
    for lookup in next(iter(results.values()))["lookups"]:
        line = f"{lookup:<30}"
        for name in stores:
            timing = results[name]["lookups"][lookup]
            line += f"{timing['p50_ms']:>9.2f}{timing['p99_ms']:>9.2f}{timing['mean_rows']:>8.1f}"
        print(line)
    for name in stores:
        for lookup, timing in results[name]["lookups"].items():
            if timing["failed"]:
                failed = f"{timing['failed']} of {timing['count']} failed"
                print(f"{name}: {lookup}: {failed}: {timing['error']}")
    for part in next(iter(results.values()))["bytes_per_postback"]:
        label = "bytes per postback" if part == "all" else f"  {part}"
        print(
            f"{label:<30}"
            + "".join(f"{results[name]['bytes_per_postback'][part]:>26,.0f}" for name in stores)
        )
    writes = [results[name]["write"] for name in stores]
    print(
        f"{'write rows/s, 1000 a batch':<30}"
        + "".join(f"{w['rows_per_second']:>26,.0f}" for w in writes)
    )
    print(
        f"{'  a batch, p50 / p99 ms':<30}"
        + "".join(f"{w['batch_p50_ms']:>16.1f} / {w['batch_p99_ms']:>6.1f}" for w in writes)
    )
    print(
        f"{'  bytes written a row (1)':<30}"
        + "".join(f"{w['bytes_written_per_row']:>26,.0f}" for w in writes)
    )
    print(f"{'load, s':<30}" + "".join(f"{results[n]['load_seconds']:>26,.0f}" for n in stores))
    for name in stores:
        sizes = results[name]["bytes"]
        parts = ", ".join(f"{index} {sizes[index] / args.records:.0f}" for index in _indexes(sizes))
        print(f"{name} bytes per postback by index: {parts}")
    print("(1) SQLite: to its WAL and, at checkpoints, to the file; PostgreSQL: to its WAL")
    if args.explain:
        for name in stores:
            for lookup, plan in results[name]["plans"].items():
                print(f"--- {name}: {lookup}\n{plan}")


def per_postback(sizes: dict[str, int], records: int) -> dict[str, float]:
    """The bytes on disk divided by the postbacks loaded: all, and what they went to."""
    indexes = sum(sizes[name] for name in _indexes(sizes))
    deliveries = sum(size for name, size in sizes.items() if name.startswith("history_deliv"))
    parts = {
        "all": sizes["total"],
        "history table": sizes["history"],
        "its indexes": indexes,
        "deliveries, with indexes": deliveries,
    }
    parts["the rest"] = sizes["total"] - sizes["history"] - indexes - deliveries
    return {part: size / records for part, size in parts.items()}


def _indexes(sizes: dict[str, int]) -> list[str]:
    """The history table's indexes (sql.py's, and PostgreSQL's primary key), biggest first."""
    return [
        name
        for name in sizes
        if name.startswith("history_") and not name.startswith("history_deliveries")
    ]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--lookups", type=int, default=200, help="of each kind")
    parser.add_argument("--write-batches", type=int, default=50)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--explain", action="store_true", help="print each lookup's plan")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.records < 1000 or args.lookups < WARMUP or args.write_batches < 1:
        parser.error("--records at least 1000, --lookups at least 5, --write-batches at least 1")
    return args


async def main() -> None:
    args = parse_arguments()
    names = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    workdir = Path(tempfile.mkdtemp(prefix="history-bench-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            bench: BenchStore = SqliteStore(workdir) if name == "sqlite" else PostgresStore()
            try:
                results[name] = await measure(bench, args)
            finally:
                bench.remove()  # the next store gets the disk and the page cache
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    show(results, args)
    if args.json:
        report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "settings": vars(args)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**report, "stores": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
