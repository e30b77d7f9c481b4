"""Building NENA-STA-021 EIDOs (JSON) from SafeHub incidents.

An EIDO here is one document per dispatched incident version: the hub (for the school
district) as the informational agency, the PSAP as the dispatching agency, the incident with
its APCO ANS 2.103.2 type and IncidentStatus-Common status, the location by value as
PIDF-LO (civic address of the school with building, floor and room, plus a WGS 84 point when
known), the alarms behind it and a plain-language note with the SRP action in force. Every
component carries the Prologue (``$id``, ``lastUpdateTimeStamp``,
``updatedByAgencyReference``); references are ``{"$ref": <$id>}`` within the document.

Ids and timestamps derive from the incident and its version only, so a re-send after a crash
is the same document. Every "when was this updated" time is hub time (the incident event's
envelope ``recorded_at``), never a device clock. Exercises never produce an EIDO:
:class:`ExerciseDispatchError`.

Size is bounded whatever the number of signals (:data:`EIDO_MAX_BYTES`): the earliest and
the latest few signals (hub time) are alarms in full, the rest one summary alarm per kind
("and 474 more camera alerts … from cameras …"); every text is clipped; if a document is still
over budget it is rebuilt with less detail (:data:`DETAIL_LEVELS`).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.psap_cad.signals import SignalFacts
from safehub.kernel.directory import Directory, DirectorySource, School, UnknownPlaceError
from safehub.kernel.envelope import stable_id
from safehub.kernel.errors import SafeHubError

EIDO_VERSION = "1.0"

#: SafeHub IncidentState → NENA IncidentStatus-Common. Every open state is "Active": CAD
#: learns of RESPONDING from its own units, so that state must not become an update.
STATUS_BY_STATE: Mapping[str, str] = {
    "UNCONFIRMED": "Active",
    "CONFIRMED": "Active",
    "RESPONDING": "Active",
    "UNKNOWN": "Active",
    "ALL_CLEAR": "Closed",
    "CLOSED": "Closed",
    "CANCELLED": "Cancelled",
}

#: SafeHub IncidentType → APCO code when the alerts behind it do not say more.
APCO_BY_TYPE: Mapping[str, str] = {
    "ACTIVE_ASSAILANT": "ACTSHOOT",
    "WEAPON": "WEAPON",
    "INTRUDER": "TRESPASS",
    "FIGHT": "FIGHT",
    "MEDICAL": "SICK",
    "FIRE": "ALRF",
    "HAZMAT": "HAZMAT",
    "WEATHER": "HAZ",
    "THREAT": "THREATS",
    "MISSING_PERSON": "PERMISS",
    # An unclassified dispatchable incident comes from a panic device (Alyssa's Law path):
    # "panic/duress alarm" says that much without claiming silent or audible.
    "OTHER": "ALMH",
}

#: Camera analytic → APCO code for incidents the hub could not classify further.
APCO_BY_ANALYTIC: Mapping[str, str] = {
    "WEAPON": "WEAPON",
    "GUNSHOT": "SHOOT",
    "FIGHT": "FIGHT",
    "INTRUSION": "TRESPASS",
}

#: A reported threat's category (a life-safety tip sent to 911) → APCO code for a THREAT
#: incident; any other category is THREATS. The first that any report in the incident
#: names, in this order, wins (a weapon is the more urgent call).
APCO_BY_THREAT_CATEGORY: Mapping[str, str] = {
    "WEAPON": "WEAPON",
    "SELF_HARM": "SUICTHRT",
}

#: 0..10, 10 highest (EIDO incidentCommonPriorityNumber).
PRIORITY_BY_CODE: Mapping[str, int] = {
    "ACTSHOOT": 10,
    "SHOOT": 10,
    # A silent panic is the Alyssa's Law alarm: always at the top, whatever the panic's type.
    "ALRPANS": 10,
    "WEAPON": 9,
    "ALRPANA": 9,
    "ALMH": 9,
    "ALRF": 8,
    "ALRMED": 8,
    "SICK": 7,
    "HAZMAT": 8,
}

TOP_PRIORITY = 10

#: Most bytes an EIDO may have as sent. 480 camera alerts in one incident once made a 1 MB
#: EIDO: CAD fell 90 versions behind and CadDispatch could not carry it on Kafka.
EIDO_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Detail:
    """How much of an incident an EIDO carries in full."""

    first: int  # earliest signals (hub time) as alarms in full
    latest: int  # latest signals as alarms in full
    urls: bool  # alarmUrl (clip links) of the signals in full
    text: int  # longest alarm line, in characters
    notes: int  # longest note line
    points: int  # device positions in the PIDF-LO


#: Tried in order until the document fits :data:`EIDO_MAX_BYTES`.
DETAIL_LEVELS = (
    Detail(first=3, latest=3, urls=True, text=600, notes=1000, points=4),
    Detail(first=1, latest=1, urls=False, text=200, notes=300, points=1),
    Detail(first=1, latest=0, urls=False, text=120, notes=120, points=0),
)
#: Sources (cameras, devices) named in a summary alarm; the others are counted.
MAX_NAMED_SOURCES = 8
MAX_NAME = 64
#: Longest text taken from the directory or the incident (names, address, place, SRP detail).
MAX_FIELD = 200
MAX_URL = 2048

SRP_PLAIN: Mapping[str, str] = {
    "HOLD": "HOLD: in your room or area, clear the halls",
    "SECURE": "SECURE: get inside, lock outside doors",
    "LOCKDOWN": "LOCKDOWN: locks, lights, out of sight",
    "EVACUATE": "EVACUATE",
    "SHELTER": "SHELTER",
    "ALL_CLEAR": "ALL CLEAR",
}

NS_PIDF = "urn:ietf:params:xml:ns:pidf"
NS_DM = "urn:ietf:params:xml:ns:pidf:data-model"
NS_GP = "urn:ietf:params:xml:ns:pidf:geopriv10"
NS_GBP = "urn:ietf:params:xml:ns:pidf:geopriv10:basicPolicy"
NS_CA = "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr"
NS_GML = "http://www.opengis.net/gml"
for _prefix, _uri in (
    ("", NS_PIDF),
    ("dm", NS_DM),
    ("gp", NS_GP),
    ("gbp", NS_GBP),
    ("ca", NS_CA),
    ("gml", NS_GML),
):
    ET.register_namespace(_prefix, _uri)

#: RFC 5139 civicAddress elements, in schema order.
# fmt: off
CIVIC_ORDER = (
    "country", "A1", "A2", "A3", "A4", "A5", "A6", "PRM", "POM", "PRD", "POD", "STS", "HNO",
    "HNS", "LMK", "LOC", "FLR", "NAM", "PC", "BLD", "UNIT", "ROOM", "SEAT", "PLC", "PCN",
    "POBOX", "ADDCODE", "RD", "RDSEC", "RDBR", "RDSUBBR",
)
# fmt: on

_ID_NAMESPACE = uuid.UUID("0b6c7d0e-4a4f-4c1e-9a52-7f3f2b1f6e21")
_STREET = re.compile(r"^(?P<hno>\d+[A-Za-z]?)\s+(?P<rd>.+)$")
_STATE_ZIP = re.compile(r"^(?P<a1>[A-Za-z]{2})(?:\s+(?P<pc>\d{5}(?:-\d{4})?))?$")


class ExerciseDispatchError(SafeHubError):
    """An exercise (drill) was about to become an EIDO: refused, it must never reach 911."""


@dataclass(frozen=True)
class IncidentSnapshot:
    """What CAD needs to know of one incident version (from the incident events)."""

    incident_id: str
    version: int
    tenant: Mapping[str, str | None]
    building: str | None
    room: str | None
    incident_type: str
    status: str
    srp_action: str | None
    evacuate_location: str | None
    shelter_hazard: str | None
    shelter_strategy: str | None
    correlated_event_ids: tuple[str, ...]
    summary: str
    updated_at: datetime
    exercise: bool = False
    dispatchable: bool = True
    note: str | None = field(default=None, compare=False)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> IncidentSnapshot:
        """The snapshot of an IncidentOpened or IncidentChanged event."""
        envelope = event["envelope"]
        note = event.get("change_reason")
        return cls(
            incident_id=str(event["incident_id"]),
            version=int(event["version"]),
            tenant=dict(envelope["tenant"]),
            building=envelope.get("building"),
            room=envelope.get("room"),
            incident_type=str(event["incident_type"]),
            status=STATUS_BY_STATE.get(str(event["state"]), "Active"),
            srp_action=event.get("srp_action"),
            evacuate_location=event.get("evacuate_location"),
            shelter_hazard=event.get("shelter_hazard"),
            shelter_strategy=event.get("shelter_strategy"),
            correlated_event_ids=tuple(sorted(event.get("correlated_event_ids") or ())),
            summary=str(event.get("summary") or ""),
            updated_at=_hub_time(envelope),
            exercise=bool(envelope.get("exercise")),
            dispatchable=bool(event.get("dispatchable")),
            note=str(note) if note else None,
        )

    def cleared(self, event: Mapping[str, Any]) -> IncidentSnapshot:
        """This incident as an IncidentCleared event ends it (Cancelled for a false alarm)."""
        envelope = event["envelope"]
        outcome = str(event.get("outcome"))
        return replace(
            self,
            version=int(event["version"]),
            status="Cancelled" if outcome == "FALSE_ALARM" else "Closed",
            srp_action="ALL_CLEAR",
            updated_at=_hub_time(envelope),
            exercise=self.exercise or bool(envelope.get("exercise")),
            note=str(event.get("message") or "") or None,
        )

    def relevant(self) -> dict[str, Any]:
        """The dispatch-relevant content: a change in anything else is not sent to CAD."""
        return {
            "school": self.tenant.get("school"),
            "building": self.building,
            "room": self.room,
            "incident_type": self.incident_type,
            "status": self.status,
            "srp_action": self.srp_action,
            "evacuate_location": self.evacuate_location,
            "shelter_hazard": self.shelter_hazard,
            "shelter_strategy": self.shelter_strategy,
            "correlated_event_ids": list(self.correlated_event_ids),
        }

    def fingerprint(self) -> str:
        """A digest of :meth:`relevant`."""
        canonical = json.dumps(self.relevant(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ledger keeps the last delivered snapshot)."""
        data = asdict(self)
        data["updated_at"] = self.updated_at.isoformat()
        data["correlated_event_ids"] = list(self.correlated_event_ids)
        data["tenant"] = dict(self.tenant)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IncidentSnapshot:
        """The inverse of :meth:`to_json`."""
        values = dict(data)
        values["updated_at"] = datetime.fromisoformat(values["updated_at"])
        values["correlated_event_ids"] = tuple(values["correlated_event_ids"])
        return cls(**values)


