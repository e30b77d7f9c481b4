"""Every topic SafeHub uses, declared once: name, partitions, key and the events it carries.

Keys decide ordering and spread: device and school signals are keyed by school (all
signals of one school stay in order on one partition), workflow events by incident or case
(one incident's history stays in order). Emergency signals have their own topic so a panic
never queues behind the high-volume door-state feed. Partition counts are final: tansu
cannot add partitions later (BROKER.md), and neither should production without a plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from safehub.contracts.names import EventType
from safehub.kernel.errors import BusError, SafeHubError


class KeyBy(StrEnum):
    """Which envelope field becomes the Kafka key."""

    SCHOOL = "school"
    INCIDENT = "incident"
    CASE = "case"
    INCIDENT_OR_SCHOOL = "incident_or_school"
    DISTRICT = "district"
    TRACE = "trace"  # not an envelope field: the spans topic carries OTLP, keyed by trace id
    DEPLOYABLE = "deployable"  # not an envelope field: the metrics topic, keyed by deployable


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its base name (before the deployment prefix), layout and contents."""

    name: str
    partitions: int
    key_by: KeyBy
    events: tuple[str, ...]
    doc: str
    config: Mapping[str, str] = field(default_factory=dict)


_E = EventType
#: Base names of the topics (what services pass to ``TopicCatalog.name`` and consumers).
ALERTS = "safehub.alerts.v1"
DOORS = "safehub.doors.v1"
DOOR_COMMANDS = "safehub.door-commands.v1"
INCIDENTS = "safehub.incidents.v1"
DISPATCH = "safehub.dispatch.v1"
NOTIFICATIONS = "safehub.notifications.v1"
ANNOUNCEMENTS = "safehub.announcements.v1"
REUNIFICATION = "safehub.reunification.v1"
TIPS = "safehub.tips.v1"
CASES = "safehub.cases.v1"
REFERRALS = "safehub.referrals.v1"
DISCLOSURES = "safehub.disclosures.v1"
ROSTER = "safehub.roster.v1"
PEOPLE = "safehub.people.v1"
DIRECTORY = "safehub.directory.v1"
DEAD_LETTER = "safehub.deadletter.v1"
SPANS = "safehub.spans.v1"
METRICS = "safehub.metrics.v1"

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        ALERTS,
        12,
        KeyBy.SCHOOL,
        (
            _E.PANIC_ALERT,
            _E.PANIC_CANCELLED,
            _E.CAMERA_ALERT,
            _E.SRP_ACTION_REQUESTED,
            _E.THREAT_REPORTED,
        ),
        "Life-safety signals from schools: panic buttons, camera analytics, staff SRP actions, "
        "threats reported by tips that must reach 911.",
    ),
    TopicSpec(
        DOORS,
        12,
        KeyBy.SCHOOL,
        (_E.DOOR_LOCK_STATE,),
        "Door lock states reported by access-control systems (high volume).",
    ),
    TopicSpec(
        DOOR_COMMANDS,
        12,
        KeyBy.SCHOOL,
        (_E.LOCK_COMMAND,),
        "Lock/unlock commands to access-control connectors.",
    ),
    TopicSpec(
        INCIDENTS,
        12,
        KeyBy.INCIDENT_OR_SCHOOL,
        (
            _E.INCIDENT_OPENED,
            _E.INCIDENT_CHANGED,
            _E.INCIDENT_CLEARED,
            _E.LOCKDOWN_PROGRESS,
            _E.SIGNAL_DECIDED,
        ),
        "Incident lifecycle, SRP state, decisions on SRP requests and cancellations, and "
        "lockdown progress; one key per incident (a refusal with no incident: its school).",
    ),
    TopicSpec(
        DISPATCH,
        12,
        KeyBy.INCIDENT,
        (_E.CAD_DISPATCH, _E.CAD_STATUS_UPDATE),
        "EIDO dispatches to 911 CAD and status updates coming back.",
    ),
    TopicSpec(
        NOTIFICATIONS,
        12,
        KeyBy.INCIDENT_OR_SCHOOL,
        (
            _E.NOTIFICATION_REQUESTED,
            _E.NOTIFICATION_DECIDED,
            _E.DELIVERY_RECEIPT,
            _E.NOTIFICATION_ACKNOWLEDGED,
        ),
        "Notification requests, approvals of held family/public messages, and per-recipient "
        "delivery and acknowledgement receipts.",
    ),
    TopicSpec(
        ANNOUNCEMENTS,
        12,
        KeyBy.SCHOOL,
        (_E.ANNOUNCEMENT_COMMAND,),
        "PA, intercom and digital-signage announcements for connectors (notify's channel).",
    ),
    TopicSpec(
        REUNIFICATION,
        6,
        KeyBy.INCIDENT,
        (_E.REUNIFICATION_STATUS,),
        "Family reunification hand-offs and accounting.",
    ),
    TopicSpec(
        TIPS,
        6,
        KeyBy.CASE,
        (_E.TIP_SUBMITTED, _E.TIP_UPDATED),
        "Anonymous tips (tipster identity never leaves the tip service in clear).",
    ),
    TopicSpec(
        CASES,
        6,
        KeyBy.CASE,
        (_E.THREAT_CASE_OPENED, _E.THREAT_CASE_UPDATED),
        "Behavioural threat assessment (BTAM) cases.",
    ),
    TopicSpec(
        REFERRALS,
        6,
        KeyBy.CASE,
        (_E.REFERRAL,),
        "Mental-health referrals to community partners.",
    ),
    TopicSpec(
        DISCLOSURES,
        6,
        KeyBy.CASE,
        (_E.RECORD_DISCLOSURE,),
        "FERPA record disclosures (34 CFR 99.32 record of each).",
    ),
    TopicSpec(
        ROSTER,
        6,
        KeyBy.SCHOOL,
        (_E.ROSTER_CHANGE,),
        "Roster changes from student information systems.",
    ),
    TopicSpec(
        PEOPLE,
        6,
        KeyBy.SCHOOL,
        (_E.PERSON_CHANGED,),
        "The live directory's people, each change the full record at its version, contact "
        "details included: read only by the services that must reach people (never the "
        "timeline), the source every service's people view follows.",
    ),
    TopicSpec(
        DIRECTORY,
        3,
        KeyBy.DISTRICT,
        (_E.DIRECTORY_CHANGED,),
        "The live directory's places and systems (districts, schools with buildings, rooms "
        "and doors, client systems, reviewers, call trees), each change the full entry at its "
        "version; no contact details. The source every service's directory view follows.",
    ),
    TopicSpec(
        SPANS,
        6,
        KeyBy.TRACE,
        (),
        "Finished OpenTelemetry spans of every deployable, as OTLP protobuf "
        "(ExportTraceServiceRequest), keyed by trace id; the timeline stores them.",
    ),
    TopicSpec(
        METRICS,
        3,
        KeyBy.DEPLOYABLE,
        (),
        "OpenTelemetry metrics of every deployable (handler latency, consumed, produced, dead "
        "letters, consumer lag) as OTLP protobuf (ExportMetricsServiceRequest), keyed by "
        "deployable; read by whatever scrapes them where no OTLP collector runs.",
    ),
    TopicSpec(
        DEAD_LETTER,
        3,
        KeyBy.SCHOOL,
        (),
        "Messages that could not be decoded or handled: original bytes, reason and "
        "coordinates in headers.",
    ),
)


