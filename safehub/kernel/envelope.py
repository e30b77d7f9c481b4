"""Building events: the envelope every event carries, filled in one place.

Event types and data classes come from :mod:`safehub.contracts.names` (generated from
``schemas/``); a derived event takes what it inherits from its cause through
:func:`caused_by`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict

from safehub.contracts.names import DEFAULT_DATA_CLASS, EVENT_NAMESPACE, EventType
from safehub.kernel.codec import Event

__all__ = [
    "EVENT_NAMESPACE",
    "CausedBy",
    "EventType",
    "caused_by",
    "event_id_for",
    "new_event",
    "now",
    "stable_id",
]

#: Namespace for deterministic event ids (uuid5) derived from a client's own event id.
_CLIENT_EVENT_NAMESPACE = uuid.UUID("6f1d3c52-8f0e-4a8e-9a51-2d0b5f3f7a10")


def now() -> datetime:
    """The current time, timezone-aware UTC (Avro timestamp-micros)."""
    return datetime.now(UTC)


def stable_id(namespace: uuid.UUID, *parts: object, sep: str = "\x1f") -> str:
    """A deterministic id (uuid5 in ``namespace``) from its parts: the same inputs give the
    same id, so a redelivery or a retry produces what the first run did. Each user keeps its
    own namespace (and separator): the ids already on the topics must not change."""
    return str(uuid.uuid5(namespace, sep.join(str(part) for part in parts)))


def event_id_for(client_id: str, client_event_id: str) -> str:
    """A stable event id for a client's retried submission (same inputs, same id)."""
    return stable_id(_CLIENT_EVENT_NAMESPACE, client_id, client_event_id)


class CausedBy(TypedDict):
    """The envelope fields a derived event takes from its cause (keywords of :func:`new_event`)."""

    tenant: dict[str, str | None]
    building: str | None
    incident_id: str | None
    causation_id: str
    exercise: bool


_UNSET: Any = object()


def caused_by(
    cause: Mapping[str, Any],
    *,
    building: str | None = _UNSET,
    incident_id: str | None = _UNSET,
    exercise: bool = _UNSET,
) -> CausedBy:
    """What an event derived from the envelope ``cause`` inherits, for ``new_event(**…)``.

    The tenant, building, incident and exercise flag are the cause's, and ``causation_id`` is
    its event id; a keyword given here replaces the inherited value (the incident service sets
    the incident's own id and flag on what a signal caused). Everything else — the room, the
    case, the classification, the times — the deriving code states itself.
    """
    tenant = cause["tenant"]
    return {
        "tenant": {
            "state": tenant["state"],
            "district": tenant["district"],
            "school": tenant.get("school"),
        },
        "building": cause.get("building") if building is _UNSET else building,
        "incident_id": cause.get("incident_id") if incident_id is _UNSET else incident_id,
        "causation_id": str(cause["event_id"]),
        "exercise": bool(cause.get("exercise")) if exercise is _UNSET else exercise,
    }


def new_event(
    event_type: EventType | str,
    *,
    source: str,
    tenant: Mapping[str, str | None],
    building: str | None = None,
    room: str | None = None,
    incident_id: str | None = None,
    case_id: str | None = None,
    causation_id: str | None = None,
    classification: Iterable[str] = (DEFAULT_DATA_CLASS.value,),
    exercise: bool = False,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    schema_version: int = 1,
    payload: Mapping[str, Any] | None = None,
) -> Event:
    """An event dict with a complete envelope; ``event_type`` may omit the namespace.

    ``tenant`` has ``state`` and ``district`` and, for school events, ``school``.
    """
    event_type = str(event_type)  # a plain string on the envelope, also for an EventType
    if "." not in event_type:
        event_type = EVENT_NAMESPACE + event_type
    recorded = now()
    return {
        "envelope": {
            "event_id": event_id or str(uuid.uuid4()),
            "event_type": event_type,
            "schema_version": schema_version,
            "occurred_at": occurred_at or recorded,
            "recorded_at": recorded,
            "source": source,
            "tenant": {
                "state": tenant["state"],
                "district": tenant["district"],
                "school": tenant.get("school"),
            },
            "building": building,
            "room": room,
            "incident_id": incident_id,
            "case_id": case_id,
            "causation_id": causation_id,
            "classification": list(classification),
            "exercise": exercise,
        },
        **(payload or {}),
    }