def _hub_time(envelope: Mapping[str, Any]) -> datetime:
    """When the hub recorded the incident event: the only clock an EIDO's update times use.

    ``occurred_at`` may come from a device's clock (seen: 1969-07-20); ``recorded_at`` is
    always set by the hub.
    """
    return _utc(envelope["recorded_at"])


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    # Avro timestamp-micros may arrive as an integer of microseconds.
    return datetime.fromtimestamp(int(value) / 1_000_000, tz=UTC)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def apco_code(incident_type: str, signals: Sequence[SignalFacts]) -> str:
    """The APCO ANS 2.103.2 incident type for CAD, refined by the alerts behind the incident.

    A silent panic is always ALRPANS (top priority) whatever its type and the hub's
    classification, unless that classification is itself a top-priority code (active
    assailant: ACTSHOOT). Otherwise a panic device's own emergency decides between the alarm
    codes (audible ALRPANA, medical ALRMED); a specific hub classification (weapon, fire,
    threat …) wins over a generic audible panic. A THREAT incident that a reported threat (a
    tip) is behind takes the report's category: WEAPON, SUICTHRT for self-harm, else THREATS.
    """
    panics = [s for s in signals if s.kind == "panic"]
    if any(p.silent for p in panics):
        classified = APCO_BY_TYPE.get(incident_type, "ALMH")
        return classified if PRIORITY_BY_CODE.get(classified, 0) >= TOP_PRIORITY else "ALRPANS"
    if incident_type == "THREAT":
        reported = {s.category for s in signals if s.kind == "threat"}
        for category, refined in APCO_BY_THREAT_CATEGORY.items():
            if category in reported:
                return refined
    if incident_type == "MEDICAL":
        return "ALRMED" if panics else "SICK"
    if incident_type == "OTHER":
        if panics:
            return "ALRPANA"
        for camera in (s for s in signals if s.kind == "camera"):
            code = APCO_BY_ANALYTIC.get(camera.analytic or "")
            if code:
                return code
    return APCO_BY_TYPE.get(incident_type, "ALMH")


