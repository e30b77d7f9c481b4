"""Family and public messages: prepared on a real incident, held, released by an administrator.

For every SRP action and ALL CLEAR of a real incident (never a drill) the incident hook
prepares a message to the school's guardians, whose CAP document is the public alert
(:data:`~services.notify.templates.FAMILY` text, priority URGENT, no acknowledgement). It is
stored as *held* and nothing is sent; a newer one of the same incident supersedes it.

An administrator of the school decides through notify's web API, which authenticates them
(:mod:`services.notify.auth`: the approver is the token's holder, never a typed field),
checks the decision and publishes a NotificationDecided. The requests consumer applies it
(:meth:`Approvals.handle`; a decision of a kind it does not know is dead-lettered):
APPROVED publishes the NotificationRequested (the approver's edited text if any,
``requested_by`` = the approver, caused by the decision) through the outbox in the
transaction that records the decision; REJECTED sends nothing. Only a held message can be
decided, so a redelivered or a second decision changes nothing (the first wins).

Errors name ids, fields and rules, never the message text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from safehub.contracts.names import EventType
from safehub.kernel.bus import ConsumedEvent
from safehub.kernel.codec import Event
from safehub.kernel.envelope import new_event
from safehub.kernel.errors import HandlerError, SafeHubError
from safehub.kernel.people import StaffRole
from services.notify import templates
from services.notify.audiences import AudienceError, Audiences
from services.notify.dispatcher import SOURCE, Outbox, notify_id
from services.notify.store import HeldRow, Store

log = structlog.get_logger(__name__)

DECIDED = EventType.NOTIFICATION_DECIDED
APPROVED, REJECTED = "APPROVED", "REJECTED"
#: Decision symbol → the held message's status afterwards.
OUTCOME = {APPROVED: "approved", REJECTED: "rejected"}
#: Who may release family and public messages.
APPROVER_ROLE = StaffRole.ADMINISTRATOR
PRIORITY = "URGENT"
MAX_ID = 200
MAX_HEADLINE = 200
MAX_BODY = 1600  # ten SMS segments
MAX_NOTE = 1000


class ApprovalError(SafeHubError):
    """A decision that cannot be taken; the message names the field or id and the rule."""


def _short(value: str) -> str:
    return repr(value[:64])


def _text(data: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApprovalError(f"{name} must be a string")
    if not value.strip():
        raise ApprovalError(f"{name} must not be blank (leave it out to keep the prepared text)")
    if len(value) > limit:
        raise ApprovalError(f"{name} is longer than {limit} characters")
    return value


@dataclass(frozen=True)
class Decision:
    """An administrator's decision on a held message."""

    notification_id: str
    decision: str
    decided_by: str
    headline: str | None = None
    body: str | None = None
    note: str | None = None

    @classmethod
    def of(cls, notification_id: str, data: object) -> Decision:
        """A decision from a JSON object (the API's body or an event); ApprovalError if bad."""
        if not isinstance(data, Mapping):
            raise ApprovalError("the body must be a JSON object")
        decision = data.get("decision")
        if decision not in OUTCOME:
            raise ApprovalError("decision must be APPROVED or REJECTED")
        decided_by = data.get("decided_by")
        if not isinstance(decided_by, str) or not decided_by.strip():
            raise ApprovalError("decided_by (the staff id of the administrator) is required")
        if len(decided_by) > MAX_ID:
            raise ApprovalError(f"decided_by is longer than {MAX_ID} characters")
        found = cls(
            notification_id=notification_id,
            decision=str(decision),
            decided_by=decided_by,
            headline=_text(data, "headline", MAX_HEADLINE),
            body=_text(data, "body", MAX_BODY),
            note=_text(data, "note", MAX_NOTE),
        )
        if found.decision == REJECTED and (found.headline or found.body):
            raise ApprovalError("headline and body can only be edited when approving")
        return found


