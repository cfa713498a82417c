"""The embedded SQLite store: one writer thread, group commit, WAL with synchronous=FULL.

Every operation is a function of a connection. The writer thread takes all operations that
queued up while the previous commit ran and executes them in one transaction (each inside its
own savepoint, so one failing operation does not sink the others), then commits once: durable
writes cost one fsync per batch, not per request. A failed commit fails every operation of the
batch, so nothing is reported written that is not on disk.

WAL with `synchronous=FULL` fsyncs the write-ahead log at every commit, which makes a committed
transaction survive power loss, not just a process crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .outbox import StoreError

log = logging.getLogger("gateway.store")
__all__ = ["Store", "StoreError", "connect"]

T = TypeVar("T")
MAX_BATCH = 512
SCHEMA_VERSION = 1


def connect(path: str, schema: str) -> sqlite3.Connection:
    """A connection with the settings every user of the file needs (the CLI too). `schema` is
    what a new file is given: the tables' CREATE statements, from the modules that use them."""
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


@dataclass
class _Job(Generic[T]):
    operation: Callable[[sqlite3.Connection], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


class Store:
    def __init__(
        self, path: str, schema: str, on_commit: Callable[[bool], None] = lambda ok: None
    ) -> None:
        self.path = path
        self._schema = schema
        self._on_commit = on_commit  # called from the writer thread: must be thread-safe
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.available = True  # the last operation succeeded

    async def open(self) -> None:
        """Create the file and schema (raises StoreError) and start the writer thread."""
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot open store {self.path!r}: {error}") from None
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

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation` in the next committed batch; raises StoreError if not committed."""
        if self._thread is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(operation, loop, future))
        try:
            result = await future
        except StoreError:
            self.available = False
            raise
        self.available = True
        return result

    def _serve(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            connection = connect(self.path, self._schema)
        except sqlite3.Error as error:
            message = f"cannot open store {self.path!r}: {error}"
            loop.call_soon_threadsafe(_settle, ready, None, StoreError(message))
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(connection, batch)
        finally:
            connection.close()

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
                    outcomes.append((None, _as_store_error(error)))
            connection.execute("COMMIT")
            self._on_commit(True)
        except sqlite3.Error as error:
            self._on_commit(False)
            log.error("store commit failed", extra={"detail": str(error), "batch": len(batch)})
            with contextlib.suppress(sqlite3.Error):
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            outcomes = [(None, _as_store_error(error))] * len(batch)
        for job, (result, failure) in zip(batch, outcomes, strict=True):
            job.loop.call_soon_threadsafe(_settle, job.future, result, failure)


def _as_store_error(error: BaseException) -> BaseException:
    if isinstance(error, sqlite3.Error):
        return StoreError(f"{type(error).__name__}: {error}")
    return error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the caller went away; the write happened (or not) all the same
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
