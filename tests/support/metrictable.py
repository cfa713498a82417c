"""The metric table of docs/observability.md, read as a reader reads it: each row's metric
names (first cell) and label names (second cell; a label's values in parentheses or after a
colon are examples, not labels)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.processes import REPO

OBSERVABILITY = REPO / "docs" / "observability.md"
_ROW = re.compile(r"^\| (?P<names>`gateway_[^|]*) \|(?P<labels>[^|]*)\|", re.M)
_NAME = re.compile(r"`(gateway_[a-z0-9_]+)`")
_EXAMPLES = re.compile(r"\([^()]*\)|`[^`]*`|:[^,]*")


def documented_metrics(page: Path = OBSERVABILITY) -> dict[str, set[str]]:
    """Every metric the table names, with the labels it says the metric carries."""
    table: dict[str, set[str]] = {}
    for row in _ROW.finditer(page.read_text(encoding="utf-8")):
        labels = {
            word.split()[0]
            for word in _EXAMPLES.sub("", row.group("labels")).split(",")
            if word.strip()
        }
        for name in _NAME.findall(row.group("names")):
            assert name not in table, f"{name} has two rows in {page.name}"
            table[name] = labels
    return table


def exported_families(exposition: str) -> set[str]:
    """The names of every family a /metrics answer declares, samples or not."""
    return set(re.findall(r"^# TYPE (gateway_\S+) \w+$", exposition, re.M))
