"""OASIS CAP 1.2 documents: build, validate, parse safely.

One model (:class:`CapAlert` > :class:`CapInfo` > :class:`CapArea`) serves both directions:
:func:`build_alert` turns it into XML (element order per the XSD ``xs:sequence``) and checks
its own output, :func:`parse` turns incoming XML back into it. :func:`validate` applies the
OASIS XSD plus the rules of CAP 1.2 section 3 that the XSD does not express.

Incoming CAP is untrusted: :func:`parse` and :func:`validate` refuse a DOCTYPE, entity
declarations or references and XInclude outright (no expansion, no network, no file access),
cap the size, and only then validate. Error messages name the element and the rule, never
more than a short excerpt of the input.

A pure codec of the standard: what SafeHub says in CAP (the SRP actions) is notify's policy,
``services/notify/cap.py``.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from safehub import standards
from safehub.kernel.errors import ConfigError, SafeHubError

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
#: The media type of a CAP document (IANA registration of CAP 1.2).
CAP_MEDIA_TYPE = "application/cap+xml"
XINCLUDE_NAMESPACES = ("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude")

#: The verbatim OASIS schema, shipped in the package (:mod:`safehub.standards`).
DEFAULT_CAP_XSD = standards.CAP_XSD

#: Largest incoming document accepted; real IPAWS alerts with an embedded image stay below.
MAX_CAP_BYTES = 1 << 20
#: CAP 1.2 3.2.2: an ``info`` without ``language`` is in en-US.
DEFAULT_LANGUAGE = "en-US"

_NS = {"cap": CAP_NAMESPACE}
_DATETIME = re.compile(r"^\d\d\d\d-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d$")
# CAP 1.2 §3.2.1: identifier and sender MUST NOT include spaces, commas or < and &.
_TOKEN = re.compile(r"^[^\s,<&\x00-\x1f\x7f]+$")
# Characters XML 1.0 cannot carry (C0 controls but tab/LF/CR, surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_QUOTED_VALUE = re.compile(r"'([^']{40})[^']+'")
_ADDRESS = re.compile(r'"([^"]*)"|([^\s"]+)')


class CapError(SafeHubError):
    """A CAP document is invalid or unsafe, or one could not be built (names element + rule)."""


class Status(StrEnum):
    """``alert/status``."""

    ACTUAL = "Actual"
    EXERCISE = "Exercise"
    SYSTEM = "System"
    TEST = "Test"
    DRAFT = "Draft"


class MsgType(StrEnum):
    """``alert/msgType``."""

    ALERT = "Alert"
    UPDATE = "Update"
    CANCEL = "Cancel"
    ACK = "Ack"
    ERROR = "Error"


class Scope(StrEnum):
    """``alert/scope``."""

    PUBLIC = "Public"
    RESTRICTED = "Restricted"
    PRIVATE = "Private"


class Category(StrEnum):
    """``info/category``."""

    GEO = "Geo"
    MET = "Met"
    SAFETY = "Safety"
    SECURITY = "Security"
    RESCUE = "Rescue"
    FIRE = "Fire"
    HEALTH = "Health"
    ENV = "Env"
    TRANSPORT = "Transport"
    INFRA = "Infra"
    CBRNE = "CBRNE"
    OTHER = "Other"


class ResponseType(StrEnum):
    """``info/responseType``."""

    SHELTER = "Shelter"
    EVACUATE = "Evacuate"
    PREPARE = "Prepare"
    EXECUTE = "Execute"
    AVOID = "Avoid"
    MONITOR = "Monitor"
    ASSESS = "Assess"
    ALL_CLEAR = "AllClear"
    NONE = "None"


class Urgency(StrEnum):
    """``info/urgency``."""

    IMMEDIATE = "Immediate"
    EXPECTED = "Expected"
    FUTURE = "Future"
    PAST = "Past"
    UNKNOWN = "Unknown"


class Severity(StrEnum):
    """``info/severity``."""

    EXTREME = "Extreme"
    SEVERE = "Severe"
    MODERATE = "Moderate"
    MINOR = "Minor"
    UNKNOWN = "Unknown"


class Certainty(StrEnum):
    """``info/certainty``."""

    OBSERVED = "Observed"
    LIKELY = "Likely"
    POSSIBLE = "Possible"
    UNLIKELY = "Unlikely"
    UNKNOWN = "Unknown"


def cap_datetime(value: datetime) -> str:
    """``value`` in CAP's format: whole seconds, numeric offset (UTC is ``+00:00``, never Z)."""
    offset = value.utcoffset()
    if offset is None:
        raise CapError("CAP date-times need a time zone; got a naive datetime")
    if offset.total_seconds() % 60:
        value = value.astimezone(UTC)  # CAP offsets have no seconds
    return value.replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class NamedValue:
    """A ``valueName``/``value`` pair (eventCode, parameter, geocode)."""

    name: str
    value: str


