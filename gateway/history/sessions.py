"""Reward sessions in the history: the ymids the gateway issued, and whether a postback came
for each.

A `SessionRow` is written twice for one ymid, once when it is issued and once when a postback
verified against it, by whichever replicas did each, in either order: the store merges them
(sql.add_sessions) so both orders leave the same row.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class SessionRow:
    """One upsert into history_sessions."""

    ymid: str
    route: str
    placement: str | None  # the request_var bound when issued (None: none)
    telegram_id: str
    replica: str
    expires: float
    issued_at: float | None  # set when written for an issue
    postback_at: float | None  # set when written for a postback that verified against it

    def values(self) -> tuple[Any, ...]:
        """In SESSION_COLUMNS order, as the statements bind them."""
        return tuple(getattr(self, name) for name in SESSION_COLUMNS)


SESSION_COLUMNS = tuple(field.name for field in fields(SessionRow))
