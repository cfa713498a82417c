"""The access log: one JSON line per postback, with what is needed to replay the event,
never a secret."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import orjson

from .record import RequestRecord

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