@dataclass(frozen=True)
class Reference:
    """One earlier message named in ``references``: ``sender,identifier,sent``."""

    sender: str
    identifier: str
    sent: datetime

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{cap_datetime(self.sent)}"

    @classmethod
    def of(cls, alert: CapAlert) -> Reference:
        """The reference to ``alert`` (``sent`` to the second, as the document says)."""
        return cls(alert.sender, alert.identifier, alert.sent.replace(microsecond=0))


@dataclass(frozen=True)
class Circle:
    """``circle``: WGS-84 centre and radius in kilometres."""

    latitude: float
    longitude: float
    radius_km: float

    def __str__(self) -> str:
        return f"{self.latitude!r},{self.longitude!r} {self.radius_km!r}"


@dataclass(frozen=True)
class CapArea:
    """``area``: a description and, when known, its geometry."""

    description: str
    polygons: tuple[tuple[tuple[float, float], ...], ...] = ()
    circles: tuple[Circle, ...] = ()
    geocodes: tuple[NamedValue, ...] = ()


@dataclass(frozen=True)
class CapInfo:
    """``info``: the alert in one language (resources are not modelled)."""

    event: str
    language: str = DEFAULT_LANGUAGE
    categories: tuple[Category, ...] = (Category.SECURITY,)
    response_types: tuple[ResponseType, ...] = ()
    urgency: Urgency = Urgency.IMMEDIATE
    severity: Severity = Severity.SEVERE
    certainty: Certainty = Certainty.OBSERVED
    audience: str | None = None
    event_codes: tuple[NamedValue, ...] = ()
    expires: datetime | None = None
    sender_name: str | None = None
    headline: str | None = None
    description: str | None = None
    instruction: str | None = None
    web: str | None = None
    contact: str | None = None
    parameters: tuple[NamedValue, ...] = ()
    areas: tuple[CapArea, ...] = ()


@dataclass(frozen=True)
class CapAlert:
    """``alert``: what :func:`build_alert` writes and :func:`parse` returns."""

    identifier: str
    sender: str
    sent: datetime
    status: Status
    msg_type: MsgType
    scope: Scope
    source: str | None = None
    restriction: str | None = None
    addresses: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    note: str | None = None
    references: tuple[Reference, ...] = ()
    incidents: tuple[str, ...] = ()
    infos: tuple[CapInfo, ...] = ()

    def info(self, language: str) -> CapInfo | None:
        """The info block in ``language``, if there is one."""
        return next((i for i in self.infos if i.language == language), None)


def references_for(previous: Iterable[CapAlert]) -> tuple[Reference, ...]:
    """References for an Update/Cancel: every earlier message of the thread, oldest first."""
    unique = {(a.sender, a.identifier): Reference.of(a) for a in previous}
    return tuple(sorted(unique.values(), key=lambda r: r.sent))


# --- building ------------------------------------------------------------------------------


def _clean(text: str) -> str:
    # Free text comes from templates and people; a stray control character must not cost
    # the alert, so it is dropped (the XML cannot carry it).
    return _NOT_XML.sub("", text)


def _sub(parent: Any, name: str, text: str | None = None) -> Any:
    element = etree.SubElement(parent, f"{{{CAP_NAMESPACE}}}{name}")
    if text is not None:
        element.text = _clean(text)
    return element


def _opt(parent: Any, name: str, text: str | None) -> None:
    if text is not None:
        _sub(parent, name, text)


def _pairs(parent: Any, name: str, values: Iterable[NamedValue]) -> None:
    for pair in values:
        element = _sub(parent, name)
        _sub(element, "valueName", pair.name)
        _sub(element, "value", pair.value)


def _address_list(addresses: Iterable[str]) -> str:
    return " ".join(f'"{a}"' if any(c.isspace() for c in a) else a for a in addresses)


