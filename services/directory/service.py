"""The directory service: consumes ``safehub.people.v1`` and ``safehub.directory.v1`` into its
store, serves a read API.

Every ``PersonChanged`` and every ``DirectoryChanged`` is recorded (idempotent by event id and
by entry and version; an older version is kept in the history without replacing the newest;
an invalid one is dead-lettered with a reason naming the field). Each topic has its own
consumer group. The HTTP API (bearer token, compared in constant time; without a configured
token it refuses everyone) answers:

* ``GET /api/v1/schools/{id}/people?kind=STAFF|STUDENT|GUARDIAN|RESPONDER``: the school's
  current people — ids, kinds, names, roles, versions; never contact details;
* ``GET /api/v1/people/{id}/versions``: what changed when (no record contents);
* ``GET /api/v1/directory/entries?kind=&district=&include_deleted=``: the newest version of
  every entry of the live directory's places and systems (deleted ones only when asked);
* ``GET /api/v1/directory/entries/{kind}/{id}/versions``: every version of one entry (version,
  change, who changed it, when it was recorded, the entry then);
* ``GET /health``: unauthenticated liveness.

Entries are served as their events carried them, but never a reviewer's token hash. One
writer is enough (changes are ordered per entry by version, not by the consumer).
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
from safehub.kernel.live_directory import DIRECTORY_CHANGED, FIELDS, InvalidEntryError
from safehub.kernel.person_events import LISTS, PERSON_CHANGED, InvalidPersonError
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.topics import DIRECTORY, PEOPLE
from services.directory.settings import DirectorySettings
from services.directory.store import DirectoryStore

log = structlog.get_logger(__name__)

NAME = "directory"

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The query fields ``GET /api/v1/directory/entries`` takes.
ENTRY_QUERY = ("kind", "district", "include_deleted")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


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
        app.router.add_get("/api/v1/directory/entries", self._entries)
        app.router.add_get(
            "/api/v1/directory/entries/{kind}/{entry_id}/versions", self._entry_versions
        )
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

    async def _entries(self, request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - set(ENTRY_QUERY))
        if unknown:
            return _error(
                400, f"unknown query field {unknown[0]}: the fields are {', '.join(ENTRY_QUERY)}"
            )
        kind = request.query.get("kind")
        if kind is not None:
            kind = kind.upper()
            if kind not in FIELDS:
                return _error(400, f"kind must be one of {', '.join(FIELDS)}")
        district = request.query.get("district")
        if district is not None and not district.strip():
            return _error(400, "district must be a district id (or left out)")
        deleted = _BOOLEANS.get(request.query.get("include_deleted", "false").lower())
        if deleted is None:
            return _error(400, "include_deleted must be true or false")
        entries = await asyncio.to_thread(
            self._store.entries, kind, district, include_deleted=deleted
        )
        return web.json_response(
            {"kind": kind, "district": district, "include_deleted": deleted, "entries": entries}
        )

    async def _entry_versions(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"].upper()
        if kind not in FIELDS:
            return _error(400, f"kind must be one of {', '.join(FIELDS)}")
        entry_id = request.match_info["entry_id"]
        versions = await asyncio.to_thread(self._store.entry_versions, kind, entry_id)
        if not versions:
            return _error(404, f"no such {kind} entry")
        return web.json_response({"kind": kind, "id": entry_id, "versions": versions})


def _people_changes(headers: Headers) -> bool:
    return header(headers, H_EVENT_TYPE) == PERSON_CHANGED


def _directory_changes(headers: Headers) -> bool:
    return header(headers, H_EVENT_TYPE) == DIRECTORY_CHANGED


def setup(runtime: Runtime[DirectorySettings]) -> None:
    """Store, read API, then the consumers (people, directory entries)."""
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

    def handle_entry(consumed: ConsumedEvent) -> None:
        try:
            newest = store.apply_entry(consumed.event)
        except InvalidEntryError as exc:  # the reason names fields, never values
            raise HandlerError(f"invalid DirectoryChanged: {exc}") from None
        log.debug("directory entry recorded", event_id=consumed.event_id, newest=newest)

    runtime.consumer(
        config.entries_group,
        [DIRECTORY],
        handle_entry,
        fetch_wait_max_ms=config.fetch_wait_max_ms,
        accept=_directory_changes,
    )


def main() -> None:
    """Run the directory service until SIGTERM."""
    run(NAME, DirectorySettings, setup)
