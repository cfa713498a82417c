"""The embedded SQLite store: one writer thread, group commit, WAL with synchronous=FULL.

Every operation is a function of a connection. The writer thread takes all operations that
queued up while the previous commit ran and executes them in one transaction (each inside its
own savepoint, so one failing operation does not sink the others), then commits once: durable
writes cost one fsync per batch, not per request. A failed commit fails every operation of the
batch, so nothing is reported written that is not on disk.

WAL with `synchronous=FULL` fsyncs the write-ahead log at every commit, which makes a committed
transaction survive power loss, not just a process crash.

The store is *available* only while writes commit: a batch that wrote and committed says so, a
failure of any kind says not, and reads say nothing (on a full disk `SELECT 1` still answers
while every write fails). `ping` therefore writes a row. A gateway opens the file `exclusive`:
it holds a lock beside it (`<path>.lock`, with its pid and host) so a second gateway on the same
file refuses to start instead of delivering everything again, and it checks the file
(`PRAGMA quick_check`, within INTEGRITY_CHECK_SECONDS) so a damaged one is refused at start.
The `queue` command opens it beside the running gateway, neither locking nor checking.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .outbox import Availability, StoreError, StoreRefusedContent

log = logging.getLogger("gateway.store")
__all__ = ["SqliteWriter", "StoreError", "connect"]

T = TypeVar("T")
MAX_BATCH = 512
SCHEMA_VERSION = 1
INTEGRITY_CHECK_SECONDS = 10.0  # a larger file starts unchecked, with a warning


def connect(path: str, schema: str) -> sqlite3.Connection:
    """A connection with the settings every user of the file needs (the CLI too). `schema` is
    what a new file is given: the tables' CREATE statements, from the modules that use them."""
    _create_private(path)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout=5000")
    # Check whose file this is before changing anything in it (even its journal mode).
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    (tables,) = connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    if tables and version != SCHEMA_VERSION:
        connection.close()
        raise sqlite3.DatabaseError(
            f"{path} has schema version {version}; this gateway reads version {SCHEMA_VERSION}"
        )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    if not tables:
        # schema and version in one transaction: a crash cannot leave one without the other.
        # IMMEDIATE takes the write lock up front, so a second opener waits (busy_timeout)
        # instead of failing to upgrade a read lock.
        connection.executescript(
            f"BEGIN IMMEDIATE; {schema} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        )
    return connection


def _create_private(path: str) -> None:
    """A new store file readable by its owner only: it holds ymids, user ids and client
    addresses (never a key). SQLite gives its -wal and -shm files the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # an existing file keeps the mode its operator gave it
    except OSError:
        pass  # sqlite3.connect says what is wrong with the path, in the store's words


@dataclass
class _Job(Generic[T]):
    operation: Callable[[sqlite3.Connection], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


class SqliteWriter:
    def __init__(
        self,
        path: str,
        schema: str,
        on_commit: Callable[[bool], None] = lambda ok: None,
        *,
        exclusive: bool = False,
    ) -> None:
        self.path = path
        self._schema = schema
        self._on_commit = on_commit  # called from the writer thread: must be thread-safe
        self._exclusive = exclusive  # a gateway's store: locked for it, checked at open
        self._lock: int | None = None  # the lock file's descriptor while held
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # whether writes commit: decided by the writer thread after each batch, set in the
        # event loop's thread before the batch's callers hear their results
        self.availability = Availability()

    async def open(self) -> None:
        """Create the file and schema (raises StoreError) and start the writer thread."""
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot open store {self.path!r}: {error}") from None
        if self._exclusive:
            self._lock = _take_lock(self.path)
        try:
            await self._start()
        except BaseException:
            self._release_lock()
            raise

    async def _start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(loop, ready), name="gateway-store", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        while True:  # operations that arrived after the last batch: refused, not forgotten
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _settle(job.future, None, StoreError("store is closed"))
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the kernel lets go of the lock with the descriptor
            self._lock = None

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` in the next committed batch; raises StoreError if not committed."""
        if self._thread is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(operation, loop, future))
        return await future

    def _serve(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            connection = self._connect()
        except StoreError as error:
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(connection, batch)
        finally:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection, the file checked first if it is a gateway's store."""
        try:
            connection = connect(self.path, self._schema)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open store {self.path!r}: {error}") from None
        if self._exclusive:
            try:
                _check_integrity(connection, self.path)
            except StoreError:
                connection.close()
                raise
        return connection

    def _next_batch(self) -> list[_Job[Any]] | None:
        first = self._jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _run_batch(self, connection: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        changes_before = connection.total_changes
        store_failed = False  # an operation failed for the store's sake, not its content's
        try:
            connection.execute("BEGIN IMMEDIATE")
            for job in batch:
                connection.execute("SAVEPOINT operation")
                try:
                    outcomes.append((job.operation(connection), None))
                    connection.execute("RELEASE operation")
                except Exception as error:
                    if isinstance(error, sqlite3.Error) and not connection.in_transaction:
                        raise  # SQLite rolled the whole transaction back (disk full...)
                    connection.execute("ROLLBACK TO operation")
                    connection.execute("RELEASE operation")
                    raised = _as_store_error(error)
                    store_failed |= isinstance(raised, StoreError) and not isinstance(
                        raised, StoreRefusedContent
                    )
                    outcomes.append((None, raised))
            connection.execute("COMMIT")
            self._on_commit(True)
        except sqlite3.Error as error:
            self._on_commit(False)
            log.error("store commit failed", extra={"detail": str(error), "batch": len(batch)})
            with contextlib.suppress(sqlite3.Error):
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            outcomes = [(None, _as_store_error(error))] * len(batch)
            store_failed = True
        loop = batch[0].loop
        if store_failed:
            detail = next(str(failure) for _, failure in outcomes if failure is not None)
            loop.call_soon_threadsafe(self.availability.set, False, detail)
        elif connection.total_changes > changes_before:
            loop.call_soon_threadsafe(self.availability.set, True)  # a write is on disk
        for job, (result, failure) in zip(batch, outcomes, strict=True):
            job.loop.call_soon_threadsafe(_settle, job.future, result, failure)


def _as_store_error(error: BaseException) -> BaseException:
    if isinstance(error, sqlite3.IntegrityError | sqlite3.DataError):
        return StoreRefusedContent(f"{type(error).__name__}: {error}")
    if isinstance(error, sqlite3.Error):
        return StoreError(f"{type(error).__name__}: {error}")
    return error


def probe(connection: sqlite3.Connection) -> None:
    """A write the store must commit to count as available (a read succeeds on a full disk)."""
    connection.execute("CREATE TABLE IF NOT EXISTS store_probe (id INTEGER PRIMARY KEY, at REAL)")
    connection.execute("INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, ?)", (time.time(),))


def _take_lock(path: str) -> int:
    """Hold `<path>.lock` for this process (flock: let go by the kernel if it dies), with its
    pid and host written in it; StoreError naming the holder if another gateway has it."""
    lock_path = f"{path}.lock"
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise StoreError(f"cannot open store {path!r}: {lock_path}: {error}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise StoreError(
            f"store {path} is in use by another gateway ({holder}): one gateway per SQLite "
            "file; stop it first (replicas share a PostgreSQL store instead)"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return descriptor


def _check_integrity(connection: sqlite3.Connection, path: str) -> None:
    """Refuse a damaged file (StoreError); a check that outlasts INTEGRITY_CHECK_SECONDS is
    stopped and the file taken as it is, with a warning."""
    deadline = time.monotonic() + INTEGRITY_CHECK_SECONDS
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as error:
        if "interrupt" not in str(error):
            raise _damaged(path, str(error)) from None
        log.warning(
            "store check not finished in time; starting without it",
            extra={"path": path, "seconds": INTEGRITY_CHECK_SECONDS},
        )
        return
    finally:
        connection.set_progress_handler(None, 0)
    if problems != ["ok"]:
        raise _damaged(path, "; ".join(problems))


def _damaged(path: str, found: str) -> StoreError:
    return StoreError(
        f"store {path} is damaged ({found[:300]}): move it aside and restore a backup, or "
        "start on a new file (its pending events would be lost)"
    )


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the caller went away; the write happened (or not) all the same
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
