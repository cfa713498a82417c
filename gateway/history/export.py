"""The history out of the gateway: CSV for a spreadsheet, JSON lines for a program.

Every cell of the CSV is neutralized: a value that starts with `=`, `+`, `-`, `@`, a tab or a
carriage return is a formula to a spreadsheet (`=HYPERLINK(...)` in a ymid would run on the
support agent's machine), so it gets a leading `'`, which spreadsheets show as text. ymid,
request_var, the client and the caller's request id all come from senders. JSON lines carry
the values as they are, with the row's detail.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from .search import COLUMNS, FIELD_COLUMNS, Recorded, Search
from .store import HistoryStore

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# a row's columns, its time written out, without what only the gateway reads
CSV_COLUMNS = ("time", *(name for name in COLUMNS[1:] if name not in ("dedup_key", "detail")))
PAGE = 1000
LAST_ID = 2**63 - 1  # the first page: before every id


def neutralized(value: object) -> str:
    """A cell a spreadsheet shows as the text it is, never runs."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cells(row: Recorded) -> list[Any]:
    return [
        iso(row.at),
        row.replica,
        row.route,
        row.request_id,
        row.caller_request_id,
        row.client,
        row.outcome,
        row.reason,
        row.status,
        *(row.fields.get(name) for name in FIELD_COLUMNS),
        row.repeats,
    ]


def csv_lines(rows: Iterable[Recorded], *, header: bool) -> str:
    out = io.StringIO()
    # RFC 4180's CRLF: the writer quotes a field holding any character of its line terminator,
    # so a sender's lone CR cannot end a row early (with "\n" alone it would)
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([neutralized(value) for value in cells(row)])
    return out.getvalue()


def json_lines(rows: Iterable[Recorded]) -> str:
    return "".join(
        orjson.dumps(
            {**dict(zip(CSV_COLUMNS, cells(row), strict=True)), "detail": row.detail}
        ).decode()
        + "\n"
        for row in rows
    )


async def pages(store: HistoryStore, search: Search) -> AsyncIterator[list[Recorded]]:
    """Every row the search matches, newest first, a page at a time (no limit)."""
    before = LAST_ID
    while True:
        page = await store.search(replace(search, limit=PAGE, before_id=before))
        if not page:
            return
        yield page
        before = min(row.id for row in page)
