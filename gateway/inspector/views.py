"""The inspector's pages on the admin port: overview, recent postbacks, one postback, queue.

Every value shown came from an unauthenticated sender, so pages are rendered by Jinja2 with
autoescaping on for every template, the live list is filled by a script that sets text (never
HTML), and every answer carries a Content-Security-Policy that allows no inline script or
style and nothing from elsewhere: a value that gets through as markup still cannot run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from ..durable.outbox import StoreError
from ..journal import Entry, Filters
from ..runtime import Runtime
from .access import COOKIE, Access, locked_out, safe_next, same_site
from .charts import outcome_chart, percentile
from .history_pages import HistoryPages
from .present import OUTCOMES, replay, steps
from .recorded import clock_ms, page_of

log = logging.getLogger("gateway.inspector")

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
PAGE_SIZE = 200  # rows on the list page; the live updates add to them
QUEUE_LISTED = 100  # pending and dead deliveries shown on the queue page, each

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
)
_templates.filters["clock"] = lambda at: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
_templates.filters["clock_ms"] = clock_ms
# static files carry a digest of their content, so a new release is never served stale
_VERSIONS = {
    path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    for path in (HERE / "static").iterdir()
}
_templates.globals["static"] = lambda name: f"/static/{name}?v={_VERSIONS[name]}"


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as error:
        error.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


class Inspector:
    """The pages, reading the runtime (config, journal, store) at each request."""

    def __init__(self, runtime: Runtime, access: Access) -> None:
        self._runtime = runtime
        self._access = access

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/", self.overview)
        app.router.add_get("/postbacks", self.postbacks)
        app.router.add_get("/postbacks.json", self.postbacks_json)
        app.router.add_get("/postbacks/{number:[0-9]{1,18}}", self.postback)
        app.router.add_get("/queue", self.queue)
        app.router.add_post("/queue/retry", self.retry)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_static("/static", HERE / "static")
        HistoryPages(self._runtime, self._render).add_to(app)

    # -- pages -------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        runtime = self._runtime
        journal = runtime.journal
        now = journal.clock()  # the minutes' clock: the chart's window ends at its minute
        stats = await self._queue_stats()
        routes = []
        for route in runtime.config.routes:
            minutes = journal.last_hour(route.name, now)
            outcomes: Counter[str] = Counter()
            reasons: Counter[str] = Counter()
            statuses: Counter[str] = Counter()
            latency = [sum(counts) for counts in zip(*(m.latency for m in minutes), strict=True)]
            app_latency = [
                sum(counts) for counts in zip(*(m.app_latency for m in minutes), strict=True)
            ]
            for minute in minutes:
                outcomes.update(minute.outcomes)
                reasons.update(minute.reasons)
                statuses.update(minute.app_statuses)
            dedup = runtime.dedup.get(route.name)
            routes.append(
                {
                    "name": route.name,
                    "path": route.path,
                    "delivery": route.delivery.value,
                    "chart": outcome_chart(minutes, OUTCOMES),
                    "outcomes": outcomes.most_common(),
                    "reasons": reasons.most_common(),
                    "statuses": sorted(statuses.items()),
                    "p50": percentile(latency, 0.5),
                    "p99": percentile(latency, 0.99),
                    "app_p50": percentile(app_latency, 0.5),
                    "app_p99": percentile(app_latency, 0.99),
                    "total": sum(outcomes.values()),
                    "dedup_entries": len(dedup) if dedup is not None else 0,
                    "queue": stats.get(route.name),
                }
            )
        return self._render(
            request,
            "overview.html",
            {
                "routes": routes,
                "checksum": runtime.config.checksum,
                "loaded_at": runtime.loaded_at,
                "reload_error": runtime.reload_error,
                "store": self._store_state(),
                "recent": journal.capacity,
                "now": now,
            },
        )

    async def postbacks(self, request: web.Request) -> web.Response:
        filters = _filters(request)
        entries = self._runtime.journal.recent(filters, limit=PAGE_SIZE)
        return self._render(
            request,
            "postbacks.html",
            {
                "entries": [_row(entry) for entry in entries],
                "filters": filters,
                "routes": [route.name for route in self._runtime.config.routes],
                "outcomes": OUTCOMES,
                "newest": self._runtime.journal.newest,
                "recent": self._runtime.journal.capacity,
            },
        )

    async def postbacks_json(self, request: web.Request) -> web.Response:
        """Rows newer than `after`, for the list page's live updates (polled)."""
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="after: expected a whole number") from None
        entries = self._runtime.journal.recent(_filters(request), after=after, limit=PAGE_SIZE)
        body = {"newest": self._runtime.journal.newest, "rows": [_row(e) for e in entries]}
        return web.json_response(body)

    async def postback(self, request: web.Request) -> web.Response:
        entry = self._runtime.journal.get(int(request.match_info["number"]))
        if entry is None:
            raise web.HTTPNotFound(
                text="no such postback in memory: only the last "
                f"{self._runtime.journal.capacity} are kept"
            )
        config = self._runtime.config
        record = entry.record
        return self._render(
            request,
            "postback.html",
            {
                "entry": entry,
                "row": _row(entry),
                "steps": steps(entry, config),
                "replay": replay(entry, config),
                "fields": sorted((record.fields or {}).items()),
                "query": record.query or [],
                "attempts": entry.attempts,
                "in_history": (
                    page_of(record.request_id) if self._runtime.history is not None else None
                ),
            },
        )

    async def queue(self, request: web.Request) -> web.Response:
        store = self._runtime.store
        context: dict[str, Any] = {"store": self._store_state(), "error": None}
        done = request.query.get("done", "")  # a count only: never text from a link
        context.update(stats={}, pending=[], dead=[], redriven=int(done) if _is_id(done) else None)
        if store is not None:
            try:
                context["stats"] = await self._queue_stats()
                context["pending"] = await store.outbox.listing("pending", None, QUEUE_LISTED)
                context["dead"] = await store.outbox.listing("dead", None, QUEUE_LISTED)
            except StoreError as error:
                context["error"] = str(error)
        return self._render(request, "queue.html", context)

    async def retry(self, request: web.Request) -> web.Response:
        """Re-drive one event's dead deliveries, or every dead letter (of a route): the same
        operation as `monetag-gateway queue retry`."""
        form = await request.post()
        if not self._access.action_allowed(request, str(form.get("form_token", ""))):
            log.warning("inspector action refused: cross-site or without the form token")
            raise web.HTTPForbidden(text="refused: not from the inspector's own page")
        store = self._runtime.store
        if store is None:
            raise web.HTTPConflict(text="no store: nothing is queued")
        event = str(form.get("event_id", ""))
        if event and not _is_id(event):
            raise web.HTTPBadRequest(text="event_id: expected a whole number")
        route = str(form.get("route", "")) or None
        event_id = int(event) if event else None
        history = self._runtime.history
        try:
            # one event's re-drive takes back its undelivered deliveries: the history hears
            shown = None
            if event_id is not None and history is not None:
                shown = await store.outbox.show(event_id)
            count = await store.redrive(event_id, route)
        except StoreError as error:
            raise web.HTTPServiceUnavailable(text=f"the store failed: {error}") from None
        log.info("inspector re-drove deliveries", extra={"count": count})
        if count and shown is not None and history is not None:
            for delivery in shown.deliveries:
                if delivery.state != "delivered":
                    history.redriven(shown.request_id, shown.route, delivery.upstream)
        raise web.HTTPSeeOther(URL("/queue").with_query(done=str(count)))

    # -- signing in --------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        context = {"next": safe_next(request.query.get("next", "/")), "failed": False}
        return self._render(request, "login.html", context)

    async def login(self, request: web.Request) -> web.Response:
        """A new session per sign-in, with its own form token and expiry; wrong tokens are
        counted per address, and an address that guessed too often waits (429)."""
        server = self._runtime.config.server
        form = await request.post()
        target = safe_next(str(form.get("next", "/")))
        if not same_site(request):
            raise web.HTTPForbidden(text="refused: sign-in from another site")
        if server.admin_token is None:
            raise web.HTTPSeeOther(target)  # no token configured: nothing to sign in to
        verdict = self._access.try_token(request, str(form.get("token", "")))
        if verdict is not True:
            if verdict is not False:
                return locked_out(verdict)
            response = self._render(request, "login.html", {"next": target, "failed": True})
            response.set_status(401)
            return response
        session = self._access.sessions.open(server)
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
            max_age=int(server.admin_session_ttl),
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        if not same_site(request):
            raise web.HTTPForbidden(text="refused: sign-out from another site")
        self._access.sessions.close(request.cookies.get(COOKIE, ""))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- helpers -----------------------------------------------------------------------------

    def _render(self, request: web.Request, name: str, context: dict[str, Any]) -> web.Response:
        server = self._runtime.config.server
        page = {
            "form_token": self._access.form_token(request),
            "signed_in": server.admin_token is not None and self._access.signed_in(request),
            "queued": any(r.delivery.value == "queued" for r in self._runtime.config.routes),
            "path": request.path,
            "history": self._runtime.history is not None,
        }
        text = _templates.get_template(name).render(**page, **context)
        return web.Response(text=text, content_type="text/html")

    def _store_state(self) -> str | None:
        store = self._runtime.store
        if store is None:
            return None
        return "up" if store.available else "down"

    async def _queue_stats(self) -> dict[str, dict[str, Any]]:
        store = self._runtime.store
        if store is None:
            return {}
        try:
            snapshot = await store.outbox.stats()
        except StoreError:
            return {}
        now = time.time()
        return {
            item.route: {
                "counts": dict(item.counts),
                "oldest_seconds": now - item.oldest_pending_at if item.oldest_pending_at else None,
            }
            for item in snapshot
        }


def _filters(request: web.Request) -> Filters:
    """The list's filters, from the page's query."""
    query = request.query
    return Filters(*(query.get(name, "")[:200] for name in ("route", "outcome", "reason", "text")))


def _is_id(text: str) -> bool:
    """An event id or a count: ASCII digits, short enough for any store's integer."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def _row(entry: Entry) -> dict[str, Any]:
    """One line of the list, as JSON-able data (the live updates send the same)."""
    record = entry.record
    fields = record.fields or {}
    return {
        "number": entry.number,
        "at": time.strftime("%H:%M:%S", time.gmtime(entry.at)) + f".{int(entry.at % 1 * 1000):03d}",
        "route": record.route or "",
        "outcome": record.outcome or "",
        "reason": record.reason or "",
        "status": entry.status,
        "ymid": fields.get("ymid", ""),
        "telegram_id": fields.get("telegram_id", ""),
        "event_type": fields.get("event_type", ""),
        "client": record.client or "",
        "request_id": record.request_id,
        "latency_ms": entry.latency_ms,
    }
