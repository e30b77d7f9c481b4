"""A CAD simulator that speaks the hub's EIDO exchange, for tests and the demo.

The exchange (HTTPS; JSON bodies; EIDO = NENA-STA-021 EIDO JSON, version 1.0):

Hub → CAD, incident intake::

    POST /eido/v1/incidents
    Content-Type: application/json
    Idempotency-Key: <SafeHub incident id>:<incident version>
    traceparent: <W3C trace context>            (optional)
    Authorization: Bearer <token>               (only if CAD is configured with one)
    <EIDO>

    201 {"cadIncidentId": "..."}                first EIDO for this incidentTrackingIdentifier
    200 {"cadIncidentId": "...", "duplicate": true}
                                                Idempotency-Key seen before: same request,
                                                nothing new recorded
    200 {"cadIncidentId": "..."}                a later version: the CAD incident is updated
    200 {"cadIncidentId": "...", "stale": true} a version older than one already applied
    400 {"error": ..., "problems": [...]}       not JSON, no Idempotency-Key, invalid EIDO
    422 {"error": "exercise ..."}               an exercise marker reached CAD (must never)
    503 (Retry-After: 1)                        CAD is down (see /sim/outage)

One CAD incident exists per ``incidentComponent.incidentTrackingIdentifier`` (the SafeHub
incident id). Its status follows ``incidentStatusCommonRegistryText`` (``Cancelled`` when the
school cancels).

CAD → hub, status updates (to the hub's callback URL)::

    POST <callback>                  e.g. https://hub:8444/eido/v1/status
    Authorization: Bearer <callback token>
    <EIDO: incidentComponent with incidentTrackingIdentifier (hub id), internalIncidentId
     (CAD id), incidentStatusCommonRegistryText, optional dispositionComponent;
     emergencyResourceComponent per unit with primaryUnitStatusRegistryText>

    202 accepted; 400 invalid; 401 bad token; 404 unknown incident

Admin endpoints (tests and demo only): ``GET /sim/incidents``, ``GET /sim/deliveries``,
``GET /sim/stats``, ``POST /sim/outage`` (``{"seconds": N}`` or ``{"down": bool}``),
``POST /sim/latency`` (``{"ms": N}``: delay each intake answer),
``POST /sim/incidents/{cad_id}/status`` (``{"status": "ResourcesEnroute", "units": [...],
"disposition": "..."}``: CAD posts a status update to the callback). With ``--auto`` CAD
reports units en route about 1 s after an incident is created and on scene about 1 s later.

Run: ``python -m simulators.cad --port 8443 --cert C --key K --ca CA
--callback https://127.0.0.1:8444/eido/v1/status`` (callback token in
``SAFEHUB_SIM_CALLBACK_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from safehub.kernel.http_server import ServerThread, server_ssl_context
from safehub.kernel.lifecycle import Closing, write_port_file
from safehub.kernel.logging import configure_logging
from safehub.kernel.settings import ListenSettings
from safehub.standards import EIDO_RULES
from safehub.standards.eido import EidoValidator

log = structlog.get_logger(__name__)

UNIT_STATUS_BY_INCIDENT_STATUS = {
    "ResourcesAssigned": "Dispatched",
    "ResourcesEnroute": "Enroute",
    "ResourcesOnscene": "OnScene",
    "Closed": "Available",
    "Cancelled": "Available",
}


@dataclass
class SimulatorConfig:
    """How the simulated CAD behaves."""

    rules_file: Path = EIDO_RULES
    callback_url: str | None = None
    callback_token: str | None = None
    callback_ca: Path | None = None
    intake_token: str | None = None
    element_id: str = "cad.sim.local"
    auto: bool = False
    auto_delays_s: tuple[float, float] = (1.0, 1.0)


@dataclass
class CadIncident:
    """One incident as the simulated CAD holds it."""

    cad_id: str
    tracking_id: str
    created_at: float
    apco_code: str
    status: str
    agency_id: str
    versions: list[int] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    deliveries: int = 0
    location_by_value: str = ""
    last_eido: dict[str, Any] = field(default_factory=dict)
    status_updates_sent: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The admin view."""
        return {
            "cadIncidentId": self.cad_id,
            "trackingId": self.tracking_id,
            "createdAt": self.created_at,
            "apcoCode": self.apco_code,
            "status": self.status,
            "versions": list(self.versions),
            "deliveries": self.deliveries,
            "locationByValue": self.location_by_value,
            "lastEido": self.last_eido,
            "statusUpdatesSent": list(self.status_updates_sent),
        }


