"""The events the tips service writes: TipSubmitted, TipUpdated, NotificationRequested.

Every tip event names the tip as the envelope's ``case_id`` (the timeline's subject) and its
school as the tenant. Tip text, notes and named students are STUDENT_RECORD and declared so;
the tipster's identity is never in any event (``tipster_contact_sealed`` stays null: the
sealed identity lives in the tips store only). Notifications say that a tip needs someone,
never what it says: the body names the category, the school and the analyst's link.
Event and notification ids are derived from the tip and what happened, so a retry or a
restarted worker writes the same ids and consumers drop the second copy.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from safehub.contracts.names import EventType
from safehub.kernel.codec import Event
from safehub.kernel.envelope import new_event, stable_id

SOURCE = "tips"
_IDS = uuid.UUID("6f0c8a52-4b7e-4c61-9a0f-2d3e8b1c7a55")
#: Notification ids of tip escalations start with this (the acks consumer matches on it).
NOTIFICATION_PREFIX = "tip-"
INTERNAL = "INTERNAL"
STUDENT_RECORD = "STUDENT_RECORD"


def event_id(*parts: object) -> str:
    """A deterministic event id of the tips service."""
    return stable_id(_IDS, *parts)


def notification_id(tip_id: str, call: int) -> str:
    """The id of a tip's ``call``-th escalation call (stable: a repeat is dropped by notify)."""
    return f"{NOTIFICATION_PREFIX}{tip_id}-{call}"


def tip_of_notification(value: str) -> tuple[str, int] | None:
    """``(tip_id, call)`` of an escalation notification id, or None if it is not one."""
    if not value.startswith(NOTIFICATION_PREFIX):
        return None
    tip_id, _, call = value[len(NOTIFICATION_PREFIX) :].rpartition("-")
    if not tip_id or not call.isdigit():
        return None
    return tip_id, int(call)


def submitted(
    *,
    tip_id: str,
    tenant: Mapping[str, str | None],
    channel: str,
    category: str,
    life_safety: bool,
    anonymous: bool,
    text: str,
    subject_ids: Sequence[str],
    attachment_urls: Sequence[str],
) -> Event:
    """The TipSubmitted of a new tip (identity never in it)."""
    return new_event(
        EventType.TIP_SUBMITTED,
        source=SOURCE,
        tenant=tenant,
        case_id=tip_id,
        classification=(INTERNAL, STUDENT_RECORD),
        event_id=event_id(tip_id, "submitted"),
        payload={
            "tip_id": tip_id,
            "channel": channel,
            "category": category,
            "life_safety": life_safety,
            "anonymous": anonymous,
            "thread_id": f"thread-{tip_id}",
            "text": text,
            "subject_student_ids": list(subject_ids),
            "attachment_urls": list(attachment_urls),
            "tipster_contact_sealed": None,
        },
    )


def updated(
    *,
    tip_id: str,
    tenant: Mapping[str, str | None],
    status: str,
    activity: str,
    updated_by: str,
    key: object,
    note: str | None = None,
    assigned_to: str | None = None,
    escalation_level: int = 0,
    merged_into: str | None = None,
    disposition: str | None = None,
    life_safety: bool | None = None,
    notified: Sequence[str] = (),
    thread_author: str | None = None,
) -> Event:
    """A TipUpdated; ``key`` makes its event id (the same change gives the same id)."""
    classification = (INTERNAL, STUDENT_RECORD) if note else (INTERNAL,)
    return new_event(
        EventType.TIP_UPDATED,
        source=SOURCE,
        tenant=tenant,
        case_id=tip_id,
        classification=classification,
        event_id=event_id(tip_id, "updated", activity, key),
        payload={
            "tip_id": tip_id,
            "status": status,
            "assigned_to": assigned_to,
            "escalation_level": escalation_level,
            "merged_into_tip_id": merged_into,
            "note": note,
            "activity": activity,
            "disposition": disposition,
            "life_safety": life_safety,
            "notified_person_ids": list(notified),
            "thread_author": thread_author,
            "updated_by": updated_by,
        },
    )


def call_request(
    *,
    tip_id: str,
    tenant: Mapping[str, str | None],
    nid: str,
    person_ids: Sequence[str],
    headline: str,
    body: str,
    priority: str,
) -> Event:
    """The NotificationRequested of one escalation call (or an inbox or overdue message)."""
    life_safety = priority == "LIFE_SAFETY"
    recipients: list[dict[str, Any]] = [
        # Life-safety: notify picks the channels (two at once, voice to wake someone);
        # the school's inbox is e-mail, an overdue tip e-mail and text.
        {
            "recipient_id": person,
            "channels": []
            if life_safety
            else ["EMAIL", "SMS"][: 1 if priority == "ROUTINE" else 2],
        }
        for person in person_ids
    ]
    return new_event(
        EventType.NOTIFICATION_REQUESTED,
        source=SOURCE,
        tenant=tenant,
        case_id=tip_id,
        event_id=event_id(nid, "request"),
        payload={
            "notification_id": nid,
            "priority": priority,
            "srp_action": None,
            "headline": headline,
            "body": body,
            "audiences": [],
            "recipients": recipients,
            "require_ack": life_safety,
            "requested_by": f"{SOURCE}:escalation",
        },
    )


def threat_reported(
    *,
    tip_id: str,
    tenant: Mapping[str, str | None],
    category: str,
    imminent: bool,
    summary: str,
    tip_link: str | None,
    by_monitoring: bool,
    reported_at: float,
) -> Event:
    """The ThreatReported that sends an imminent tip to 911 through the incidents service
    (once per tip: the id is the tip's). ``summary`` is for the call-taker and never carries
    the tip's words or names. No ``case_id``: the timeline files it under the incident it
    opens (the tip's own record has the TipUpdated SENT_TO_PSAP)."""
    return new_event(
        EventType.THREAT_REPORTED,
        source=SOURCE,
        tenant=tenant,
        event_id=event_id(tip_id, "psap"),
        payload={
            "report_id": tip_id,
            "source": "MONITORING" if by_monitoring else "TIP",
            "category": category,
            "imminent": imminent,
            "summary": summary,
            "tip_link": tip_link,
            "reported_at": datetime.fromtimestamp(reported_at, UTC),
        },
    )
