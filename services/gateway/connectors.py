"""``safehub.connector.v1.ConnectorService``: vendor sessions, commands out, door states in.

A connector opens ``Attach`` and says Hello for its schools (each within its client's
tenant). The gateway consumes the door-commands topic and forwards every LockCommand to the
sessions serving the command's school; with none attached it logs and publishes nothing
(the incidents service reports unconfirmed doors after its deadline). Announcements (PA,
intercom, signage) and their receipts are routed by :mod:`services.gateway.announcements`
over the same sessions. Door state reports
become DoorLockState events; a report of a door reaching the state a forwarded command asked
for (or a CommandResult SUCCEEDED for such a door) echoes the command_id, and its span
continues the command's trace.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from safehub.contracts.names import EventType
from safehub.gen.safehub.common.v1 import place_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2, connector_pb2_grpc
from safehub.kernel import tracing
from safehub.kernel.bus import ConsumedEvent, Delivered
from safehub.kernel.codec import Event
from safehub.kernel.directory import Client, Directory, DirectorySource, Scope, UnknownPlaceError
from safehub.kernel.envelope import event_id_for, new_event
from services.gateway import mapping
from services.gateway.announcements import Announcements
from services.gateway.ingest import DoorReport, IngestServicer, authorised_caller, authorize
from services.gateway.intake import Intake, fingerprint
from services.gateway.rpc import RejectionError, Violation, abort
from services.gateway.settings import GatewaySection
from services.gateway.validation import Check

log = structlog.get_logger(__name__)

LOCK_COMMAND = EventType.LOCK_COMMAND


@dataclass
class Session:
    """One attached connector stream."""

    client: Client
    connector_id: str
    schools: frozenset[str]
    capabilities: frozenset[int]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outbox: queue.Queue[connector_pb2.HubMessage | None] = field(default_factory=queue.Queue)
    closed: threading.Event = field(default_factory=threading.Event)
    unanswered_pings: set[str] = field(default_factory=set)

    def send(self, message: connector_pb2.HubMessage) -> bool:
        """Queue a message for the connector (False if the session has ended)."""
        if self.closed.is_set():
            return False
        self.outbox.put(message)
        return True

    def close(self) -> None:
        """End the session's stream (idempotent, any thread)."""
        if not self.closed.is_set():
            self.closed.set()
            self.outbox.put(None)


@dataclass
class PendingCommand:
    """A LockCommand forwarded to connectors and not yet confirmed for every door."""

    command_id: str
    event_id: str
    school: str
    building: str | None
    target: str  # Avro DoorState symbol the doors must reach
    doors: set[str]
    incident_id: str | None
    exercise: bool
    sessions: set[str]
    trace_context: otel_context.Context


