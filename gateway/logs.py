"""The other log lines: one JSON object (or a `key=value` line for a terminal) per line, on
stdout, in the same shape as the access log."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .access_log import ACCESS

# attributes every LogRecord has; anything else on a record came in through `extra=`
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


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
    """Log to stdout in `json` or `text` (a LogFormat); safe to call again on reload."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(TextFormatter() if log_format == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    ACCESS.json = log_format != "text"
    ACCESS.enabled = logging.getLevelName(level) <= logging.INFO
    logging.getLogger("aiohttp.access").disabled = True  # our own line replaces it
