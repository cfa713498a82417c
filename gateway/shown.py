"""How text that came from outside is shown: in config problems, logs, `check`, the CLI, pages.

- `quoted`: a value quoted in a message, at most QUOTED characters (a config of nested YAML
  aliases expanded to 580 MB inside one problem message once).
- `printable`: text for a terminal, control characters escaped (`\\x1b]0;...` in an app's
  answer retitled and cleared the operator's terminal once).
- `shown_url`: a URL from the config as anything may print it: userinfo and every query value
  masked, since either may hold a key or a password. One that does not even parse shows as
  its scheme only. Errors about URLs never quote them.
"""

from __future__ import annotations

import re
import urllib.parse

QUOTED = 80
MASK = "***"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def quoted(value: object) -> str:
    """repr(value), cut to QUOTED characters with an ellipsis."""
    text = repr(value) if isinstance(value, str) else repr(_bounded(value))
    return text if len(text) <= QUOTED else text[: QUOTED - 1] + "…"


def _bounded(value: object) -> object:
    """A value whose repr cannot be huge (a list of a million aliases' expansions)."""
    if isinstance(value, list | tuple | dict | set):
        return f"<a {type(value).__name__} of {len(value)}>"
    return value


def printable(text: str) -> str:
    """`text` on one line with control and invisible characters escaped (\\x1b, \\n,
    \\u202e): nothing an app or a sender wrote can move a terminal's cursor or fake a line."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown_url(url: str) -> str:
    """scheme://host:port/path with userinfo and query values as ***; `scheme://...` if the
    URL does not parse (a socket DSN, a password with a raw `#`): never the text itself."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return f"{_scheme_of(url)}://(not shown: the URL does not parse)"
    if not parts.scheme or parts.fragment:
        return f"{_scheme_of(url)}://(not shown: the URL does not parse)"
    netloc = host or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    query = "&".join(
        f"{urllib.parse.quote(name, safe='')}={MASK}"
        for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return printable(f"{shown}?{query}" if query else shown)


def _scheme_of(url: str) -> str:
    scheme = url.partition(":")[0]
    return scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,15}", scheme) else "?"