def _area(parent: Any, area: CapArea) -> None:
    element = _sub(parent, "area")
    _sub(element, "areaDesc", area.description)
    for polygon in area.polygons:
        _sub(element, "polygon", " ".join(f"{lat!r},{lon!r}" for lat, lon in polygon))
    for circle in area.circles:
        _sub(element, "circle", str(circle))
    _pairs(element, "geocode", area.geocodes)


def _info(parent: Any, info: CapInfo) -> None:
    element = _sub(parent, "info")
    _sub(element, "language", info.language)
    for category in info.categories:
        _sub(element, "category", category.value)
    _sub(element, "event", info.event)
    for response in info.response_types:
        _sub(element, "responseType", response.value)
    _sub(element, "urgency", info.urgency.value)
    _sub(element, "severity", info.severity.value)
    _sub(element, "certainty", info.certainty.value)
    _opt(element, "audience", info.audience)
    _pairs(element, "eventCode", info.event_codes)
    _opt(element, "expires", cap_datetime(info.expires) if info.expires else None)
    _opt(element, "senderName", info.sender_name)
    _opt(element, "headline", info.headline)
    _opt(element, "description", info.description)
    _opt(element, "instruction", info.instruction)
    _opt(element, "web", info.web)
    _opt(element, "contact", info.contact)
    _pairs(element, "parameter", info.parameters)
    for area in info.areas:
        _area(element, area)


def build_alert(alert: CapAlert, *, xsd_path: Path = DEFAULT_CAP_XSD) -> bytes:
    """``alert`` as a CAP 1.2 document (UTF-8), checked with :func:`validate` before return.

    Raises :class:`CapError` naming the element and rule when the alert is not valid CAP.
    """
    # Checked before writing: free text is cleaned of what XML cannot carry, ids never are.
    _check_token("alert/identifier", alert.identifier)
    _check_token("alert/sender", alert.sender)
    for incident in alert.incidents:
        _check_token("alert/incidents", incident)
    root = etree.Element(f"{{{CAP_NAMESPACE}}}alert", nsmap={None: CAP_NAMESPACE})
    _sub(root, "identifier", alert.identifier)
    _sub(root, "sender", alert.sender)
    _sub(root, "sent", cap_datetime(alert.sent))
    _sub(root, "status", alert.status.value)
    _sub(root, "msgType", alert.msg_type.value)
    _opt(root, "source", alert.source)
    _sub(root, "scope", alert.scope.value)
    _opt(root, "restriction", alert.restriction)
    _opt(root, "addresses", _address_list(alert.addresses) if alert.addresses else None)
    for code in alert.codes:
        _sub(root, "code", code)
    _opt(root, "note", alert.note)
    _opt(root, "references", " ".join(map(str, alert.references)) or None)
    _opt(root, "incidents", " ".join(alert.incidents) or None)
    for info in alert.infos:
        _info(root, info)
    xml: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    validate(xml, xsd_path=xsd_path)
    return xml


# --- safe parsing and validation -----------------------------------------------------------


def _parser() -> Any:
    # A new parser per call: lxml parsers are not meant to be shared between threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,
        collect_ids=False,
    )