@dataclass(frozen=True)
class _Intake:
    """A well-formed intake request."""

    key: str
    version: int
    tracking: str
    apco_code: str
    status: str
    agency_id: str
    location_by_value: str
    document: dict[str, Any]


class CadSimulator:
    """The simulated CAD's state and HTTP handlers (one aiohttp application)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.validator = EidoValidator.from_file(config.rules_file)
        self.incidents: dict[str, CadIncident] = {}
        self.by_cad_id: dict[str, CadIncident] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.down_until = 0.0
        self.down = False
        self.latency_s = 0.0
        self.exercise_deliveries = 0
        self._counter = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_post("/eido/v1/incidents", self.intake)
        app.router.add_get("/sim/incidents", self.list_incidents)
        app.router.add_get("/sim/deliveries", self.list_deliveries)
        app.router.add_get("/sim/stats", self.stats)
        app.router.add_post("/sim/outage", self.outage)
        app.router.add_post("/sim/latency", self.latency)
        app.router.add_post("/sim/incidents/{cad_id}/status", self.post_status)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # -- intake ----------------------------------------------------------------------------

    def _is_down(self) -> bool:
        return self.down or time.monotonic() < self.down_until

    def _record(
        self, key: str | None, tracking: str | None, outcome: str, status: int, request: web.Request
    ) -> None:
        self.deliveries.append(
            {
                "at": time.time(),
                "key": key,
                "trackingId": tracking,
                "outcome": outcome,
                "httpStatus": status,
                "traceparent": request.headers.get("traceparent"),
            }
        )

    async def intake(self, request: web.Request) -> web.Response:
        """POST /eido/v1/incidents."""
        received = time.time()
        key = request.headers.get("Idempotency-Key")
        if self._is_down():
            self._record(key, None, "outage", 503, request)
            return web.json_response(
                {"error": "CAD unavailable"}, status=503, headers={"Retry-After": "1"}
            )
        if self.config.intake_token and request.headers.get("Authorization") != (
            f"Bearer {self.config.intake_token}"
        ):
            self._record(key, None, "unauthorised", 401, request)
            return web.json_response({"error": "bad token"}, status=401)
        try:
            body = await request.read()
        except ConnectionError:
            self._record(key, None, "aborted", 0, request)
            raise
        if self.latency_s:
            # CAD's processing time; a client that dies meanwhile never sees the answer,
            # as after a crash: the incident exists at CAD all the same.
            await asyncio.sleep(self.latency_s)
        parsed = self._parse(key, body, request)
        if isinstance(parsed, web.Response):
            return parsed
        return self._apply(parsed, received, request)

    def _parse(self, key: str | None, body: bytes, request: web.Request) -> _Intake | web.Response:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            self._record(key, None, "invalid", 400, request)
            return web.json_response({"error": "body is not valid JSON"}, status=400)
        version = _version_of(key)
        if key is None or version is None:
            self._record(key, None, "invalid", 400, request)
            return web.json_response(
                {"error": "Idempotency-Key <incident id>:<version> is required"}, status=400
            )
        if _exercise_marker(document, request):
            self.exercise_deliveries += 1
            self._record(key, None, "exercise", 422, request)
            log.error("exercise marker reached CAD", key=key)
            return web.json_response({"error": "exercise EIDO refused by CAD"}, status=422)
        problems = self.validator.problems(document)
        incident = document.get("incidentComponent") if isinstance(document, dict) else None
        tracking = (
            incident.get("incidentTrackingIdentifier") if isinstance(incident, dict) else None
        )
        if problems or not isinstance(incident, dict) or not isinstance(tracking, str):
            problems = problems or [
                "incidentComponent.incidentTrackingIdentifier: is required by this CAD"
            ]
            self._record(key, None, "invalid", 400, request)
            return web.json_response({"error": "invalid EIDO", "problems": problems}, status=400)
        location: dict[str, Any] = next(iter(document.get("locationComponent") or []), {})
        return _Intake(
            key=key,
            version=version,
            tracking=tracking,
            apco_code=str(incident["incidentTypeCommonRegistryText"]),
            status=str((incident.get("incidentStatusCommonRegistryText") or ["Active"])[-1]),
            agency_id=_dispatching_agency(document) or f"urn:cad:{self.config.element_id}",
            location_by_value=str(location.get("locationByValue") or ""),
            document=document,
        )

    def _apply(self, intake: _Intake, received: float, request: web.Request) -> web.Response:
        existing = self.incidents.get(intake.tracking)
        if existing is not None:
            existing.deliveries += 1
            if intake.key in existing.keys:
                self._record(intake.key, intake.tracking, "duplicate", 200, request)
                return web.json_response({"cadIncidentId": existing.cad_id, "duplicate": True})
            existing.keys.add(intake.key)
            if existing.versions and intake.version <= max(existing.versions):
                self._record(intake.key, intake.tracking, "stale", 200, request)
                return web.json_response({"cadIncidentId": existing.cad_id, "stale": True})
            existing.versions.append(intake.version)
            existing.status = intake.status
            existing.apco_code = intake.apco_code
            existing.location_by_value = intake.location_by_value
            existing.last_eido = intake.document
            self._record(intake.key, intake.tracking, "updated", 200, request)
            log.info("CAD incident updated", cad_id=existing.cad_id, version=intake.version)
            return web.json_response({"cadIncidentId": existing.cad_id})
        self._counter += 1
        incident = CadIncident(
            cad_id=f"CAD-{datetime.now(UTC):%Y}-{self._counter:06d}",
            tracking_id=intake.tracking,
            created_at=received,
            apco_code=intake.apco_code,
            status=intake.status,
            agency_id=intake.agency_id,
            versions=[intake.version],
            keys={intake.key},
            deliveries=1,
            location_by_value=intake.location_by_value,
            last_eido=intake.document,
        )
        self.incidents[intake.tracking] = incident
        self.by_cad_id[incident.cad_id] = incident
        self._record(intake.key, intake.tracking, "created", 201, request)
        log.info("CAD incident created", cad_id=incident.cad_id, apco_code=incident.apco_code)
        if self.config.auto:
            self._spawn(self._auto_progress(incident))
        return web.json_response({"cadIncidentId": incident.cad_id}, status=201)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _auto_progress(self, incident: CadIncident) -> None:
        first, second = self.config.auto_delays_s
        await asyncio.sleep(first)
        await self.send_status(incident, "ResourcesEnroute", [{"id": "P-101"}], None)
        await asyncio.sleep(second)
        await self.send_status(incident, "ResourcesOnscene", [{"id": "P-101"}], None)

    # -- admin -----------------------------------------------------------------------------

    async def list_incidents(self, _request: web.Request) -> web.Response:
        """GET /sim/incidents."""
        return web.json_response([i.as_json() for i in self.incidents.values()])

    async def list_deliveries(self, _request: web.Request) -> web.Response:
        """GET /sim/deliveries: every raw intake request, in arrival order."""
        return web.json_response(self.deliveries)

    async def stats(self, _request: web.Request) -> web.Response:
        """GET /sim/stats."""
        outcomes: dict[str, int] = {}
        for delivery in self.deliveries:
            outcomes[delivery["outcome"]] = outcomes.get(delivery["outcome"], 0) + 1
        return web.json_response(
            {
                "incidents": len(self.incidents),
                "requests": len(self.deliveries),
                "outcomes": outcomes,
                "exerciseDeliveries": self.exercise_deliveries,
                "down": self._is_down(),
            }
        )

    async def outage(self, request: web.Request) -> web.Response:
        """POST /sim/outage: {"seconds": N} or {"down": true|false}."""
        body = await _json_object(request)
        if "seconds" in body:
            self.down_until = time.monotonic() + float(body["seconds"])
        if "down" in body:
            self.down = bool(body["down"])
            if not self.down:
                self.down_until = 0.0
        return web.json_response({"down": self._is_down()})

    async def latency(self, request: web.Request) -> web.Response:
        """POST /sim/latency: {"ms": N} added before each intake answer."""
        body = await _json_object(request)
        self.latency_s = max(0.0, float(body.get("ms", 0)) / 1000)
        return web.json_response({"ms": self.latency_s * 1000})

    async def post_status(self, request: web.Request) -> web.Response:
        """POST /sim/incidents/{cad_id}/status: CAD sends a status update to the hub."""
        incident = self.by_cad_id.get(request.match_info["cad_id"])
        if incident is None:
            return web.json_response({"error": "no such CAD incident"}, status=404)
        body = await _json_object(request)
        status = str(body.get("status") or "ResourcesAssigned")
        units = body.get("units") or []
        disposition = body.get("disposition")
        code, eido_id = await self.send_status(
            incident, status, units, str(disposition) if disposition else None
        )
        return web.json_response(
            {"callbackStatus": code, "eidoId": eido_id}, status=200 if code == 202 else 502
        )

    # -- CAD → hub -------------------------------------------------------------------------

    async def send_status(
        self, incident: CadIncident, status: str, units: list[Any], disposition: str | None
    ) -> tuple[int, str]:
        """POST a status-update EIDO to the callback; returns (HTTP status, EIDO $id)."""
        document = self.status_eido(incident, status, units, disposition)
        incident.status = status
        if not self.config.callback_url:
            log.warning("no callback URL: status update not sent", cad_id=incident.cad_id)
            return 0, document["$id"]
        if self._session is None:
            context = ssl.create_default_context(
                cafile=str(self.config.callback_ca) if self.config.callback_ca else None
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context),
                timeout=aiohttp.ClientTimeout(total=10),
            )
        headers = {"Content-Type": "application/json"}
        if self.config.callback_token:
            headers["Authorization"] = f"Bearer {self.config.callback_token}"
        try:
            async with self._session.post(
                self.config.callback_url, data=json.dumps(document), headers=headers
            ) as response:
                code = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("status callback failed", cad_id=incident.cad_id, error=type(exc).__name__)
            return 0, document["$id"]
        incident.status_updates_sent.append(status)
        log.info("status update sent", cad_id=incident.cad_id, status=status, http_status=code)
        return code, document["$id"]

    def status_eido(
        self, incident: CadIncident, status: str, units: list[Any], disposition: str | None
    ) -> dict[str, Any]:
        """A status-update EIDO as this CAD would send it."""
        element = self.config.element_id
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        psap = incident.agency_id
        police = f"urn:cad:{element}:agency:police"

        def prologue(component_id: str) -> dict[str, Any]:
            return {
                "$id": component_id,
                "lastUpdateTimeStamp": stamp,
                "updatedByAgencyReference": {"$ref": psap},
            }

        agents: list[dict[str, Any]] = []
        resources: list[dict[str, Any]] = []
        for unit in units:
            spec = unit if isinstance(unit, dict) else {"id": str(unit)}
            unit_id = str(spec.get("id") or spec.get("unit_id") or "unit")
            agent_id = f"urn:cad:{element}:agent:{unit_id}"
            agents.append(
                {
                    **prologue(agent_id),
                    "agentRoleRegistryText": ["Responder"],
                    "agencyReference": {"$ref": police},
                }
            )
            resources.append(
                {
                    **prologue(f"urn:cad:{element}:unit:{unit_id}:{uuid.uuid4()}"),
                    "agentReference": {"$ref": agent_id},
                    "emergencyResourceName": unit_id,
                    "emergencyResourceTypeCommonRegistryText": "Patrol",
                    "primaryUnitStatusRegistryText": str(
                        spec.get("status")
                        or UNIT_STATUS_BY_INCIDENT_STATUS.get(status, "Dispatched")
                    ),
                    "secondaryUnitStatusRegistryText": [],
                    "resourceAttributeRegistryText": [],
                }
            )
        incident_part: dict[str, Any] = {
            **prologue(f"urn:emergency:uid:incidentid:{incident.cad_id}:{element}"),
            "incidentTypeCommonRegistryText": incident.apco_code,
            "incidentTrackingIdentifier": incident.tracking_id,
            "internalIncidentId": incident.cad_id,
            "incidentStatusCommonRegistryText": [status],
        }
        if disposition:
            incident_part["dispositionComponent"] = [
                {
                    **prologue(f"urn:cad:{element}:disposition:{uuid.uuid4()}"),
                    "dispositionCommonRegistryCode": disposition,
                    "dispositionPrimaryIndicator": True,
                }
            ]
        document: dict[str, Any] = {
            **prologue(f"urn:emergency:uid:eidoid:{uuid.uuid4()}:{element}"),
            "eidoVersion": "1.0",
            "issuingElementIdentification": element,
            "agencyComponent": [
                {
                    **prologue(psap),
                    "agencyRoleDescriptionRegistryText": ["Dispatching"],
                    "agencyType": ["psap"],
                },
                {
                    **prologue(police),
                    "agencyRoleDescriptionRegistryText": ["Dispatched"],
                    "agencyType": ["police"],
                },
            ],
            "incidentComponent": incident_part,
        }
        if agents:
            document["agentComponent"] = agents
            document["emergencyResourceComponent"] = resources
        return document


def _version_of(key: str | None) -> int | None:
    if not key or ":" not in key:
        return None
    try:
        return int(key.rsplit(":", 1)[1])
    except ValueError:
        return None


def _exercise_marker(document: Any, request: web.Request) -> bool:
    """Whether a delivery says it is an exercise (none may ever reach CAD)."""
    if request.headers.get("X-SafeHub-Exercise", "").lower() in ("1", "true"):
        return True
    if not isinstance(document, dict):
        return False
    incident = document.get("incidentComponent")
    if isinstance(incident, dict):
        if incident.get("incidentTypeCommonRegistryText") == "TRAINDRL":
            return True
        if incident.get("exercise") is True:
            return True
    return document.get("exercise") is True


def _dispatching_agency(document: dict[str, Any]) -> str | None:
    for agency in document.get("agencyComponent") or []:
        if isinstance(agency, dict) and "Dispatching" in (
            agency.get("agencyRoleDescriptionRegistryText") or []
        ):
            value = agency.get("$id")
            return str(value) if value else None
    return None


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


class SimulatorServer(Closing):
    """The simulator served over TLS from a background thread (in-process use)."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.simulator = CadSimulator(config)
        self._server = ServerThread(
            ListenSettings(host=host, port=port),
            ssl_context=server_ssl_context(cert, key, client_ca),
            name="cad-simulator",
        )
        self.host = host
        self.port = 0

    def start(self) -> SimulatorServer:
        """Listen; returns self."""
        self.port = self._server.start(self.simulator.app())
        return self

    @property
    def base_url(self) -> str:
        """``https://host:port``."""
        return f"https://{self.host}:{self.port}"

    @property
    def intake_url(self) -> str:
        """The EIDO intake URL."""
        return f"{self.base_url}/eido/v1/incidents"

    def close(self) -> None:
        """Stop serving."""
        self._server.close()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CAD simulator speaking the SafeHub EIDO exchange")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0: any free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="server key (PEM)")
    parser.add_argument("--client-ca", type=Path, help="require client certs from this CA")
    parser.add_argument("--ca", type=Path, help="CA bundle to verify the hub's callback")
    parser.add_argument("--callback", help="hub URL for status updates")
    parser.add_argument("--rules", type=Path, default=EIDO_RULES)
    parser.add_argument("--element-id", default="cad.sim.local")
    parser.add_argument("--auto", action="store_true", help="en route after ~1 s, on scene ~2 s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    configure_logging()
    config = SimulatorConfig(
        rules_file=args.rules,
        callback_url=args.callback,
        callback_token=os.environ.get("SAFEHUB_SIM_CALLBACK_TOKEN") or None,
        callback_ca=args.ca,
        intake_token=os.environ.get("SAFEHUB_SIM_INTAKE_TOKEN") or None,
        element_id=args.element_id,
        auto=args.auto,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with SimulatorServer(
        config,
        cert=args.cert,
        key=args.key,
        client_ca=args.client_ca,
        host=args.host,
        port=args.port,
    ) as server:
        server.start()
        if args.port_file:
            write_port_file(args.port_file, server.port)
        log.info("CAD simulator listening", url=server.intake_url, auto=args.auto)
        stop.wait()


if __name__ == "__main__":
    main()
