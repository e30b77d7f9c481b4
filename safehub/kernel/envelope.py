"""Building events: the envelope every event carries, filled in one place."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from safehub.kernel.codec import Event

#: The namespace of every event record in ``schemas/events``.
EVENT_NAMESPACE = "safehub.events."

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


def new_event(
    event_type: str,
    *,
    source: str,
    tenant: Mapping[str, str | None],
    building: str | None = None,
    room: str | None = None,
    incident_id: str | None = None,
    case_id: str | None = None,
    causation_id: str | None = None,
    classification: Iterable[str] = ("INTERNAL",),
    exercise: bool = False,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    schema_version: int = 1,
    payload: Mapping[str, Any] | None = None,
) -> Event:
    """An event dict with a complete envelope; ``event_type`` may omit the namespace.

    ``tenant`` has ``state`` and ``district`` and, for school events, ``school``.
    """
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
