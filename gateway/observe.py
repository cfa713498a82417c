"""Logs: one JSON line per request, with what is needed to replay the event, never a secret."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

ACCESS_LOG = logging.getLogger("gateway.access")

# attributes every LogRecord has; anything else on a record came in through `extra=`
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


@dataclass
class RequestRecord:
    """What the pipeline learned about one request, filled in step by step and logged at the end.

    `query` is set only once the route is known, with that route's secret parameter removed.
    """

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    client: str | None = None
    outcome: str | None = None
    reason: str | None = None
    detail: str | None = None
    fields: dict[str, str] | None = None
    query: list[tuple[str, str]] | None = None
    upstream_status: int | None = None

    def log_fields(self, status: int) -> dict[str, Any]:
        fields = self.fields or {}
        return {
            "request_id": self.request_id,
            "route": self.route,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
            "status": status,
            "client": self.client,
            "ymid": fields.get("ymid"),
            "event_type": fields.get("event_type"),
            "zone_id": fields.get("zone_id"),
            "fields": self.fields,
            "upstream_status": self.upstream_status,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 2),
            "query": self.query,
        }


def log_request(record: RequestRecord, status: int) -> None:
    ACCESS_LOG.info("postback", extra=record.log_fields(status))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level message key=value ...` for a person at a terminal."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S") + f".{int(record.msecs):03d}"
        pairs = " ".join(
            f"{key}={json.dumps(value, default=str, ensure_ascii=False)}"
            for key, value in _extras(record).items()
            if value is not None
        )
        line = f"{stamp} {record.levelname:<7} {record.getMessage()} {pairs}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Log to stdout in `json` or `text`; safe to call again on reload."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(TextFormatter() if log_format == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").disabled = True  # our own line replaces it
