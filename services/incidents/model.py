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
* idempotency: a signal already folded into the book (by event id) yields nothing; a
  threat report (``ThreatReported``) already folded in under another event id (same
  ``report_id``) yields nothing either: one report, at most one incident;
* cancellation: a panic cancelled within the cancel window, when it is the only signal,
  cancels the incident (CAD gets a cancellation; the first dispatch was never held back);
  only the client system that raised it, or an administrator of its school, may cancel it,
  and the drill flag must match the panic's;
* hub time: every window (correlation, cancel) is measured on ``recorded_at``, the hub's
  clock when the gateway accepted the signal; a device's ``occurred_at`` is kept as reported
  and a large discrepancy is noted in the incident's summary, never trusted;
* scope: a school-wide SRP action commands every building, even when it joins an incident
  that began in one building (the incident becomes school-wide);
* an incident CAD closed (or cancelled), or ALL CLEAR ended, is over: the next signal at the
  same place opens a new incident and a new dispatch;
* every SRP request and cancellation gets a ``SignalDecided`` (applied, unchanged, refused
  with the reason, the action in force and the actions allowed next); the gateway answers the
  caller from it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from safehub.contracts.names import EventType
from safehub.kernel.codec import Event
from safehub.kernel.directory import Directory, DirectorySource, Scope
from safehub.kernel.envelope import EVENT_NAMESPACE, caused_by, new_event, stable_id
from safehub.kernel.people import People, StaffRole
from safehub.kernel.views import PeopleSource, people_source

SOURCE = "incidents"
_E = EVENT_NAMESPACE
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
#: A reported threat (a life-safety tip sent to 911) is a THREAT incident, always dispatched
#: (unless an exercise): the APCO code CAD gets is refined from the report's category by
#: psap_cad. Its severity keeps a weapon, an intruder or an active assailant the incident's
#: type when they are in it too.
THREAT_REPORT_TYPE = "THREAT"

#: Valid SRP transitions; None is "no action in force". ALL CLEAR ends any action.
#:
#: Following the "I Love U Guys" Foundation's SRP K-12 guidance (2021): actions escalate
#: freely (HOLD/SECURE → LOCKDOWN), a hazard can demand SHELTER during any action (a tornado
#: warning in a lockdown: shelter in place, doors stay locked, no unlock command is sent), and
#: EVACUATE can follow any action. A LOCKDOWN is never relaxed straight to HOLD (people back
#: in the halls while the threat may still be inside): it steps down to SECURE (threat outside)
#: or ends with ALL CLEAR, which law enforcement gives. ALL CLEAR needs an action or an
#: incident in force.
SRP_TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"HOLD", "SECURE", "LOCKDOWN", "EVACUATE", "SHELTER"}),
    "HOLD": frozenset({"SECURE", "LOCKDOWN", "EVACUATE", "SHELTER", "ALL_CLEAR"}),
    "SECURE": frozenset({"HOLD", "LOCKDOWN", "EVACUATE", "SHELTER", "ALL_CLEAR"}),
    "LOCKDOWN": frozenset({"SECURE", "EVACUATE", "SHELTER", "ALL_CLEAR"}),
    "EVACUATE": frozenset({"LOCKDOWN", "SHELTER", "ALL_CLEAR"}),
    "SHELTER": frozenset({"EVACUATE", "LOCKDOWN", "ALL_CLEAR"}),
}

#: CAD statuses that end the incident on the hub too (the CAD closed or cancelled the call).
CAD_ENDING_STATUSES = {"Closed": "CLOSED", "Cancelled": "CLOSED"}

#: A device clock further than this from the hub's is noted on the incident.
CLOCK_NOTE_AFTER = timedelta(minutes=5)

#: CAD statuses that mean responders are engaged.
RESPONDING_STATUSES = frozenset({"ResourcesAssigned", "ResourcesEnroute", "ResourcesOnscene"})


class Rejected(Exception):  # noqa: N818 - a decision, not a failure
    """A signal the book cannot take at all (its school is not in the directory)."""


def hub_time(signal: Event) -> datetime:
    """When the hub accepted ``signal`` (its own clock), the time every window is measured on."""
    envelope = signal["envelope"]
    recorded: datetime = envelope.get("recorded_at") or envelope["occurred_at"]
    return recorded


