"""Who may use the admin port: the Host it is asked for, the token, sessions, cross-site rules.

- **Host first.** A page on another site can make a browser talk to this port through DNS
  rebinding (its name, resolved again to 127.0.0.1); the browser then still names that site
  in `Host`. So before anything else a request must name this port by an IP address, by
  `localhost`, or by one of `server.admin_hosts`; anything else is answered 421. An address
  cannot be rebound: only a name can.
- `server.admin_token` guards the inspector's pages and actions (and /metrics with
  `metrics_need_token`); /healthz and /readyz stay open for probes. Scripts send
  `Authorization: Bearer TOKEN`; a browser signs in at /login and gets a session: a random id
  per sign-in, with its own form token, kept in this process, ended by sign-out, by its expiry
  (`server.admin_session_ttl`) and by a change of the token.
- **Guessing is slowed down**: failed sign-ins and wrong Bearer tokens are counted per client
  address; beyond a few, that address is locked out for a doubling time (429), while the
  right token keeps working from everywhere else. Failures are logged once per minute.
- Every action is a POST with the session's form token (a per-process one when there is no
  token) and must not come from another site (`Sec-Fetch-Site`, `Origin`, against the Host
  checked above). Comparisons are constant-time; tokens and session ids are never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from ..config import ServerConfig

log = logging.getLogger("gateway.inspector")

COOKIE = "gateway_admin"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login"})
_PROCESS_FORM_TOKEN = secrets.token_hex(32)  # the form field when there is no token
MAX_SESSIONS = 1000  # signed-in browsers kept; the oldest session ends first
FREE_FAILURES = 5  # wrong tokens from one address before it is locked out
FIRST_LOCKOUT = 1.0  # seconds; doubles with every further failure
LONGEST_LOCKOUT = 300.0
MAX_TRACKED_ADDRESSES = 10_000  # addresses whose failures are remembered; the oldest go first
FAILURE_WINDOW = 60.0  # failures are remembered this long, and logged once per this


def token_matches(server: ServerConfig, given: str) -> bool:
    token = server.admin_token
    return token is not None and hmac.compare_digest(given.encode(), token.reveal())


# -- Host --------------------------------------------------------------------------------------


def host_allowed(host: str | None, server: ServerConfig) -> bool:
    """Whether a request's Host names this port: an IP address, localhost or an admin_host.
    No Host at all is not a browser (every browser sends one) and is let through."""
    if host is None:
        return True
    name = _host_name(host)
    if name is None:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name in ("localhost", *server.admin_hosts)
    return True


def _host_name(host: str) -> str | None:
    """The name or address of a Host header, without its port; None if it is no host."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 address, [::1] or [::1]:9090
        end = host.find("]")
        port = host[end + 1 :] if end > 0 else ":x"
        return host[1:end] if port == "" or _is_port(port) else None
    name, colon, port = host.partition(":")
    if colon and not _is_port(colon + port):
        return None
    return name.rstrip(".") or None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isascii() and text[1:].isdigit()


# -- sessions ----------------------------------------------------------------------------------


@dataclass
class Session:
    id: str
    form_token: str
    token_digest: bytes  # of the admin_token it was opened with: a new token ends it
    expires_at: float


