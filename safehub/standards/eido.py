"""Checking an EIDO against the NENA-STA-021 facts in ``eido-required-fields.json``.

The facts file lists, per data component, the required properties (the Prologue for every
component that inherits it), the inline enumerations and the registry values. This validator
applies them to every component of a document: required properties, types of the registry
arrays, enumerations, registry values (IncidentType, IncidentStatus, AgencyRole,
LocationType, PersonRole, the IANA responder agency types), date-times, ``$id`` uniqueness,
``{"$ref"}`` references that must resolve inside the document, and a well-formed PIDF-LO
``locationByValue`` (no DTD). Problems name the place and the rule, never the value, so they
can be returned to a sender or logged without echoing incident data.

(``$ref`` is instance data in EIDO, not JSON-Schema: no reference resolver is run over it.)
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from safehub.kernel.errors import ConfigError, SafeHubError

#: Top-level component properties and the data component type each holds.
COMPONENTS: Mapping[str, str] = {
    "agencyComponent": "AgencyType",
    "agentComponent": "AgentType",
    "incidentComponent": "IncidentInformationType",
    "callComponent": "CallInformationType",
    "callbackComponent": "CallbackType",
    "locationComponent": "LocationInformationType",
    "personComponent": "PersonInformationType",
    "notesComponent": "NotesType",
    "alarmsSensorsComponent": "AlarmsSensorsType",
    "additionalDataComponent": "AdditionalDataType",
    "dispatchComponent": "DispatchInformationType",
    "emergencyResourceComponent": "EmergencyResourceType",
    "vehicleComponent": "VehicleInformationType",
    "mergeComponent": "MergeInformationType",
    "linkComponent": "LinkInformationType",
    "mediaComponent": "MediaType",
    "cautionComponent": "CautionType",
    "externalInformationSourceComponent": "ExternalInformationSourceType",
    "sharedCommunicationResourceComponent": "SharedCommunicationResourceType",
}

#: Components nested inside another component: (type, property) → nested type.
NESTED: Mapping[tuple[str, str], str] = {
    ("IncidentInformationType", "dispositionComponent"): "DispositionType",
}

#: incidentComponent is one object; every other component property is an array.
SINGLE = frozenset({"incidentComponent"})

#: Properties that are arrays of strings; the required ones must not be empty.
STRING_ARRAYS = frozenset(
    {
        "agencyRoleDescriptionRegistryText",
        "agencyType",
        "agentRoleRegistryText",
        "personIncidentRoleRegistryText",
        "incidentStatusCommonRegistryText",
        "incidentStatusInternalText",
        "secondaryUnitStatusRegistryText",
        "resourceAttributeRegistryText",
    }
)
#: Properties that must be non-empty strings whatever component carries them.
NON_EMPTY_STRINGS = frozenset({"issuingElementIdentification", "internalIncidentId"})
NON_EMPTY_ARRAYS = frozenset(
    {
        "agencyRoleDescriptionRegistryText",
        "agencyType",
        "agentRoleRegistryText",
        "personIncidentRoleRegistryText",
    }
)

#: (component type, property) → registry name in the facts file.
REGISTRY_FIELDS: Mapping[tuple[str, str], str] = {
    ("AgencyType", "agencyRoleDescriptionRegistryText"): "EIDO-AgencyRole",
    ("IncidentInformationType", "incidentStatusCommonRegistryText"): "EIDO-IncidentStatus-Common",
    ("IncidentInformationType", "incidentTypeCommonRegistryText"): (
        "EIDO-IncidentType-Common (all values)"
    ),
    ("LocationInformationType", "locationTypeDescriptionRegistryText"): "EIDO-LocationType",
    ("PersonInformationType", "personIncidentRoleRegistryText"): "EIDO-PersonRole",
}

#: (component type, property) → enum name in the facts file.
ENUM_FIELDS: Mapping[tuple[str, str], str] = {
    (
        "EmergencyIncidentDataObjectType",
        "eidoVersion",
    ): "EmergencyIncidentDataObjectType.eidoVersion",
    ("CallInformationType", "direction"): "CallInformationType.direction",
    ("CallInformationType", "priorityIdentifier"): "CallInformationType.priorityIdentifier",
    ("UnitEmergencyStateType", "severity"): "UnitEmergencyStateType.severity",
    ("CautionType", "cautionSeverity"): "CautionType.cautionSeverity",
    ("MergeInformationType", "incidentMergeDirectionCode"): "IncidentMergeDirectionCodeSimpleType",
    ("LinkInformationType", "linkDirectionCode"): "LinkDirectionCodeSimpleType",
}

#: Top-level names of IANA's urn:emergency:service:responder sub-services; a dotted value
#: (``police.municipal``, ``fire.forest``) is checked by its first label.
RESPONDER_TYPES = frozenset(
    {
        "police",
        "fire",
        "ems",
        "psap",
        "poison_control",
        "mountain_rescue",
        "sea_rescue",
        "coast_guard",
        "mental_health",
        "suicide_prevention",
        "other",
    }
)

DATE_TIME_FIELDS = frozenset(
    {
        "lastUpdateTimeStamp",
        "callStartTimestamp",
        "answerDate",
        "vehicleRelationshipTimeStamp",
        "startTimestamp",
        "stopTimestamp",
        "acknowledgementTimestamp",
    }
)

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DISPOSITION_CODE = re.compile(r"^(0[1-9]|[1-3]\d|4[0-5])$")
_PIDF = "{urn:ietf:params:xml:ns:pidf}presence"


class EidoInvalidError(SafeHubError):
    """An EIDO broke the rules; ``problems`` lists each (place and rule, never the value)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"invalid EIDO: {len(problems)} problem(s): " + "; ".join(problems[:5]))
        self.problems = problems