def _short(message: str, limit: int = 300) -> str:
    message = message.replace(f"{{{CAP_NAMESPACE}}}", "")
    message = _QUOTED_VALUE.sub(lambda m: f"'{m.group(1)}…'", message)
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _safe_tree(xml: bytes, max_bytes: int) -> Any:
    """Parse untrusted bytes; refuse DOCTYPE, entities and XInclude instead of ignoring them."""
    if len(xml) > max_bytes:
        raise CapError(f"CAP document is {len(xml)} bytes; the limit is {max_bytes}")
    # Cheap refusal before any parsing; the checks after parsing cover other encodings.
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise CapError("CAP document refused: it has a DOCTYPE or entity declarations")
    try:
        root = etree.fromstring(xml, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise CapError(f"CAP document is not well-formed XML: {_short(str(exc), 200)}") from exc
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise CapError("CAP document refused: it has a DOCTYPE or entity declarations")
    for node in root.iter():
        if isinstance(node, etree._Entity):
            raise CapError("CAP document refused: it has entity references")
        if isinstance(node.tag, str) and node.tag.startswith(
            tuple(f"{{{ns}}}" for ns in XINCLUDE_NAMESPACES)
        ):
            raise CapError("CAP document refused: it uses XInclude")
    if root.tag != f"{{{CAP_NAMESPACE}}}alert":
        raise CapError(f"not a CAP 1.2 alert: root element is {_short(str(root.tag), 120)}")
    return root


class _Schemas:
    """Compiled XSDs by path; validation is serialised (lxml validators keep state)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schemas: dict[Path, Any] = {}

    def validate(self, root: Any, xsd_path: Path) -> None:
        with self._lock:
            schema = self._schemas.get(xsd_path)
            if schema is None:
                schema = self._schemas[xsd_path] = _load_schema(xsd_path)
            if schema.validate(root):
                return
            error = next(iter(schema.error_log))
        raise CapError(f"CAP 1.2 XSD: line {error.line}: {_short(str(error.message))}")


def _load_schema(path: Path) -> Any:
    try:
        return etree.XMLSchema(etree.parse(str(path), _parser()))
    except OSError as exc:
        raise ConfigError(f"CAP XSD cannot be read: {path}") from exc
    except (etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
        raise ConfigError(f"CAP XSD {path} is not a valid schema: {_short(str(exc))}") from exc


_SCHEMAS = _Schemas()


def _text(element: Any, name: str) -> str | None:
    value = element.findtext(f"cap:{name}", namespaces=_NS)
    return None if value is None else str(value)


def _required(element: Any, name: str) -> str:
    # Present in an XSD-valid document.
    return _text(element, name) or ""


def _texts(element: Any, name: str) -> list[str]:
    return [str(e.text or "") for e in element.findall(f"cap:{name}", namespaces=_NS)]


def _check_point(where: str, pair: str) -> tuple[float, float]:
    parts = pair.split(",")
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise CapError(f"{where}: points are WGS-84 'lat,lon' pairs (CAP 1.2 §3.3.2)") from None
    if len(parts) != 2 or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise CapError(f"{where}: points are WGS-84 'lat,lon' pairs (CAP 1.2 §3.3.2)")
    return lat, lon


def _check_polygon(where: str, value: str) -> tuple[tuple[float, float], ...]:
    points = tuple(_check_point(where, p) for p in value.split())
    if len(points) < 4:
        raise CapError(f"{where}: a polygon needs at least 4 points (CAP 1.2 §3.3.2)")
    if points[0] != points[-1]:
        raise CapError(f"{where}: the first and last points of a polygon must be equal")
    return points


def _check_circle(where: str, value: str) -> Circle:
    parts = value.split()
    if len(parts) != 2:
        raise CapError(f"{where}: a circle is 'lat,lon radius_km' (CAP 1.2 §3.3.2)")
    lat, lon = _check_point(where, parts[0])
    try:
        radius = float(parts[1])
    except ValueError:
        radius = math.nan
    if not radius >= 0 or math.isinf(radius):
        raise CapError(f"{where}: the circle radius must be a number of km >= 0")
    return Circle(lat, lon, radius)


def _check_reference(token: str) -> Reference:
    parts = token.split(",")
    if len(parts) != 3 or not all(parts) or not _DATETIME.match(parts[2]):
        raise CapError(
            "alert/references: a space-separated list of 'sender,identifier,sent' triples "
            "(CAP 1.2 §3.2.1)"
        )
    return Reference(parts[0], parts[1], datetime.fromisoformat(parts[2]))


def _check_addresses(value: str) -> tuple[str, ...]:
    if value.count('"') % 2:
        raise CapError("alert/addresses: unbalanced quotes (addresses with spaces are quoted)")
    return tuple(
        m.group(1) if m.group(1) is not None else m.group(2) for m in _ADDRESS.finditer(value)
    )


def _check_token(where: str, value: str) -> str:
    if not _TOKEN.match(value):
        raise CapError(
            f"{where}: must be non-empty without spaces, commas, '<' or '&' (CAP 1.2 §3.2.1)"
        )
    return value


def _read_area(where: str, element: Any) -> CapArea:
    polygons = tuple(
        _check_polygon(f"{where}/polygon[{n}]", v)
        for n, v in enumerate(_texts(element, "polygon"), 1)
    )
    circles = tuple(
        _check_circle(f"{where}/circle[{n}]", v) for n, v in enumerate(_texts(element, "circle"), 1)
    )
    return CapArea(
        description=_required(element, "areaDesc"),
        polygons=polygons,
        circles=circles,
        geocodes=_read_pairs(element, "geocode"),
    )


def _read_pairs(element: Any, name: str) -> tuple[NamedValue, ...]:
    return tuple(
        NamedValue(_text(e, "valueName") or "", _text(e, "value") or "")
        for e in element.findall(f"cap:{name}", namespaces=_NS)
    )


def _read_info(where: str, element: Any) -> CapInfo:
    expires = _text(element, "expires")
    return CapInfo(
        event=_required(element, "event"),
        language=_text(element, "language") or DEFAULT_LANGUAGE,
        categories=tuple(Category(v) for v in _texts(element, "category")),
        response_types=tuple(ResponseType(v) for v in _texts(element, "responseType")),
        urgency=Urgency(_required(element, "urgency")),
        severity=Severity(_required(element, "severity")),
        certainty=Certainty(_required(element, "certainty")),
        audience=_text(element, "audience"),
        event_codes=_read_pairs(element, "eventCode"),
        expires=datetime.fromisoformat(expires) if expires else None,
        sender_name=_text(element, "senderName"),
        headline=_text(element, "headline"),
        description=_text(element, "description"),
        instruction=_text(element, "instruction"),
        web=_text(element, "web"),
        contact=_text(element, "contact"),
        parameters=_read_pairs(element, "parameter"),
        areas=tuple(
            _read_area(f"{where}/area[{n}]", a)
            for n, a in enumerate(element.findall("cap:area", namespaces=_NS), 1)
        ),
    )


def _read_alert(root: Any) -> CapAlert:
    """The model of an XSD-valid tree, applying the §3 rules the XSD does not check."""
    scope = Scope(_required(root, "scope"))
    msg_type = MsgType(_required(root, "msgType"))
    restriction = _text(root, "restriction")
    addresses_text = _text(root, "addresses")
    references_text = _text(root, "references")
    if scope is Scope.RESTRICTED and not (restriction or "").strip():
        raise CapError("alert/restriction: required when scope is Restricted (CAP 1.2 §3.2.1)")
    addresses = _check_addresses(addresses_text) if addresses_text is not None else ()
    if scope is Scope.PRIVATE and not addresses:
        raise CapError("alert/addresses: required when scope is Private (CAP 1.2 §3.2.1)")
    references = tuple(_check_reference(t) for t in (references_text or "").split())
    if msg_type in (MsgType.UPDATE, MsgType.CANCEL) and not references:
        raise CapError(
            f"alert/references: a {msg_type.value} must name the earlier message(s) it "
            "updates or cancels (CAP 1.2 §3.2.1 msgType)"
        )
    return CapAlert(
        identifier=_check_token("alert/identifier", _required(root, "identifier")),
        sender=_check_token("alert/sender", _required(root, "sender")),
        sent=datetime.fromisoformat(_required(root, "sent")),
        status=Status(_required(root, "status")),
        msg_type=msg_type,
        scope=scope,
        source=_text(root, "source"),
        restriction=restriction,
        addresses=addresses,
        codes=tuple(_texts(root, "code")),
        note=_text(root, "note"),
        references=references,
        incidents=tuple((_text(root, "incidents") or "").split()),
        infos=tuple(
            _read_info(f"alert/info[{n}]", i)
            for n, i in enumerate(root.findall("cap:info", namespaces=_NS), 1)
        ),
    )


def parse(
    xml: bytes, *, xsd_path: Path = DEFAULT_CAP_XSD, max_bytes: int = MAX_CAP_BYTES
) -> CapAlert:
    """Parse untrusted CAP 1.2 safely, validate it (XSD + §3 rules) and return its model.

    Raises :class:`CapError` for anything refused or invalid; the message names the element
    and the rule. Resources, altitude/ceiling and signatures are not carried into the model.
    """
    root = _safe_tree(xml, max_bytes)
    _SCHEMAS.validate(root, xsd_path)
    return _read_alert(root)


def validate(
    xml: bytes, *, xsd_path: Path = DEFAULT_CAP_XSD, max_bytes: int = MAX_CAP_BYTES
) -> None:
    """Check ``xml`` against the CAP 1.2 XSD and the §3 rules; raise :class:`CapError` if not.

    Safe on untrusted input (same refusals as :func:`parse`). ``xsd_path`` missing or broken
    is a :class:`~safehub.kernel.errors.ConfigError`.
    """
    parse(xml, xsd_path=xsd_path, max_bytes=max_bytes)