def civic_address(address: str, state: str) -> dict[str, str]:
    """RFC 5139 civic fields of a one-line US address ("1200 Lincoln Ave, Northville, TX").

    What does not parse is kept whole as LOC, so nothing the directory says is lost.
    """
    civic: dict[str, str] = {"country": "US"}
    if state.upper().startswith("US-"):
        civic["A1"] = state[3:].upper()
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if len(parts) >= 3:
        street, city, region = parts[0], parts[-2], parts[-1]
        street_match = _STREET.match(street)
        region_match = _STATE_ZIP.match(region)
        if street_match and region_match:
            civic["A1"] = region_match["a1"].upper()
            civic["A3"] = city
            civic["HNO"] = street_match["hno"]
            civic["RD"] = street_match["rd"]
            if region_match["pc"]:
                civic["PC"] = region_match["pc"]
            return civic
    if address:
        civic["LOC"] = address
    return civic


def pidf_lo(
    entity: str,
    civic: Mapping[str, str],
    points: Iterable[tuple[str, float, float, str]],
    *,
    retention_expiry: datetime,
) -> str:
    """A PIDF-LO document: one device with the civic address, one per (id, lat, lon, method)."""
    presence = ET.Element(f"{{{NS_PIDF}}}presence", {"entity": entity})

    def device(device_id: str, method: str) -> ET.Element:
        dev = ET.SubElement(presence, f"{{{NS_DM}}}device", {"id": device_id})
        geopriv = ET.SubElement(dev, f"{{{NS_GP}}}geopriv")
        info = ET.SubElement(geopriv, f"{{{NS_GP}}}location-info")
        rules = ET.SubElement(geopriv, f"{{{NS_GP}}}usage-rules")
        ET.SubElement(rules, f"{{{NS_GBP}}}retransmission-allowed").text = "true"
        ET.SubElement(rules, f"{{{NS_GBP}}}retention-expiry").text = _timestamp(retention_expiry)
        ET.SubElement(geopriv, f"{{{NS_GP}}}method").text = method
        return info

    info = device("civic", "Manual")
    address = ET.SubElement(
        info, f"{{{NS_CA}}}civicAddress", {"{http://www.w3.org/XML/1998/namespace}lang": "en"}
    )
    for name in CIVIC_ORDER:
        if civic.get(name):
            ET.SubElement(address, f"{{{NS_CA}}}{name}").text = civic[name]
    for device_id, latitude, longitude, method in points:
        info = device(device_id, method)
        point = ET.SubElement(info, f"{{{NS_GML}}}Point", {"srsName": "urn:ogc:def:crs:EPSG::4326"})
        ET.SubElement(point, f"{{{NS_GML}}}pos").text = f"{latitude:.6f} {longitude:.6f}"
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(presence, encoding="unicode")