class ConnectorHub(connector_pb2_grpc.ConnectorServiceServicer):
    """Connector sessions and the command traffic between them and the bus."""

    def __init__(
        self,
        directory: DirectorySource,
        intake: Intake,
        ingest: IngestServicer,
        settings: GatewaySection,
        stop: threading.Event,
    ) -> None:
        self._directory = directory
        self._intake = intake
        self._ingest = ingest
        self._settings = settings
        self._stop = stop
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._pending: OrderedDict[str, PendingCommand] = OrderedDict()
        self._by_door: dict[tuple[str, str], str] = {}  # (school, door) → latest command id
        #: Consumer handler of the announcements topic is ``announcements.forward``.
        self.announcements = Announcements(directory, intake, settings, self.sessions_for)

    # -- registry ------------------------------------------------------------------------

    def sessions_for(self, school_id: str, capability: int | None = None) -> list[Session]:
        """Open sessions serving ``school_id`` (declaring ``capability`` if given)."""
        with self._lock:
            return [
                s
                for s in self._sessions.values()
                if school_id in s.schools
                and not s.closed.is_set()
                and (capability is None or capability in s.capabilities)
            ]

    def close_all(self) -> None:
        """End every session (drain)."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()

    # -- commands out --------------------------------------------------------------------

    def forward(self, consumed: ConsumedEvent) -> None:
        """Consumer handler: send a LockCommand event to the connectors of its school."""
        if consumed.event_type != LOCK_COMMAND:
            return
        event = consumed.event
        envelope = consumed.envelope
        command_id = str(event["command_id"])
        school = (envelope.get("tenant") or {}).get("school")
        building = envelope.get("building") or None
        target = mapping.LOCK_TARGET.get(event["target"])
        if not school or target is None:
            log.warning(
                "lock command not forwarded: no school or no lock target",
                command_id=command_id,
                event_id=consumed.event_id,
            )
            return
        recorded = envelope.get("recorded_at")
        age_s = (datetime.now(UTC) - recorded).total_seconds() if recorded else 0.0
        if age_s > self._settings.lock_command_deadline_s:
            # A replay (new consumer group, rewind) must never cycle doors with old commands.
            log.warning(
                "stale lock command not forwarded", command_id=command_id, age_s=round(age_s)
            )
            return
        sessions = self.sessions_for(school, connector_pb2.CAPABILITY_DOOR_LOCK_CONTROL)
        if not sessions:
            log.warning(
                "no connector attached for lock command",
                command_id=command_id,
                school=school,
                event_id=consumed.event_id,
            )
            return
        doors = self._resolve_doors(event, school, building)
        message = connector_pb2.LockCommand(
            command_id=command_id,
            place=place_pb2.Place(school_id=school, building=building or ""),
            target_state=target,
            reason=str(event["reason"])[:500],
            incident_id=envelope.get("incident_id") or "",
            exercise=bool(envelope.get("exercise")),
        )
        if doors:
            message.doors.door_ids.extend(doors)
        else:
            # No door list in the directory for the place: let the connector resolve it.
            message.all_doors.scope = mapping.LOCK_SCOPE.get(
                event["scope"], connector_pb2.DOOR_SCOPE_ALL
            )
        deadline = Timestamp()
        deadline.FromDatetime(
            datetime.now(UTC) + timedelta(seconds=self._settings.lock_command_deadline_s)
        )
        message.deadline.CopyFrom(deadline)
        self._remember(
            PendingCommand(
                command_id=command_id,
                event_id=consumed.event_id,
                school=school,
                building=building,
                target=mapping.LOCK_TARGET_DOOR_STATE[event["target"]],
                doors=set(doors),
                incident_id=envelope.get("incident_id"),
                exercise=bool(envelope.get("exercise")),
                sessions={s.id for s in sessions},
                # The consumer's process span: door reports answering it join this trace.
                trace_context=otel_context.get_current(),
            )
        )
        hub_message = connector_pb2.HubMessage(lock_command=message)
        sent = sum(session.send(hub_message) for session in sessions)
        log.info(
            "lock command forwarded",
            command_id=command_id,
            school=school,
            doors=len(doors),
            sessions=sent,
        )

    def _resolve_doors(self, event: Event, school: str, building: str | None) -> list[str]:
        if event["scope"] == "DOORS":
            return [str(d) for d in event["door_ids"]]
        try:
            doors = self._directory.current().doors(
                school, building, exterior_only=event["scope"] == "EXTERIOR"
            )
        except UnknownPlaceError:
            return []
        return [d.id for d in doors]

    def _remember(self, pending: PendingCommand) -> None:
        with self._lock:
            self._pending[pending.command_id] = pending
            self._pending.move_to_end(pending.command_id)
            for door in pending.doors:
                self._by_door[pending.school, door] = pending.command_id
            while len(self._pending) > self._settings.pending_commands:
                _, old = self._pending.popitem(last=False)
                for door in old.doors:
                    if self._by_door.get((old.school, door)) == old.command_id:
                        del self._by_door[old.school, door]

    def _confirm_door(
        self, session: Session, school: str, door: str, state: str, command_id: str | None
    ) -> PendingCommand | None:
        """The pending command this door reaching ``state`` confirms (removing the door)."""
        with self._lock:
            command_id = command_id or self._by_door.get((school, door))
            pending = self._pending.get(command_id) if command_id else None
            if (
                pending is None
                or session.id not in pending.sessions
                or pending.school != school
                or door not in pending.doors
                or pending.target != state
            ):
                return None
            pending.doors.discard(door)
            if self._by_door.get((school, door)) == pending.command_id:
                del self._by_door[school, door]
            return pending

    # -- the session ---------------------------------------------------------------------

    def Attach(  # noqa: N802 (gRPC method name)
        self, request_iterator: Iterator[connector_pb2.ConnectorMessage], context: Any
    ) -> Iterator[connector_pb2.HubMessage]:
        """A connector's session: Hello first, then commands and pings until either side ends."""
        try:
            session = self._open(request_iterator, context)
        except RejectionError as rejection:
            abort(context, rejection)
        if session is None:
            return
        context.add_callback(session.close)
        reader = threading.Thread(
            target=self._read,
            args=(session, request_iterator),
            name=f"connector-{session.id}",
            daemon=True,
        )
        reader.start()
        try:
            # The first Ping doubles as the hub's acknowledgement of the Hello.
            yield self._ping(session)
            next_ping = time.monotonic() + self._settings.ping_interval_s
            while not session.closed.is_set() and not self._stop.is_set():
                try:
                    message = session.outbox.get(timeout=min(0.25, self._settings.ping_interval_s))
                except queue.Empty:
                    message = None
                if message is not None:
                    yield message
                if time.monotonic() >= next_ping:
                    if len(session.unanswered_pings) >= self._settings.ping_misses:
                        log.warning("connector stopped answering pings", session=session.id)
                        break
                    yield self._ping(session)
                    next_ping = time.monotonic() + self._settings.ping_interval_s
        finally:
            session.close()
            with self._lock:
                self._sessions.pop(session.id, None)
            log.info("connector detached", session=session.id, connector=session.connector_id)

    def _open(self, request_iterator: Iterator[Any], context: Any) -> Session | None:
        directory = self._directory.current()  # one snapshot for the session's opening
        client = authorised_caller(context, directory, Scope.CONNECTOR)
        # A caller that never says Hello must not hold a worker thread forever.
        hello_timer = threading.Timer(self._settings.hello_timeout_s, context.cancel)
        hello_timer.daemon = True
        hello_timer.start()
        try:
            first = next(request_iterator, None)
        except grpc.RpcError:
            first = None
        finally:
            hello_timer.cancel()
        if first is None:
            return None
        if first.WhichOneof("body") != "hello":
            raise RejectionError.invalid(
                [Violation("hello", "the first message of a session must be a Hello")]
            )
        hello = first.hello
        check = Check()
        connector_id = check.ident("hello.connector_id", hello.connector_id)
        if not hello.school_ids:
            check.add("hello.school_ids", "is required")
        schools = [
            check.ident(f"hello.school_ids[{i}]", school, max_len=64)
            for i, school in enumerate(hello.school_ids)
        ]
        check.raise_if_any()
        if connector_id != client.id:
            raise RejectionError(
                grpc.StatusCode.PERMISSION_DENIED,
                "hello.connector_id must be the client certificate's name",
            )
        for school in schools:
            assert school is not None
            authorize(directory, client, Scope.CONNECTOR, school)
        session = Session(
            client=client,
            connector_id=client.id,
            schools=frozenset(s for s in schools if s),
            capabilities=frozenset(hello.capabilities),
        )
        with self._lock:
            if len(self._sessions) >= self._settings.max_connector_sessions:
                raise RejectionError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many connector sessions on this gateway; retry with backoff",
                )
            self._sessions[session.id] = session
        log.info(
            "connector attached",
            session=session.id,
            connector=session.connector_id,
            schools=sorted(session.schools),
        )
        return session

    def _ping(self, session: Session) -> connector_pb2.HubMessage:
        nonce = uuid.uuid4().hex
        session.unanswered_pings.add(nonce)
        sent_at = Timestamp()
        sent_at.GetCurrentTime()
        return connector_pb2.HubMessage(ping=connector_pb2.Ping(nonce=nonce, sent_at=sent_at))

    def _read(self, session: Session, request_iterator: Iterator[Any]) -> None:
        """The connector's messages, until it half-closes or the call ends."""
        try:
            for message in request_iterator:
                if session.closed.is_set():
                    break
                try:
                    self._on_message(session, message)
                except RejectionError as rejection:
                    # The protocol has no error message back; the connector sees no event.
                    log.warning(
                        "connector message refused",
                        session=session.id,
                        kind=message.WhichOneof("body"),
                        reason=rejection.message,
                    )
                except Exception:
                    log.exception("connector message failed", session=session.id)
        except grpc.RpcError:  # the call ended (client gone, server stopping)
            log.info("connector session ended by the transport", session=session.id)
        except RejectionError as rejection:  # a message that did not parse ends the session
            log.warning("connector session ended", session=session.id, reason=rejection.message)
        finally:
            session.close()

    def _on_message(self, session: Session, message: connector_pb2.ConnectorMessage) -> None:
        match message.WhichOneof("body"):
            case "pong":
                session.unanswered_pings.clear()
            case "door_state_report":
                self._on_report(session, message.door_state_report)
            case "command_result":
                self._on_result(session, message.command_result)
            case "hello":
                log.warning("second hello ignored", session=session.id)
            case _:
                pass

    def _on_report(self, session: Session, report: connector_pb2.DoorStateReport) -> None:
        if report.place.school_id and report.place.school_id not in session.schools:
            raise RejectionError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"school {report.place.school_id!r} was not declared in the session's hello",
            )
        # The session's client as the directory has it now: a connector removed (or whose
        # scopes or schools changed) at run time is judged on that from its next report.
        directory = self._directory.current()
        client = directory.client(session.client.id)
        if client is None:
            raise RejectionError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"client {session.client.id!r} is no longer registered in the directory",
            )
        event = self._ingest.door_event(client, DoorReport(report), Scope.DOORS, directory)
        envelope = event["envelope"]
        pending = self._confirm_door(
            session, str(envelope["tenant"]["school"]), event["door_id"], event["state"], None
        )
        if pending is not None:
            event["command_id"] = pending.command_id
            envelope["incident_id"] = pending.incident_id
            envelope["causation_id"] = pending.event_id
        self._publish(session, event, fingerprint(report), pending)

    def _on_result(self, session: Session, result: connector_pb2.CommandResult) -> None:
        if self.announcements.on_result(session, result):
            return
        try:
            outcome = connector_pb2.CommandOutcome.Name(result.outcome)
        except ValueError:
            outcome = str(result.outcome)
        if result.outcome != connector_pb2.COMMAND_OUTCOME_SUCCEEDED or not result.door_id:
            log.info(
                "command result",
                session=session.id,
                command_id=result.command_id[:128],
                door_id=result.door_id[:128],
                outcome=outcome,
            )
            return
        with self._lock:
            pending = self._pending.get(result.command_id)
        if pending is None:
            return
        confirmed = self._confirm_door(
            session, pending.school, result.door_id, pending.target, result.command_id
        )
        if confirmed is None:
            return  # already confirmed by a door state report, or not this session's door
        directory = self._directory.current()
        door, building = self._door(directory, confirmed.school, result.door_id, confirmed.building)
        observed = (
            result.observed_at.ToDatetime(tzinfo=UTC)
            if result.HasField("observed_at")
            else datetime.now(UTC)
        )
        event = new_event(
            EventType.DOOR_LOCK_STATE,
            source=session.client.id,
            tenant=directory.tenant(confirmed.school),
            building=building,
            incident_id=confirmed.incident_id,
            causation_id=confirmed.event_id,
            exercise=confirmed.exercise,
            occurred_at=min(observed, datetime.now(UTC)),
            event_id=event_id_for(
                session.client.id, f"command-result\x1f{result.command_id}\x1f{result.door_id}"
            ),
            payload={
                "door_id": result.door_id,
                "door_name": door.name if door and door.name else None,
                "state": confirmed.target,
                "exterior": bool(door and door.exterior),
                "command_id": confirmed.command_id,
            },
        )
        self._publish(session, event, fingerprint(result), confirmed)

    def _door(
        self, directory: Directory, school_id: str, door_id: str, building: str | None
    ) -> tuple[Any, str | None]:
        school = directory.school(school_id)
        for candidate in school.buildings:
            for door in candidate.doors:
                if door.id == door_id:
                    return door, candidate.id
        return None, building

    def _publish(
        self,
        session: Session,
        event: Event,
        request_fingerprint: bytes,
        pending: PendingCommand | None,
    ) -> None:
        """Publish without blocking the reader; failures are logged (no ack in the protocol)."""
        parent = pending.trace_context if pending else None
        with tracing.tracer().start_as_current_span(
            "ConnectorService/DoorState",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "safehub.connector.v1.ConnectorService",
                "safehub.connector": session.connector_id,
                "safehub.command_id": pending.command_id if pending else "",
            },
        ):
            submission = self._intake.submit(event, request_fingerprint)
        event_id = submission.event_id

        def done(future: Future[Delivered]) -> None:
            if future.exception() is not None:
                log.error(
                    "door state not stored",
                    session=session.id,
                    event_id=event_id,
                    error=type(future.exception()).__name__,
                )

        if submission.future is not None:
            submission.future.add_done_callback(done)
        log.debug(
            "door state from connector",
            session=session.id,
            event_id=event_id,
            command_id=pending.command_id if pending else None,
        )
