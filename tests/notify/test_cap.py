"""CAP 1.2: every document SafeHub writes is XSD-valid; incoming CAP is parsed safely.

Validity is checked twice: by the module and by a plain lxml ``XMLSchema`` over the OASIS
XSD that shares no code with it. The sender is tested against a real HTTPS server.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from pydantic import SecretStr

from safehub.devstack.pki import DevPki
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.http_server import ServerThread, server_ssl_context
from safehub.kernel.settings import ListenSettings
from safehub.standards import cap as cap_xml
from services.notify import cap
from services.notify.cap_endpoint import (
    ATOM_NAMESPACE,
    CapDeliveryError,
    FeedEntry,
    atom_feed,
    post_cap,
)

#: The project's reference set beside the repository (samples are not shipped in the package).
STANDARDS = Path(__file__).resolve().parents[3] / "shared/standards/cap-1.2"
SAMPLES = sorted((STANDARDS / "samples").glob("*.xml"))
NEGATIVE = STANDARDS / "samples-negative"
NS = {"cap": cap_xml.CAP_NAMESPACE, "atom": ATOM_NAMESPACE}
ACTIONS = ["HOLD", "SECURE", "LOCKDOWN", "EVACUATE", "SHELTER", "ALL_CLEAR"]
HUB = "safehub.local"
SENT = datetime(2026, 3, 2, 14, 5, 9, 654321, tzinfo=UTC)
CAP_DATETIME = re.compile(r"^\d\d\d\d-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d$")


@pytest.fixture(scope="module")
def xsd() -> Any:
    """The OASIS schema through plain lxml: an oracle independent of services.notify.cap."""
    return etree.XMLSchema(etree.parse(str(cap_xml.DEFAULT_CAP_XSD)))


@pytest.fixture(scope="module")
def area() -> cap_xml.CapArea:
    school = Directory.load(default_directory_file()).school("sch-lincoln-hs")
    return cap.school_area(school)


def texts(spanish: bool = True, headline: str = "LOCKDOWN at Lincoln High School") -> list[Any]:
    english = cap.CapText(
        cap.LANGUAGE_EN, headline, "A threat was reported in building A.", "Locks, lights."
    )
    spanish_text = cap.CapText(
        cap.LANGUAGE_ES,
        "CONFINAMIENTO en Lincoln High School",
        "Se reportó una amenaza en el edificio A.",
        "Cierre con llave, apague las luces, ¡fuera de la vista!",
    )
    return [english, spanish_text] if spanish else [english]


def alert(area: cap_xml.CapArea, **overrides: Any) -> cap_xml.CapAlert:
    arguments: dict[str, Any] = {
        "identifier": "ntf-0001.staff",
        "hub_id": HUB,
        "sent": SENT,
        "action": "LOCKDOWN",
        "exercise": False,
        "scope": cap_xml.Scope.RESTRICTED,
        "texts": texts(),
        "area": area,
        "sender_name": "Lincoln High School (SafeHub)",
        "incident_id": "inc-7f3a",
    }
    arguments.update(overrides)
    return cap.srp_alert(**arguments)


def earlier(area: cap_xml.CapArea) -> cap_xml.CapAlert:
    return alert(area, identifier="ntf-0000.staff", sent=SENT - timedelta(minutes=3))


def text_of(xml: bytes, path: str) -> list[str]:
    return [e.text for e in etree.fromstring(xml).iterfind(path, NS)]


# --- every document SafeHub writes is valid -----------------------------------------------


@pytest.mark.parametrize("scope", [cap_xml.Scope.RESTRICTED, cap_xml.Scope.PUBLIC])
@pytest.mark.parametrize(
    "msg_type", [cap_xml.MsgType.ALERT, cap_xml.MsgType.UPDATE, cap_xml.MsgType.CANCEL]
)
@pytest.mark.parametrize("exercise", [False, True])
@pytest.mark.parametrize("action", ACTIONS)
def test_every_srp_action_status_type_and_scope_is_valid_cap(
    xsd: Any,
    area: cap_xml.CapArea,
    action: str,
    exercise: bool,
    msg_type: cap_xml.MsgType,
    scope: cap_xml.Scope,
) -> None:
    references = (
        () if msg_type is cap_xml.MsgType.ALERT else cap_xml.references_for([earlier(area)])
    )
    built = alert(
        area,
        action=action,
        exercise=exercise,
        msg_type=msg_type,
        scope=scope,
        references=references,
    )
    xml = cap_xml.build_alert(built)

    xsd.assertValid(etree.fromstring(xml))
    cap_xml.validate(xml)
    assert text_of(xml, "cap:status") == ["Exercise" if exercise else "Actual"]
    assert text_of(xml, "cap:msgType") == [msg_type.value]
    assert text_of(xml, "cap:scope") == [scope.value]
    assert text_of(xml, "cap:restriction") == (
        [cap.STAFF_RESTRICTION] if scope is cap_xml.Scope.RESTRICTED else []
    )
    assert text_of(xml, "cap:note") == ([cap.EXERCISE_NOTE] if exercise else [])
    assert text_of(xml, "cap:incidents") == ["inc-7f3a"]
    assert text_of(xml, "cap:info/cap:category") == ["Security", "Security"]
    assert text_of(xml, "cap:info/cap:eventCode/cap:valueName") == ["SRP", "SRP"]
    assert text_of(xml, "cap:info/cap:eventCode/cap:value") == [action, action]
    assert text_of(xml, "cap:info/cap:language") == ["en-US", "es-US"]
    profile = cap.SRP_PROFILES[action]
    assert text_of(xml, "cap:info[1]/cap:event") == [profile.events["en-US"]]
    assert text_of(xml, "cap:info[1]/cap:responseType") == [r.value for r in profile.response_types]
    assert (
        text_of(xml, "cap:info/cap:area/cap:areaDesc")
        == ["Lincoln High School, 1200 Lincoln Ave, Northville, TX"] * 2
    )
    assert text_of(xml, "cap:info/cap:area/cap:circle") == ["32.7812,-96.8011 0.5"] * 2
    parsed = cap_xml.parse(xml)
    assert parsed == dataclasses.replace(built, sent=SENT.replace(microsecond=0))


def test_responses_follow_the_documented_srp_mapping(area: cap_xml.CapArea) -> None:
    responses = {
        action: cap_xml.parse(cap_xml.build_alert(alert(area, action=action)))
        .infos[0]
        .response_types
        for action in ACTIONS
    }
    assert responses == {
        "HOLD": (cap_xml.ResponseType.EXECUTE,),
        "SECURE": (cap_xml.ResponseType.SHELTER,),
        "LOCKDOWN": (cap_xml.ResponseType.SHELTER, cap_xml.ResponseType.AVOID),
        "EVACUATE": (cap_xml.ResponseType.EVACUATE,),
        "SHELTER": (cap_xml.ResponseType.SHELTER,),
        "ALL_CLEAR": (cap_xml.ResponseType.ALL_CLEAR,),
    }
    all_clear = cap.srp_info("ALL_CLEAR", texts()[0], sender_name="x", area=area)
    assert (all_clear.urgency, all_clear.severity) == (cap_xml.Urgency.PAST, cap_xml.Severity.MINOR)
    lockdown = cap.srp_info("LOCKDOWN", texts()[0], sender_name="x", area=area)
    assert (lockdown.urgency, lockdown.severity, lockdown.certainty) == (
        cap_xml.Urgency.IMMEDIATE,
        cap_xml.Severity.SEVERE,
        cap_xml.Certainty.OBSERVED,
    )


def xml_legal(text: str) -> str:
    """What XML 1.0 can carry, written independently of the module's own filter."""
    return "".join(
        c
        for c in text
        if c in "\t\n\r"
        or 0x20 <= ord(c) <= 0xD7FF
        or 0xE000 <= ord(c) <= 0xFFFD
        or ord(c) >= 0x10000
    )