@dataclass(frozen=True)
class BuiltEido:
    """An EIDO and the facts about it the connector records."""

    document: dict[str, Any]
    eido_id: str
    psap_id: str
    apco_code: str
    status: str

    def body(self) -> bytes:
        """The JSON bytes sent to CAD."""
        return json.dumps(self.document, ensure_ascii=False, separators=(",", ":")).encode()


UNKNOWN_PSAP = "unknown"


class EidoBuilder:
    """Builds EIDOs for one hub from its directory.

    ``directory`` is a source (the live view, or a fixed :class:`Directory`): each
    :meth:`build` and :meth:`psap_of` reads it once, so a school's address, PSAP or buildings
    changed at run time are in the next EIDO.
    """

    def __init__(self, directory: DirectorySource, hub_id: str) -> None:
        self._directory = directory
        self.hub_id = hub_id

    @property
    def directory(self) -> Directory:
        """The directory now (a snapshot)."""
        return self._directory.current()

    def _urn(self, kind: str, *parts: object) -> str:
        name = stable_id(_ID_NAMESPACE, *parts)
        return f"urn:emergency:uid:{kind}:{name}:{self.hub_id}"

    def school(
        self, snapshot: IncidentSnapshot, directory: Directory | None = None
    ) -> School | None:
        """The incident's school in ``directory`` (default: the directory now), if it is there."""
        school_id = snapshot.tenant.get("school")
        if not school_id:
            return None
        try:
            return (directory or self._directory.current()).school(school_id)
        except UnknownPlaceError:
            return None

    def psap_of(self, snapshot: IncidentSnapshot) -> str:
        """The PSAP serving the incident's school now (``unknown`` if the school is not listed)."""
        school = self.school(snapshot)
        return school.psap_id if school else UNKNOWN_PSAP

    def build(self, snapshot: IncidentSnapshot, signals: Sequence[SignalFacts] = ()) -> BuiltEido:
        """The EIDO of ``snapshot``, within :data:`EIDO_MAX_BYTES` whatever the signals.

        Raises :class:`ExerciseDispatchError` for an exercise.
        """
        if snapshot.exercise:
            raise ExerciseDispatchError(
                f"incident {snapshot.incident_id} is an exercise: no EIDO is ever built for it"
            )
        # Earliest first on the hub's clock (facts from before hub time was kept sort first).
        ordered = sorted(signals, key=lambda s: (s.recorded_at or "", s.event_id))
        directory = self._directory.current()  # one snapshot for every detail level
        built = self._build(directory, snapshot, ordered, DETAIL_LEVELS[0])
        for detail in DETAIL_LEVELS[1:]:
            if len(built.body()) <= EIDO_MAX_BYTES:
                break
            built = self._build(directory, snapshot, ordered, detail)
        return built

    def _build(
        self,
        directory: Directory,
        snapshot: IncidentSnapshot,
        signals: Sequence[SignalFacts],
        detail: Detail,
    ) -> BuiltEido:
        school = self.school(snapshot, directory)
        psap_id = school.psap_id if school else UNKNOWN_PSAP
        district_id = snapshot.tenant.get("district") or "unknown"
        stamp = _timestamp(snapshot.updated_at)
        hub_agency = f"urn:safehub:{self.hub_id}:agency:{district_id}"
        psap_agency = f"urn:safehub:{self.hub_id}:psap:{psap_id}"
        incident_uid = f"urn:emergency:uid:incidentid:{snapshot.incident_id}:{self.hub_id}"
        eido_id = self._urn("eidoid", snapshot.incident_id, snapshot.version)
        location_id = self._urn("locationid", snapshot.incident_id, snapshot.version)
        notes_id = self._urn("notesid", snapshot.incident_id, snapshot.version)
        code = apco_code(snapshot.incident_type, signals)

        def prologue(component_id: str) -> dict[str, Any]:
            return {
                "$id": component_id,
                "lastUpdateTimeStamp": stamp,
                "updatedByAgencyReference": {"$ref": hub_agency},
            }

        district_name = _district_name(directory, district_id)
        agencies = [
            {
                **prologue(hub_agency),
                "agencyRoleDescriptionRegistryText": ["Informational"],
                "agencyType": ["other"],
                "agencyJcard": _jcard(f"{_clip(district_name, MAX_FIELD)} (SafeHub {self.hub_id})"),
            },
            {
                **prologue(psap_agency),
                "agencyRoleDescriptionRegistryText": ["Dispatching"],
                "agencyType": ["psap"],
                "agencyJcard": _jcard(_clip(psap_id, MAX_FIELD)),
                "incidentOwningAgencyIndicator": True,
            },
        ]
        incident: dict[str, Any] = {
            **prologue(incident_uid),
            "incidentTypeCommonRegistryText": code,
            "incidentTypeInternalText": snapshot.incident_type,
            "incidentTrackingIdentifier": snapshot.incident_id,
            "incidentStatusCommonRegistryText": [snapshot.status],
            "incidentCommonPriorityNumber": PRIORITY_BY_CODE.get(code, 7),
            "locationReference": [{"$ref": location_id}],
            "notesReference": [{"$ref": notes_id}],
        }
        document: dict[str, Any] = {
            **prologue(eido_id),
            "eidoVersion": EIDO_VERSION,
            "issuingElementIdentification": self.hub_id,
            "agencyComponent": agencies,
            "incidentComponent": incident,
            "locationComponent": [
                {
                    **prologue(location_id),
                    "locationTypeDescriptionRegistryText": "CurrentIncident",
                    "locationDescriptionText": self._place_text(snapshot, school, signals),
                    "locationByValue": self._pidf(directory, snapshot, school, signals, detail),
                }
            ],
            "notesComponent": [
                {**prologue(notes_id), "notesActionComments": _notes_html(snapshot, detail)}
            ],
        }
        shown, rest = _select(signals, detail)
        alarms = [
            {
                **prologue(self._urn("alarmid", snapshot.incident_id, s.event_id)),
                "csaaAlarmInformation": _clip(
                    f"{code}: {s.describe()} (SafeHub signal {_clip(s.event_id, MAX_NAME)})",
                    detail.text,
                ),
                **(
                    {"alarmUrl": s.clip_url or s.report_url}
                    if detail.urls
                    and (s.clip_url or s.report_url)
                    and len(s.clip_url or s.report_url or "") <= MAX_URL
                    else {}
                ),
            }
            for s in shown
        ]
        alarms += [
            {
                **prologue(self._urn("alarmid", snapshot.incident_id, "summary", kind)),
                "csaaAlarmInformation": f"{code}: {text}; every signal is in SafeHub incident "
                f"{snapshot.incident_id}",
            }
            for kind, text in _summaries(rest)
        ]
        if not alarms:
            alarms = [
                {
                    **prologue(self._urn("alarmid", snapshot.incident_id, "incident")),
                    "csaaAlarmInformation": (
                        f"{code}: SafeHub incident {snapshot.incident_id} "
                        f"({snapshot.incident_type.lower()}), "
                        f"{len(snapshot.correlated_event_ids)} correlated signal(s)"
                    ),
                }
            ]
        document["alarmsSensorsComponent"] = alarms
        return BuiltEido(document, eido_id, psap_id, code, snapshot.status)

    def _place_text(
        self, snapshot: IncidentSnapshot, school: School | None, signals: Sequence[SignalFacts]
    ) -> str:
        parts = [_school_name(snapshot, school)]
        if school and school.address:
            parts.append(_clip(school.address, MAX_FIELD))
        if snapshot.building:
            building = school.building(snapshot.building) if school else None
            label = f"Building {_clip(snapshot.building, MAX_NAME)}"
            if building and building.name and building.name != label:
                label += f" ({_clip(building.name, MAX_NAME)})"
            parts.append(label)
        floor = _floor(signals)
        if floor:
            parts.append(f"Floor {floor}")
        if snapshot.room:
            parts.append(f"Room {_clip(snapshot.room, MAX_NAME)}")
        return ", ".join(parts)

    def _pidf(
        self,
        directory: Directory,
        snapshot: IncidentSnapshot,
        school: School | None,
        signals: Sequence[SignalFacts],
        detail: Detail,
    ) -> str:
        state = snapshot.tenant.get("state") or directory.state
        civic = civic_address(_clip(school.address, MAX_FIELD) if school else "", state)
        civic["NAM"] = _school_name(snapshot, school)
        if snapshot.building:
            civic["BLD"] = _clip(snapshot.building, MAX_NAME)
        if snapshot.room:
            civic["ROOM"] = _clip(snapshot.room, MAX_NAME)
        floor = _floor(signals)
        if floor:
            civic["FLR"] = floor
        points: list[tuple[str, float, float, str]] = []
        for s in signals:
            if len(points) >= detail.points:
                break
            if s.latitude is not None and s.longitude is not None:
                points.append((f"device-{len(points) + 1}", s.latitude, s.longitude, "GPS"))
        if school and school.latitude is not None and school.longitude is not None:
            points.append(("school", school.latitude, school.longitude, "Manual"))
        return pidf_lo(
            f"pres:{snapshot.incident_id}@{self.hub_id}",
            civic,
            points,
            retention_expiry=snapshot.updated_at + timedelta(days=1),
        )


