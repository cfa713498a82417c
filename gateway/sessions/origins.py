"""Which web pages may ask for a ymid from a browser: CORS for the configured origins only.

An origin is `scheme://host[:port]` exactly as browsers send it in `Origin` (lower case, no
default port, no path). Configured ones must be https, except for a page on this machine
(localhost, 127.0.0.1, [::1]) while developing; `*` is refused: any site could then spend a
user's rate limit, and a listed origin is a statement of who the Mini App is.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
PREFLIGHT_MAX_AGE = 600  # seconds a browser may keep a preflight's answer
DEFAULT_PORTS = {"https": 443, "http": 80}


def parse_origin(text: str) -> str:
    """The origin as browsers send it, or ValueError saying what is wrong with `text`."""
    if text.strip() == "*":
        raise ValueError("'*' would let any site ask for ymids: list the Mini App's origins")
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError("is not an origin like https://app.example.com") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("is not an origin like https://app.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("an origin has no path, query or user: https://app.example.com")
    host = parts.hostname.lower()
    shown_host = f"[{host}]" if ":" in host else host
    if parts.scheme == "http" and shown_host not in LOCAL_HOSTS:
        raise ValueError("must be https (http only for a page on this machine)")
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{shown_host}:{port}"
    return f"{parts.scheme}://{shown_host}"


class OriginPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        self._allowed = frozenset(parse_origin(origin) for origin in origins)

    def allows(self, origin: str | None) -> bool:
        """A request without `Origin` is not a browser's cross-origin one: allowed (the
        initData still has to prove the user); with one, only a listed origin, compared as
        sent (browsers send it normalized)."""
        return origin is None or origin in self._allowed

    def headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to `origin` (none for a request without one). Every
        answer varies by Origin, so no cache hands one site's answer to another."""
        if origin is None or origin not in self._allowed:
            return {"Vary": "Origin"}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def preflight(self, origin: str | None, method: str | None) -> dict[str, str] | None:
        """The headers of a preflight's 204, or None to refuse it (an origin not listed, or
        a method other than POST)."""
        if origin is None or origin not in self._allowed or method != "POST":
            return None
        return {
            **self.headers(origin),
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
        }