TRICKY = st.sampled_from([*"<>&'\"áéíóúñÑ¿¡ü€🚨\x00\x01\x0b\x1f\r\n\t\ufffe", "&amp;", "]]>"])
FREE_TEXT = st.lists(st.characters() | TRICKY, max_size=80).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    action=st.sampled_from(ACTIONS),
    exercise=st.booleans(),
    msg_type=st.sampled_from(
        [cap_xml.MsgType.ALERT, cap_xml.MsgType.UPDATE, cap_xml.MsgType.CANCEL]
    ),
    scope=st.sampled_from([cap_xml.Scope.RESTRICTED, cap_xml.Scope.PUBLIC]),
    headline=FREE_TEXT,
    instruction=FREE_TEXT,
    spanish=FREE_TEXT,
    offset_minutes=st.integers(-14 * 60, 14 * 60),
    microsecond=st.integers(0, 999_999),
)
def test_any_text_and_time_give_valid_cap_that_round_trips(
    xsd: Any,
    area: cap_xml.CapArea,
    action: str,
    exercise: bool,
    msg_type: cap_xml.MsgType,
    scope: cap_xml.Scope,
    headline: str,
    instruction: str,
    spanish: str,
    offset_minutes: int,
    microsecond: int,
) -> None:
    sent = datetime(
        2026, 5, 17, 8, 0, 1, microsecond, tzinfo=timezone(timedelta(minutes=offset_minutes))
    )
    words = [
        cap.CapText(cap.LANGUAGE_EN, headline, "description & <more>", instruction),
        cap.CapText(cap.LANGUAGE_ES, spanish, "descripción", spanish + " ñ"),
    ]
    references = (
        () if msg_type is cap_xml.MsgType.ALERT else cap_xml.references_for([earlier(area)])
    )
    built = alert(
        area,
        action=action,
        exercise=exercise,
        msg_type=msg_type,
        scope=scope,
        texts=words,
        sent=sent,
        references=references,
    )
    xml = cap_xml.build_alert(built)

    xsd.assertValid(etree.fromstring(xml))
    (sent_text,) = text_of(xml, "cap:sent")
    assert CAP_DATETIME.match(sent_text)
    parsed = cap_xml.parse(xml)
    assert parsed.sent == sent.replace(microsecond=0)
    english, spanish_info = parsed.infos
    assert english.headline == xml_legal(headline)
    assert english.instruction == xml_legal(instruction)
    assert english.description == "description & <more>"
    assert spanish_info.language == "es-US"
    assert spanish_info.headline == xml_legal(spanish)
    assert spanish_info.instruction == xml_legal(spanish + " ñ")