class Sessions:
    """The signed-in browsers of this process (a restart signs everyone out)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: OrderedDict[str, Session] = OrderedDict()

    def open(self, server: ServerConfig) -> Session:
        assert server.admin_token is not None
        while len(self._open) >= MAX_SESSIONS:
            self._open.popitem(last=False)
        session = Session(
            secrets.token_urlsafe(32),
            secrets.token_hex(32),
            server.admin_token.digest,
            self._clock() + server.admin_session_ttl,
        )
        self._open[session.id] = session
        return session

    def find(self, session_id: str, server: ServerConfig) -> Session | None:
        """The live session with this id, under the token in force now."""
        session = self._open.get(session_id) if session_id else None
        if session is None:
            return None
        token = server.admin_token
        if self._clock() >= session.expires_at or token is None:
            del self._open[session_id]
            return None
        if not hmac.compare_digest(session.token_digest, token.digest):
            del self._open[session_id]  # the token changed: sign in again
            return None
        return session

    def close(self, session_id: str) -> None:
        self._open.pop(session_id, None)


# -- failed sign-ins ---------------------------------------------------------------------------


@dataclass
class _Failures:
    count: int
    last_at: float
    locked_until: float


class SignInGuard:
    """Wrong tokens per client address: FREE_FAILURES within FAILURE_WINDOW are free, then each
    one locks the address out for FIRST_LOCKOUT, doubling up to LONGEST_LOCKOUT. Summarized in
    one log line per window; counted in `on_failure(result)` (a metric)."""

    def __init__(
        self,
        on_failure: Callable[[str], None] = lambda result: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_failure = on_failure
        self._clock = clock
        self._by_address: OrderedDict[str, _Failures] = OrderedDict()
        self._window_started = clock()
        self._in_window: dict[str, int] = {}

    def locked_for(self, address: str) -> float:
        """Seconds until this address may try again (0: now)."""
        failures = self._by_address.get(address)
        if failures is None:
            return 0.0
        left = failures.locked_until - self._clock()
        if left > 0:
            self._on_failure("locked_out")
            self._note(address)
            return left
        return 0.0

    def failed(self, address: str) -> None:
        now = self._clock()
        failures = self._by_address.pop(address, None)
        if failures is None or now - max(failures.last_at, failures.locked_until) > FAILURE_WINDOW:
            failures = _Failures(0, now, 0.0)  # quiet for a window: start over
        failures.count += 1
        failures.last_at = now
        if failures.count > FREE_FAILURES:
            doubling = FIRST_LOCKOUT * 2 ** min(30, failures.count - FREE_FAILURES - 1)
            failures.locked_until = now + min(LONGEST_LOCKOUT, doubling)
        self._by_address[address] = failures
        while len(self._by_address) > MAX_TRACKED_ADDRESSES:
            self._by_address.popitem(last=False)
        self._on_failure("wrong_token")
        self._note(address)

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)

    def _note(self, address: str) -> None:
        """The first refusal of a window is logged at once; the window's others are summed up
        in one line when the next window begins."""
        now = self._clock()
        if self._in_window and now - self._window_started >= FAILURE_WINDOW:
            top = sorted(self._in_window.items(), key=lambda item: -item[1])[:10]
            log.warning(
                "admin token refused, summed up",
                extra={
                    "refusals": sum(self._in_window.values()),
                    "addresses": dict(top),
                    "seconds": round(now - self._window_started),
                },
            )
            self._in_window = {}
        if not self._in_window:
            self._window_started = now
            log.warning(
                "admin token refused; more refusals are summed up once a minute",
                extra={"address": address},
            )
        if address in self._in_window or len(self._in_window) < MAX_TRACKED_ADDRESSES:
            self._in_window[address] = self._in_window.get(address, 0) + 1


# -- requests ----------------------------------------------------------------------------------


class Access:
    """The admin port's rules, with the state they need (sessions, failed tokens)."""

    def __init__(
        self,
        server_of: Callable[[], ServerConfig],
        on_failure: Callable[[str], None] = lambda result: None,
        on_misdirected: Callable[[], None] = lambda: None,
    ) -> None:
        self._server_of = server_of
        self.sessions = Sessions()
        self.guard = SignInGuard(on_failure)
        self._on_misdirected = on_misdirected

    def session_of(self, request: web.Request) -> Session | None:
        return self.sessions.find(request.cookies.get(COOKIE, ""), self._server_of())

    def signed_in(self, request: web.Request) -> bool:
        """A live session or the right Bearer token (no token configured: anyone). Counts
        nothing: the middleware has already judged the request."""
        server = self._server_of()
        if server.admin_token is None or self.session_of(request) is not None:
            return True
        bearer = _bearer(request)
        return bearer is not None and token_matches(server, bearer)

    def form_token(self, request: web.Request) -> str:
        """The hidden field every action's form carries: the session's own."""
        session = self.session_of(request)
        return session.form_token if session is not None else _PROCESS_FORM_TOKEN

    def action_allowed(self, request: web.Request, field: str) -> bool:
        """A POST from our own page: same site, and the form field only our pages know."""
        expected = self.form_token(request)
        return same_site(request) and hmac.compare_digest(field.encode(), expected.encode())

    def try_token(self, request: web.Request, given: str) -> bool | float:
        """A token offered from the request's address: True if right, False if wrong (and
        counted), or the seconds that address must still wait (it is locked out)."""
        address = request.remote or ""
        left = self.guard.locked_for(address)
        if left:
            return left
        if token_matches(self._server_of(), given):
            self.guard.succeeded(address)
            return True
        self.guard.failed(address)
        return False

    def middleware(self) -> Middleware:
        """The Host check, then the token for everything but the probes (and /metrics, unless
        `metrics_need_token`). Pages send a browser to /login; anything else gets 401."""

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            server = self._server_of()
            if not host_allowed(request.headers.get("Host"), server):
                self._on_misdirected()
                log.warning(
                    "admin request for another host refused",
                    extra={"host": request.headers.get("Host", "")[:100]},
                )
                return web.json_response(
                    {
                        "error": "this admin port is not known by that name: address it by IP, "
                        "localhost or a name in server.admin_hosts"
                    },
                    status=421,
                )
            path = request.path
            open_path = path in OPEN_PATHS or path.startswith("/static/")
            if path == "/metrics" and not server.metrics_need_token:
                open_path = True
            if open_path or server.admin_token is None or self.session_of(request) is not None:
                return await handler(request)
            bearer = _bearer(request)
            if bearer is not None:
                verdict = self.try_token(request, bearer)
                if verdict is True:
                    return await handler(request)
                if verdict is not False:
                    return locked_out(verdict)
            log.info("admin request refused: not signed in", extra={"path": path[:200]})
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther(URL("/login").with_query(next=safe_next(request.path_qs)))
            return web.json_response(
                {"error": "admin_token required: Authorization: Bearer TOKEN"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="monetag-gateway admin"'},
            )

        return middleware


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else None


def locked_out(seconds: float) -> web.Response:
    """The answer to an address that is locked out (429 with Retry-After)."""
    wait = max(1, round(seconds))
    return web.json_response(
        {"error": f"too many wrong tokens from this address: try again in {wait} s"},
        status=429,
        headers={"Retry-After": str(wait)},
    )


def same_site(request: web.Request) -> bool:
    """The browser says the request did not come from another site. Browsers send
    Sec-Fetch-Site (and Origin on POSTs); a script without either is not a browser being
    tricked, so it is let through (it still needs the token). The Host compared with is one
    the Host check accepted."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin == "null" and fetch_site is not None:
        return True  # our Referrer-Policy (no-referrer) makes a browser's POSTs say "null"
    return origin is None or origin == f"{request.scheme}://{request.host}"


# What a URL parser drops or reads as a slash before it looks at a path (WHATWG URL: tab and
# newline anywhere, C0 controls and spaces at the ends; a backslash is a slash in http URLs).
_DROPPED = re.compile(r"[\t\n\r]")
_ENDS = "".join(chr(code) for code in range(0x21))


def safe_next(path: str) -> str:
    """Where to return after signing in: a path on this server, as a browser would read it,
    or `/`. `/\\t/evil.example/` and `/\\\\evil.example` are another site to a browser."""
    cleaned = _DROPPED.sub("", path).strip(_ENDS).replace("\\", "/")
    if not cleaned.startswith("/") or cleaned.startswith("//"):
        return "/"
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in cleaned):
        return "/"
    try:
        url = URL(cleaned)
    except ValueError:
        return "/"
    if url.is_absolute() or url.raw_host:
        return "/"
    return cleaned