class Approvals:
    """Prepares held messages, checks and publishes decisions, applies them."""

    def __init__(
        self,
        *,
        store: Store,
        audiences: Audiences,
        outbox: Outbox,
        publish: Callable[[Event], object],
    ) -> None:
        self._store = store
        self._audiences = audiences
        self._outbox = outbox
        self._publish = publish

    # -- preparing -------------------------------------------------------------------------

    def prepare(
        self, *, incident: ConsumedEvent, incident_id: str, version: int, action: str
    ) -> str | None:
        """Hold the family/public message of an SRP action (or ALL CLEAR) of a real incident.

        Returns its id; None when the school has no guardians or the action no template.
        """
        tenant = incident.envelope["tenant"]
        school = self._audiences.school(str(tenant["school"]))
        text = templates.family(action, school.name, "en")
        if text is None or not self._audiences.people.guardians(school.id):
            return None
        notification_id = notify_id("family", incident_id, str(version))
        held = HeldRow(
            notification_id=notification_id,
            incident_id=incident_id,
            tenant=dict(tenant),
            school_id=school.id,
            srp_action=action,
            priority=PRIORITY,
            headline=text.headline,
            body=text.text,
            audiences=[f"guardians:{school.id}"],
            causation_id=incident.event_id,
            created_at=time.time(),
        )
        if self._store.hold(held):
            log.info(
                "family message held for approval",
                notification_id=notification_id,
                incident_id=incident_id,
                srp_action=action,
            )
        return notification_id

    # -- the API side ------------------------------------------------------------------------

    def pending(self, school_id: str) -> list[dict[str, Any]]:
        """A school's held messages with their text in every language (AudienceError if the
        school is unknown)."""
        school = self._audiences.school(school_id)
        found = []
        for held in self._store.held_messages(school.id):
            texts = {}
            for language in ("en-US", "es-US"):
                text = templates.family(held.srp_action or "", school.name, language)
                if text is not None:
                    texts[language] = {"headline": text.headline, "body": text.text}
            found.append(
                {
                    "notification_id": held.notification_id,
                    "incident_id": held.incident_id,
                    "school_id": held.school_id,
                    "srp_action": held.srp_action,
                    "status": held.status,
                    "priority": held.priority,
                    "audiences": held.audiences,
                    "headline": held.headline,
                    "body": held.body,
                    "texts": texts,
                    "created_at": held.created_at,
                    "decision_url": f"/notifications/{held.notification_id}/decision",
                }
            )
        return found

    def _approver(self, school_id: str, staff_id: str) -> None:
        school = self._audiences.school(school_id)
        member = self._audiences.people.staff_member(school.id, staff_id)
        if member is None:
            raise ApprovalError(
                f"decided_by {_short(staff_id)} is not a staff member of {school.id}"
            )
        if member.role is not APPROVER_ROLE:
            raise ApprovalError(
                f"decided_by {_short(staff_id)} is a {member.role.value}; only an "
                f"{APPROVER_ROLE.value} of {school.id} may decide on family and public messages"
            )

    def school_of(self, notification_id: str) -> str:
        """The school of a held (or decided) message; ApprovalError if there is none."""
        held = self._store.held_message(notification_id)
        if held is None:
            raise ApprovalError(f"unknown held notification {_short(notification_id)}")
        return held.school_id

    def check(self, decision: Decision) -> HeldRow:
        """The held message a decision may be taken on; ApprovalError naming why not."""
        held = self._store.held_message(decision.notification_id)
        if held is None:
            raise ApprovalError(f"unknown held notification {_short(decision.notification_id)}")
        if held.status == "superseded":
            raise ApprovalError(
                f"notification {held.notification_id} was superseded by a newer message "
                "for its incident"
            )
        if held.status != "held":
            raise ApprovalError(
                f"notification {held.notification_id} was already decided "
                f"({held.status} by {held.decided_by})"
            )
        self._approver(held.school_id, decision.decided_by)
        return held

    def submit(self, decision: Decision) -> str:
        """Check a decision and publish it as a NotificationDecided; returns its event id."""
        held = self.check(decision)
        event = new_event(
            EventType.NOTIFICATION_DECIDED,
            source=SOURCE,
            tenant=held.tenant,
            incident_id=held.incident_id,
            payload={
                "notification_id": held.notification_id,
                "decision": decision.decision,
                "decided_by": decision.decided_by,
                "headline": decision.headline,
                "body": decision.body,
                "note": decision.note,
            },
        )
        self._publish(event)
        event_id = str(event["envelope"]["event_id"])
        log.info(
            "decision submitted",
            notification_id=held.notification_id,
            decision=decision.decision,
            decided_by=decision.decided_by,
            event_id=event_id,
        )
        return event_id

    # -- the consumer side -------------------------------------------------------------------

    def handle(self, consumed: ConsumedEvent) -> None:
        """Apply a NotificationDecided (once: only a held message can be decided)."""
        event = consumed.event
        notification_id = str(event["notification_id"])
        if event.get("decision") not in OUTCOME:  # a symbol this reader does not know
            raise HandlerError(
                f"decision {consumed.event_id} on {_short(notification_id)} is "
                f"{str(event.get('decision'))[:32]!r}, not APPROVED or REJECTED: the message "
                "stays held; decide again with a symbol this notify knows"
            )
        try:
            decision = Decision.of(notification_id, event)
            held = self._store.held_message(notification_id)
            if held is None:
                raise ApprovalError(f"unknown held notification {_short(notification_id)}")
            self._approver(held.school_id, decision.decided_by)
        except (ApprovalError, AudienceError) as exc:
            raise HandlerError(f"decision {consumed.event_id}: {exc}") from exc
        release = None
        if decision.decision == APPROVED:
            release = self._release(held, decision, consumed.event_id)
        taken = self._store.decide(
            notification_id,
            status=OUTCOME[decision.decision],
            decided_by=decision.decided_by,
            decision_event_id=consumed.event_id,
            note=decision.note,
            released_headline=release["headline"] if release else None,
            released_body=release["body"] if release else None,
            outbox=[self._outbox.item(release)] if release else [],
        )
        if not taken:
            log.info(
                "decision on a message no longer held: ignored",
                notification_id=notification_id,
                event_id=consumed.event_id,
            )
            return
        if release is not None:
            self._outbox.publish([release])
        log.info(
            "family message decided",
            notification_id=notification_id,
            incident_id=held.incident_id,
            decision=decision.decision,
            decided_by=decision.decided_by,
            edited=bool(decision.headline or decision.body),
        )

    @staticmethod
    def _release(held: HeldRow, decision: Decision, decision_event_id: str) -> Event:
        return new_event(
            EventType.NOTIFICATION_REQUESTED,
            source=SOURCE,
            tenant=held.tenant,
            incident_id=held.incident_id,
            causation_id=decision_event_id,
            event_id=notify_id("request", held.notification_id),
            payload={
                "notification_id": held.notification_id,
                "priority": held.priority,
                "srp_action": held.srp_action,
                "headline": decision.headline or held.headline,
                "body": decision.body or held.body,
                "audiences": held.audiences,
                "recipients": [],
                "require_ack": False,
                "requested_by": decision.decided_by,
            },
        )