class TopicCatalog:
    """The declared topics under one deployment prefix (tests use a unique prefix each)."""

    def __init__(self, prefix: str = "", specs: Iterable[TopicSpec] = TOPICS) -> None:
        self.prefix = prefix
        self.specs = {spec.name: spec for spec in specs}
        self._by_event: dict[str, TopicSpec] = {}
        for spec in self.specs.values():
            for event_type in spec.events:
                if event_type in self._by_event:
                    raise SafeHubError(f"{event_type} is declared on two topics")
                self._by_event[event_type] = spec

    def name(self, base: str) -> str:
        """The full topic name for a declared base name."""
        if base not in self.specs:
            raise BusError(f"topic {base!r} is not declared in safehub.kernel.topics")
        return self.prefix + base

    @property
    def dead_letter(self) -> str:
        """Full name of the dead-letter topic."""
        return self.name(DEAD_LETTER)

    def spec_for(self, event_type: str) -> TopicSpec:
        """The topic that carries ``event_type``."""
        try:
            return self._by_event[event_type]
        except KeyError:
            raise BusError(f"no topic declared for event type {event_type!r}") from None

    def topic_for(self, event_type: str) -> str:
        """Full topic name for ``event_type``."""
        return self.prefix + self.spec_for(event_type).name

    def key_for(self, event: Mapping[str, Any]) -> bytes:
        """The Kafka key of ``event`` according to its topic's key rule."""
        envelope = event["envelope"]
        spec = self.spec_for(envelope["event_type"])
        school = (envelope.get("tenant") or {}).get("school")
        key: str | None
        match spec.key_by:
            case KeyBy.SCHOOL:
                key = school
            case KeyBy.INCIDENT:
                key = envelope.get("incident_id")
            case KeyBy.CASE:
                key = envelope.get("case_id")
            case KeyBy.INCIDENT_OR_SCHOOL:
                key = envelope.get("incident_id") or school
            case KeyBy.DISTRICT:
                key = (envelope.get("tenant") or {}).get("district")
            case KeyBy.TRACE | KeyBy.DEPLOYABLE:
                key = None
        if not key:
            raise BusError(
                f"{envelope['event_type']} needs envelope {spec.key_by.value} id to be keyed "
                f"on {spec.name}"
            )
        return str(key).encode()
