"""The directory service: consumes ``safehub.people.v1`` into its store, serves a read API.

Every ``PersonChanged`` is recorded (idempotent by event id and by person and version; an
invalid one is dead-lettered with the reason). The HTTP API (bearer token, compared in
constant time; without a configured token it refuses everyone) answers:

* ``GET /api/v1/schools/{id}/people?kind=STAFF|STUDENT|GUARDIAN|RESPONDER``: the school's
  current people — ids, kinds, names, roles, versions; never contact details;
* ``GET /api/v1/people/{id}/versions``: what changed when (no record contents);
* ``GET /health``: unauthenticated liveness.

One writer is enough (changes are ordered per person by version, not by the consumer).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from safehub.kernel.bus import H_EVENT_TYPE, ConsumedEvent, Headers, header
from safehub.kernel.errors import HandlerError
from safehub.kernel.http_server import ServerThread
from safehub.kernel.person_events import LISTS, PERSON_CHANGED, InvalidPersonError
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.topics import PEOPLE
from services.directory.settings import DirectorySettings
from services.directory.store import DirectoryStore

log = structlog.get_logger(__name__)

NAME = "directory"

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class DirectoryApi:
    """The read API over the store."""

    def __init__(self, store: DirectoryStore, token: str | None) -> None:
        self._store = store
        self._token = token.encode() if token else None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/health", self._health)
        app.router.add_get("/api/v1/schools/{school_id}/people", self._school_people)
        app.router.add_get("/api/v1/people/{person_id}/versions", self._versions)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Route) -> web.StreamResponse:
        if request.path == "/health":
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        if self._token is None or not hmac.compare_digest(token.strip().encode(), self._token):
            return _error(401, "unknown bearer token", **{"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _school_people(self, request: web.Request) -> web.Response:
        school_id = request.match_info["school_id"]
        kind = request.query.get("kind")
        if kind is not None:
            kind = kind.upper()
            if kind not in LISTS:
                return _error(400, f"kind must be one of {', '.join(LISTS)}")
        people = await asyncio.to_thread(self._store.school_people, school_id, kind)
        return web.json_response({"school_id": school_id, "people": people})

    async def _versions(self, request: web.Request) -> web.Response:
        person_id = request.match_info["person_id"]
        versions = await asyncio.to_thread(self._store.versions, person_id)
        if not versions:
            return _error(404, "no such person")
        return web.json_response({"person_id": person_id, "versions": versions})


def _people_changes(headers: Headers) -> bool:
    return header(headers, H_EVENT_TYPE) == PERSON_CHANGED


def setup(runtime: Runtime[DirectorySettings]) -> None:
    """Store, read API, then the consumer."""
    config = runtime.settings.directory
    store = DirectoryStore(config.database_url)
    runtime.on_close(store.close)
    token = config.api_token.get_secret_value() if config.api_token else None
    if token is None:
        log.warning("no SAFEHUB_DIRECTORY__API_TOKEN: the read API refuses everyone")
    server = ServerThread(config.listen, name="directory-api")
    server.start(DirectoryApi(store, token).app())
    runtime.on_close(server.close)
    log.info("directory listening", port=server.port)

    def handle(consumed: ConsumedEvent) -> None:
        try:
            current = store.apply(consumed.event)
        except InvalidPersonError as exc:  # the reason names fields, never values
            raise HandlerError(f"invalid PersonChanged: {exc}") from None
        log.debug("person recorded", event_id=consumed.event_id, current=current)

    runtime.consumer(
        config.group,
        [PEOPLE],
        handle,
        fetch_wait_max_ms=config.fetch_wait_max_ms,
        accept=_people_changes,
    )


def main() -> None:
    """Run the directory service until SIGTERM."""
    run(NAME, DirectorySettings, setup)
