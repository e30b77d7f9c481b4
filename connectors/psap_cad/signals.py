"""What the connector keeps of the alerts behind an incident: enough to tell CAD what fired.

Incident events name their signals only by event id. CAD wants to know whether a silent or
audible panic fired (ALRPANS / ALRPANA), on which device and floor, what a camera saw, or
what kind of threat a tip reported (WEAPON / SUICTHRT / THREATS, with the tips service's
plain-words summary and the link where a responder can read the tip); so
the connector also reads the alerts topic and keeps these facts (never the activator's
identity) in its ledger, keyed by event id, with the hub's time of the alert (envelope
``recorded_at``, never the device's clock) to order them. Text is clipped and impossible
numbers (non-finite, coordinates off the globe) are dropped here, so nothing downstream has to
trust a device for the size or sense of what it reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from safehub.contracts.names import EventType

PANIC = EventType.PANIC_ALERT
CAMERA = EventType.CAMERA_ALERT
SRP = EventType.SRP_ACTION_REQUESTED
THREAT = EventType.THREAT_REPORTED

#: Longest text kept of any reported field (the gateway's URL limit; ids are far shorter).
MAX_TEXT = 2048
#: How a threat report's source is named to the call-taker.
REPORT_SOURCES = {"TIP": "a tip", "MONITORING": "a social-media monitoring alert"}


@dataclass(frozen=True)
class SignalFacts:
    """The dispatch-relevant facts of one alert."""

    event_id: str
    kind: str  # "panic" | "camera" | "srp" | "threat"
    device_id: str | None = None
    device_kind: str | None = None
    panic_type: str | None = None
    silent: bool | None = None
    reporter_role: str | None = None
    camera_id: str | None = None
    analytic: str | None = None
    confidence: float | None = None
    clip_url: str | None = None
    floor: str | None = None
    location_text: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    #: A reported threat: where it came from (TIP, MONITORING, OTHER), its category
    #: (WEAPON, THREAT_OF_VIOLENCE, SELF_HARM …), whether it is imminent, the reporting
    #: service's summary for the call-taker and the link to the report.
    report_source: str | None = None
    category: str | None = None
    imminent: bool | None = None
    summary: str | None = None
    report_url: str | None = None
    #: When the hub recorded the alert (ISO 8601 UTC): orders signals, never a device clock.
    recorded_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for the ledger)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SignalFacts:
        """The inverse of :meth:`to_json` (unknown keys ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """One plain-language line for CAD's alarm information."""
        if self.kind == "panic":
            mode = "silent" if self.silent else "audible"
            parts = [f"{mode} panic alarm ({(self.panic_type or 'OTHER').lower()})"]
            if self.device_id:
                parts.append(f"device {self.device_id} ({(self.device_kind or 'OTHER').lower()})")
            if self.reporter_role:
                parts.append(f"activated by {self.reporter_role.lower()}")
        elif self.kind == "threat":
            imminent = "imminent " if self.imminent else ""
            category = (self.category or "OTHER").lower().replace("_", " ")
            source = REPORT_SOURCES.get(self.report_source or "", "a report")
            parts = [f"{imminent}threat reported by {source} ({category})"]
            if self.summary:
                parts.append(self.summary)
            if self.report_url:
                parts.append(f"the report: {self.report_url}")
        elif self.kind == "camera":
            parts = [f"video analytic {(self.analytic or 'OTHER').lower()}"]
            if self.camera_id:
                parts.append(f"camera {self.camera_id}")
            if self.confidence is not None:
                parts.append(f"confidence {self.confidence:.2f}")
        else:
            parts = ["staff SRP action request"]
        if self.floor:
            parts.append(f"floor {self.floor}")
        if self.location_text:
            parts.append(f"reported location: {self.location_text}")
        return "; ".join(parts)


def facts_of(event: dict[str, Any]) -> SignalFacts | None:
    """The facts of an alerts-topic event, or None for event types that carry none."""
    envelope = event["envelope"]
    event_type = envelope["event_type"]
    event_id = str(envelope["event_id"])
    recorded_at = _hub_time(envelope.get("recorded_at"))
    if event_type == PANIC:
        latitude, longitude = _position(event.get("latitude"), event.get("longitude"))
        return SignalFacts(
            event_id=event_id,
            kind="panic",
            device_id=_text(event.get("device_id")),
            device_kind=_text(event.get("device_kind")),
            panic_type=_text(event.get("panic_type")),
            silent=bool(event.get("silent")),
            reporter_role=_text(event.get("reporter_role")),
            floor=_text(event.get("floor")),
            location_text=_text(event.get("location_text")),
            latitude=latitude,
            longitude=longitude,
            recorded_at=recorded_at,
        )
    if event_type == CAMERA:
        return SignalFacts(
            event_id=event_id,
            kind="camera",
            camera_id=_text(event.get("camera_id")),
            analytic=_text(event.get("analytic")),
            confidence=_number(event.get("confidence")),
            clip_url=_text(event.get("clip_url")),
            recorded_at=recorded_at,
        )
    if event_type == SRP:
        return SignalFacts(event_id=event_id, kind="srp", recorded_at=recorded_at)
    if event_type == THREAT:
        return SignalFacts(
            event_id=event_id,
            kind="threat",
            report_source=_text(event.get("source")),
            category=_text(event.get("category")),
            imminent=bool(event.get("imminent")),
            summary=_text(" ".join(str(event.get("summary") or "").split()) or None),
            report_url=_text(event.get("tip_link")),
            recorded_at=recorded_at,
        )
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:MAX_TEXT]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _position(latitude: Any, longitude: Any) -> tuple[float | None, float | None]:
    """A WGS 84 point only if both coordinates are finite and on the globe."""
    lat, lon = _number(latitude), _number(longitude)
    if lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180:
        return lat, lon
    return None, None


def _hub_time(value: Any) -> str | None:
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int) and not isinstance(value, bool):
        when = datetime.fromtimestamp(value / 1_000_000, tz=UTC)
    else:
        return None
    return when.astimezone(UTC).isoformat(timespec="microseconds")
