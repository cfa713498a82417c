"""The history: every postback the gateway answered, and every later delivery of a queued
one, kept in the store for `history.retention` and searchable per user, from any replica.

- `rows.py`: a finished postback (`RequestRecord`) as the row kept, minus the key.
- `budget.py`: what unauthenticated postbacks may cost (a flood is aggregated, not kept).
- `recorder.py`: the bounded buffer the serving path appends to, written in batches.
- `sqlite_history.py`, `postgres_history.py`: the tables, in the store the config names.
- `sessions.py`: reward sessions, the ymids issued and whether a postback came for each.
- `search.py`: what can be asked and what comes back; `trace.py`: the reward trace's verdict;
  `export.py`: CSV (safe in a spreadsheet) and JSON lines, and the reconciliation report.
"""