def clock_note(signal: Event) -> str:
    """A note on a device clock far from the hub's (empty when within CLOCK_NOTE_AFTER)."""
    envelope = signal["envelope"]
    skew = envelope["occurred_at"] - hub_time(signal)
    if abs(skew) <= CLOCK_NOTE_AFTER:
        return ""
    return (
        f" (device clock {_span(abs(skew))} {'ahead of' if skew > timedelta(0) else 'behind'}"
        " the hub; hub time used)"
    )


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


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
    panic_sources: dict[str, str] = field(default_factory=dict)

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
            "panic_sources": dict(self.panic_sources),
        }


def _copy(incident: Incident) -> Incident:
    return Incident(
        **{
            **incident.__dict__,
            "correlated_event_ids": list(incident.correlated_event_ids),
            "panic_sources": dict(incident.panic_sources),
        }
    )


def incident_id_for(signal_id: str) -> str:
    """Deterministic incident id: redelivery of the opening signal opens the same incident."""
    return stable_id(_NS, "incident", signal_id, sep=":")


def report_incident_id(report_id: str) -> str:
    """The incident a threat report opens: derived from the report, so the same report sent
    again under another event id (after a restart, too) finds the incident it opened."""
    return incident_id_for(f"threat-report:{report_id}")


def command_id_for(signal_id: str) -> str:
    """Deterministic lock-command id for the SRP request that caused it."""
    return stable_id(_NS, "lock", signal_id, sep=":")


