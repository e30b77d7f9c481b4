"""Ingest: events and spans from the bus into the store, a batch per transaction.

Two consumer groups: ``timeline-events`` reads every event topic, ``timeline-spans`` the
spans topic (OTLP protobuf, not Avro); both are kernel batch consumers
(:mod:`safehub.kernel.batch`). Each poll batch is decoded message by message (what does not
decode goes to the dead-letter topic at once, confirmed), then written in one transaction,
and only then are its offsets stored and committed. A crash between the write
and the commit redelivers the batch; the store's unique (subject, event) makes that a no-op.
A failing database is retried (never dead-lettered: the events are fine) until it answers
or the service stops, in which case nothing of the batch is committed.

The timeline records other systems' traces and creates no spans of its own while
ingesting: a span per recorded span would feed itself through the spans topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from sqlalchemy.exc import SQLAlchemyError

from safehub.contracts.names import EventType
from safehub.kernel import tracing
from safehub.kernel.batch import BatchConsumer
from safehub.kernel.bus import EventProducer, PoisonPolicy
from safehub.kernel.chain import jsonable
from safehub.kernel.codec import Codec, Event
from safehub.kernel.envelope import EVENT_NAMESPACE
from safehub.kernel.errors import HandlerError
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import DEAD_LETTER, DIRECTORY, METRICS, PEOPLE, SPANS, TopicCatalog
from services.timeline.store import Draft, SpanRow, Store, StoreError

log = structlog.get_logger(__name__)

#: Errors of the store, not of the events: retried until it answers, never dead-lettered.
TRANSIENT: tuple[type[BaseException], ...] = (StoreError, SQLAlchemyError)
#: A batch that fails otherwise is written event by event; the failing one is dead-lettered
#: at once (a bad event does not get better), store retries back off from 0.1 s to 5 s.
POLICY = PoisonPolicy(max_attempts=1, backoff_s=0.1, backoff_max_s=5.0)

#: Event topics the timeline reads: every declared topic but the spans, metrics and dead-letter
#: ones and the live directory's (contact details and token hashes never reach the timeline).
EXCLUDED_TOPICS = frozenset({SPANS, METRICS, DEAD_LETTER, PEOPLE, DIRECTORY})

LANES: dict[str, str] = {
    EventType.PANIC_ALERT: "gateway",
    EventType.PANIC_CANCELLED: "gateway",
    EventType.CAMERA_ALERT: "gateway",
    # A tip sent down the emergency path is drawn where the incident's other signals enter
    # (the tip's own lanes are on the tip's subject, which it does not name).
    EventType.THREAT_REPORTED: "gateway",
    EventType.SRP_ACTION_REQUESTED: "people",  # a person's action (SRP request, ALL CLEAR)
    EventType.INCIDENT_OPENED: "incidents",
    EventType.INCIDENT_CHANGED: "incidents",
    EventType.INCIDENT_CLEARED: "incidents",
    EventType.SIGNAL_DECIDED: "incidents",
    EventType.CAD_DISPATCH: "cad",
    EventType.CAD_STATUS_UPDATE: "cad",
    EventType.LOCK_COMMAND: "doors",
    EventType.DOOR_LOCK_STATE: "doors",
    EventType.LOCKDOWN_PROGRESS: "doors",
    EventType.NOTIFICATION_REQUESTED: "notifications",
    EventType.DELIVERY_RECEIPT: "notifications",
    EventType.ANNOUNCEMENT_COMMAND: "notifications",
    EventType.NOTIFICATION_ACKNOWLEDGED: "people",
    EventType.NOTIFICATION_DECIDED: "people",
    EventType.REUNIFICATION_STATUS: "reunification",
    EventType.TIP_SUBMITTED: "intake",
    EventType.TIP_UPDATED: "triage",  # and the lanes of TIP_LANES by what happened
    EventType.THREAT_CASE_OPENED: "cases",
    EventType.THREAT_CASE_UPDATED: "cases",
    EventType.REFERRAL: "referrals",
    EventType.RECORD_DISCLOSURE: "disclosures",
    EventType.ROSTER_CHANGE: "roster",
}

#: A tip's lanes: what a TipUpdated did (its ``activity``) → lane; the rest are triage.
TIP_LANES: dict[str, str] = {
    "ESCALATION_CALLED": "escalation",
    "ESCALATION_ACKNOWLEDGED": "escalation",
    "ESCALATION_EXHAUSTED": "escalation",
    "OVERDUE": "escalation",
    "SENT_TO_PSAP": "escalation",
    "THREAD_MESSAGE": "thread",
    "STATUS": "disposition",
    "DISPOSITION": "disposition",
}


def lane_of(event_type: str, fields: Mapping[str, Any]) -> str:
    """The lane an event is drawn in (a tip's updates by what they did)."""
    if event_type == EventType.TIP_UPDATED:
        return TIP_LANES.get(str(fields.get("activity")), "triage")
    return LANES.get(event_type, "other")


#: Fields naming who acted, in order of preference (ids only, never classified fields).
ACTOR_FIELDS = (
    "requested_by",
    "changed_by",
    "cleared_by",
    "cancelled_by",
    "updated_by",
    "opened_by",
    "referred_by",
    "disclosed_by",
    "decided_by",
    "recorded_by",
    "recipient_id",
    "activated_by",
    "device_id",
    "camera_id",
)

#: Alerts that may open or join an incident before any incident names them.
SIGNAL_TYPES = frozenset(
    {
        EventType.PANIC_ALERT,
        EventType.PANIC_CANCELLED,
        EventType.CAMERA_ALERT,
        EventType.SRP_ACTION_REQUESTED,
        EventType.THREAT_REPORTED,
    }
)
#: Door states the incidents service correlates (routine reports never join an incident).
SIGNAL_DOOR_STATES = frozenset({"FORCED_OPEN", "HELD_OPEN"})

#: No real clock shows an earlier time (a device with a reset clock shows 1970).
PLAUSIBLE_FROM = datetime(1970, 1, 1, tzinfo=UTC)


def _latest() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


_INCIDENT_STATUS = {"ALL_CLEAR": "cleared", "CLOSED": "closed", "CANCELLED": "cancelled"}


def event_topics(catalog: TopicCatalog) -> list[str]:
    """Base names of the topics the events consumer reads."""
    return [name for name in catalog.specs if name not in EXCLUDED_TOPICS]


def trace_ids(headers: Sequence[tuple[str, bytes]]) -> tuple[str | None, str | None]:
    """(trace id, span id) hex from a message's ``traceparent`` header, if valid."""
    context = trace.get_current_span(tracing.extract(headers)).get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _pct(value: float) -> str:
    return f"{round(value * 100)}%"


def summarize(event_type: str, e: Mapping[str, Any]) -> str:  # noqa: PLR0912, PLR0915
    """One line for humans, from unclassified fields only (one case per event type)."""
    text: str
    match event_type:
        case EventType.PANIC_ALERT:
            silent = "Silent panic" if e.get("silent") else "Panic"
            text = f"{silent} ({_words(e.get('panic_type'))}) from {e.get('device_id')}"
        case EventType.PANIC_CANCELLED:
            text = f"Panic cancelled by {e.get('cancelled_by')}: {e.get('reason')}"
        case EventType.CAMERA_ALERT:
            text = (
                f"Camera {e.get('camera_id')}: {_words(e.get('analytic'))} "
                f"({_pct(float(e.get('confidence') or 0))})"
            )
        case EventType.SRP_ACTION_REQUESTED:
            text = f"SRP {e.get('action')} requested by {e.get('requested_by')}"
        case EventType.THREAT_REPORTED:
            imminent = "Imminent threat" if e.get("imminent") else "Threat"
            text = (
                f"{imminent} ({_words(e.get('category'))}) reported by {_words(e.get('source'))}"
                f" {e.get('report_id')}: {e.get('summary')}"
            )
        case EventType.INCIDENT_OPENED:
            text = str(e.get("summary") or "Incident opened")
        case EventType.INCIDENT_CHANGED:
            text = f"{e.get('change_reason')} (now {_words(e.get('state'))})"
        case EventType.INCIDENT_CLEARED:
            text = f"{_words(e.get('outcome')).capitalize()}: {e.get('message')}"
        case EventType.SIGNAL_DECIDED:
            text = f"{e.get('signal_type')} {_words(e.get('outcome'))}: {e.get('reason')}"
        case EventType.LOCK_COMMAND:
            text = f"{_words(e.get('target')).capitalize()} {_words(e.get('scope'))} doors"
        case EventType.DOOR_LOCK_STATE:
            text = f"Door {e.get('door_id')} {_words(e.get('state'))}"
        case EventType.LOCKDOWN_PROGRESS:
            expected = len(e.get("doors_expected") or [])
            confirmed = len(e.get("doors_confirmed") or [])
            text = f"{confirmed}/{expected} doors confirmed"
            if e.get("deadline_passed") and not e.get("complete"):
                text += f"; {len(e.get('doors_unconfirmed') or [])} unconfirmed at the deadline"
        case EventType.CAD_DISPATCH:
            text = f"EIDO {e.get('status')} to {e.get('psap_id')} ({e.get('apco_incident_type')})"
        case EventType.CAD_STATUS_UPDATE:
            units = ", ".join(str(u.get("unit_id")) for u in e.get("units") or [])
            text = f"CAD {e.get('cad_incident_id')}: {e.get('status')}"
            text += f" ({units})" if units else ""
        case EventType.NOTIFICATION_REQUESTED:
            text = f"{_words(e.get('priority')).capitalize()} notification: {e.get('headline')}"
        case EventType.DELIVERY_RECEIPT:
            text = f"{e.get('channel')} to {e.get('recipient_id')}: {_words(e.get('status'))}"
            text += f" ({e.get('error')})" if e.get("error") else ""
        case EventType.NOTIFICATION_ACKNOWLEDGED:
            text = f"{e.get('recipient_id')} answered {_words(e.get('response'))}"
        case EventType.NOTIFICATION_DECIDED:
            text = f"Family/public message {_words(e.get('decision'))} by {e.get('decided_by')}"
        case EventType.ANNOUNCEMENT_COMMAND:
            text = f"{e.get('channel')} announcement to {e.get('recipient_id')}"
        case EventType.REUNIFICATION_STATUS:
            text = f"Student {_words(e.get('student_status'))}"
        case EventType.TIP_SUBMITTED:
            text = f"{_words(e.get('category')).capitalize()} tip via {e.get('channel')}"
        case EventType.TIP_UPDATED:
            text = _tip_update(e)
        case EventType.THREAT_CASE_OPENED:
            text = f"Threat assessment case opened ({_words(e.get('concern_level'))})"
        case EventType.THREAT_CASE_UPDATED:
            text = f"Case {_words(e.get('status'))} ({_words(e.get('concern_level'))})"
        case EventType.REFERRAL:
            text = f"Referral to {e.get('partner_id')}: {_words(e.get('task_status'))}"
        case EventType.RECORD_DISCLOSURE:
            text = f"Record disclosure by {e.get('disclosed_by')} ({e.get('legal_basis')})"
        case EventType.ROSTER_CHANGE:
            text = f"Roster {_words(e.get('entity'))} {_words(e.get('change'))}"
        case _:
            text = event_type.removeprefix(EVENT_NAMESPACE)
    return text[:500]


def _tip_update(e: Mapping[str, Any]) -> str:
    """A TipUpdated in words: what happened, never the note (it may name students)."""
    activity = str(e.get("activity"))
    people = ", ".join(str(p) for p in e.get("notified_person_ids") or [])
    match activity:
        case "ESCALATION_CALLED":
            return f"Escalation call {int(e.get('escalation_level') or 0) + 1} to {people}"
        case "ESCALATION_ACKNOWLEDGED":
            return f"Confirmed by {people}"
        case "ESCALATION_EXHAUSTED":
            return "Call chain exhausted: calling its last step again until someone answers"
        case "THREAD_MESSAGE":
            return f"Thread message from the {_words(e.get('thread_author'))}"
        case "DISPOSITION":
            return f"Tip closed: {_words(e.get('disposition'))}"
        case "FOLDED":
            into = e.get("merged_into_tip_id")
            return f"Folded into tip {into}" if into else "Duplicates folded into this tip"
        case "LIFE_SAFETY_CHANGED":
            return f"Life-safety flag set to {e.get('life_safety')} by {e.get('updated_by')}"
        case "OVERDUE":
            return "Tip overdue: not assigned within its deadline"
        case "SENT_TO_PSAP":
            return f"Sent to 911 (ThreatReported) by {e.get('updated_by')}"
    return f"Tip {_words(e.get('status'))}"


def _words(value: Any) -> str:
    return str(value or "").lower().replace("_", " ")


def subject_update(event_type: str, e: Mapping[str, Any]) -> dict[str, Any]:
    """What this event says about its subject's index row (keys ending ``?``: only if unset)."""
    match event_type:
        case EventType.INCIDENT_OPENED | EventType.INCIDENT_CHANGED:
            state = str(e.get("state"))
            return {
                "version": e.get("version"),
                "type": e.get("incident_type"),
                "incident_state": state,
                "status": _INCIDENT_STATUS.get(state, "open"),
                "srp_action": e.get("srp_action"),
                "summary": e.get("summary"),
            }
        case EventType.INCIDENT_CLEARED:
            cancelled = e.get("outcome") == "FALSE_ALARM"
            return {
                "version": e.get("version"),
                "incident_state": "CANCELLED" if cancelled else "ALL_CLEAR",
                "status": "cancelled" if cancelled else "cleared",
            }
        case EventType.CAD_DISPATCH | EventType.CAD_STATUS_UPDATE:
            return {"cad_status": e.get("status")}
        case EventType.THREAT_CASE_OPENED:
            return {"type": "THREAT_ASSESSMENT", "status": "open"}
        case EventType.THREAT_CASE_UPDATED:
            return {"status": "closed" if e.get("status") == "CLOSED" else "open"}
        case EventType.TIP_SUBMITTED:
            return {"type?": f"TIP_{e.get('category')}"}
        case EventType.TIP_UPDATED:
            status = str(e.get("status"))
            closed = status.startswith("CLOSED") or status == "MERGED"
            return {"status": "closed" if closed else "open"}
    return {}


def draft_of(event: Event, headers: Sequence[tuple[str, bytes]]) -> Draft:
    """The store draft of a decoded event (HandlerError if its envelope is unusable)."""
    envelope = event.get("envelope")
    if not isinstance(envelope, Mapping):
        raise HandlerError("event has no envelope")
    event_type = str(envelope.get("event_type") or "")
    kind = event_type.removeprefix(EVENT_NAMESPACE)  # stored and shown without the namespace
    tenant = envelope.get("tenant") or {}
    if not tenant.get("district"):
        raise HandlerError(f"{kind} {envelope.get('event_id')} names no district")
    for name in ("occurred_at", "recorded_at"):
        when = envelope.get(name)
        if not isinstance(when, datetime) or not PLAUSIBLE_FROM <= when <= _latest():
            raise HandlerError(
                f"{kind} {envelope.get('event_id')}: envelope.{name} is outside the plausible "
                f"window ({PLAUSIBLE_FROM.date()} to one day ahead)"
            )
    fields = {k: v for k, v in event.items() if k != "envelope"}
    actor = next((str(fields[f]) for f in ACTOR_FIELDS if fields.get(f)), None)
    trace_id, span_id = trace_ids(headers)
    correlated: list[str] = []
    if event_type in (EventType.INCIDENT_OPENED, EventType.INCIDENT_CHANGED):
        correlated = [str(i) for i in fields.get("correlated_event_ids") or []]
    signal = event_type in SIGNAL_TYPES or (
        event_type == EventType.DOOR_LOCK_STATE and fields.get("state") in SIGNAL_DOOR_STATES
    )
    return Draft(
        event_id=str(envelope["event_id"]),
        event_type=kind,
        occurred_at=envelope["occurred_at"],
        recorded_at=envelope["recorded_at"],
        tenant={
            "state": tenant.get("state"),
            "district": tenant.get("district"),
            "school": tenant.get("school"),
        },
        building=envelope.get("building"),
        room=envelope.get("room"),
        exercise=bool(envelope.get("exercise")),
        source=str(envelope.get("source") or ""),
        actor=actor,
        lane=lane_of(event_type, fields),
        summary=summarize(event_type, fields),
        classification=[str(c) for c in envelope.get("classification") or []],
        trace_id=trace_id,
        span_id=span_id,
        payload=jsonable(event),
        incident_id=envelope.get("incident_id") or _own_incident(event_type, fields),
        case_id=envelope.get("case_id"),
        correlated_event_ids=correlated,
        signal=signal,
        subject_update=subject_update(event_type, fields),
    )


def _own_incident(event_type: str, fields: Mapping[str, Any]) -> str | None:
    """Incident events carry their id in the body too (a safety net for the envelope)."""
    if event_type in _OWN_INCIDENT:
        value = fields.get("incident_id")
        return str(value) if value else None
    return None


#: Events whose body names their incident.
_OWN_INCIDENT = frozenset(
    {
        EventType.INCIDENT_OPENED,
        EventType.INCIDENT_CHANGED,
        EventType.INCIDENT_CLEARED,
        EventType.LOCKDOWN_PROGRESS,
    }
)

_SPAN_KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}
_STATUS = {Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which) if which else None


