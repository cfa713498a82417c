"""Reading typed values out of the YAML document, each problem recorded with its key path."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Set
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

from yarl import URL

from ..checks.addresses import AddressSet, IndexedValueError
from ..postback import CANONICAL_FIELDS
from ..shown import quoted
from .model import MAX_UPSTREAM_RETRIES, ListenAddress, yaml_keys

MAX_PROBLEM = 600  # characters of one problem line
MAX_PROBLEMS = 50  # problems listed; the rest are counted

_URL_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,128}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,128}")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
DURATION_EXAMPLES = "500ms, 5s, 10m, 24h, 7d"

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)
Reader = Callable[[Any, str], Any]  # (value, key path) -> the value read, or None (a problem)


class _FromEnvironment(str):
    """A string that came from ${VAR}: may stand for a number, as environment values do."""


def duration_words(seconds: float) -> str:
    """A duration as a sentence says it: "7 days", "12 hours", "1 minute", "90 seconds"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def parse_duration(text: str) -> float | None:
    """The seconds a duration means, or None if `text` is none: a number, whole or with a
    fraction, alone (seconds) or followed by ms, s, m, h or d (`500ms`, `1.5s`, `7d`, `30`).
    The one grammar of durations, in the config and on the command line
    (`queue purge --older-than`); each caller decides which range it accepts."""
    match = _DURATION.fullmatch(text.strip())
    return None if match is None else float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def key_path(parent: str, key: object) -> str:
    return f"{parent}.{key}" if parent else str(key)