class IncidentBook:
    """Every known incident, plus the ids of every signal already folded in."""

    def __init__(
        self,
        directory: DirectorySource,
        people: People | PeopleSource,
        *,
        correlation_window: timedelta,
        cancel_window: timedelta,
        camera_min_confidence: float,
    ) -> None:
        """``directory`` and ``people`` are sources (the live views, or fixed snapshots):
        each :meth:`decide` reads them once and decides on those snapshots throughout."""
        self._directory_source = directory
        self._people_source = people_source(people)
        #: The snapshots of the decision under way (taken again by every :meth:`decide`).
        self.directory: Directory = directory.current()
        self.people: People = self._people_source.current()
        self.correlation_window = correlation_window
        self.cancel_window = cancel_window
        self.camera_min_confidence = camera_min_confidence
        self.incidents: dict[str, Incident] = {}
        self.seen: set[str] = set()
        # Indexes kept by apply(): a decision must not scan every incident ever opened (a
        # year of a state's schools is hundreds of thousands, nearly all of them over).
        self._active: dict[str, dict[str, Incident]] = {}  # school → its active incidents
        self._by_signal: dict[str, str] = {}  # panic or correlated event id → incident id
        # Threat reports: report id → the incident it was folded into (a report that joined
        # an incident under way; one that opened its own is found by report_incident_id), and
        # the report each ThreatReported event id names, learnt when decided, recorded when
        # its incident event is applied (a decision not published records nothing).
        self._reports: dict[str, str] = {}
        self._report_of: dict[str, str] = {}

    # -- folding ---------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one incidents-topic event into the book (idempotent, newest version wins)."""
        envelope = event["envelope"]
        event_type = envelope["event_type"]
        if envelope.get("causation_id"):
            self.seen.add(envelope["causation_id"])
            report_id = self._report_of.get(envelope["causation_id"])
            if report_id is not None and envelope.get("incident_id"):
                self._reports.setdefault(report_id, str(envelope["incident_id"]))
        if event_type not in (
            EventType.INCIDENT_OPENED,
            EventType.INCIDENT_CHANGED,
            EventType.INCIDENT_CLEARED,
        ):
            return
        incident_id = event["incident_id"]
        current = self.incidents.get(incident_id)
        if current is not None and current.version >= event["version"]:
            return
        if event_type == EventType.INCIDENT_CLEARED:
            if current is None:
                return
            current.version = event["version"]
            current.state = "CANCELLED" if event["outcome"] == "FALSE_ALARM" else "ALL_CLEAR"
            current.srp_action = None
            self._index(current)
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
        incident.panic_sources = dict(event.get("panic_sources") or {})
        # A school-wide action widens an incident that began in one building.
        incident.building = envelope.get("building")
        incident.last_signal_at = max(incident.last_signal_at, envelope["occurred_at"])
        self.seen.update(incident.correlated_event_ids)
        self.incidents[incident_id] = incident
        self._index(incident)

    def _index(self, incident: Incident) -> None:
        active = self._active.setdefault(incident.school, {})
        if incident.active:
            active[incident.incident_id] = incident
        else:
            active.pop(incident.incident_id, None)
        for event_id in (*incident.panic_sources, *incident.correlated_event_ids):
            # The first incident that named a signal keeps it (what a scan in order found).
            self._by_signal.setdefault(event_id, incident.incident_id)

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
            for i in self._active.get(school, {}).values()
            if i.exercise == exercise
            and (building is None or i.building in (None, building))
            and (within is None or within - i.last_signal_at <= self.correlation_window)
        ]
        return max(candidates, key=lambda i: i.last_signal_at, default=None)

    def incident_of_panic(self, panic_event_id: str) -> Incident | None:
        """The incident a panic was folded into, if any."""
        incident_id = self._by_signal.get(panic_event_id)
        return None if incident_id is None else self.incidents.get(incident_id)

    # -- deciding --------------------------------------------------------------------------

    def decide(self, signal: Event) -> list[Event]:
        """Events to publish for ``signal`` (empty when it changes nothing or was seen).

        SRP requests and cancellations always end with a ``SignalDecided``. Raises
        :class:`Rejected` for a signal naming no school or one the directory does not know.
        """
        envelope = signal["envelope"]
        if envelope["event_id"] in self.seen:
            return []
        # The directory and people as they are now: a school, a staff app or an administrator
        # added or removed at run time counts from this decision on.
        self.directory = self._directory_source.current()
        self.people = self._people_source.current()
        school = envelope["tenant"].get("school")
        kind = envelope["event_type"].removeprefix(_E)
        if not school:
            raise Rejected(f"{kind} names no school: tenant.school is required for a signal")
        if not self.directory.has_school(str(school)):
            raise Rejected(f"school {school!r} is not in the directory")
        match envelope["event_type"]:
            case EventType.PANIC_ALERT:
                panic_type = PANIC_TYPES.get(signal["panic_type"], "THREAT")
                return self._signal(signal, panic_type, True)
            case EventType.CAMERA_ALERT:
                return self._camera(signal)
            case EventType.THREAT_REPORTED:
                return self._threat(signal)
            case EventType.DOOR_LOCK_STATE:
                return self._door(signal)
            case EventType.SRP_ACTION_REQUESTED:
                return self._srp(signal)
            case EventType.PANIC_CANCELLED:
                return self._cancel(signal)
            case EventType.CAD_STATUS_UPDATE:
                return self._cad_status(signal)
            case EventType.CAD_DISPATCH:
                return []  # our own dispatch record: nothing to decide
        raise Rejected(f"{kind} is not a signal the incident service takes")

    def _camera(self, signal: Event) -> list[Event]:
        incident_type = CAMERA_TYPES.get(signal["analytic"])
        confident = signal["confidence"] >= self.camera_min_confidence
        if incident_type and confident:
            return self._signal(signal, incident_type, True)
        # Low-confidence or non-threat analytics only join an incident already under way.
        return self._join_only(signal)

    def incident_of_report(self, report_id: str) -> Incident | None:
        """The incident a threat report was folded into (opened or joined), if any."""
        incident_id = self._reports.get(report_id) or report_incident_id(report_id)
        return self.incidents.get(incident_id)

    def _threat(self, signal: Event) -> list[Event]:
        """A reported threat: like a panic (same place, window and drill rules), dispatched.

        The same report under another event id (a producer that retried with a new id) is
        already in an incident, active or over: nothing new is opened or changed.
        """
        report_id = str(signal["report_id"])
        if not report_id:
            raise Rejected("ThreatReported needs a report_id")
        if self.incident_of_report(report_id) is not None:
            return []
        self._report_of[signal["envelope"]["event_id"]] = report_id
        return self._signal(signal, THREAT_REPORT_TYPE, True)

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
            within=hub_time(signal),
        )
        if incident is None:
            return []
        return [self._changed(_copy(incident), signal, f"{_describe(signal)} at the same place")]

    def _signal(self, signal: Event, incident_type: str, dispatch: bool) -> list[Event]:
        envelope = signal["envelope"]
        exercise = bool(envelope["exercise"])
        incident = self.active_for(
            envelope["tenant"]["school"],
            envelope.get("building"),
            exercise,
            within=hub_time(signal),
        )
        if incident is None:
            return [self._opened(signal, incident_type, dispatchable=dispatch and not exercise)]
        changed = _copy(incident)
        if SEVERITY[incident_type] > SEVERITY[changed.incident_type]:
            changed.incident_type = incident_type
        changed.dispatchable = changed.dispatchable or (dispatch and not exercise)
        if envelope["event_type"] == EventType.PANIC_ALERT:
            changed.panic_sources[envelope["event_id"]] = str(envelope["source"])
        return [self._changed(changed, signal, f"{_describe(signal)} correlated")]

    def _srp(self, signal: Event) -> list[Event]:
        envelope = signal["envelope"]
        action = signal["action"]
        exercise = bool(envelope["exercise"])
        building = envelope.get("building")
        incident = self.active_for(envelope["tenant"]["school"], building, exercise, within=None)
        current = incident.srp_action if incident else None
        allowed = SRP_TRANSITIONS.get(current, frozenset())
        if incident is not None and current is None:
            allowed = allowed | {"ALL_CLEAR"}  # an incident with no action in force can end
        if action == current and action != "EVACUATE":
            return [
                self._decided(signal, incident, "UNCHANGED", f"SRP {action} is already in force")
            ]
        if action not in allowed:
            where = f"{envelope['tenant']['school']}/{building or '*'}"
            return [
                self._decided(
                    signal,
                    incident,
                    "REFUSED",
                    f"SRP transition {current or 'NORMAL'} → {action} is not allowed at {where}"
                    f"; allowed now: {', '.join(sorted(allowed))}",
                    refusal="INVALID_TRANSITION",
                )
            ]
        if action == "ALL_CLEAR":
            assert incident is not None  # ALL_CLEAR is never allowed with nothing in force
            cleared = self._cleared(incident, signal)
            return [
                cleared,
                self._decided(signal, incident, "APPLIED", "ALL CLEAR given", after=None),
            ]
        out: list[Event] = []
        if incident is None:
            target = self._opened(
                signal,
                SRP_TYPES.get(action, "OTHER"),
                dispatchable=action in DISPATCHING_SRP and not exercise,
            )
        else:
            changed = _copy(incident)
            changed.dispatchable = changed.dispatchable or (
                action in DISPATCHING_SRP and not exercise
            )
            if building is None:
                changed.building = changed.room = None  # school-wide from now on
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
        out.append(
            self._decided(
                signal, incident, "APPLIED", f"SRP {action} in force", after=action,
                incident_id=target["incident_id"],
            )
        )  # fmt: skip
        return out

    def _cancel(self, signal: Event) -> list[Event]:
        envelope = signal["envelope"]
        panic_id = signal["panic_event_id"]
        incident = self.incident_of_panic(panic_id)
        if incident is None:
            return [
                self._decided(
                    signal, None, "REFUSED", "no panic with that event_id is known",
                    refusal="NO_SUCH_PANIC",
                )
            ]  # fmt: skip
        if not self._may_cancel(signal, incident, panic_id):
            # Another district's caller learns nothing about the incident (not even its id).
            own_district = incident.tenant.get("district") == envelope["tenant"].get("district")
            return [
                self._decided(
                    signal,
                    incident if own_district else None,
                    "REFUSED",
                    "only the system that raised the panic, or an administrator of its school, "
                    "may cancel it",
                    refusal="NOT_PERMITTED",
                )
            ]
        if bool(envelope["exercise"]) != incident.exercise:
            flag = "a drill" if incident.exercise else "a real emergency"
            return [
                self._decided(
                    signal, incident, "REFUSED",
                    f"the panic was {flag}: the cancellation's exercise flag must match it",
                    refusal="EXERCISE_MISMATCH",
                )
            ]  # fmt: skip
        if not incident.active:
            if incident.state == "CANCELLED":
                return [self._decided(signal, incident, "UNCHANGED", "already cancelled")]
            return [
                self._decided(
                    signal, incident, "REFUSED",
                    f"the incident is over ({incident.state})", refusal="NOT_ACTIVE",
                )
            ]  # fmt: skip
        in_window = hub_time(signal) - incident.opened_at <= self.cancel_window
        alone = incident.correlated_event_ids == [panic_id] and incident.srp_action is None
        if in_window and alone:
            changed = _copy(incident)
            changed.state = "CANCELLED"
            return [
                self._changed(changed, signal, f"panic cancelled: {signal['reason']}"),
                self._decided(signal, incident, "APPLIED", "panic cancelled"),
            ]
        # Outside the window or with other signals: responders decide; record the request.
        why = (
            f"the cancel window ({self.cancel_window.total_seconds():.0f} s on the hub's clock) "
            "has passed"
            if not in_window
            else "other signals or an SRP action joined the incident"
        )
        return [
            self._changed(
                _copy(incident),
                signal,
                f"cancellation requested but not applied ({why}); responders decide",
            ),
            self._decided(
                signal, incident, "REFUSED", f"{why}: responders decide",
                refusal="CANCEL_WINDOW_PASSED",
            ),
        ]  # fmt: skip

    def _may_cancel(self, signal: Event, incident: Incident, panic_id: str) -> bool:
        envelope = signal["envelope"]
        if envelope["tenant"].get("school") != incident.school:
            return False
        raised_by = incident.panic_sources.get(panic_id)
        if raised_by is not None and raised_by == envelope["source"]:
            return True
        # An administrator is named by the system that signed them in: only a staff app (a
        # client with the SRP scope, which authenticates staff) may speak for one; a panic or
        # camera vendor's system naming an administrator is just a typed claim.
        caller = self.directory.client(str(envelope["source"]))
        if caller is None or Scope.SRP not in caller.scopes:
            return False
        staff = self.people.staff_member(incident.school, str(signal.get("cancelled_by")))
        return staff is not None and staff.role is StaffRole.ADMINISTRATOR

    def _cad_status(self, signal: Event) -> list[Event]:
        incident = self.incidents.get(signal.get("incident_id") or "")
        if incident is None or not incident.active:
            return []
        changed = _copy(incident)
        status = signal["status"]
        if status in RESPONDING_STATUSES:
            changed.state = "RESPONDING"
        elif status in CAD_ENDING_STATUSES:
            changed.state = CAD_ENDING_STATUSES[status]
            changed.srp_action = None
        units = ", ".join(u.get("unit_id", "?") for u in signal.get("units") or [])
        reason = f"CAD {signal['cad_incident_id']}: {status}" + (f" ({units})" if units else "")
        if signal.get("disposition_code"):
            reason += f", disposition {signal['disposition_code']}"
        return [self._changed(changed, signal, reason, by=f"cad:{signal['psap_id']}")]

    # -- building events -------------------------------------------------------------------

    def _base(
        self,
        signal: Event,
        event_type: EventType,
        incident_id: str | None,
        *,
        exercise: bool,
        building: str | None,
        room: str | None = None,
        **kw: Any,
    ) -> Event:
        return new_event(
            event_type,
            source=SOURCE,
            # The incident's flag, never the signal's: a mismatched flag must not turn a real
            # incident's event into an exercise that the CAD connector skips.
            **caused_by(
                signal["envelope"], incident_id=incident_id, exercise=exercise, building=building
            ),
            # The hub's clock: what happened to the incident happened when the hub took it in.
            occurred_at=hub_time(signal),
            room=room,
            **kw,
        )

    def _opened(self, signal: Event, incident_type: str, *, dispatchable: bool) -> Event:
        envelope = signal["envelope"]
        is_panic = envelope["event_type"] == EventType.PANIC_ALERT
        incident = Incident(
            incident_id=(
                report_incident_id(str(signal["report_id"]))
                if envelope["event_type"] == EventType.THREAT_REPORTED
                else incident_id_for(envelope["event_id"])
            ),
            tenant=dict(envelope["tenant"]),
            building=envelope.get("building"),
            room=envelope.get("room"),
            exercise=bool(envelope["exercise"]),
            opened_at=hub_time(signal),
            last_signal_at=hub_time(signal),
            version=1,
            incident_type=incident_type,
            correlated_event_ids=[envelope["event_id"]],
            dispatchable=dispatchable,
            panic_sources={envelope["event_id"]: str(envelope["source"])} if is_panic else {},
        )
        event = self._base(
            signal,
            EventType.INCIDENT_OPENED,
            incident.incident_id,
            exercise=incident.exercise,
            building=incident.building,
            room=incident.room,
            payload=incident.payload(),
        )
        event["summary"] = self._summary_from(event, first=_describe(signal) + clock_note(signal))
        return event

    def _changed(
        self, incident: Incident, signal: Event, reason: str, *, by: str | None = None
    ) -> Event:
        envelope = signal["envelope"]
        incident.version += 1
        if (
            envelope["event_id"] not in incident.correlated_event_ids
            and envelope["event_type"] != EventType.CAD_STATUS_UPDATE
        ):
            incident.correlated_event_ids.append(envelope["event_id"])
        event = self._base(
            signal,
            EventType.INCIDENT_CHANGED,
            incident.incident_id,
            exercise=incident.exercise,
            building=incident.building,
            room=incident.room,
            payload={
                **incident.payload(),
                "change_reason": reason + clock_note(signal),
                "changed_by": by or str(signal.get("requested_by") or envelope["source"]),
            },
        )
        event["summary"] = self._summary_from(event)
        return event

    def _cleared(self, incident: Incident, signal: Event) -> Event:
        outcome = "DRILL_COMPLETE" if incident.exercise else "RESOLVED"
        return self._base(
            signal,
            EventType.INCIDENT_CLEARED,
            incident.incident_id,
            exercise=incident.exercise,
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
        # The request's own scope: a school-wide LOCKDOWN (no building) locks every building,
        # whatever building the incident it joined began in.
        return self._base(
            signal,
            EventType.LOCK_COMMAND,
            target["incident_id"],
            exercise=bool(target["envelope"]["exercise"]),
            building=signal["envelope"].get("building"),
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

    _UNSET: Any = object()

    def _decided(
        self,
        signal: Event,
        incident: Incident | None,
        outcome: str,
        reason: str,
        *,
        refusal: str | None = None,
        after: Any = _UNSET,
        incident_id: str | None = None,
    ) -> Event:
        """The SignalDecided for an SRP request or cancellation (what the gateway answers)."""
        envelope = signal["envelope"]
        in_force = (incident.srp_action if incident else None) if after is self._UNSET else after
        allowed = set(SRP_TRANSITIONS.get(in_force, frozenset()))
        if in_force is None and (incident is not None and incident.active and after is self._UNSET):
            allowed.add("ALL_CLEAR")
        return self._base(
            signal,
            EventType.SIGNAL_DECIDED,
            incident_id or (incident.incident_id if incident else None),
            exercise=bool(envelope["exercise"]),
            building=envelope.get("building"),
            room=envelope.get("room"),
            payload={
                "signal_event_id": envelope["event_id"],
                "signal_type": envelope["event_type"].removeprefix(_E),
                "outcome": outcome,
                "refusal": refusal,
                "reason": reason,
                "srp_action_in_force": in_force,
                "allowed_actions": sorted(allowed),
                "requested_by": signal.get("requested_by") or signal.get("cancelled_by"),
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
    match signal["envelope"]["event_type"]:
        case EventType.PANIC_ALERT:
            silent = "silent " if signal.get("silent") else ""
            return f"{silent}panic ({signal['panic_type'].lower().replace('_', ' ')})"
        case EventType.CAMERA_ALERT:
            return (
                f"camera {signal['camera_id']}: {signal['analytic'].lower()} "
                f"({round(signal['confidence'] * 100)}%)"
            )
        case EventType.DOOR_LOCK_STATE:
            return f"door {signal['door_id']} {signal['state'].lower().replace('_', ' ')}"
        case EventType.SRP_ACTION_REQUESTED:
            return f"SRP {signal['action']}"
        case EventType.THREAT_REPORTED:
            return describe_threat_report(signal)
    return kind


#: How a threat report's source is named in the incident's summary.
REPORT_SOURCES = {"TIP": "a tip", "MONITORING": "a social-media monitoring alert"}
#: Longest part of the reporting service's summary kept in the incident's summary.
MAX_REPORT_SUMMARY = 300


def describe_threat_report(signal: Event) -> str:
    """A threat report in the incident's words: kind, imminence, source and the reporting
    service's own summary (written for the call-taker, without the tip's text or names)."""
    category = str(signal.get("category") or "OTHER").lower().replace("_", " ")
    imminent = "imminent " if signal.get("imminent") else ""
    source = REPORT_SOURCES.get(str(signal.get("source")), "a report")
    text = f"{imminent}threat reported by {source} ({category})"
    summary = " ".join(str(signal.get("summary") or "").split())
    if summary:
        clipped = (
            summary[: MAX_REPORT_SUMMARY - 1] + "…"
            if len(summary) > MAX_REPORT_SUMMARY
            else summary
        )
        text += f": {clipped}"
    return text
