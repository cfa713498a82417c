"""Who may use the admin port: the token, the session cookie, and cross-site protection.

- `server.admin_token` guards the inspector's pages and actions (and /metrics with
  `metrics_need_token`); /healthz and /readyz stay open for probes. Scripts send
  `Authorization: Bearer TOKEN`; a browser signs in once at /login and then carries a
  cookie holding an HMAC of the token (never the token itself), HttpOnly and SameSite=Strict.
- Every action is a POST with a form field that only our own pages know (an HMAC of the token,
  or of a per-process key when there is no token) and must not come from another site
  (`Sec-Fetch-Site`, `Origin`). Forged cross-site requests are refused even on loopback.
- Comparisons are constant-time; the token and its digests are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from ..config import ServerConfig

log = logging.getLogger("gateway.inspector")

COOKIE = "gateway_admin"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login"})
_PROCESS_KEY = secrets.token_bytes(32)  # signs the form field when there is no token


def _digest(key: str | bytes, purpose: str) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, purpose.encode(), hashlib.sha256).hexdigest()


def session_value(server: ServerConfig) -> str | None:
    """The cookie a signed-in browser carries; None when no token is configured."""
    return _digest(server.admin_token, "session") if server.admin_token else None


def form_token(server: ServerConfig) -> str:
    """The hidden field every action's form carries."""
    return _digest(server.admin_token or _PROCESS_KEY, "form")


def token_matches(server: ServerConfig, given: str) -> bool:
    token = server.admin_token
    return token is not None and hmac.compare_digest(given.encode(), token.encode())


def signed_in(request: web.Request, server: ServerConfig) -> bool:
    """The token in an Authorization header, or the session cookie. No token: anyone."""
    expected = session_value(server)
    if expected is None:
        return True
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and token_matches(server, header[7:].strip()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), expected.encode())


def same_site(request: web.Request) -> bool:
    """The browser says the request did not come from another site. Browsers send
    Sec-Fetch-Site (and Origin on POSTs); a script without either is not a browser being
    tricked, so it is let through (it still needs the token)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin == "null" and fetch_site is not None:
        return True  # our Referrer-Policy (no-referrer) makes a browser's POSTs say "null"
    return origin is None or origin == f"{request.scheme}://{request.host}"


def action_allowed(request: web.Request, server: ServerConfig, field: str) -> bool:
    """A POST from our own page: same site, and the form field only our pages know."""
    return same_site(request) and hmac.compare_digest(field.encode(), form_token(server).encode())


def guard(server_of: Callable[[], ServerConfig]) -> Middleware:
    """The admin app's middleware: the token for everything but the probes (and /metrics,
    unless `metrics_need_token`). Pages send a browser to /login; anything else gets 401."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        server = server_of()
        path = request.path
        open_path = path in OPEN_PATHS or path.startswith("/static/")
        if path == "/metrics" and not server.metrics_need_token:
            open_path = True
        if open_path or signed_in(request, server):
            return await handler(request)
        log.info("admin request refused: not signed in", extra={"path": path[:200]})
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther(URL("/login").with_query(next=safe_next(request.path_qs)))
        return web.json_response(
            {"error": "admin_token required: Authorization: Bearer TOKEN"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="monetag-gateway admin"'},
        )

    return middleware


def safe_next(path: str) -> str:
    """Where to return after signing in: one of our own paths, never another site."""
    return path if path.startswith("/") and not path.startswith("//") else "/"