def spans_of(data: bytes) -> list[SpanRow]:
    """The spans of an OTLP ``ExportTraceServiceRequest`` (HandlerError if it does not parse)."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise HandlerError("not an OTLP ExportTraceServiceRequest") from exc
    rows: list[SpanRow] = []
    for resource_spans in request.resource_spans:
        attributes = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        service = str(attributes.get("service.name") or "unknown")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or len(span.span_id) != 8:
                    raise HandlerError("OTLP span without a valid trace or span id")
                rows.append(
                    SpanRow(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name[:300],
                        service=service[:200],
                        kind=_SPAN_KINDS.get(span.kind, "unspecified"),
                        start_ns=int(span.start_time_unix_nano),
                        end_ns=int(span.end_time_unix_nano),
                        status=_STATUS.get(span.status.code, "unset"),
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    )
                )
    return rows


class Ingest:
    """The two consumers of the timeline, wired to a store."""

    def __init__(self, store: Store, codec: Codec) -> None:
        self.store = store
        self.codec = codec

    def consumers(
        self,
        kafka: KafkaSettings,
        catalog: TopicCatalog,
        *,
        events_group: str,
        spans_group: str,
        dead_letter: EventProducer,
        stop: threading.Event,
        batch_size: int,
        fetch_wait_max_ms: int,
    ) -> dict[str, BatchConsumer[Any]]:
        """The events and the spans consumer (kernel batch consumers), by name."""
        common: dict[str, Any] = {
            "dead_letter": dead_letter,
            "transient": TRANSIENT,
            "policy": POLICY,
            "stop": stop,
            "client_id": "timeline",
            "batch_size": batch_size,
            "fetch_wait_max_ms": fetch_wait_max_ms,
        }
        events: BatchConsumer[Draft] = BatchConsumer(
            kafka,
            catalog,
            group_id=events_group,
            topics=event_topics(catalog),
            decode=self.decode_event,
            write=self.write_events,
            event_type=lambda draft: EVENT_NAMESPACE + draft.event_type,
            **common,
        )
        spans: BatchConsumer[SpanRow] = BatchConsumer(
            kafka,
            catalog,
            group_id=spans_group,
            topics=[SPANS],
            decode=self.decode_spans,
            write=self.write_spans,
            **common,
        )
        return {"events": events, "spans": spans}

    def decode_event(self, data: bytes, headers: Sequence[tuple[str, bytes]]) -> list[Draft]:
        """One message → its draft (CodecError/HandlerError: dead letter)."""
        return [draft_of(self.codec.decode(data), headers)]

    def write_events(self, drafts: list[Draft]) -> None:
        """One transaction for the batch."""
        stats = self.store.apply(drafts)
        log.debug(
            "events recorded",
            appended=stats.appended,
            duplicates=stats.duplicates,
            pending=stats.pending,
            ignored=stats.ignored,
        )

    @staticmethod
    def decode_spans(data: bytes, _headers: Sequence[tuple[str, bytes]]) -> list[SpanRow]:
        """One OTLP message → its spans."""
        return spans_of(data)

    def write_spans(self, rows: list[SpanRow]) -> None:
        """One transaction for the batch."""
        self.store.add_spans(rows)


def wait_closed(thread: threading.Thread, consumer: BatchConsumer[Any], timeout: float) -> None:
    """Closer: let the loop finish its batch, then close the consumer."""
    deadline = time.monotonic() + timeout
    thread.join(max(0.0, deadline - time.monotonic()))
    consumer.close()