def test_sent_has_whole_seconds_and_a_numeric_utc_offset(area: cap_xml.CapArea) -> None:
    xml = cap_xml.build_alert(alert(area))
    assert text_of(xml, "cap:sent") == ["2026-03-02T14:05:09+00:00"]
    assert b"654321" not in xml
    assert cap_xml.cap_datetime(datetime(2026, 1, 1, 12, 0, 0, 999_999, tzinfo=UTC)) == (
        "2026-01-01T12:00:00+00:00"
    )
    odd_offset = timezone(timedelta(hours=5, minutes=30, seconds=15))
    assert cap_xml.cap_datetime(datetime(2026, 1, 1, 12, 0, 0, tzinfo=odd_offset)) == (
        "2026-01-01T06:29:45+00:00"
    )
    with pytest.raises(cap_xml.CapError, match="time zone"):
        cap_xml.build_alert(alert(area, sent=datetime(2026, 1, 1, 12, 0, 0)))


def test_spanish_info_is_present_only_when_spanish_is_requested(area: cap_xml.CapArea) -> None:
    both = cap_xml.parse(cap_xml.build_alert(alert(area)))
    spanish = both.info(cap.LANGUAGE_ES)
    assert spanish is not None
    assert spanish.event == "Confinamiento (Lockdown)"
    assert spanish.instruction == "Cierre con llave, apague las luces, ¡fuera de la vista!"
    only_english = cap_xml.parse(cap_xml.build_alert(alert(area, texts=texts(spanish=False))))
    assert [i.language for i in only_english.infos] == ["en-US"]
    assert only_english.info(cap.LANGUAGE_ES) is None


def test_update_and_cancel_reference_the_earlier_messages(area: cap_xml.CapArea) -> None:
    first = alert(area, identifier="ntf-0001.staff", sent=SENT)
    second = alert(
        area,
        identifier="ntf-0002.staff",
        sent=SENT + timedelta(minutes=5),
        action="ALL_CLEAR",
        msg_type=cap_xml.MsgType.UPDATE,
        references=cap_xml.references_for([first]),
    )
    cancel = alert(
        area,
        identifier="ntf-0003.staff",
        sent=SENT + timedelta(minutes=9),
        msg_type=cap_xml.MsgType.CANCEL,
        references=cap_xml.references_for([second, first, first]),
    )
    update_xml = cap_xml.build_alert(second)
    cancel_xml = cap_xml.build_alert(cancel)

    assert text_of(update_xml, "cap:references") == [
        "safehub.local,ntf-0001.staff,2026-03-02T14:05:09+00:00"
    ]
    assert text_of(cancel_xml, "cap:references") == [
        "safehub.local,ntf-0001.staff,2026-03-02T14:05:09+00:00 "
        "safehub.local,ntf-0002.staff,2026-03-02T14:10:09+00:00"
    ]
    parsed = cap_xml.parse(cancel_xml)
    assert parsed.references == (
        cap_xml.Reference(HUB, "ntf-0001.staff", SENT.replace(microsecond=0)),
        cap_xml.Reference(
            HUB, "ntf-0002.staff", SENT.replace(microsecond=0) + timedelta(minutes=5)
        ),
    )
    assert parsed.references[0] == cap_xml.Reference.of(cap_xml.parse(cap_xml.build_alert(first)))


