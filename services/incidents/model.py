"""The incident book: state folded from the incidents topic, and the decisions taken on signals.

Pure logic, no I/O. ``decide(signal)`` returns the events to publish (it never mutates);
``apply(event)`` folds an incident event into the state. The service publishes what
``decide`` returned and then applies it, and on start it rebuilds the book by applying the
whole incidents topic, so the state after a restart is exactly the state before it.

Rules enforced here:

* correlation: signals at the same school and building (or school-wide), same drill/real
  mode, within the correlation window, are one incident; SRP actions join the active
  incident of their place whatever its age;
* the SRP state machine (valid transitions, explicit ALL CLEAR);
* drills (exercise) are never dispatchable;
* idempotency: a signal already folded into the book (by event id) yields nothing;
* cancellation: a panic cancelled within the cancel window, when it is the only signal,
  cancels the incident (CAD gets a cancellation; the first dispatch was never held back).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from safehub.kernel.codec import Event
from safehub.kernel.directory import Directory
from safehub.kernel.envelope import new_event

SOURCE = "incidents"
_E = "safehub.events."
TERMINAL = frozenset({"ALL_CLEAR", "CLOSED", "CANCELLED"})
_NS = uuid.UUID("0b1e6a8e-2f4c-4d8a-9c3e-5f7a1d2b3c4d")

#: Higher wins when signals fold into one incident.
SEVERITY = {
    "ACTIVE_ASSAILANT": 100,
    "WEAPON": 90,
    "INTRUDER": 80,
    "THREAT": 70,
    "FIRE": 60,
    "HAZMAT": 55,
    "MEDICAL": 50,
    "FIGHT": 40,
    "WEATHER": 30,
    "MISSING_PERSON": 20,
    "OTHER": 0,
}

PANIC_TYPES = {
    "ACTIVE_ASSAILANT": "ACTIVE_ASSAILANT",
    "MEDICAL": "MEDICAL",
    "FIRE": "FIRE",
    "OTHER": "THREAT",
}
#: Camera analytics that open an incident on their own (above the confidence threshold).
CAMERA_TYPES = {"WEAPON": "WEAPON", "GUNSHOT": "ACTIVE_ASSAILANT", "INTRUSION": "INTRUDER"}
SRP_TYPES = {
    "LOCKDOWN": "THREAT",
    "SECURE": "THREAT",
    "HOLD": "OTHER",
    "EVACUATE": "FIRE",
    "SHELTER": "WEATHER",
}
#: SRP actions that, on their own, send the incident to 911.
DISPATCHING_SRP = frozenset({"LOCKDOWN"})

#: Valid SRP transitions; None is "no action in force". ALL CLEAR ends any action.
SRP_TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"HOLD", "SECURE", "LOCKDOWN", "EVACUATE", "SHELTER"}),
    "HOLD": frozenset({"SECURE", "LOCKDOWN", "EVACUATE", "SHELTER", "ALL_CLEAR"}),
    "SECURE": frozenset({"HOLD", "LOCKDOWN", "EVACUATE", "SHELTER", "ALL_CLEAR"}),
    "LOCKDOWN": frozenset({"SECURE", "EVACUATE", "ALL_CLEAR"}),
    "EVACUATE": frozenset({"LOCKDOWN", "SHELTER", "ALL_CLEAR"}),
    "SHELTER": frozenset({"EVACUATE", "LOCKDOWN", "ALL_CLEAR"}),
}

#: CAD statuses that mean responders are engaged.
RESPONDING_STATUSES = frozenset({"ResourcesAssigned", "ResourcesEnroute", "ResourcesOnscene"})


class Rejected(Exception):  # noqa: N818 - a decision, not a failure
    """A signal the book refuses (invalid SRP transition, unknown incident)."""


@dataclass
class Incident:
    """One incident as folded from its events."""

    incident_id: str
    tenant: dict[str, Any]
    building: str | None
    room: str | None
    exercise: bool
    opened_at: datetime
    last_signal_at: datetime
    version: int = 0
    incident_type: str = "OTHER"
    state: str = "UNCONFIRMED"
    srp_action: str | None = None
    evacuate_location: str | None = None
    shelter_hazard: str | None = None
    shelter_strategy: str | None = None
    correlated_event_ids: list[str] = field(default_factory=list)
    dispatchable: bool = False
    summary: str = ""

    @property
    def school(self) -> str:
        """School id of the incident."""
        return str(self.tenant["school"])

    @property
    def active(self) -> bool:
        """Not yet cleared, closed or cancelled."""
        return self.state not in TERMINAL

    def payload(self) -> dict[str, Any]:
        """Fields shared by IncidentOpened and IncidentChanged."""
        return {
            "incident_id": self.incident_id,
            "version": self.version,
            "incident_type": self.incident_type,
            "state": self.state,
            "srp_action": self.srp_action,
            "evacuate_location": self.evacuate_location,
            "shelter_hazard": self.shelter_hazard,
            "shelter_strategy": self.shelter_strategy,
            "correlated_event_ids": list(self.correlated_event_ids),
            "dispatchable": self.dispatchable,
            "summary": self.summary,
        }


def _copy(incident: Incident) -> Incident:
    return Incident(
        **{**incident.__dict__, "correlated_event_ids": list(incident.correlated_event_ids)}
    )


def incident_id_for(signal_id: str) -> str:
    """Deterministic incident id: redelivery of the opening signal opens the same incident."""
    return str(uuid.uuid5(_NS, f"incident:{signal_id}"))


def command_id_for(signal_id: str) -> str:
    """Deterministic lock-command id for the SRP request that caused it."""
    return str(uuid.uuid5(_NS, f"lock:{signal_id}"))


class IncidentBook:
    """Every known incident, plus the ids of every signal already folded in."""

    def __init__(
        self,
        directory: Directory,
        *,
        correlation_window: timedelta,
        cancel_window: timedelta,
        camera_min_confidence: float,
    ) -> None:
        self.directory = directory
        self.correlation_window = correlation_window
        self.cancel_window = cancel_window
        self.camera_min_confidence = camera_min_confidence
        self.incidents: dict[str, Incident] = {}
        self.seen: set[str] = set()

    # -- folding ---------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one incidents-topic event into the book (idempotent, newest version wins)."""
        envelope = event["envelope"]
        event_type = envelope["event_type"]
        if envelope.get("causation_id"):
            self.seen.add(envelope["causation_id"])
        if event_type not in (
            _E + "IncidentOpened",
            _E + "IncidentChanged",
            _E + "IncidentCleared",
        ):
            return
        incident_id = event["incident_id"]
        current = self.incidents.get(incident_id)
        if current is not None and current.version >= event["version"]:
            return
        if event_type == _E + "IncidentCleared":
            if current is None:
                return
            current.version = event["version"]
            current.state = "CANCELLED" if event["outcome"] == "FALSE_ALARM" else "ALL_CLEAR"
            current.srp_action = None
            return
        incident = current or Incident(
            incident_id=incident_id,
            tenant=dict(envelope["tenant"]),
            building=envelope.get("building"),
            room=envelope.get("room"),
            exercise=bool(envelope.get("exercise")),
            opened_at=envelope["occurred_at"],
            last_signal_at=envelope["occurred_at"],
        )
        for name in (
            "version", "incident_type", "state", "srp_action", "evacuate_location",
            "shelter_hazard", "shelter_strategy", "dispatchable", "summary",
        ):  # fmt: skip
            setattr(incident, name, event[name])
        incident.correlated_event_ids = list(event["correlated_event_ids"])
        incident.last_signal_at = max(incident.last_signal_at, envelope["occurred_at"])
        self.seen.update(incident.correlated_event_ids)
        self.incidents[incident_id] = incident

    def apply_all(self, events: Iterable[Event]) -> None:
        """Fold events in order."""
        for event in events:
            self.apply(event)

    # -- finding ---------------------------------------------------------------------------

    def active_for(
        self, school: str, building: str | None, exercise: bool, *, within: datetime | None
    ) -> Incident | None:
        """The active incident a signal at this place joins (newest first), if any."""
        candidates = [
            i
            for i in self.incidents.values()
            if i.active
            and i.school == school
            and i.exercise == exercise
            and (building is None or i.building in (None, building))
            and (within is None or within - i.last_signal_at <= self.correlation_window)
        ]
        return max(candidates, key=lambda i: i.last_signal_at, default=None)

    # -- deciding --------------------------------------------------------------------------

    def decide(self, signal: Event) -> list[Event]:
        """Events to publish for ``signal`` (empty when it changes nothing or was seen)."""
        envelope = signal["envelope"]
        if envelope["event_id"] in self.seen:
            return []
        kind = envelope["event_type"].removeprefix(_E)
        match kind:
            case "PanicAlert":
                return self._signal(signal, PANIC_TYPES.get(signal["panic_type"], "THREAT"), True)
            case "CameraAlert":
                return self._camera(signal)
            case "DoorLockState":
                return self._door(signal)
            case "SrpActionRequested":
                return self._srp(signal)
            case "PanicCancelled":
                return self._cancel(signal)
            case "CadStatusUpdate":
                return self._cad_status(signal)
        return []

    def _camera(self, signal: Event) -> list[Event]:
        incident_type = CAMERA_TYPES.get(signal["analytic"])
        confident = signal["confidence"] >= self.camera_min_confidence
        if incident_type and confident:
            return self._signal(signal, incident_type, True)
        # Low-confidence or non-threat analytics only join an incident already under way.
        return self._join_only(signal)

    def _door(self, signal: Event) -> list[Event]:
        if signal["state"] not in ("FORCED_OPEN", "HELD_OPEN"):
            return []
        return self._join_only(signal)

    def _join_only(self, signal: Event) -> list[Event]:
        envelope = signal["envelope"]
        incident = self.active_for(
            envelope["tenant"]["school"],
            envelope.get("building"),
            bool(envelope["exercise"]),
            within=envelope["occurred_at"],
        )
        if incident is None:
            return []
        return [self._changed(incident, signal, f"{_describe(signal)} at the same place")]

    def _signal(self, signal: Event, incident_type: str, dispatch: bool) -> list[Event]:
        envelope = signal["envelope"]
        exercise = bool(envelope["exercise"])
        incident = self.active_for(
            envelope["tenant"]["school"],
            envelope.get("building"),
            exercise,
            within=envelope["occurred_at"],
        )
        if incident is None:
            return [self._opened(signal, incident_type, dispatchable=dispatch and not exercise)]
        changed = _copy(incident)
        if SEVERITY[incident_type] > SEVERITY[changed.incident_type]:
            changed.incident_type = incident_type
        changed.dispatchable = changed.dispatchable or (dispatch and not exercise)
        return [self._changed(changed, signal, f"{_describe(signal)} correlated")]

    def _srp(self, signal: Event) -> list[Event]:
        envelope = signal["envelope"]
        action = signal["action"]
        exercise = bool(envelope["exercise"])
        incident = self.active_for(
            envelope["tenant"]["school"], envelope.get("building"), exercise, within=None
        )
        current = incident.srp_action if incident else None
        if action == current and action != "EVACUATE":
            return []  # the same action again: nothing changes
        if action not in SRP_TRANSITIONS.get(current, frozenset()):
            raise Rejected(
                f"SRP transition {current or 'NORMAL'} → {action} is not allowed at "
                f"{envelope['tenant']['school']}/{envelope.get('building') or '*'}"
            )
        if action == "ALL_CLEAR":
            assert incident is not None  # ALL_CLEAR is never valid from NORMAL
            return [self._cleared(incident, signal)]
        out: list[Event] = []
        if incident is None:
            opened = self._opened(
                signal,
                SRP_TYPES.get(action, "OTHER"),
                dispatchable=action in DISPATCHING_SRP and not exercise,
            )
            target = opened
        else:
            changed = _copy(incident)
            changed.dispatchable = changed.dispatchable or (
                action in DISPATCHING_SRP and not exercise
            )
            target = self._changed(changed, signal, f"SRP {action} requested")
        target["srp_action"] = action
        target["evacuate_location"] = signal.get("evacuate_location")
        target["shelter_hazard"] = signal.get("shelter_hazard")
        target["shelter_strategy"] = signal.get("shelter_strategy")
        if target["state"] == "UNCONFIRMED":
            target["state"] = "CONFIRMED"  # a staff member called it: confirmed by a human
        target["summary"] = self._summary_from(target)
        if action in ("LOCKDOWN", "SECURE"):
            out.append(self._lock_command(signal, target, action))
        out.append(target)
        return out

    def _cancel(self, signal: Event) -> list[Event]:
        panic_id = signal["panic_event_id"]
        incident = next(
            (i for i in self.incidents.values() if panic_id in i.correlated_event_ids), None
        )
        if incident is None or not incident.active:
            return []
        in_window = signal["envelope"]["occurred_at"] - incident.opened_at <= self.cancel_window
        if (
            in_window
            and incident.correlated_event_ids == [panic_id]
            and incident.srp_action is None
        ):
            changed = _copy(incident)
            changed.state = "CANCELLED"
            return [self._changed(changed, signal, f"panic cancelled: {signal['reason']}")]
        # Outside the window or with other signals: responders decide; record the request.
        return [
            self._changed(
                _copy(incident),
                signal,
                "cancellation requested but not applied (outside the cancel window or other "
                "signals correlated)",
            )
        ]

    def _cad_status(self, signal: Event) -> list[Event]:
        incident = self.incidents.get(signal.get("incident_id") or "")
        if incident is None or not incident.active:
            return []
        changed = _copy(incident)
        status = signal["status"]
        if status in RESPONDING_STATUSES:
            changed.state = "RESPONDING"
        units = ", ".join(u.get("unit_id", "?") for u in signal.get("units") or [])
        reason = f"CAD {signal['cad_incident_id']}: {status}" + (f" ({units})" if units else "")
        if signal.get("disposition_code"):
            reason += f", disposition {signal['disposition_code']}"
        return [self._changed(changed, signal, reason, by=f"cad:{signal['psap_id']}")]

    # -- building events -------------------------------------------------------------------

    def _base(self, signal: Event, event_type: str, incident_id: str, **kw: Any) -> Event:
        envelope = signal["envelope"]
        return new_event(
            event_type,
            source=SOURCE,
            tenant=envelope["tenant"],
            incident_id=incident_id,
            causation_id=envelope["event_id"],
            exercise=bool(envelope["exercise"]),
            occurred_at=envelope["occurred_at"],
            **kw,
        )

    def _opened(self, signal: Event, incident_type: str, *, dispatchable: bool) -> Event:
        envelope = signal["envelope"]
        incident = Incident(
            incident_id=incident_id_for(envelope["event_id"]),
            tenant=dict(envelope["tenant"]),
            building=envelope.get("building"),
            room=envelope.get("room"),
            exercise=bool(envelope["exercise"]),
            opened_at=envelope["occurred_at"],
            last_signal_at=envelope["occurred_at"],
            version=1,
            incident_type=incident_type,
            correlated_event_ids=[envelope["event_id"]],
            dispatchable=dispatchable,
        )
        event = self._base(
            signal,
            "IncidentOpened",
            incident.incident_id,
            building=incident.building,
            room=incident.room,
            payload=incident.payload(),
        )
        event["summary"] = self._summary_from(event, first=_describe(signal))
        return event

    def _changed(
        self, incident: Incident, signal: Event, reason: str, *, by: str | None = None
    ) -> Event:
        envelope = signal["envelope"]
        incident.version += 1
        if envelope["event_id"] not in incident.correlated_event_ids and not envelope[
            "event_type"
        ].endswith("CadStatusUpdate"):
            incident.correlated_event_ids.append(envelope["event_id"])
        event = self._base(
            signal,
            "IncidentChanged",
            incident.incident_id,
            building=incident.building,
            room=incident.room,
            payload={
                **incident.payload(),
                "change_reason": reason,
                "changed_by": by or str(signal.get("requested_by") or envelope["source"]),
            },
        )
        event["summary"] = self._summary_from(event)
        return event

    def _cleared(self, incident: Incident, signal: Event) -> Event:
        outcome = "DRILL_COMPLETE" if incident.exercise else "RESOLVED"
        return self._base(
            signal,
            "IncidentCleared",
            incident.incident_id,
            building=incident.building,
            room=incident.room,
            payload={
                "incident_id": incident.incident_id,
                "version": incident.version + 1,
                "outcome": outcome,
                "message": signal.get("message") or "ALL CLEAR. Resume normal activities.",
                "cleared_by": signal["requested_by"],
            },
        )

    def _lock_command(self, signal: Event, target: Event, action: str) -> Event:
        return self._base(
            signal,
            "LockCommand",
            target["incident_id"],
            building=target["envelope"]["building"],
            payload={
                "command_id": command_id_for(signal["envelope"]["event_id"]),
                "scope": "ALL" if action == "LOCKDOWN" else "EXTERIOR",
                "door_ids": [],
                "target": "LOCKED",
                "srp_action": action,
                "reason": f"SRP {action}",
                "requested_by": signal["requested_by"],
            },
        )

    def _summary_from(self, event: Event, first: str | None = None) -> str:
        envelope = event["envelope"]
        school = self.directory.school(envelope["tenant"]["school"]).name
        where = ", ".join(
            part
            for part in (
                school,
                f"building {envelope['building']}" if envelope.get("building") else "",
                f"room {envelope['room']}" if envelope.get("room") else "",
            )
            if part
        )
        text = f"{event['incident_type'].replace('_', ' ').title()} at {where}"
        if event.get("srp_action"):
            text += f"; SRP {event['srp_action']} in force"
        if first:
            text += f"; {first}"
        if envelope["exercise"]:
            text = "EXERCISE - " + text
        return text


def _describe(signal: Event) -> str:
    kind = str(signal["envelope"]["event_type"]).removeprefix(_E)
    match kind:
        case "PanicAlert":
            silent = "silent " if signal.get("silent") else ""
            return f"{silent}panic ({signal['panic_type'].lower().replace('_', ' ')})"
        case "CameraAlert":
            return (
                f"camera {signal['camera_id']}: {signal['analytic'].lower()} "
                f"({round(signal['confidence'] * 100)}%)"
            )
        case "DoorLockState":
            return f"door {signal['door_id']} {signal['state'].lower().replace('_', ' ')}"
        case "SrpActionRequested":
            return f"SRP {signal['action']}"
    return kind