@dataclass(frozen=True)
class EidoRules:
    """The facts of ``eido-required-fields.json``."""

    prologue: tuple[str, ...]
    components: Mapping[str, Mapping[str, Any]]
    enums: Mapping[str, frozenset[str]]
    registries: Mapping[str, frozenset[str]]

    @classmethod
    def load(cls, path: Path) -> EidoRules:
        """Read the facts file (ConfigError names the file if it is missing or malformed)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                prologue=tuple(data["prologueRequired"]),
                components=data["components"],
                enums={k: frozenset(v) for k, v in data["enums"].items()},
                registries={
                    k: frozenset(x for x in v if x)
                    for k, v in data["registries"].items()
                    if isinstance(v, list)
                },
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"EIDO rules file {path} is unusable: {exc}") from exc


class EidoValidator:
    """Validates EIDO documents against :class:`EidoRules`."""

    def __init__(self, rules: EidoRules) -> None:
        self.rules = rules

    @classmethod
    def from_file(cls, path: Path) -> EidoValidator:
        """A validator over the facts file at ``path``."""
        return cls(EidoRules.load(path))

    def validate(self, document: Any) -> None:
        """Raise :class:`EidoInvalidError` unless ``document`` is a valid EIDO."""
        problems = self.problems(document)
        if problems:
            raise EidoInvalidError(problems)

    def problems(self, document: Any) -> list[str]:
        """Every problem found in ``document`` (empty when valid)."""
        check = _Check(self.rules)
        if not isinstance(document, dict):
            return ["document: must be a JSON object"]
        check.component("EmergencyIncidentDataObjectType", document, "")
        for prop, type_name in COMPONENTS.items():
            if prop not in document:
                continue
            value = document[prop]
            if prop in SINGLE:
                if isinstance(value, dict):
                    check.component(type_name, value, prop)
                else:
                    check.problem(prop, "must be an object")
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    check.component(type_name, item, f"{prop}[{index}]")
            else:
                check.problem(prop, "must be an array of components")
        if not document.get("agencyComponent") and "agencyComponent" in document:
            check.problem("agencyComponent", "must list at least one agency")
        for where, target in check.references:
            if target not in check.ids:
                check.problem(where, "reference does not resolve to a $id in this EIDO")
        return check.found


class _Check:
    def __init__(self, rules: EidoRules) -> None:
        self.rules = rules
        self.found: list[str] = []
        self.ids: set[str] = set()
        self.references: list[tuple[str, str]] = []

    def problem(self, where: str, what: str) -> None:
        self.found.append(f"{where or '(top level)'}: {what}")

    def component(self, type_name: str, value: Any, where: str) -> None:
        spec = self.rules.components.get(type_name, {})
        if not isinstance(value, dict):
            self.problem(where, f"must be a {type_name} object")
            return
        required = list(spec.get("required", ()))
        if spec.get("inheritsPrologue"):
            required = [*self.rules.prologue, *required]
        for name in required:
            if name not in value or value[name] is None:
                self.problem(_join(where, name), "is required")
        component_id = value.get("$id")
        if component_id is not None:
            if not isinstance(component_id, str) or not component_id:
                self.problem(_join(where, "$id"), "must be a non-empty string")
            elif component_id in self.ids:
                self.problem(_join(where, "$id"), "is not unique in this EIDO")
            else:
                self.ids.add(component_id)
        for name, item in value.items():
            self.field(type_name, name, item, _join(where, name))

    def field(self, type_name: str, name: str, value: Any, where: str) -> None:
        nested = NESTED.get((type_name, name))
        if nested is not None:
            self.nested(nested, value, where)
        elif name.endswith("Reference"):
            self.reference(value, where)
        elif name == "locationByValue":
            self.pidf(value, where)
        else:
            self.scalar(type_name, name, value, where)

    def nested(self, type_name: str, value: Any, where: str) -> None:
        if not isinstance(value, list):
            self.problem(where, f"must be an array of {type_name}")
            return
        for index, item in enumerate(value):
            self.component(type_name, item, f"{where}[{index}]")

    def scalar(self, type_name: str, name: str, value: Any, where: str) -> None:
        if name in DATE_TIME_FIELDS and not _is_date_time(value):
            self.problem(where, "must be an RFC 3339 date-time")
        if name in STRING_ARRAYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.problem(where, "must be an array of strings")
                return
            if name in NON_EMPTY_ARRAYS and not value:
                self.problem(where, "must not be empty")
        enum = ENUM_FIELDS.get((type_name, name))
        if enum is not None and (
            not isinstance(value, str) or value not in self.rules.enums.get(enum, frozenset())
        ):
            allowed = ", ".join(sorted(self.rules.enums.get(enum, ())))
            self.problem(where, f"must be one of: {allowed}")
        registry = REGISTRY_FIELDS.get((type_name, name))
        if registry is not None:
            if name not in STRING_ARRAYS and not isinstance(value, str):
                self.problem(where, "must be a string")
                return
            self.registry(registry, value, where)
        if name in NON_EMPTY_STRINGS and (not isinstance(value, str) or not value):
            self.problem(where, "must be a non-empty string")
        if (
            (type_name, name) == ("AgencyType", "agencyType")
            and isinstance(value, list)
            and any(str(item).split(".", 1)[0] not in RESPONDER_TYPES for item in value)
        ):
            self.problem(where, "is not an IANA urn:emergency:service:responder type")
        if (type_name, name) == ("DispositionType", "dispositionCommonRegistryCode") and not (
            isinstance(value, str) and _DISPOSITION_CODE.match(value)
        ):
            self.problem(where, "must be an APCO common disposition code 01..45")

    def registry(self, registry: str, value: Any, where: str) -> None:
        allowed = self.rules.registries.get(registry, frozenset())
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str) or item not in allowed:
                self.problem(where, f"is not a value of the {registry} registry")

    def reference(self, value: Any, where: str) -> None:
        if where.endswith("updatedByAgencyReference") and not isinstance(value, dict):
            self.problem(where, 'must be a reference object {"$ref": "<$id>"}')
            return
        items = value if isinstance(value, list) else [value]
        if not items:
            self.problem(where, "must reference at least one $id")
        for item in items:
            target = item.get("$ref") if isinstance(item, dict) else None
            if not isinstance(target, str) or not target:
                self.problem(where, 'must be a reference object {"$ref": "<$id>"}')
            else:
                self.references.append((where, target))

    def pidf(self, value: Any, where: str) -> None:
        if not isinstance(value, str):
            self.problem(where, "must be a PIDF-LO XML string")
            return
        if "<!DOCTYPE" in value.upper() or "<!ENTITY" in value.upper():
            self.problem(where, "must not contain a DTD or entity declarations")
            return
        try:
            # No DTD (checked above), so no entity expansion: parsing is safe.
            root = ET.fromstring(value)  # noqa: S314
        except ET.ParseError:
            self.problem(where, "is not well-formed XML")
            return
        if root.tag != _PIDF:
            self.problem(where, "must be a PIDF-LO <presence> document")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _is_date_time(value: Any) -> bool:
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return False
    return True
