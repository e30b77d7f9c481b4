"""The PSAP/CAD connector: dispatchable incidents to 911 CAD as EIDOs, CAD status back.

Outbound: consumes the incidents topic (group ``psap-cad``, 10 ms fetch wait: this is the
Alyssa's Law path). For each dispatchable IncidentOpened / IncidentChanged / IncidentCleared
it decides and queues the version in the ledger's outbox (durably, before the offset moves);
the PSAP's lane (:mod:`.dispatcher`) builds the EIDO, POSTs it until CAD takes it, publishes
``CadDispatch`` and records the delivery. A version is sent only if something CAD cares about
changed (type, SRP action, place, status, cancellation, correlated signals) and the change did
not come from CAD itself. Exercises and non-dispatchable incidents are never sent (logged,
recorded). Other event types on the topic are ignored. An event that cannot be processed is
dead-lettered (:class:`HandlerError`, with the reason) unless it may be a real dispatch: that
one is never dead-lettered (ledger failures are retried until the connector stops; an event
without a usable incident id is sent under a substitute id).

It also reads the alerts topic (group ``psap-cad-signals``) to learn what device or camera
fired, for the APCO code and the alarm component.

Inbound: ``POST /eido/v1/status`` over HTTPS with a bearer token; CAD posts status-update
EIDOs there. Each is validated, mapped to ``CadStatusUpdate`` and published on the dispatch
topic before the 202. Anything malformed gets a 4xx naming the rule it broke, never the
payload and never a 5xx (503 only when the hub cannot record a valid update).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.exc import SQLAlchemyError

from connectors.psap_cad.cad_client import DispatchInterrupted
from connectors.psap_cad.dispatcher import DISPATCH_CLASSIFICATION, LEASE, NAME, Dispatcher
from connectors.psap_cad.eido import EidoBuilder, IncidentSnapshot
from connectors.psap_cad.ledger import Decision, DispatchedIncident, Ledger, LedgerError
from connectors.psap_cad.settings import PsapCadSettings
from connectors.psap_cad.signals import facts_of
from safehub.contracts.names import EventType
from safehub.kernel import tracing
from safehub.kernel.bus import ConsumedEvent, EventConsumer
from safehub.kernel.envelope import event_id_for, new_event
from safehub.kernel.errors import BusError, ConfigError, HandlerError, SafeHubError
from safehub.kernel.http_server import ServerThread, server_ssl_context
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.topics import ALERTS, INCIDENTS
from safehub.kernel.views import follow_directory
from safehub.standards.eido import EidoValidator

log = structlog.get_logger(__name__)

OPENED = EventType.INCIDENT_OPENED
CHANGED = EventType.INCIDENT_CHANGED
CLEARED = EventType.INCIDENT_CLEARED
STATUS_PATH = "/eido/v1/status"

#: EidoIncidentStatus symbols (anything else maps to Unknown).
KNOWN_STATUSES = frozenset(
    {
        "Active",
        "Cancelled",
        "Closed",
        "FireUnderControl",
        "NewLocation",
        "ReOpened",
        "ResourcesAssigned",
        "ResourcesEnroute",
        "ResourcesOnscene",
        "StructureCleared",
    }
)
SIGNAL_RETENTION = timedelta(days=7)
#: A ledger outage may hold a partition (a real dispatch is retried, never dead-lettered).
MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000
#: What the ledger keeps as an id (its columns), without control characters.
INCIDENT_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
MAX_EVENT_ID = 100


class PsapCadConnector:
    """The connector's parts, wired to one runtime."""

    def __init__(self, runtime: Runtime[PsapCadSettings]) -> None:
        self.runtime = runtime
        self.config = runtime.settings.psap_cad
        # Schools (address, coordinates, PSAP, buildings) from the live directory, read once per
        # EIDO built and per routing decision: a change counts from the next one.
        self.directory = follow_directory(
            runtime.settings.kafka,
            runtime.catalog,
            runtime.codec,
            self.config.directory_file,
            name="psap-cad-directory",
            ready_timeout=self.config.directory_ready_s,
        )
        runtime.on_close(self.directory.close)
        self.validator = EidoValidator.from_file(self.config.eido_rules_file)
        self.builder = EidoBuilder(self.directory, self.config.hub_id)
        self.ledger = Ledger(self.config.ledger_url)
        self.dispatcher = Dispatcher(
            config=self.config,
            ledger=self.ledger,
            builder=self.builder,
            validator=self.validator,
            producer=runtime.producer,
            stop=runtime.stop,
            spawn=runtime.spawn,
        )
        self.inbound: ServerThread | None = None
        self.incident_consumer: EventConsumer | None = None
        self.signal_consumer: EventConsumer | None = None

    # -- wiring --------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the inbound endpoint, then the consumers (alerts first: they feed dispatches)."""
        config = self.config
        if config.listen_cert is None or config.listen_key is None:
            raise ConfigError(
                "SAFEHUB_PSAP_CAD__LISTEN_CERT and SAFEHUB_PSAP_CAD__LISTEN_KEY must be set: "
                "CAD status updates are accepted over HTTPS only"
            )
        if not config.inbound_token.get_secret_value():
            raise ConfigError("SAFEHUB_PSAP_CAD__INBOUND_TOKEN must be set")
        self.runtime.on_close(self.ledger.close)
        pruned = self.ledger.prune_signals(datetime.now(UTC) - SIGNAL_RETENTION)
        if pruned:
            log.info("old alert facts pruned", count=pruned)
        app = web.Application()
        app.router.add_post(STATUS_PATH, self._status_endpoint)
        self.inbound = ServerThread(
            config.listen,
            ssl_context=server_ssl_context(
                config.listen_cert, config.listen_key, config.listen_client_ca
            ),
            name="psap-cad-inbound",
        )
        port = self.inbound.start(app)
        self.runtime.on_close(self.inbound.close)
        log.info("inbound endpoint listening", host=config.listen_host, port=port)
        self.dispatcher.start()
        fast = {"max.poll.interval.ms": MAX_POLL_INTERVAL_MS}
        self.signal_consumer = self.runtime.consumer(
            f"{config.group_id}-signals",
            [ALERTS],
            self.handle_signal,
            fetch_wait_max_ms=10,
        )
        self.incident_consumer = self.runtime.consumer(
            config.group_id,
            [INCIDENTS],
            self.handle_incident,
            fetch_wait_max_ms=10,
            extra_config=fast,
            start=False,
        )
        consumer = self.incident_consumer
        self.runtime.spawn(lambda: self._consume_incidents(consumer), name="consume-psap-cad")

    def _consume_incidents(self, consumer: EventConsumer) -> None:
        # A DispatchInterrupted (StopWithoutCommit) ends run() with the event uncommitted:
        # the next run of the connector handles it again.
        try:
            consumer.run(self.runtime.stop)
        finally:
            consumer.close()

    # -- alerts --------------------------------------------------------------------------------

    def handle_signal(self, consumed: ConsumedEvent) -> None:
        """Keep the facts of panic, camera and SRP alerts (exercises included: harmless).

        An alert whose facts cannot be read or kept raises :class:`HandlerError`.
        """
        event_id = consumed.event_id
        if not event_id or len(event_id) > MAX_EVENT_ID:
            raise HandlerError(
                f"{consumed.event_type}: event id missing or over {MAX_EVENT_ID} characters"
            )
        try:
            facts = facts_of(consumed.event)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise HandlerError(
                f"{consumed.event_type} {event_id}: facts unreadable ({type(exc).__name__})"
            ) from None
        if facts is not None:
            self.ledger.put_signal(facts)

    # -- incidents -----------------------------------------------------------------------------

    def handle_incident(self, consumed: ConsumedEvent) -> None:
        """Decide and, when due, queue one incident event for CAD.

        Raises :class:`HandlerError` for an event it cannot process unless it may be a real
        dispatch: then ledger failures are retried until the connector stops.
        """
        if consumed.event_type not in (OPENED, CHANGED, CLEARED):
            return
        event = consumed.event
        exercise = bool(consumed.envelope.get("exercise")) or (
            consumed.event_type == CLEARED and event.get("outcome") == "DRILL_COMPLETE"
        )
        incident_id, version = self._identity(consumed, may_dispatch=not exercise)
        delay = self.config.retry_initial_s
        while True:
            try:
                self._decide(consumed, incident_id, version, exercise=exercise)
                return
            except (LedgerError, SQLAlchemyError) as exc:
                if exercise:
                    raise  # the kernel retries, then dead-letters it: no dispatch is lost
                log.warning(
                    "ledger unavailable, incident event retried",
                    incident_id=incident_id,
                    version=version,
                    error_type=type(exc).__name__,
                )
            if self.runtime.stop.wait(delay):
                raise DispatchInterrupted(f"stopping with {incident_id}:{version} undecided")
            delay = min(delay * 2, self.config.retry_cap_s)

    def _identity(self, consumed: ConsumedEvent, *, may_dispatch: bool) -> tuple[str, int]:
        """(incident id, version) the ledger and CAD can key on.

        Without a usable one an event is dead-lettered, unless it may be a real dispatch:
        that is sent under a substitute id made from the event id (CAD still hears of it).
        """
        event = consumed.event
        incident_id = event.get("incident_id")
        version = event.get("version")
        problems = []
        if not isinstance(incident_id, str) or not INCIDENT_ID.match(incident_id):
            problems.append("incident_id must be 1 to 200 characters without control characters")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            problems.append("version must be a positive integer")
        if not problems:
            assert isinstance(incident_id, str) and isinstance(version, int)
            return incident_id, version
        reason = f"{consumed.event_type} {consumed.event_id}: " + "; ".join(problems)
        dispatchable = consumed.event_type != CLEARED and bool(event.get("dispatchable"))
        if not may_dispatch or not dispatchable:
            raise HandlerError(reason)
        substitute = incident_id if INCIDENT_ID.match(str(incident_id or "")) else None
        substitute = substitute or f"unidentified-{consumed.event_id}"[:200]
        fixed = version if isinstance(version, int) and version >= 1 else 1
        log.error("real dispatch without a usable identity: sent under a substitute", why=reason)
        return substitute, fixed

    def _decide(
        self, consumed: ConsumedEvent, incident_id: str, version: int, *, exercise: bool
    ) -> None:
        event = consumed.event
        bound = log.bind(incident_id=incident_id, version=version, event_id=consumed.event_id)
        decided = self.ledger.decision(incident_id, version)
        if decided is not None:
            bound.info("incident version already handled, skipped", decision=decided)
            return
        previous = self.ledger.dispatched(incident_id)
        if previous is not None and version <= previous.last_version:
            bound.info("older incident version, skipped", latest=previous.last_version)
            return
        if exercise:
            self.ledger.record_decision(incident_id, version, Decision.EXERCISE)
            bound.info("exercise incident: never sent to 911/CAD")
            return
        if consumed.event_type == CLEARED:
            if previous is None:
                self.ledger.record_decision(incident_id, version, Decision.NOT_DISPATCHED)
                bound.info("cleared incident was never dispatched: nothing to tell CAD")
                return
            snapshot = previous.snapshot.cleared({**event, "version": version})
        else:
            snapshot = IncidentSnapshot.from_event(
                {**event, "incident_id": incident_id, "version": version}
            )
            # A cancellation still goes to a CAD that already has the incident.
            if not snapshot.dispatchable and (previous is None or snapshot.status != "Cancelled"):
                self.ledger.record_decision(incident_id, version, Decision.NOT_DISPATCHABLE)
                bound.info("incident not dispatchable: not sent to CAD")
                return
        psap_id = self.builder.psap_of(snapshot)
        if self.config.psaps and psap_id not in self.config.psaps:
            return
        if previous is not None:
            if snapshot.fingerprint() == previous.fingerprint:
                self.ledger.record_decision(incident_id, version, Decision.UNCHANGED)
                bound.info("no dispatch-relevant change: not sent")
                return
            if self._cad_originated(consumed, snapshot, previous):
                self.ledger.record_baseline(incident_id, snapshot, Decision.CAD_ORIGINATED)
                bound.info("change came from CAD: not echoed back")
                return
        superseded = self.ledger.queue_dispatch(
            snapshot,
            psap_id=psap_id,
            causation_id=consumed.event_id,
            # The consumer's span: the delivery, in another thread, joins this trace.
            trace=tracing.inject([]),
            owner=self.dispatcher.owner,
            lease=LEASE,
        )
        self.dispatcher.submit(psap_id, incident_id)
        bound.info("queued for CAD", psap_id=psap_id, superseded_version=superseded)

    def _cad_originated(
        self, consumed: ConsumedEvent, snapshot: IncidentSnapshot, previous: DispatchedIncident
    ) -> bool:
        causation = consumed.envelope.get("causation_id")
        if causation and self.ledger.inbound_ids([str(causation)]):
            return True
        # A status CAD itself reported (e.g. Closed) that came back through the incident.
        new, old = snapshot.relevant(), previous.snapshot.relevant()
        changed = {key for key in new if new[key] != old[key]}
        return changed == {"status"} and snapshot.status == previous.cad_status

    # -- inbound -------------------------------------------------------------------------------

    async def _status_endpoint(self, request: web.Request) -> web.Response:
        expected = f"Bearer {self.config.inbound_token.get_secret_value()}".encode()
        # Header bytes that are not UTF-8 arrive surrogate-escaped: compare them as sent.
        presented = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(presented, expected):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        refused = _content_type_problem(request.headers.get("Content-Type"))
        if refused:
            return web.json_response({"error": refused}, status=415)
        body = await request.read()
        headers = list(request.headers.items())
        status, answer = await asyncio.to_thread(self.accept_status, body, headers)
        return web.json_response(answer, status=status)

    def accept_status(
        self, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Validate a CAD status-update EIDO, publish CadStatusUpdate; (HTTP status, answer)."""
        with tracing.tracer().start_as_current_span(
            f"POST {STATUS_PATH}",
            context=tracing.extract(headers or []),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": STATUS_PATH},
        ) as span:
            status, answer = self._accept_status(body)
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR, str(answer.get("error"))))
            return status, answer

    def _accept_status(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            return self._accept_status_document(body)
        except MalformedRequestError as exc:
            return 400, {"error": str(exc)}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
            # A shape nothing above anticipated: still the sender's fault, never a 500.
            log.warning("malformed status update refused", error_type=type(exc).__name__)
            return 400, {"error": "malformed status update"}

    def _accept_status_document(self, body: bytes) -> tuple[int, dict[str, Any]]:
        document = parse_json_body(body)
        problems = self.validator.problems(document)
        if problems:
            return 400, {"error": "not a valid EIDO", "problems": problems}
        incident = document.get("incidentComponent")
        if not isinstance(incident, dict):
            return 400, {"error": "a status update needs incidentComponent"}
        cad_id = incident.get("internalIncidentId")
        if not isinstance(cad_id, str) or not cad_id:
            return 400, {"error": "incidentComponent.internalIncidentId (CAD's id) is required"}
        tracking = incident.get("incidentTrackingIdentifier")
        if tracking is not None and (not isinstance(tracking, str) or not tracking):
            return 400, {"error": "incidentComponent.incidentTrackingIdentifier must be a string"}
        statuses = incident.get("incidentStatusCommonRegistryText")
        if not isinstance(statuses, list) or not statuses:
            return 400, {"error": "incidentComponent.incidentStatusCommonRegistryText is required"}
        units = _units(document)
        disposition = _disposition(incident)
        record = (
            self.ledger.dispatched(tracking)
            if tracking
            else self.ledger.dispatched_by_cad_id(cad_id)
        )
        if record is None:
            return 404, {"error": "unknown incident"}
        status = str(statuses[-1])
        if status not in KNOWN_STATUSES:
            status = "Unknown"
        event_id = event_id_for(NAME, f"status:{document['$id']}")
        snapshot = record.snapshot
        event = new_event(
            EventType.CAD_STATUS_UPDATE,
            source=NAME,
            tenant=snapshot.tenant,
            building=snapshot.building,
            room=snapshot.room,
            incident_id=record.incident_id,
            classification=DISPATCH_CLASSIFICATION,
            event_id=event_id,
            payload={
                "cad_incident_id": cad_id,
                "incident_id": record.incident_id,
                "psap_id": record.psap_id,
                "status": status,
                "units": units,
                "disposition_code": disposition,
                "eido": body.decode(),
            },
        )
        try:
            # Recorded first: the incident change CAD's update causes must find it.
            self.ledger.record_inbound(event_id, record.incident_id, cad_id, status)
            self.runtime.producer.publish(event)
        except (BusError, LedgerError, SQLAlchemyError) as exc:
            log.error("status update not published", error_type=type(exc).__name__)
            return 503, {"error": "temporarily unable to accept; retry"}
        log.info(
            "CAD status update published",
            incident_id=record.incident_id,
            cad_incident_id=cad_id,
            status=status,
        )
        return 202, {"accepted": True, "eventId": event_id}


class MalformedRequestError(SafeHubError):
    """An inbound request refused with 400; the message is the reason (never the data)."""


#: Deeper JSON than this is not an EIDO (ours nest five levels); refused before validation.
MAX_JSON_DEPTH = 32


def _content_type_problem(content_type: str | None) -> str | None:
    """Why a request's Content-Type is refused (None: JSON in UTF-8, or not said)."""
    if content_type is None:
        return None
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        return "Content-Type must be application/json"
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            return "JSON must be sent in UTF-8"
    return None


def _refuse_constant(name: str) -> Any:
    raise MalformedRequestError(f"body is not valid JSON ({name} is not a JSON number)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise MalformedRequestError("body has a number out of range")
    return value


def parse_json_body(body: bytes) -> Any:
    """Strict JSON: UTF-8 without BOM, no NaN/Infinity, finite numbers, bounded nesting,
    no unpaired surrogates. Raises :class:`MalformedRequestError` naming the rule, never the data.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequestError("body is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        raise MalformedRequestError("body must not start with a byte order mark")
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except MalformedRequestError:
        raise
    except (ValueError, RecursionError):
        raise MalformedRequestError("body is not valid JSON") from None
    _check_shape(document)
    return document


def _check_shape(document: Any) -> None:
    """Bounded nesting and strings that UTF-8 can carry (walked without recursion)."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise MalformedRequestError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key)
                pending.append((value, depth + 1))
        elif isinstance(node, list):
            pending.extend((value, depth + 1) for value in node)
        elif isinstance(node, str):
            _check_text(node)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedRequestError("body has a string with an unpaired surrogate") from None


def _units(document: Mapping[str, Any]) -> list[dict[str, str | None]]:
    """CadUnit records from emergencyResourceComponent (agency via agent → agency)."""
    agents: dict[str, str] = {}
    for agent in document.get("agentComponent") or []:
        reference = agent.get("agencyReference") if isinstance(agent, dict) else None
        target = _reference_target(reference)
        if isinstance(agent, dict) and isinstance(agent.get("$id"), str) and target:
            agents[agent["$id"]] = target
    resources = document.get("emergencyResourceComponent") or []
    if not isinstance(resources, list):
        raise MalformedRequestError("emergencyResourceComponent must be an array")
    units: list[dict[str, str | None]] = []
    for index, resource in enumerate(resources):
        where = f"emergencyResourceComponent[{index}]"
        if not isinstance(resource, dict):
            raise MalformedRequestError(f"{where} must be an object")
        name = resource.get("emergencyResourceName")
        if name is not None and (not isinstance(name, str) or not name):
            raise MalformedRequestError(f"{where}.emergencyResourceName must be a non-empty string")
        status = resource.get("primaryUnitStatusRegistryText")
        if not isinstance(status, str) or not status:
            raise MalformedRequestError(
                f"{where}.primaryUnitStatusRegistryText must be a non-empty string"
            )
        agency = agents.get(_reference_target(resource.get("agentReference")) or "")
        units.append(
            {
                "unit_id": name or str(resource["$id"]),
                "status": status,
                "agency": agency,
            }
        )
    return units


def _reference_target(reference: Any) -> str | None:
    """The ``$ref`` of a reference object (or of the first of a list of them)."""
    if isinstance(reference, list):
        reference = reference[0] if reference else None
    target = reference.get("$ref") if isinstance(reference, dict) else None
    return target if isinstance(target, str) and target else None


def _disposition(incident: Mapping[str, Any]) -> str | None:
    dispositions = incident.get("dispositionComponent") or []
    if not isinstance(dispositions, list) or not all(isinstance(d, dict) for d in dispositions):
        raise MalformedRequestError(
            "incidentComponent.dispositionComponent must be an array of objects"
        )
    primary = next((d for d in dispositions if d.get("dispositionPrimaryIndicator")), None)
    chosen = primary or (dispositions[0] if dispositions else None)
    if chosen is None:
        return None
    code = chosen.get("dispositionCommonRegistryCode")
    if not isinstance(code, str) or not code:
        raise MalformedRequestError("dispositionCommonRegistryCode must be a non-empty string")
    return code


def start_connector(runtime: Runtime[PsapCadSettings]) -> PsapCadConnector:
    """Start the connector in ``runtime`` and return it (in-process use, tests)."""
    connector = PsapCadConnector(runtime)
    connector.start()
    return connector


def setup(runtime: Runtime[PsapCadSettings]) -> None:
    """The service shape's set-up hook."""
    start_connector(runtime)


def main() -> None:
    """Run the connector until SIGTERM/SIGINT."""
    run(NAME, PsapCadSettings, setup)