class ValueReader:
    """Typed readers for scalars and structure; collects every problem instead of stopping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.unlisted = 0  # problems beyond MAX_PROBLEMS
        self.dedup_defaults: dict[str, Any] = {}
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        """One problem, bounded: values in it are `quoted` (80 characters), and the whole line
        is cut at MAX_PROBLEM, whatever a caller put in it."""
        if len(self.problems) >= MAX_PROBLEMS:
            self.unlisted += 1
            return
        line = f"{path}: {message}"
        self.problems.append(line if len(line) <= MAX_PROBLEM else line[: MAX_PROBLEM - 1] + "…")

    # -- scalar kinds ---------------------------------------------------------------------

    def address_set(self, value: Any, path: str) -> AddressSet | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        texts = [self.string(item, f"{path}[{index}]") for index, item in enumerate(items)]
        if any(text is None for text in texts):
            return None
        try:
            return AddressSet.compile(text.strip() for text in texts if text is not None)
        except IndexedValueError as error:
            self.problem(f"{path}[{error.index}]", str(error))
            return None

    def listen_address(self, value: Any, path: str) -> ListenAddress | None:
        text = self.string(value, path)
        if text is None:
            return None
        match = re.fullmatch(
            r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|(\*|[A-Za-z0-9.-]+):([0-9]{1,5})", text
        )
        port = int(match.group(2) or match.group(4)) if match else -1
        if match is None or port > 65535:
            self.problem(
                path,
                f"{quoted(text)} is not host:port ([::]:8080 for IPv6, *:8080 for every address)",
            )
            return None
        return ListenAddress(match.group(1) or match.group(3), port)

    def url_path(self, value: Any, path: str) -> str | None:
        """A path as it appears in the request line: routes match the path exactly as sent."""
        text = self.string(value, path)
        if text is not None and not _URL_PATH.fullmatch(text):
            self.problem(
                path,
                f"{quoted(text)} must be an absolute path like /postback: letters, digits and "
                "-._~!$&'()*+,;=:@/ only (no query, no %-escapes, no spaces)",
            )
            return None
        return text

    def decimal(self, value: Any, path: str) -> Decimal | None:
        """A positive, finite number written as a YAML number or a string (`10`, `0.5`)."""
        if isinstance(value, str):
            value = self.substitute(value, path)
            if value is None:
                return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.problem(path, f"expected a number, got {quoted(value)}")
            return None
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            self.problem(path, f"{quoted(value)} is not a number")
            return None
        if not number.is_finite() or number <= 0:
            self.problem(path, "must be a finite number above zero")
            return None
        return number

    def upstream_url(self, value: Any, path: str) -> URL | None:
        text = self.string(value, path)
        if text is None:
            return None
        # the URL's text is never quoted: it may hold the app's key (?api_key=, /bot123:AAH.../)
        try:
            url = URL(text)
            port = url.port
        except ValueError:
            self.problem(path, "is not a URL (not shown: it may hold a key)")
            return None
        if url.scheme not in ("http", "https") or not url.host:
            self.problem(path, "must be an http:// or https:// URL with a host (not shown)")
            return None
        if port is None or not 0 < port < 65536:
            self.problem(path, "has a port outside 1-65535 (the URL is not shown)")
            return None
        return url

    def field_list(self, value: Any, path: str) -> tuple[str, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        names = [self.canonical_name(item, f"{path}[{index}]") for index, item in enumerate(items)]
        if any(name is None for name in names):
            return None
        return tuple(name for name in names if name is not None)

    def canonical_name(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and text not in CANONICAL_FIELDS:
            self.problem(
                path, f"{quoted(text)} is not a canonical field ({', '.join(CANONICAL_FIELDS)})"
            )
            return None
        return text

    def param_name(self, value: Any, path: str) -> str | None:
        return self._name(value, path, _PARAM_NAME, "query parameter name")

    def header_name(self, value: Any, path: str) -> str | None:
        return self._name(value, path, _HEADER_NAME, "header name")

    def _name(self, value: Any, path: str, shape: re.Pattern[str], what: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not shape.fullmatch(text):
            self.problem(path, f"{quoted(text)} is not a usable {what}")
            return None
        return text

    def duration_or_zero(self, value: Any, path: str) -> float | None:
        return self.duration(value, path, allow_zero=True)

    def duration(self, value: Any, path: str, allow_zero: bool = False) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.problem(path, f"expected a duration like {DURATION_EXAMPLES}; got {quoted(value)}")
            return None
        seconds: float | None = None
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            text = self.substitute(value, path)
            seconds = parse_duration(text) if text is not None else None
            if seconds is None and text is not None:
                self.problem(path, f"{quoted(text)} is not a duration like {DURATION_EXAMPLES}")
                return None
        if seconds is not None and not (
            0 < seconds < float("inf") or (allow_zero and seconds == 0)
        ):
            self.problem(
                path, "must be finite and " + ("not negative" if allow_zero else "longer than zero")
            )
            return None
        return seconds

    def retries(self, value: Any, path: str) -> int | None:
        number = self.integer(value, path)
        if number is not None and not 0 <= number <= MAX_UPSTREAM_RETRIES:
            self.problem(path, f"must be between 0 and {MAX_UPSTREAM_RETRIES}")
            return None
        return number

    def positive_int(self, value: Any, path: str) -> int | None:
        number = self.integer(value, path)
        if number is not None and number < 1:
            self.problem(path, "must be at least 1")
            return None
        return number

    def count(self, value: Any, path: str) -> int | None:
        """A whole number, 0 allowed (0 turns the thing counted off)."""
        number = self.integer(value, path)
        if number is not None and number < 0:
            self.problem(path, "must be 0 or more")
            return None
        return number

    def choice(self, value: Any, path: str, choices: type[E]) -> E | None:
        """One of an enum's values, written as the value (`queued`, `fail_open`)."""
        text = self.string(value, path)
        if text is None:
            return None
        try:
            return choices(text)
        except ValueError:
            listed = ", ".join(choice.value for choice in choices)
            self.problem(path, f"{quoted(text)} is not one of {listed}")
            return None

    def chooser(self, choices: type[E]) -> Callable[[Any, str], E | None]:
        return lambda value, path: self.choice(value, path, choices)

    def integer(self, value: Any, path: str) -> int | None:
        if isinstance(value, str):
            text = self.substitute(value, path)
            if text is None:
                return None  # the unset variable is already reported
            if isinstance(text, _FromEnvironment) and text.strip().isdigit():
                return int(text)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"expected a whole number, got {quoted(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, f"expected true or false, got {quoted(value)}")
            return None
        return value

    def string(self, value: Any, path: str, *, secret: bool = False) -> str | None:
        if not isinstance(value, str):
            shown = "" if secret else f" {quoted(value)}"  # a key written as a number stays unsaid
            self.problem(path, f"expected a string, got {type(value).__name__}{shown}")
            return None
        return self.substitute(value, path)

    def substitute(self, text: str, path: str) -> str | None:
        """Replace ${NAME} and ${NAME:-default}; an unset NAME without default is a problem."""
        if "${" not in text:
            return text
        missing: list[str] = []

        def value_of(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _ENV_REFERENCE.sub(value_of, text)
        for name in missing:
            self.problem(path, f"environment variable {name} is not set")
        return None if missing else _FromEnvironment(result)

    # -- structure ------------------------------------------------------------------------

    def mapping(
        self, value: Any, path: str, allowed: Set[str] | None, what: str = ""
    ) -> dict[Any, Any] | None:
        if not isinstance(value, dict):
            where = path or what
            self.problem(where, f"expected a mapping, got {type(value).__name__}")
            return None
        for key in value:
            if allowed is not None and key not in allowed:
                self.problem(
                    key_path(path, key), f"unknown key (expected one of {sorted(allowed)})"
                )
        return value

    def sequence(self, value: Any, path: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {type(value).__name__}")
            return None
        return value

    def section(
        self,
        value: Any,
        path: str,
        shape: type[Any],
        readers: Mapping[str, Reader],
        *,
        extra: frozenset[str] = frozenset(),
        required: tuple[str, ...] = (),
    ) -> dict[str, Any] | None:
        """The values of the keys a mapping gives, each read by its reader; None if any is
        wrong. The keys allowed are the fields of the dataclass `shape` (plus `extra`, which
        the caller reads itself); a key left out is left out, so `shape` supplies its default.
        """
        keys = yaml_keys(shape) | extra
        assert readers.keys() == keys, f"{shape.__name__}: no reader for {keys - readers.keys()}"
        problems_before = len(self.problems)
        section = self.mapping(value, path, keys)
        if section is None:
            return None
        for key in required:
            if key not in section:
                self.problem(key_path(path, key), "is required")
        values = {
            key: readers[key](item, key_path(path, key))
            for key, item in section.items()
            if key in readers
        }
        return None if len(self.problems) > problems_before else values

    def optional(
        self,
        section: dict[Any, Any],
        key: str,
        path: str,
        read: Callable[[Any, str], T | None],
        default: T,
    ) -> T | None:
        if key not in section:
            return default
        return read(section[key], key_path(path, key))