def _district_name(directory: Directory, district_id: str) -> str:
    for district in directory.districts:
        if district.id == district_id:
            return district.name
    return district_id


def _jcard(name: str) -> list[Any]:
    return ["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", name]]]


def _notes_html(snapshot: IncidentSnapshot, detail: Detail) -> str:
    """The plain-language note, as the HTML5 fragment notesActionComments carries."""
    lines = [snapshot.summary or f"SafeHub incident {snapshot.incident_id}"]
    if snapshot.srp_action:
        action = SRP_PLAIN.get(snapshot.srp_action, snapshot.srp_action)
        if snapshot.srp_action == "EVACUATE" and snapshot.evacuate_location:
            action += f" to {_clip(snapshot.evacuate_location, MAX_FIELD)}"
        if snapshot.srp_action == "SHELTER" and (
            snapshot.shelter_hazard or snapshot.shelter_strategy
        ):
            hazard = (snapshot.shelter_hazard or "hazard").lower()
            strategy = (snapshot.shelter_strategy or "").lower().replace("_", " ")
            action += f" for {hazard}" + (f", {strategy}" if strategy else "")
        lines.append(f"School SRP action in force: {action}.")
    if snapshot.status == "Cancelled":
        lines.append("CANCELLED by the school: false alarm.")
    elif snapshot.status == "Closed":
        lines.append("The school has given the ALL CLEAR.")
    if snapshot.note:
        lines.append(snapshot.note)
    return "".join(f"<p>{html.escape(_clip(line, detail.notes))}</p>" for line in lines)


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _school_name(snapshot: IncidentSnapshot, school: School | None) -> str:
    name = school.name if school else f"school {snapshot.tenant.get('school')}"
    return _clip(name, MAX_FIELD)


