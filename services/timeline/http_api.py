"""The timeline's HTTP side: the JSON API (bearer tokens) and the reviewer's pages.

Served by aiohttp on its own thread and event loop; queries run in worker threads (the
store is synchronous). API errors are JSON ``{"error": ...}`` naming what was wrong: 400 bad
parameter, 401 no or unknown token, 403 out of scope, 404 unknown (or another district's)
subject. Pages (``/``, ``/incidents/{id}``, ``/static/…``) are static files from ``web/``;
they hold no data and read the API with the token the reviewer brings.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from safehub.kernel.directory import Reviewer
from services.timeline.query import BadRequestError, Queries, QueryError, dumps

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
#: Pages load only their own scripts and styles; API answers are data, never rendered.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def render_html(export: dict[str, Any]) -> str:
    """The after-action HTML: the reviewer view's renderer, or a minimal escaped table."""
    try:
        from services.timeline.export_html import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            render_incident_html,
        )
    except ImportError:
        return _minimal_html(export)
    return str(render_incident_html(export))


def _minimal_html(export: dict[str, Any]) -> str:
    subject = export["subject"]
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(entry.get(k) or ''))}</td>"
            for k in ("seq", "occurred_at", "lane", "event_type", "actor", "summary")
        )
        + "</tr>"
        for entry in export["entries"]
    )
    title = html.escape(f"{subject['id']} ({subject.get('type') or subject['kind']})")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1><p>chain ok: {export['chain']['ok']}</p><table>"
        "<tr><th>seq</th><th>occurred</th><th>lane</th><th>event</th><th>actor</th>"
        f"<th>summary</th></tr>{rows}</table></body></html>"
    )


class HttpApi:
    """Routes of the JSON API and the pages, bound to one :class:`Queries`."""

    def __init__(self, queries: Queries, web_dir: Path = WEB_DIR) -> None:
        self.queries = queries
        self.web_dir = web_dir

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self._page("index.html"))
        app.router.add_get("/incidents/{id}", self._page("incident.html"))
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/healthz", self._health)
        api = [
            ("/api/v1/subjects", self._subjects),
            ("/api/v1/subjects/{id}/timeline", self._timeline),
            ("/api/v1/subjects/{id}/people", self._people),
            ("/api/v1/subjects/{id}/verify", self._verify),
            ("/api/v1/subjects/{id}/export", self._export),
            ("/api/v1/traces/{trace_id}", self._trace),
        ]
        for path, handler in api:
            app.router.add_get(path, self._authenticated(handler))
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # -- pages -------------------------------------------------------------------------------

    def _page(self, name: str) -> Handler:
        async def page(_request: web.Request) -> web.StreamResponse:
            return self._file(name)

        return page

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.StreamResponse:
        path = (self.web_dir / name).resolve()
        # Only files directly in web/: no traversal, no sub-folders, no dotfiles.
        if path.parent != self.web_dir.resolve() or name.startswith(".") or not path.is_file():
            return _error(404, f"no page {name!r}")
        return web.FileResponse(path)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # -- API ---------------------------------------------------------------------------------

    def _authenticated(self, handler: Callable[[web.Request, Reviewer], Any]) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _error(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
            reviewer = self.queries.reviewer_by_token(token.strip())
            if reviewer is None:
                return _error(401, "unknown bearer token", **{"WWW-Authenticate": "Bearer"})
            try:
                result = await asyncio.to_thread(handler, request, reviewer)
            except QueryError as exc:
                return _error(exc.status, str(exc))
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result, dumps=dumps)

        return wrapped

    def _subjects(self, request: web.Request, reviewer: Reviewer) -> Any:
        return self.queries.list_subjects(reviewer, request.query)

    def _timeline(self, request: web.Request, reviewer: Reviewer) -> web.Response:
        body = self.queries.timeline_json(reviewer, request.match_info["id"], request.query)
        return web.Response(text=body, content_type="application/json")

    def _people(self, request: web.Request, reviewer: Reviewer) -> Any:
        return self.queries.people(reviewer, request.match_info["id"])

    def _verify(self, request: web.Request, reviewer: Reviewer) -> Any:
        return self.queries.verify(reviewer, request.match_info["id"])

    def _trace(self, request: web.Request, reviewer: Reviewer) -> Any:
        return self.queries.trace(reviewer, request.match_info["trace_id"])

    def _export(self, request: web.Request, reviewer: Reviewer) -> web.Response:
        kind = request.query.get("format", "json")
        if kind not in ("json", "html"):
            raise BadRequestError("format: expected json or html")
        subject_id = request.match_info["id"]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject_id)
        if kind == "html":
            body = render_html(self.queries.export(reviewer, subject_id))
            content_type = "text/html"
        else:
            body = dumps(self.queries.export(reviewer, subject_id, pass_through=True))
            content_type = "application/json"
        return web.Response(
            text=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="timeline-{safe}.{kind}"'},
        )
