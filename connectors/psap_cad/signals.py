"""What the connector keeps of the alerts behind an incident: enough to tell CAD what fired.

Incident events name their signals only by event id. CAD wants to know whether a silent or
audible panic fired (ALRPANS / ALRPANA), on which device and floor, or what a camera saw; so
the connector also reads the alerts topic and keeps these facts (never the activator's
identity) in its ledger, keyed by event id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from safehub.kernel.envelope import EVENT_NAMESPACE

PANIC = EVENT_NAMESPACE + "PanicAlert"
CAMERA = EVENT_NAMESPACE + "CameraAlert"
SRP = EVENT_NAMESPACE + "SrpActionRequested"


@dataclass(frozen=True)
class SignalFacts:
    """The dispatch-relevant facts of one alert."""

    event_id: str
    kind: str  # "panic" | "camera" | "srp"
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
    if event_type == PANIC:
        return SignalFacts(
            event_id=event_id,
            kind="panic",
            device_id=event.get("device_id"),
            device_kind=event.get("device_kind"),
            panic_type=event.get("panic_type"),
            silent=bool(event.get("silent")),
            reporter_role=event.get("reporter_role"),
            floor=event.get("floor"),
            location_text=event.get("location_text"),
            latitude=event.get("latitude"),
            longitude=event.get("longitude"),
        )
    if event_type == CAMERA:
        return SignalFacts(
            event_id=event_id,
            kind="camera",
            camera_id=event.get("camera_id"),
            analytic=event.get("analytic"),
            confidence=event.get("confidence"),
            clip_url=event.get("clip_url"),
        )
    if event_type == SRP:
        return SignalFacts(event_id=event_id, kind="srp")
    return None