def _floor(signals: Sequence[SignalFacts]) -> str | None:
    floor = next((s.floor for s in signals if s.floor), None)
    return _clip(floor, MAX_NAME) if floor else None


def _select(
    signals: Sequence[SignalFacts], detail: Detail
) -> tuple[list[SignalFacts], list[SignalFacts]]:
    """(signals shown in full, the rest): the earliest and latest few, the first silent
    panic wherever it is (it is what makes the alarm ALRPANS) and the first threat report."""
    if len(signals) <= detail.first + detail.latest:
        return list(signals), []
    chosen = set(range(detail.first)) | set(range(len(signals) - detail.latest, len(signals)))
    panic = next((i for i, s in enumerate(signals) if s.kind == "panic" and s.silent), None)
    if panic is not None:
        chosen.add(panic)
    # The first threat report too: its summary is what the call-taker reads of a tip.
    report = next((i for i, s in enumerate(signals) if s.kind == "threat"), None)
    if report is not None:
        chosen.add(report)
    shown = [s for i, s in enumerate(signals) if i in chosen]
    rest = [s for i, s in enumerate(signals) if i not in chosen]
    return shown, rest


def _summaries(rest: Sequence[SignalFacts]) -> list[tuple[str, str]]:
    """One (kind, line) per kind of signal not shown in full; bounded whatever their number."""
    groups: dict[str, list[SignalFacts]] = {}
    for signal in rest:
        groups.setdefault(signal.kind, []).append(signal)
    lines: list[tuple[str, str]] = []
    for kind, group in groups.items():
        count = len(group)
        if kind == "camera":
            what = _counted((s.analytic or "OTHER").lower() for s in group)
            sources = _named((s.camera_id for s in group), "camera")
            lines.append((kind, f"and {count} more camera alert(s) ({what}) from {sources}"))
        elif kind == "panic":
            what = _counted("silent" if s.silent else "audible" for s in group)
            sources = _named((s.device_id for s in group), "device")
            lines.append((kind, f"and {count} more panic alarm(s) ({what}) from {sources}"))
        elif kind == "threat":
            what = _counted((s.category or "OTHER").lower() for s in group)
            lines.append((kind, f"and {count} more reported threat(s) ({what})"))
        else:
            lines.append((kind, f"and {count} more staff SRP action request(s)"))
    return lines


def _counted(values: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for value in values:
        key = _clip(value, MAX_NAME)
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{n} {value}" for value, n in ranked[:MAX_NAMED_SOURCES])
    others = len(ranked) - MAX_NAMED_SOURCES
    return shown + (f" and {others} other kind(s)" if others > 0 else "")


def _named(values: Iterable[str | None], noun: str) -> str:
    """'cameras A, B and 3 other cameras': sources in first-seen order, the first few named."""
    names: list[str] = []
    unnamed = False
    seen: set[str] = set()
    for value in values:
        if not value:
            unnamed = True
        elif value not in seen:
            seen.add(value)
            names.append(value)
    listed = ", ".join(_clip(n, MAX_NAME) for n in names[:MAX_NAMED_SOURCES])
    others = len(names) - MAX_NAMED_SOURCES
    if not names:
        return f"unnamed {noun}s"
    text = f"{noun}{'s' if len(names) > 1 else ''} {listed}"
    if others > 0:
        text += f" and {others} other {noun}(s)"
    if unnamed:
        text += f" and unnamed {noun}s"
    return text