@pytest.mark.parametrize("msg_type", [cap_xml.MsgType.UPDATE, cap_xml.MsgType.CANCEL])
def test_update_or_cancel_without_references_is_refused(
    area: cap_xml.CapArea, msg_type: cap_xml.MsgType
) -> None:
    with pytest.raises(cap_xml.CapError, match=r"alert/references: a (Update|Cancel) must name"):
        cap_xml.build_alert(alert(area, msg_type=msg_type))


def test_build_refuses_bad_identifiers_and_unknown_actions(area: cap_xml.CapArea) -> None:
    for identifier in ["has space", "a,b", "a<b", "a&b", "", "tab\there", "ctl\x01"]:
        with pytest.raises(cap_xml.CapError, match=r"alert/identifier: must be non-empty without"):
            cap_xml.build_alert(alert(area, identifier=identifier))
    with pytest.raises(cap_xml.CapError, match=r"alert/sender"):
        cap_xml.build_alert(alert(area, hub_id="safe hub"))
    with pytest.raises(cap_xml.CapError, match=r"alert/incidents"):
        cap_xml.build_alert(alert(area, incident_id="inc 1"))
    with pytest.raises(cap_xml.CapError, match="no CAP mapping for SRP action 'UNKNOWN'"):
        alert(area, action="UNKNOWN")


def test_school_without_coordinates_has_an_area_without_circle() -> None:
    school = Directory.load(default_directory_file()).school("sch-lincoln-hs")
    area = cap.school_area(school.model_copy(update={"latitude": None, "longitude": None}))
    assert area == cap_xml.CapArea("Lincoln High School, 1200 Lincoln Ave, Northville, TX")
    assert text_of(cap_xml.build_alert(alert(area)), "cap:info/cap:area/cap:circle") == []


# --- the section 3 rules the XSD does not check ---------------------------------------------

VALID = b"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>ID-1</identifier>
  <sender>hub.example</sender>
  <sent>2026-03-02T14:05:09-06:00</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Restricted</scope>
  <restriction>staff only</restriction>
  <info>
    <category>Security</category>
    <event>Lockdown</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Observed</certainty>
    <area>
      <areaDesc>School</areaDesc>
      <polygon>38.47,-120.14 38.34,-119.95 38.52,-119.74 38.47,-120.14</polygon>
      <circle>32.9525,-115.5527 0</circle>
    </area>
  </info>
