"""Logs: one JSON line per request, with what is needed to replay the event, never a secret."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

# attributes every LogRecord has; anything else on a record came in through `extra=`
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


BODY_HEAD_BYTES = 200  # of the app's answer, kept with an attempt for the inspector


class UpstreamAttempt(NamedTuple):
    """One try at delivering a postback: what the app answered, or why nothing came.

    A tuple of plain values, so the garbage collector stops tracking it: the inspector keeps
    a thousand postbacks' attempts alive, and every tracked object they hold makes each
    collection longer (measured with bench/instructions.py: bench/README.md)."""

    upstream: str  # the upstream's label
    status: int | None  # None: no answer (timeout, connection error, bad response)
    error: str | None  # why no answer came, or with a status what was odd about the answer
    latency_ms: float
    body_head: str  # the answer's first bytes, undecodable ones replaced
    at: float

    @classmethod
    def answered(
        cls, upstream: str, status: int, body: bytes, seconds: float, note: str | None = None
    ) -> UpstreamAttempt:
        """An answer; `note` says what was odd about it (a body cut short), if anything."""
        head = body[:BODY_HEAD_BYTES].decode("utf-8", errors="replace")
        return cls(upstream, status, note, round(seconds * 1000, 2), head, time.time())

    @classmethod
    def failed(cls, upstream: str, error: str, seconds: float) -> UpstreamAttempt:
        return cls(upstream, None, error, round(seconds * 1000, 2), "", time.time())


@dataclass
class RequestRecord:
    """What the pipeline learned about one request, filled in step by step and logged at the end.

    `query` is set only once the route is known, with that route's secret parameter removed.
    """

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    peer: str | None = None  # the TCP peer, which the client address was resolved from
    client: str | None = None
    outcome: str | None = None
    reason: str | None = None
    detail: str | None = None
    fields: dict[str, str] | None = None
    query: list[tuple[str, str]] | None = None
    upstream_status: int | None = None
    caller_request_id: str | None = None  # the caller's X-Request-ID, for correlation only
    dropped: list[str] = field(default_factory=list)  # parameters not passed on (names only)
    passed: list[str] = field(default_factory=list)  # the checks passed (route.STEPS)
    let_in_by_log_only: bool = False  # allow_ips would have refused it (allow_ips_mode: log_only)
    # where it went past the checks: "app" once forwarding began (a request may have been
    # written to it), "store" once a queued route began storing it
    handed_to: str | None = None
    attempts: list[UpstreamAttempt] = field(default_factory=list)  # the sync path's tries

    def log_fields(self, status: int | None) -> dict[str, Any]:
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
            "dropped": self.dropped or None,
            "caller_request_id": self.caller_request_id,
        }


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps with options builds one per call


def _encoded(fields: dict[str, Any]) -> str:
    """The access line's fields as JSON. orjson, because this runs for every postback and the
    standard encoder cost 6 % of the instructions per postback (bench/README.md); the
    standard one for what orjson refuses (a string that is not valid UTF-8)."""
    try:
        return orjson.dumps(fields).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(fields)


class AccessLog:
    """The one line per request, written straight to stdout.

    It is on the hot path of every postback, so it skips the logging machinery (record,
    handler lock, formatter) and writes one pre-built line; the stream is block-buffered
    when piped and flushed by `serve` every half second and by every other log line, so
    lines stay in order. Same shape as the other lines: `time`, `level`, `logger`, `message`.
    """

    def __init__(self) -> None:
        self.json = True
        self.enabled = True
        self._second = -1
        self._stamp = ""

    def write(self, record: RequestRecord, status: int | None) -> None:
        if not self.enabled:
            return
        fields = record.log_fields(status)
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        stamp = f"{self._stamp}.{int(now % 1 * 1000):03d}Z"
        if self.json:
            body = _encoded(fields)
            line = (
                f'{{"time": "{stamp}", "level": "info", "logger": "gateway.access", '
                f'"message": "postback", {body[1:]}\n'
            )
        else:
            pairs = " ".join(
                f"{key}={json.dumps(value, ensure_ascii=False)}"
                for key, value in fields.items()
                if value is not None
            )
            line = f"{stamp[11:23]} INFO    postback {pairs}\n"
        sys.stdout.write(line)


ACCESS = AccessLog()


def log_request(record: RequestRecord, status: int | None) -> None:
    """The access line; `status` None: no answer was sent (cut off at shutdown)."""
    ACCESS.write(record, status)


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
