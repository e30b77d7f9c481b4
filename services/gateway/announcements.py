"""Announcements: AnnouncementCommands to PA, intercom and signage connectors, receipts back.

The gateway consumes the announcements topic and sends each AnnouncementCommand to the
attached sessions of the command's school that declared a capability of its channel
(PUBLIC_ADDRESS → PA_ANNOUNCEMENT or INTERCOM, DIGITAL_SIGNAGE → SIGNAGE); a session serves
only schools its client is authorised for, so no other school or district hears it. Every
step becomes a DeliveryReceipt on the notifications topic for the command's notification and
recipient: a CommandResult ACCEPTED → SENT, SUCCEEDED → DELIVERED, anything else → FAILED
with the connector's detail; a command past ``expires_at`` (a stale replay) → EXPIRED, never
played; no connector that can play it → FAILED naming why, so the notifier falls back.

Receipt ids are deterministic (command, connector, endpoint, status), so a result reported
twice, or a command redelivered, publishes nothing new. A redelivered command goes only to
sessions it was not yet sent to (a connector that reconnected gets it once more on its new
session and deduplicates by command_id itself).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from safehub.contracts.names import EventType
from safehub.gen.safehub.common.v1 import place_pb2, srp_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2
from safehub.kernel import tracing
from safehub.kernel.bus import ConsumedEvent, Delivered
from safehub.kernel.codec import Event
from safehub.kernel.directory import DirectorySource, UnknownPlaceError
from safehub.kernel.envelope import event_id_for, new_event
from safehub.kernel.errors import HandlerError
from services.gateway import mapping
from services.gateway.intake import Intake
from services.gateway.settings import GatewaySection

if TYPE_CHECKING:
    from concurrent.futures import Future

    from services.gateway.connectors import Session

log = structlog.get_logger(__name__)

ANNOUNCEMENT_COMMAND = EventType.ANNOUNCEMENT_COMMAND
#: The hub's own receipts (expired, unplayable) name the gateway as their source.
SOURCE = "gateway"

#: safehub.common.Channel → the connector capabilities that play or show it.
CHANNEL_CAPABILITIES: Mapping[str, tuple[connector_pb2.Capability.ValueType, ...]] = {
    "PUBLIC_ADDRESS": (connector_pb2.CAPABILITY_PA_ANNOUNCEMENT, connector_pb2.CAPABILITY_INTERCOM),
    "DIGITAL_SIGNAGE": (connector_pb2.CAPABILITY_SIGNAGE,),
}

#: CommandOutcome → DeliveryStatus; every outcome not listed is a failure.
RECEIPT_STATUS: Mapping[int, str] = {
    connector_pb2.COMMAND_OUTCOME_ACCEPTED: "SENT",
    connector_pb2.COMMAND_OUTCOME_SUCCEEDED: "DELIVERED",
}

#: safehub.common.SrpAction → common.v1.SrpAction.
SRP_ACTION: Mapping[str, srp_pb2.SrpAction.ValueType] = {
    symbol: srp_pb2.SrpAction.ValueType(value) for value, symbol in mapping.SRP_ACTION.items()
}

MAX_ERROR_CHARS = 300


@dataclass
class PendingAnnouncement:
    """An announcement sent to connectors; their results become receipts."""

    command_id: str
    event_id: str
    notification_id: str
    recipient_id: str
    channel: str
    tenant: dict[str, Any]
    building: str | None
    incident_id: str | None
    exercise: bool
    trace_context: otel_context.Context
    #: Sessions it was sent to (a redelivery skips them) and their clients (whose results count).
    sessions: set[str] = field(default_factory=set)
    connectors: set[str] = field(default_factory=set)


def _pending_of(event: Event, envelope: Mapping[str, Any]) -> PendingAnnouncement:
    return PendingAnnouncement(
        command_id=str(event["command_id"]),
        event_id=str(envelope["event_id"]),
        notification_id=str(event["notification_id"]),
        recipient_id=str(event["recipient_id"]),
        channel=str(event["channel"]),
        tenant=dict(envelope["tenant"]),
        building=envelope.get("building"),
        incident_id=envelope.get("incident_id"),
        exercise=bool(envelope.get("exercise")),
        # The consumer's process span: results answering the command join this trace.
        trace_context=otel_context.get_current(),
    )


def _capability_names(capabilities: tuple[int, ...]) -> str:
    return " or ".join(
        connector_pb2.Capability.Name(c).removeprefix("CAPABILITY_")  # type: ignore[arg-type]
        for c in capabilities
    )


def _fingerprint(event_id: str) -> bytes:
    # A receipt's id already encodes everything that makes it distinct.
    return hashlib.sha256(event_id.encode()).digest()


class Announcements:
    """Routes AnnouncementCommands to sessions and turns their results into receipts."""

    def __init__(
        self,
        directory: DirectorySource,
        intake: Intake,
        settings: GatewaySection,
        sessions_for: Callable[[str], list[Session]],
    ) -> None:
        self._directory = directory
        self._intake = intake
        self._settings = settings
        self._sessions_for = sessions_for
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, PendingAnnouncement] = OrderedDict()

    # -- commands out --------------------------------------------------------------------

    def forward(self, consumed: ConsumedEvent) -> None:
        """Consumer handler: send an AnnouncementCommand to the connectors that can play it.

        A command that cannot be routed (no school, unknown school, wrong tenant, a channel
        that is not an announcement channel, no text) raises HandlerError: dead-lettered.
        """
        if consumed.event_type != ANNOUNCEMENT_COMMAND:
            return
        event = consumed.event
        envelope = consumed.envelope
        school, capabilities = self._validate(event, envelope)
        command_id = str(event["command_id"])
        now = datetime.now(UTC)
        expires_at = self._expires_at(event, envelope)
        with self._lock:
            known = self._pending.get(command_id)
        if known is None and now >= expires_at:
            # A replay (rewind, new consumer group) or a command held up: it must not play.
            self._receipt_now(
                event,
                envelope,
                "EXPIRED",
                f"expired at {expires_at.isoformat()} before it was played",
                kind="expired",
            )
            log.warning("expired announcement not played", command_id=command_id, school=school)
            return
        if known is not None and now >= expires_at:
            return  # already sent; a late redelivery changes nothing
        sessions = [
            s
            for s in self._sessions_for(school)
            if s.capabilities.intersection(capabilities)
            and (known is None or s.id not in known.sessions)
        ]
        if known is not None and not sessions:
            return  # redelivered; every session that can play it already has it
        pending = known or self._remember(event, envelope)
        message = self._message(event, envelope, school, capabilities, expires_at)
        sent = 0
        for session in sessions:
            with self._lock:
                pending.sessions.add(session.id)
                pending.connectors.add(session.connector_id)
            sent += session.send(message)  # False: the session ended meanwhile
        if sent:
            log.info(
                "announcement forwarded",
                command_id=command_id,
                school=school,
                channel=event["channel"],
                sessions=sent,
                redelivered=known is not None,
            )
            return
        log.warning("no connector attached for announcement", command_id=command_id, school=school)
        if known is None and self._settings.report_unattached_announcements:
            self._receipt_now(
                event,
                envelope,
                "FAILED",
                f"no connector attached for {school} with capability "
                f"{_capability_names(capabilities)}",
                kind="unattached",
            )

    def _validate(
        self, event: Event, envelope: Mapping[str, Any]
    ) -> tuple[str, tuple[connector_pb2.Capability.ValueType, ...]]:
        tenant = envelope.get("tenant") or {}
        school = tenant.get("school")
        if not school:
            raise HandlerError("AnnouncementCommand without envelope tenant.school")
        try:
            district = self._directory.current().district_of(school).id
        except UnknownPlaceError as exc:
            raise HandlerError(f"AnnouncementCommand for unknown school {school!r}") from exc
        if tenant.get("district") != district:
            raise HandlerError(
                f"AnnouncementCommand tenant.district {tenant.get('district')!r} is not the "
                f"district of {school!r}"
            )
        capabilities = CHANNEL_CAPABILITIES.get(str(event["channel"]))
        if capabilities is None:
            raise HandlerError(
                f"AnnouncementCommand channel {event['channel']} is not PUBLIC_ADDRESS or "
                "DIGITAL_SIGNAGE"
            )
        if not str(event["command_id"]).strip():
            raise HandlerError("AnnouncementCommand without command_id")
        if not str(event["text"]).strip():
            raise HandlerError("AnnouncementCommand without text")
        return school, capabilities

    def _expires_at(self, event: Event, envelope: Mapping[str, Any]) -> datetime:
        expires_at: datetime | None = event.get("expires_at")
        if expires_at is not None:
            return expires_at
        # No expiry given: a replay older than the configured age must still not play.
        recorded: datetime = envelope.get("recorded_at") or datetime.now(UTC)
        return recorded + timedelta(seconds=self._settings.announcement_max_age_s)

    def _remember(self, event: Event, envelope: Mapping[str, Any]) -> PendingAnnouncement:
        pending = _pending_of(event, envelope)
        with self._lock:
            self._pending[pending.command_id] = pending
            while len(self._pending) > self._settings.pending_commands:
                self._pending.popitem(last=False)
        return pending

    def _message(
        self,
        event: Event,
        envelope: Mapping[str, Any],
        school: str,
        capabilities: tuple[connector_pb2.Capability.ValueType, ...],
        expires_at: datetime,
    ) -> connector_pb2.HubMessage:
        expiry = Timestamp()
        expiry.FromDatetime(expires_at)
        srp_action = event.get("srp_action")
        announcement = connector_pb2.Announcement(
            command_id=str(event["command_id"]),
            place=place_pb2.Place(school_id=school, building=envelope.get("building") or ""),
            srp_action=SRP_ACTION.get(str(srp_action), srp_pb2.SRP_ACTION_UNSPECIFIED),
            texts=[
                connector_pb2.LocalizedText(
                    language=str(event["language"]), text=str(event["text"])
                )
            ],
            exercise=bool(envelope.get("exercise")),
            expires_at=expiry,
            repeat=max(int(event.get("repeat") or 1), 1),
            outputs=capabilities,
        )
        return connector_pb2.HubMessage(announcement=announcement)

    # -- results back --------------------------------------------------------------------

    def on_result(self, session: Session, result: connector_pb2.CommandResult) -> bool:
        """Turn a CommandResult into a receipt; False if it is not about an announcement."""
        with self._lock:
            pending = self._pending.get(result.command_id)
        if pending is None:
            return False
        if session.connector_id not in pending.connectors:
            log.warning(
                "announcement result from a connector it was not sent to",
                session=session.id,
                command_id=pending.command_id,
            )
            return True
        status = RECEIPT_STATUS.get(result.outcome, "FAILED")
        endpoint = result.endpoint_id[:128]
        error = None
        if status == "FAILED":
            try:
                outcome = connector_pb2.CommandOutcome.Name(result.outcome)
            except ValueError:
                outcome = f"outcome {result.outcome}"
            detail = result.detail.strip()
            error = (f"{outcome}: {detail}" if detail else outcome)[:MAX_ERROR_CHARS]
        event_id = event_id_for(
            session.connector_id,
            f"announcement-result\x1f{pending.command_id}\x1f{endpoint}\x1f{status}",
        )
        receipt = self._receipt(
            pending,
            status=status,
            error=error,
            source=session.connector_id,
            event_id=event_id,
            provider_message_id=f"{session.connector_id}/{endpoint}"
            if endpoint
            else session.connector_id,
        )
        with tracing.tracer().start_as_current_span(
            "ConnectorService/AnnouncementResult",
            context=pending.trace_context,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "safehub.connector.v1.ConnectorService",
                "safehub.connector": session.connector_id,
                "safehub.command_id": pending.command_id,
                "safehub.notification_id": pending.notification_id,
            },
        ):
            submission = self._intake.submit(receipt, _fingerprint(event_id))

        def done(future: Future[Delivered]) -> None:
            if future.exception() is not None:
                log.error(
                    "announcement receipt not stored",
                    session=session.id,
                    event_id=event_id,
                    error=type(future.exception()).__name__,
                )

        if submission.future is not None:
            submission.future.add_done_callback(done)
        log.info(
            "announcement result",
            session=session.id,
            command_id=pending.command_id,
            endpoint_id=endpoint,
            status=status,
            duplicate=submission.duplicate,
        )
        return True

    # -- receipts ------------------------------------------------------------------------

    def _receipt_now(
        self, event: Event, envelope: Mapping[str, Any], status: str, error: str, *, kind: str
    ) -> None:
        """Publish a hub-side receipt and wait for the broker (the offset moves only after)."""
        command_id = str(event["command_id"])
        event_id = event_id_for(SOURCE, f"announcement-{kind}\x1f{command_id}")
        receipt = self._receipt(
            _pending_of(event, envelope),
            status=status,
            error=error,
            source=SOURCE,
            event_id=event_id,
            provider_message_id=None,
        )
        self._intake.accept(receipt, _fingerprint(event_id))

    def _receipt(
        self,
        pending: PendingAnnouncement,
        *,
        status: str,
        error: str | None,
        source: str,
        event_id: str,
        provider_message_id: str | None,
    ) -> Event:
        return new_event(
            EventType.DELIVERY_RECEIPT,
            source=source,
            tenant=pending.tenant,
            building=pending.building,
            incident_id=pending.incident_id,
            causation_id=pending.event_id,
            exercise=pending.exercise,
            event_id=event_id,
            payload={
                "notification_id": pending.notification_id,
                "recipient_id": pending.recipient_id,
                "channel": pending.channel,
                "status": status,
                "attempt": 1,
                "provider_message_id": provider_message_id,
                "error": error,
            },
        )