</alert>"""


def test_the_rule_fixture_is_valid(xsd: Any) -> None:
    xsd.assertValid(etree.fromstring(VALID))
    parsed = cap_xml.parse(VALID)
    assert parsed.infos[0].areas[0].circles == (cap_xml.Circle(32.9525, -115.5527, 0.0),)
    assert len(parsed.infos[0].areas[0].polygons[0]) == 4


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (b"<identifier>ID-1", b"<identifier>ID 1", r"alert/identifier: must be non-empty"),
        (b"<identifier>ID-1", b"<identifier>ID,1", r"alert/identifier: .*commas"),
        (b"<identifier>ID-1", b"<identifier>ID&amp;1", r"alert/identifier: .*'&'"),
        (b"<sender>hub.example", b"<sender>hub &lt;x", r"alert/sender: .*'<'"),
        (b"<restriction>staff only</restriction>", b"", r"alert/restriction: required when"),
        (b"<restriction>staff only", b"<restriction>  ", r"alert/restriction: required when"),
        (
            b"<scope>Restricted</scope>\n  <restriction>staff only</restriction>",
            b"<scope>Private</scope>",
            r"alert/addresses: required when scope is Private",
        ),
        (
            b"<scope>Restricted</scope>\n  <restriction>staff only</restriction>",
            b'<scope>Private</scope><addresses>"a b</addresses>',
            r"alert/addresses: unbalanced quotes",
        ),
        (
            b"<msgType>Alert</msgType>",
            b"<msgType>Update</msgType>",
            r"alert/references: a Update must name",
        ),
        (
            b"<restriction>staff only</restriction>",
            b"<restriction>staff only</restriction><references>a,b</references>",
            r"alert/references: a space-separated list of 'sender,identifier,sent' triples",
        ),
        (
            b"<restriction>staff only</restriction>",
            b"<restriction>staff only</restriction>"
            b"<references>a,b,2026-03-02T14:05:09.5Z</references>",
            r"alert/references: a space-separated list",
        ),
        (
            b"38.47,-120.14</polygon>",
            b"38.40,-120.14</polygon>",
            r"alert/info\[1\]/area\[1\]/polygon\[1\]: the first and last points",
        ),
        (
            b"<polygon>38.47,-120.14 38.34,-119.95 ",
            b"<polygon>38.47,-120.14 ",
            r"polygon\[1\]: a polygon needs at least 4 points",
        ),
        (b"<polygon>38.47,", b"<polygon>98.47,", r"polygon\[1\]: points are WGS-84"),
        (b"-115.5527 0</circle>", b"-115.5527</circle>", r"circle\[1\]: a circle is 'lat,lon"),
        (b"-115.5527 0</circle>", b"-115.5527 -1</circle>", r"circle\[1\]: the circle radius"),
        (b"-115.5527 0</circle>", b"-115.5527 nan</circle>", r"circle\[1\]: the circle radius"),
        (b"<circle>32.9525,", b"<circle>32.9525;", r"circle\[1\]: points are WGS-84"),
    ],
)
def test_section_3_rules_are_enforced(xsd: Any, old: bytes, new: bytes, expected: str) -> None:
    assert old in VALID
    document = VALID.replace(old, new, 1)
    with pytest.raises(cap_xml.CapError, match=expected):
        cap_xml.validate(document)
    with pytest.raises(cap_xml.CapError, match=expected):
        cap_xml.parse(document)


def test_xsd_errors_name_the_element_without_echoing_large_input() -> None:
    huge_status = "X" * 5000
    document = VALID.replace(b"<status>Actual", f"<status>{huge_status}".encode())
    with pytest.raises(cap_xml.CapError, match=r"CAP 1.2 XSD: line 6: Element 'status'") as error:
        cap_xml.validate(document)
    assert len(str(error.value)) < 400
    assert huge_status not in str(error.value)


def test_a_missing_or_broken_xsd_is_a_config_error(tmp_path: Path) -> None:
    from safehub.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="CAP XSD cannot be read"):
        cap_xml.validate(VALID, xsd_path=tmp_path / "missing.xsd")
    broken = tmp_path / "broken.xsd"
    broken.write_text("<schema/>")
    with pytest.raises(ConfigError, match="is not a valid schema"):
        cap_xml.validate(VALID, xsd_path=broken)


# --- samples written by others ------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_saved_valid_samples_parse_and_validate(xsd: Any, sample: Path) -> None:
    xml = sample.read_bytes()
    xsd.assertValid(etree.fromstring(xml))
    cap_xml.validate(xml)
    parsed = cap_xml.parse(xml)
    assert parsed.identifier == text_of(xml, "cap:identifier")[0]
    assert [i.event for i in parsed.infos] == text_of(xml, "cap:info/cap:event")


def test_sample_details_come_through() -> None:
    amber = cap_xml.parse((STANDARDS / "samples/ibm-cap_amber_alert_example.xml").read_bytes())
    assert [i.language for i in amber.infos] == ["en-US", "es-US"]
    tsunami = cap_xml.parse((STANDARDS / "samples/google-PAAQ-4-mg5a94.xml").read_bytes())
    assert tsunami.msg_type is cap_xml.MsgType.UPDATE
    assert tsunami.incidents == ("mg5a94",)
    assert [r.identifier for r in tsunami.references] == [
        "PAAQ-1-mg5a94",
        "PAAQ-2-mg5a94",
        "PAAQ-3-mg5a94",
    ]
    assert tsunami.references[0].sent == datetime(2013, 1, 5, 9, 1, 16, tzinfo=UTC)
    cancel = cap_xml.parse((STANDARDS / "samples/ipaws-5e6dd9de023f1930ef6548d9.xml").read_bytes())
    assert (cancel.msg_type, cancel.infos, len(cancel.references)) == (
        cap_xml.MsgType.CANCEL,
        (),
        1,
    )
    ipaws = cap_xml.parse((STANDARDS / "samples/ipaws-5e7e0fc5023f1930efcf3deb.xml").read_bytes())
    assert ipaws.codes == ("IPAWSv1.0",)
    assert ipaws.infos[0].event_codes == (cap_xml.NamedValue("SAME", "LAE"),)
    assert ipaws.infos[0].areas[0].geocodes == (cap_xml.NamedValue("SAME", "024031"),)


def test_the_missing_scope_sample_is_rejected_naming_scope(xsd: Any) -> None:
    xml = (NEGATIVE / "google-cap-library-invalid-missing-scope.xml").read_bytes()
    assert not xsd.validate(etree.fromstring(xml))
    with pytest.raises(
        cap_xml.CapError, match=r"CAP 1.2 XSD: .*Expected is one of \( source, scope \)"
    ):
        cap_xml.validate(xml)
    with pytest.raises(cap_xml.CapError, match="scope"):
        cap_xml.parse(xml)


# --- malicious input ----------------------------------------------------------------------


@pytest.fixture
def passwd_markers() -> list[str]:
    """Distinctive pieces of /etc/passwd that must never show up anywhere."""
    lines = [line for line in Path("/etc/passwd").read_text().splitlines() if line.count(":") >= 6]
    assert lines, "the test needs a readable /etc/passwd to prove nothing of it leaks"
    return [line.split(":", 1)[0] + ":x:" for line in lines[:3]] + [lines[0]]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that would see any network fetch the parser attempted."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def assert_no_connection(server: socket.socket) -> None:
    # parse() is synchronous: a fetch during it would already sit in the accept queue.
    with pytest.raises(BlockingIOError):
        server.accept()


def everything_said(error: BaseException) -> str:
    said = []
    current: BaseException | None = error
    while current is not None:
        said += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(said)


def test_the_xxe_sample_is_refused_without_fetching_or_leaking(
    passwd_markers: list[str], listener: socket.socket, capfd: pytest.CaptureFixture[str]
) -> None:
    port = listener.getsockname()[1]
    original = (NEGATIVE / "google-cap-library-xxe-attack.xml").read_bytes()
    pointed_at_us = original.replace(b"localhost:8080", f"127.0.0.1:{port}".encode())
    assert pointed_at_us != original
    for document in [original, pointed_at_us]:
        for call in (cap_xml.parse, cap_xml.validate):
            with pytest.raises(cap_xml.CapError, match="refused: it has a DOCTYPE") as error:
                call(document)
            said = everything_said(error.value)
            assert not any(marker in said for marker in passwd_markers)
    assert_no_connection(listener)
    out, err = capfd.readouterr()
    assert not any(marker in out + err for marker in passwd_markers)


def test_entity_attacks_in_other_encodings_are_refused_after_parsing(
    passwd_markers: list[str], listener: socket.socket
) -> None:
    # UTF-16 hides "<!DOCTYPE" from a byte scan: the check on the parsed tree must catch it.
    port = listener.getsockname()[1]
    document = VALID.replace(
        b"<alert",
        b'<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">'
        b'<!ENTITY net SYSTEM "http://127.0.0.1:' + str(port).encode() + b'/x">]>\n<alert',
    ).replace(b"<event>Lockdown", b"<event>&xxe;&net;Lockdown")
    encoded = document.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    assert b"<!DOCTYPE" not in encoded
    with pytest.raises(cap_xml.CapError, match="refused: it has a DOCTYPE") as error:
        cap_xml.parse(encoded)
    assert not any(marker in everything_said(error.value) for marker in passwd_markers)
    assert_no_connection(listener)


def test_xinclude_and_undeclared_entities_are_refused(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    xinclude = VALID.replace(
        b"<identifier>",
        b'<x xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="http://127.0.0.1:'
        + str(port).encode()
        + b'/1" parse="text"/></x><identifier>',
    )
    with pytest.raises(cap_xml.CapError, match="refused: it uses XInclude"):
        cap_xml.parse(xinclude)
    with pytest.raises(cap_xml.CapError, match="not well-formed XML: Entity 'xxe' not defined"):
        cap_xml.parse(VALID.replace(b"<event>Lockdown", b"<event>&xxe;"))
    assert_no_connection(listener)


BILLION_LAUGHS = """<?xml version="1.0" encoding="{encoding}"?>
<!DOCTYPE alert [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&lol9;</identifier></alert>"""


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16"])
def test_billion_laughs_is_refused(encoding: str) -> None:
    document = BILLION_LAUGHS.format(encoding=encoding).encode(encoding.lower())
    # UTF-8: refused before parsing. UTF-16 passes the byte scan; libxml2 then stops at the
    # amplification of the declarations themselves (nothing is expanded either way).
    refused = "refused: it has a DOCTYPE" if encoding == "UTF-8" else "entity amplification"
    with pytest.raises(cap_xml.CapError, match=refused) as error:
        cap_xml.parse(document)
    assert "lol" not in str(error.value)


def test_documents_over_the_size_limit_are_refused_before_parsing() -> None:
    padded = VALID.replace(b"<event>Lockdown", b"<event>" + b"x" * cap_xml.MAX_CAP_BYTES)
    with pytest.raises(cap_xml.CapError, match=rf"bytes; the limit is {cap_xml.MAX_CAP_BYTES}$"):
        cap_xml.parse(padded)
    with pytest.raises(cap_xml.CapError, match=r"the limit is 100$"):
        cap_xml.validate(VALID, max_bytes=100)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b"", "not well-formed XML"),
        (b"<alert", "not well-formed XML"),
        (b"\xff\xfe\x00garbage", "not well-formed XML"),
        (
            b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.1"/>',
            r"not a CAP 1.2 alert: root element is \{urn:oasis:names:tc:emergency:cap:1.1\}alert",
        ),
        (b"<feed/>", "not a CAP 1.2 alert: root element is feed"),
    ],
)
def test_garbage_is_refused_with_a_clear_error(document: bytes, expected: str) -> None:
    with pytest.raises(cap_xml.CapError, match=expected):
        cap_xml.parse(document)


# --- Atom feed ----------------------------------------------------------------------------


def test_atom_feed_lists_public_alerts_newest_first_linking_their_cap(
    area: cap_xml.CapArea,
) -> None:
    first = alert(area, identifier="ntf-1.public", scope=cap_xml.Scope.PUBLIC)
    later = alert(
        area,
        identifier="ntf-2.public",
        scope=cap_xml.Scope.PUBLIC,
        action="ALL_CLEAR",
        msg_type=cap_xml.MsgType.UPDATE,
        sent=SENT + timedelta(minutes=20),
        references=cap_xml.references_for([first]),
        texts=texts(headline="ALL CLEAR at Lincoln <High> & School"),
    )
    base = "https://hub.example/notify/cap"
    entries = [FeedEntry.for_alert(a, cap_url=f"{base}/{a.identifier}.xml") for a in (first, later)]
    feed = atom_feed(entries, feed_url=f"{base}/feed.atom", title="SafeHub alerts", updated=SENT)

    root = etree.fromstring(feed)
    assert root.tag == f"{{{ATOM_NAMESPACE}}}feed"
    assert root.findtext("atom:id", namespaces=NS) == f"{base}/feed.atom"
    assert root.findtext("atom:updated", namespaces=NS) == "2026-03-02T14:05:09+00:00"
    assert root.find("atom:link[@rel='self']", NS).get("href") == f"{base}/feed.atom"
    assert root.findtext("atom:author/atom:name", namespaces=NS) == "SafeHub"
    listed = root.findall("atom:entry", NS)
    assert [e.findtext("cap:identifier", namespaces=NS) for e in listed] == [
        "ntf-2.public",
        "ntf-1.public",
    ]
    for entry in listed:  # RFC 4287 §4.1.2: id, title, updated are required
        assert entry.findtext("atom:id", namespaces=NS)
        assert entry.findtext("atom:title", namespaces=NS)
        assert CAP_DATETIME.match(entry.findtext("atom:updated", namespaces=NS))
        link = entry.find("atom:link[@rel='alternate']", NS)
        assert link.get("type") == "application/cap+xml"
        assert link.get("href") == entry.findtext("atom:id", namespaces=NS)
    newest = listed[0]
    assert newest.findtext("atom:title", namespaces=NS) == "ALL CLEAR at Lincoln <High> & School"
    assert newest.findtext("cap:event", namespaces=NS) == "All Clear"
    assert newest.findtext("cap:msgType", namespaces=NS) == "Update"
    assert newest.findtext("cap:status", namespaces=NS) == "Actual"
    assert newest.findtext("cap:severity", namespaces=NS) == "Minor"
    assert newest.findtext("cap:areaDesc", namespaces=NS) == area.description


def test_atom_feed_never_lists_staff_alerts(area: cap_xml.CapArea) -> None:
    staff = FeedEntry.for_alert(alert(area), cap_url="https://hub.example/cap/x.xml")
    with pytest.raises(cap_xml.CapError, match="scope Restricted alerts are never listed"):
        atom_feed([staff], feed_url="https://hub.example/feed", title="t", updated=SENT)


def test_feed_entry_of_a_cancel_without_info() -> None:
    cancel = cap_xml.parse((STANDARDS / "samples/ipaws-5e6dd9de023f1930ef6548d9.xml").read_bytes())
    entry = FeedEntry.for_alert(cancel, cap_url="https://hub.example/cap/c.xml")
    assert entry.title == f"Cancel {cancel.identifier}"
    feed = etree.fromstring(
        atom_feed([entry], feed_url="https://hub.example/feed", title="t", updated=SENT)
    )
    assert feed.findtext("atom:entry/cap:msgType", namespaces=NS) == "Cancel"
    assert feed.find("atom:entry/cap:event", NS) is None


# --- sending to a CAP endpoint over real HTTPS ----------------------------------------------

TOKEN = "cap-endpoint-token"
BODY_MARKER = "DO-NOT-ECHO-THIS-BODY"


class CapReceiver:
    """A CAP endpoint: checks the token and media type, then parses and validates with lxml."""

    def __init__(self) -> None:
        self.received: list[cap_xml.CapAlert] = []
        self.lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/cap", self.intake)
        app.router.add_post("/down", self.down)
        return app

    async def intake(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401, text=f"bad token {BODY_MARKER}")
        if request.content_type != "application/cap+xml":
            return web.Response(status=415, text=BODY_MARKER)
        try:
            alert = cap_xml.parse(await request.read())
        except cap_xml.CapError as exc:
            return web.Response(status=400, text=f"{exc} {BODY_MARKER}")
        with self.lock:
            self.received.append(alert)
        return web.Response(status=201)

    async def down(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text=BODY_MARKER)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki(tmp_path_factory.mktemp("cap-pki"))


@pytest.fixture
def endpoint(pki: DevPki) -> Iterator[tuple[str, CapReceiver]]:
    receiver = CapReceiver()
    pair = pki.server("cap-endpoint")
    server = ServerThread(
        ListenSettings(port=0),  # a free port
        ssl_context=server_ssl_context(pair.cert, pair.key),
        name="cap-endpoint",
    )
    port = server.start(receiver.app())
    yield f"https://127.0.0.1:{port}", receiver
    server.close()


def test_post_cap_delivers_a_document_the_endpoint_validates(
    endpoint: tuple[str, CapReceiver], pki: DevPki, area: cap_xml.CapArea
) -> None:
    base, receiver = endpoint
    sent = alert(area, exercise=True, texts=texts())
    post_cap(
        f"{base}/cap",
        cap_xml.build_alert(sent),
        timeout=5.0,
        token=SecretStr(TOKEN),
        ca_bundle=pki.ca.cert,
    )
    assert receiver.received == [dataclasses.replace(sent, sent=SENT.replace(microsecond=0))]
    assert receiver.received[0].status is cap_xml.Status.EXERCISE


def test_post_cap_refusals_carry_the_status_code_and_never_the_body(
    endpoint: tuple[str, CapReceiver], pki: DevPki, area: cap_xml.CapArea
) -> None:
    base, receiver = endpoint
    xml = cap_xml.build_alert(alert(area))
    cases = [
        (f"{base}/cap", SecretStr("wrong"), xml, 401, False),
        (f"{base}/cap", None, xml, 401, False),
        (
            f"{base}/cap",
            SecretStr(TOKEN),
            VALID.replace(b"<scope>Restricted", b"<scope>"),
            400,
            False,
        ),
        (f"{base}/down", SecretStr(TOKEN), xml, 503, True),
    ]
    for url, token, document, status, transient in cases:
        with pytest.raises(
            CapDeliveryError, match=f"CAP endpoint answered HTTP {status}$"
        ) as error:
            post_cap(url, document, timeout=5.0, token=token, ca_bundle=pki.ca.cert)
        assert (error.value.status_code, error.value.transient) == (status, transient)
        assert BODY_MARKER not in everything_said(error.value)
        assert TOKEN not in everything_said(error.value)
    assert receiver.received == []


def test_post_cap_transport_failures_are_transient(
    endpoint: tuple[str, CapReceiver], pki: DevPki, tmp_path: Path
) -> None:
    base, receiver = endpoint
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(CapDeliveryError, match="not reached: ConnectError") as error:
        post_cap(f"https://127.0.0.1:{port}/cap", b"<x/>", timeout=2.0, ca_bundle=pki.ca.cert)
    assert (error.value.status_code, error.value.transient) == (None, True)
    # A server whose certificate our CA bundle does not vouch for is not CAP's endpoint.
    with pytest.raises(CapDeliveryError, match="not reached") as error:
        post_cap(f"{base}/cap", b"<x/>", timeout=2.0, token=SecretStr(TOKEN))
    assert "CERTIFICATE_VERIFY_FAILED" in everything_said(error.value)
    with pytest.raises(CapDeliveryError, match="not reached: FileNotFoundError") as error:
        post_cap(f"{base}/cap", b"<x/>", ca_bundle=tmp_path / "none.pem")
    assert error.value.transient is False
    assert receiver.received == []


def test_the_shipped_schema_is_the_reference_copy_byte_for_byte() -> None:
    """safehub/standards carries the OASIS schema verbatim (and the EIDO facts unchanged)."""
    from connectors.psap_cad.settings import DEFAULT_EIDO_RULES

    assert cap_xml.DEFAULT_CAP_XSD.read_bytes() == (STANDARDS / "CAP-v1.2.xsd").read_bytes()
    reference = STANDARDS.parent / "nena-eido/eido-required-fields.json"
    assert DEFAULT_EIDO_RULES.read_bytes() == reference.read_bytes()
    assert "safehub/standards" in cap_xml.DEFAULT_CAP_XSD.as_posix()
