"""The inspector's pages on the history: the search, the reward trace, one recorded
postback, the senders seen (with the allowlist they suggest) and the reward sessions' fill
rate. They read the store every
replica writes, so they span days and replicas, where the list of recent postbacks (views.py)
is this process's last few; without a history the senders page shows this process's memory.

Only GETs, behind the same access as every page. A store that fails gives a page saying the
history is unavailable (503), a parameter that means nothing a 400 naming it: both answered
in one place (`_answered`), never as a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..allowlist import advise, allow_ips_text, proxy_lines, refusal_lines, when
from ..config import duration_words
from ..durable.outbox import StoreError
from ..errors import Outcome
from ..history.search import Recorded, Search
from ..history.store import HistoryStore
from ..history.trace import user_trace
from ..runtime import Runtime
from .asked import BadParameter, search_asked, since_asked, user_asked
from .present import OUTCOMES, replay, steps
from .recorded import entry_of, original_of, page_of, query_of, row_of, trace_of

log = logging.getLogger("gateway.inspector")

Render = Callable[[web.Request, str, dict[str, Any]], web.Response]
Page = Callable[[web.Request], Awaitable[web.StreamResponse]]
# the gateway's request ids: a process prefix of 12 hex digits, then a counter in hex
REQUEST_ID = "[0-9a-f]{20,40}"
CLOCK_SKEW = 60.0  # seconds replicas' clocks may differ by (they should run NTP)
ORIGINAL_AMONG = 1000  # a duplicate's user's postbacks looked through for its delivery
NO_HISTORY = "this gateway keeps no history: it needs a store: and history.enabled (the default)"


class HistoryPages:
    def __init__(self, runtime: Runtime, render: Render) -> None:
        self._runtime = runtime
        self._render = render

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/history", self._answered(self.search))
        app.router.add_get(f"/history/{{request_id:{REQUEST_ID}}}", self._answered(self.postback))
        app.router.add_get("/trace", self._answered(self.trace))
        app.router.add_get("/senders", self._answered(self.senders))
        app.router.add_get("/sessions", self._answered(self.sessions))

    # -- pages -------------------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.Response:
        store = self._store()
        asked = search_asked(request.query, time.time())
        found = await store.search(asked.search)
        shown = found[: asked.page]
        older = None
        if len(found) > asked.page:  # the next page: the rows written before the last shown
            kept = {name: value for name, value in asked.values.items() if value}
            older = "/history?" + urlencode({**kept, "before": str(shown[-1].id)})
        context = {
            "asked": asked.values,
            "rows": [row_of(row) for row in shown],
            "older": older,
            "first_page": "before" not in request.query,
            "routes": [route.name for route in self._runtime.config.routes],
            "outcomes": OUTCOMES,
        }
        return self._render(request, "history.html", context)

    async def trace(self, request: web.Request) -> web.Response:
        store = self._store()
        since_text, seconds = since_asked(request.query)
        user = user_asked(request.query)
        context: dict[str, Any] = {"user": user, "since": since_text, "found": None}
        if user is not None:  # else the form alone
            name, value = user
            found = await user_trace(
                store,
                telegram_id=value if name == "telegram_id" else None,
                ymid=value if name == "ymid" else None,
                since=time.time() - seconds,
                window=duration_words(seconds),
            )
            context["found"] = found
            context["search"] = "/history?" + urlencode({name: value, "since": since_text})
        context["page_of"] = page_of
        return self._render(request, "trace.html", context)

    async def senders(self, request: web.Request) -> web.Response:
        """Where each route's valid key came from, and what allow_ips does with it."""
        runtime = self._runtime
        since_text, seconds = since_asked(request.query)
        since = time.time() - seconds
        if runtime.history is not None:
            senders = await runtime.history.store.senders(since)
            seen = f"since {when(since)}, every replica's history"
        else:
            senders = runtime.senders.senders()
            seen = "since this process started (no history: this replica's memory only)"
        routes = []
        for route in runtime.config.routes:
            advice = advise(route, senders)
            routes.append(
                {
                    "advice": advice,
                    "keyed": route.secret is not None,
                    "suggestion": allow_ips_text(advice, seen),
                    "refusals": refusal_lines(advice) + proxy_lines(advice),
                }
            )
        context = {"routes": routes, "since": since_text, "seen": seen, "when": when}
        return self._render(request, "senders.html", context)

    async def sessions(self, request: web.Request) -> web.Response:
        """Reward sessions' fill rate: of the ymids issued per route and placement, how many
        got a postback, how many none in time (no_postback), how many are still waiting."""
        store = self._store()
        since_text, seconds = since_asked(request.query)
        since = time.time() - seconds
        rates = await store.fill_rates(since)
        with_sessions = [route for route in self._runtime.config.routes if route.sessions]
        rows = [
            {
                "route": rate.route,
                "placement": rate.placement,
                "issued": rate.issued,
                "postbacks": rate.postbacks,
                "no_postback": rate.no_postback,
                "waiting": max(0, rate.issued - rate.postbacks - rate.no_postback),
                "fill": f"{rate.postbacks / rate.issued:.0%}" if rate.issued else "-",
            }
            for rate in rates
        ]
        context = {
            "rows": rows,
            "since": since_text,
            "routes": [(route.name, route.sessions) for route in with_sessions],
            "since_when": when(since),
        }
        return self._render(request, "sessions.html", context)

    async def postback(self, request: web.Request) -> web.Response:
        store = self._store()
        row = await store.get(request.match_info["request_id"])
        if row is None:
            said = (
                "No postback with this request id in the history: older than "
                "history.retention, or not written yet (within a second of its answer)."
            )
            return self._problem(request, 404, "Not in the history", said)
        later = await store.deliveries([row.request_id])
        entry = entry_of(row)
        config = self._runtime.config
        context: dict[str, Any] = {
            "row": row,
            "steps": steps(entry, config, later_attempts=sum(d.state != "redriven" for d in later)),
            "replay": replay(entry, config),
            "fields": sorted(row.fields.items()),
            "query": query_of(row),
            "attempts": row.attempts,
            "later": later,
            "trace": trace_of(row),
            "duplicate": None,
        }
        if row.outcome == Outcome.DUPLICATE:
            original = await self._original(store, row)
            context["duplicate"] = {
                "original": original,
                "page": page_of(original.request_id) if original is not None else None,
            }
        return self._render(request, "history_postback.html", context)

    # -- helpers -----------------------------------------------------------------------------

    async def _original(self, store: HistoryStore, duplicate: Recorded) -> Recorded | None:
        """The delivery a duplicate repeats: among the postbacks of its ymid (the event's
        first key field), or of its telegram_id if it has no ymid, the newest up to a little
        after it (another replica's clock may be ahead)."""
        fields, until = duplicate.fields, duplicate.at + CLOCK_SKEW
        if fields.get("ymid"):
            search = Search(ymid=fields["ymid"], until=until, limit=ORIGINAL_AMONG)
        elif fields.get("telegram_id"):
            search = Search(telegram_id=fields["telegram_id"], until=until, limit=ORIGINAL_AMONG)
        else:
            return None
        return original_of(duplicate, await store.search(search))

    def _store(self) -> HistoryStore:
        history = self._runtime.history
        if history is None:
            raise web.HTTPNotFound(text=NO_HISTORY)
        return history.store

    def _answered(self, page: Page) -> Page:
        """The page, or what to say when the store failed (503) or a parameter is wrong (400):
        a page of ours with the pages' headers, never a traceback."""

        async def answered(request: web.Request) -> web.StreamResponse:
            try:
                return await page(request)
            except BadParameter as problem:
                return self._problem(request, 400, "Cannot search that", str(problem))
            except StoreError as error:
                log.warning("inspector: the history is unavailable", extra={"detail": str(error)})
                said = f"The history is unavailable: {error}"
                return self._problem(request, 503, "History unavailable", said)

        return answered

    def _problem(self, request: web.Request, status: int, title: str, said: str) -> web.Response:
        response = self._render(request, "problem.html", {"title": title, "problem": said})
        response.set_status(status)
        return response
