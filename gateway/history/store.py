"""What a history store does, whichever the config names (`store.path` or `store.url`).

Every method raises StoreError when the store fails. Nothing here touches the outbox or its
availability: a failing history is counted and logged by the recorder, and readiness does not
depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..config import StoreConfig
from ..senders import Sender, SenderRow
from .rows import DeliveryRow, Row
from .search import LaterDelivery, Recorded, ReportLine, Search
from .sessions import FillRate, Missed, SessionEvent, SessionRow


class HistoryStore(Protocol):
    async def open(self) -> None:
        """Create the tables if they are not there yet."""

    async def close(self) -> None: ...

    async def write(
        self,
        rows: Sequence[Row],
        deliveries: Sequence[DeliveryRow],
        senders: Sequence[SenderRow] = (),
        sessions: Sequence[SessionRow] = (),
    ) -> None:
        """One transaction for the batch; each session merged into its ymid's row."""

    async def search(self, search: Search) -> list[Recorded]: ...

    async def get(self, request_id: str) -> Recorded | None:
        """The postback with this request id of the gateway's (not the caller's), if kept."""

    async def deliveries(self, request_ids: Sequence[str]) -> list[LaterDelivery]:
        """The later deliveries of these postbacks, oldest first."""

    async def purge(self, *, telegram_id: str | None = None, ymid: str | None = None) -> int:
        """Delete a user's postbacks (and their deliveries and sessions): how many postbacks."""

    async def expire(self, older_than: float, limit: int) -> int:
        """Delete at most `limit` rows of each table older than the cutoff (sessions: expired
        before it): the most deleted."""

    async def senders(self, since: float, route: str | None = None) -> list[Sender]:
        """Senders seen since then (to the hour), every replica's added up."""

    async def report(self, groups: Sequence[str], search: Search) -> list[ReportLine]: ...

    async def session_events(self, ymids: Sequence[str]) -> list[SessionEvent]:
        """The history's rows of these ymids, oldest first, each with its latest delivery
        state: one statement for thousands of ymids."""

    async def no_postback(
        self, route: str, issued_before: float, now: float, replica: str, limit: int
    ) -> list[Missed]:
        """Mark at most `limit` of the route's ymids issued by `issued_before` that got no
        postback as missed at `now`, each once across replicas, with a `no_postback` line in
        the history for each (written as `replica`'s): the ones marked, oldest issue first."""

    async def fill_rates(self, since: float, route: str | None = None) -> list[FillRate]:
        """Per route and placement, the sessions issued since then and how they ended."""


def history_store(config: StoreConfig) -> HistoryStore:
    """The history beside the store: an SQLite file of its own next to the store's (with its
    own writer thread), or the same PostgreSQL database (with a small pool of its own)."""
    from .postgres_history import PostgresHistory
    from .sqlite_history import SqliteHistory

    if config.url is not None:
        return PostgresHistory(config.url)
    assert config.path is not None  # the config reader requires one of the two
    return SqliteHistory(config.path)
