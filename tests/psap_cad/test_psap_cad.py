"""The PSAP/CAD connector against a real broker and a CAD simulator over real HTTPS (mTLS).

Covers the EIDO builder and validator, dispatch of a silent panic with its place inside the
school, exercises never reaching CAD, idempotency (duplicate events, a kill -9 mid-burst),
updates and cancellations, a CAD outage, and CAD status updates coming back as events.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import statistics
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from connectors.psap_cad.eido import (
    EIDO_MAX_BYTES,
    PRIORITY_BY_CODE,
    EidoBuilder,
    ExerciseDispatchError,
    IncidentSnapshot,
    apco_code,
    civic_address,
)
from connectors.psap_cad.ledger import Decision, Ledger
from connectors.psap_cad.service import PsapCadConnector
from connectors.psap_cad.settings import PsapCadSettings
from connectors.psap_cad.signals import SignalFacts
from safehub.devstack.pki import DevPki
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory
from safehub.kernel.envelope import new_event
from safehub.kernel.errors import ConfigError
from safehub.kernel.live_directory import change_event
from safehub.kernel.settings import KafkaSettings, load_settings
from safehub.kernel.topics import TopicCatalog
from safehub.standards.eido import EidoInvalidError, EidoValidator
from services.incidents.model import report_incident_id
from tests.incidents.threats import SUMMARY as TIP_SUMMARY
from tests.incidents.threats import threat_reported
from tests.support.cad import (
    EIDO_RULES,
    INBOUND_TOKEN,
    SimulatorHandle,
    cleared_event,
    connector_callback_url,
    connector_settings,
    directory,
    incident_event,
    new_incident_id,
    panic_alert,
    running_connector,
    running_simulator,
    start_connector_process,
)
from tests.support.kafka import read_topic
from tests.support.processes import Component
from tests.support.waiting import wait_until

log = logging.getLogger(__name__)

CA = "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr"
GML = "http://www.opengis.net/gml"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def validator() -> EidoValidator:
    return EidoValidator.from_file(EIDO_RULES)


@pytest.fixture
def cad(pki: DevPki) -> Iterator[SimulatorHandle]:
    """A fresh simulated CAD (client certificate required); no exercise may reach it."""
    with running_simulator(pki, require_client_cert=True) as handle:
        yield handle
        # Asserted over the whole test, whatever it did.
        assert handle.stats()["exerciseDeliveries"] == 0


@dataclass
class Hub:
    """The connector under test and a producer standing in for the incidents service."""

    connector: PsapCadConnector
    producer: EventProducer
    settings: PsapCadSettings
    kafka: KafkaSettings
    catalog: TopicCatalog
    codec: Codec

    def publish(self, event: dict[str, Any]) -> None:
        self.producer.publish(event)

    @property
    def ledger(self) -> Ledger:
        return self.connector.ledger

    def handled(self) -> int:
        consumer = self.connector.incident_consumer
        assert consumer is not None
        return consumer.stats.handled

    def settle(self, handled: int) -> None:
        """Wait until ``handled`` incident events are handled and every queued one delivered
        (delivery runs in the PSAP lanes, after the consumer moved on)."""
        wait_until(lambda: self.handled() >= handled, what=f"{handled} incident events handled")
        wait_until(lambda: self.connector.dispatcher.waiting() == 0, what="lanes idle")

    def dispatch_events(self, expect: int, event_type: str) -> list[dict[str, Any]]:
        topic = self.catalog.name("safehub.dispatch.v1")
        events = [
            self.codec.decode(r.value()) for r in read_topic(self.kafka, topic, expect=expect)
        ]
        return [e for e in events if e["envelope"]["event_type"] == f"safehub.events.{event_type}"]


@pytest.fixture
def hub(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    pki: DevPki,
    cad: SimulatorHandle,
    tmp_path: Path,
) -> Iterator[Hub]:
    settings = connector_settings(kafka, catalog, pki, tmp_path, cad_url=cad.intake_url)
    with (
        EventProducer(kafka, codec, catalog) as producer,
        running_connector(settings, codec) as connector,
    ):
        cad.set_callback(connector_callback_url(connector))
        yield Hub(connector, producer, settings, kafka, catalog, codec)


def _snapshot(**changes: Any) -> IncidentSnapshot:
    base = IncidentSnapshot(
        incident_id="inc-unit-1",
        version=1,
        tenant=directory().tenant("sch-lincoln-hs"),
        building="B",
        room="214",
        incident_type="OTHER",
        status="Active",
        srp_action="LOCKDOWN",
        evacuate_location=None,
        shelter_hazard=None,
        shelter_strategy=None,
        correlated_event_ids=("sig-1",),
        summary="Silent panic, Building B room 214",
        updated_at=datetime(2026, 11, 23, 9, 30, tzinfo=UTC),
    )
    return replace(base, **changes)


SILENT_PANIC = SignalFacts(
    "sig-1",
    "panic",
    device_id="badge-0042",
    device_kind="WEARABLE",
    panic_type="OTHER",
    silent=True,
    reporter_role="TEACHER",
    floor="2",
    latitude=32.78125,
    longitude=-96.80105,
)


def _civic(eido: dict[str, Any]) -> dict[str, str]:
    root = ET.fromstring(eido["locationComponent"][0]["locationByValue"])
    address = root.find(f".//{{{CA}}}civicAddress")
    assert address is not None
    return {child.tag.split("}")[1]: child.text or "" for child in address}


def _points(eido: dict[str, Any]) -> list[str]:
    root = ET.fromstring(eido["locationComponent"][0]["locationByValue"])
    return [pos.text or "" for pos in root.iter(f"{{{GML}}}pos")]


# -- builder and validator (no broker) ---------------------------------------------------------


def test_builder_makes_a_valid_eido_for_a_silent_panic(validator: EidoValidator) -> None:
    built = EidoBuilder(directory(), "safehub.test").build(_snapshot(), [SILENT_PANIC])
    eido = built.document
    assert validator.problems(eido) == []
    assert built.apco_code == "ALRPANS" and built.psap_id == "psap-north-county"
    assert eido["eidoVersion"] == "1.0"
    assert eido["issuingElementIdentification"] == "safehub.test"
    incident = eido["incidentComponent"]
    assert incident["incidentTypeCommonRegistryText"] == "ALRPANS"
    assert incident["incidentTrackingIdentifier"] == "inc-unit-1"
    assert incident["incidentStatusCommonRegistryText"] == ["Active"]
    roles = {
        a["agencyType"][0]: a["agencyRoleDescriptionRegistryText"] for a in eido["agencyComponent"]
    }
    assert roles == {"other": ["Informational"], "psap": ["Dispatching"]}
    civic = _civic(eido)
    assert civic["NAM"] == "Lincoln High School"
    assert (civic["BLD"], civic["ROOM"], civic["FLR"]) == ("B", "214", "2")
    assert (civic["HNO"], civic["RD"], civic["A3"], civic["A1"]) == (
        "1200",
        "Lincoln Ave",
        "Northville",
        "TX",
    )
    assert _points(eido) == ["32.781250 -96.801050", "32.781200 -96.801100"]
    alarm = eido["alarmsSensorsComponent"][0]["csaaAlarmInformation"]
    assert "silent panic" in alarm and "badge-0042" in alarm and "sig-1" in alarm
    notes = eido["notesComponent"][0]["notesActionComments"]
    assert "LOCKDOWN: locks, lights, out of sight" in notes
    for component in [eido, incident, *eido["agencyComponent"], *eido["locationComponent"]]:
        assert {"$id", "lastUpdateTimeStamp", "updatedByAgencyReference"} <= component.keys()
    # Same incident version, same document: a re-send after a crash is the same request.
    again = EidoBuilder(directory(), "safehub.test").build(_snapshot(), [SILENT_PANIC])
    assert again.body() == built.body()


def test_builder_escapes_xml_and_html() -> None:
    raw = directory().model_dump()
    school = raw["districts"][0]["schools"][0]
    school["name"] = 'Lincoln <High> & "Sons"'
    odd = Directory.model_validate(raw)
    snapshot = _snapshot(room="2<1>4&", summary="<script>alert(1)</script> & more")
    eido = EidoBuilder(odd, "safehub.test").build(snapshot, [SILENT_PANIC]).document
    civic = _civic(eido)
    assert civic["NAM"] == 'Lincoln <High> & "Sons"'
    assert civic["ROOM"] == "2<1>4&"
    notes = eido["notesComponent"][0]["notesActionComments"]
    assert "<script>" not in notes and "&lt;script&gt;" in notes


def test_builder_refuses_exercises() -> None:
    with pytest.raises(ExerciseDispatchError):
        EidoBuilder(directory(), "safehub.test").build(_snapshot(exercise=True))


@pytest.mark.parametrize(
    ("incident_type", "signals", "code"),
    [
        ("OTHER", [SILENT_PANIC], "ALRPANS"),
        ("OTHER", [replace(SILENT_PANIC, silent=False)], "ALRPANA"),
        ("OTHER", [], "ALMH"),
        ("ACTIVE_ASSAILANT", [SILENT_PANIC], "ACTSHOOT"),
        ("WEAPON", [], "WEAPON"),
        ("OTHER", [SignalFacts("c", "camera", analytic="GUNSHOT")], "SHOOT"),
        # Issue 17: a silent panic is ALRPANS whatever its type (was ALRMED for MEDICAL).
        ("MEDICAL", [replace(SILENT_PANIC, panic_type="MEDICAL")], "ALRPANS"),
        ("MEDICAL", [replace(SILENT_PANIC, panic_type="MEDICAL", silent=False)], "ALRMED"),
        ("THREAT", [SILENT_PANIC], "ALRPANS"),
        ("THREAT", [replace(SILENT_PANIC, silent=False)], "THREATS"),
        ("WEAPON", [SILENT_PANIC], "ALRPANS"),
        ("MEDICAL", [], "SICK"),
        ("FIRE", [], "ALRF"),
        ("THREAT", [], "THREATS"),
        ("MISSING_PERSON", [], "PERMISS"),
    ],
)
def test_apco_codes(
    incident_type: str, signals: list[SignalFacts], code: str, validator: EidoValidator
) -> None:
    assert apco_code(incident_type, signals) == code
    assert code in validator.rules.registries["EIDO-IncidentType-Common (all values)"]


def test_civic_address_keeps_what_does_not_parse() -> None:
    assert civic_address("9 River Rd, Southport, TX 77001", "US-TX") == {
        "country": "US",
        "A1": "TX",
        "A3": "Southport",
        "HNO": "9",
        "RD": "River Rd",
        "PC": "77001",
    }
    assert civic_address("behind the gym", "US-TX")["LOC"] == "behind the gym"


def test_validator_rejects_missing_version_and_bad_enums(validator: EidoValidator) -> None:
    good = EidoBuilder(directory(), "safehub.test").build(_snapshot(), [SILENT_PANIC]).document
    assert validator.problems(good) == []

    without_version = {k: v for k, v in good.items() if k != "eidoVersion"}
    with pytest.raises(EidoInvalidError) as caught:
        validator.validate(without_version)
    assert caught.value.problems == ["eidoVersion: is required"]

    wrong_version = good | {"eidoVersion": "2.0"}
    assert validator.problems(wrong_version) == ["eidoVersion: must be one of: 1.0"]

    agency = good["agencyComponent"][0]
    call = {
        "$id": "call-1",
        "lastUpdateTimeStamp": "2026-11-23T09:30:00Z",
        "updatedByAgencyReference": {"$ref": agency["$id"]},
        "callStateRegistryText": "callAnswered",
        "standardPrimaryCallType": "emergency",
        "direction": "sideways",
        "callStartTimestamp": "2026-11-23T09:29:00Z",
    }
    problems = validator.problems(good | {"callComponent": [call]})
    assert problems == ["callComponent[0].direction: must be one of: incoming, internal, outgoing"]

    broken = json.loads(json.dumps(good))
    broken["incidentComponent"]["incidentStatusCommonRegistryText"] = ["Burning"]
    broken["incidentComponent"]["incidentTypeCommonRegistryText"] = "PANIC"
    broken["agencyComponent"][1]["agencyType"] = ["school"]
    broken["agencyComponent"][1]["agencyRoleDescriptionRegistryText"] = []
    broken["notesComponent"][0]["updatedByAgencyReference"] = {"$ref": "nowhere"}
    del broken["locationComponent"][0]["lastUpdateTimeStamp"]
    broken["locationComponent"][0]["locationByValue"] = '<!DOCTYPE x [<!ENTITY a "b">]><x/>'
    problems = validator.problems(broken)
    assert set(problems) == {
        "incidentComponent.incidentStatusCommonRegistryText: "
        "is not a value of the EIDO-IncidentStatus-Common registry",
        "incidentComponent.incidentTypeCommonRegistryText: "
        "is not a value of the EIDO-IncidentType-Common (all values) registry",
        "agencyComponent[1].agencyType: is not an IANA urn:emergency:service:responder type",
        "agencyComponent[1].agencyRoleDescriptionRegistryText: must not be empty",
        "notesComponent[0].updatedByAgencyReference: "
        "reference does not resolve to a $id in this EIDO",
        "locationComponent[0].lastUpdateTimeStamp: is required",
        "locationComponent[0].locationByValue: must not contain a DTD or entity declarations",
    }
    assert validator.problems([good]) == ["document: must be a JSON object"]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    north = "https://cad-north.example:8443/eido/v1/incidents"
    monkeypatch.setenv("SAFEHUB_PSAP_CAD__CAD_ENDPOINTS", json.dumps({"psap-north-county": north}))
    monkeypatch.setenv("SAFEHUB_PSAP_CAD__INBOUND_TOKEN", "hunter2")
    settings = load_settings(PsapCadSettings)
    config = settings.psap_cad
    assert config.endpoint_for("psap-north-county") == north
    assert config.endpoint_for("psap-elsewhere") == config.cad_url
    assert config.inbound_token.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()
    monkeypatch.setenv("SAFEHUB_PSAP_CAD__CLIENT_CERT", "/tmp/cert.pem")
    with pytest.raises(ConfigError, match="SAFEHUB_PSAP_CAD"):
        load_settings(PsapCadSettings)


def test_ledger_gives_the_same_answers_on_sqlite_and_postgresql(database_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    ledger = Ledger(database_url, table_prefix=prefix)
    try:
        snapshot = _snapshot()
        assert ledger.decision("inc-unit-1", 1) is None
        ledger.record_delivery(
            snapshot, psap_id="psap-north-county", cad_incident_id="CAD-1", eido_id="e1"
        )
        ledger.record_delivery(
            snapshot, psap_id="psap-north-county", cad_incident_id="CAD-1", eido_id="e1"
        )
        record = ledger.dispatched("inc-unit-1")
        assert record is not None and record.cad_incident_id == "CAD-1"
        assert record.snapshot == snapshot and record.fingerprint == snapshot.fingerprint()
        ledger.record_decision("inc-unit-1", 2, Decision.UNCHANGED)
        assert [d.decision for d in ledger.history("inc-unit-1")] == ["sent", "unchanged"]
        ledger.put_signal(SILENT_PANIC)
        ledger.put_signal(SILENT_PANIC)
        assert ledger.signals_for(["nope", "sig-1"]) == [SILENT_PANIC]
        ledger.record_inbound("ev-1", "inc-unit-1", "CAD-1", "ResourcesEnroute")
        assert ledger.inbound_ids(["ev-1", "ev-2"]) == {"ev-1"}
        assert ledger.dispatched_by_cad_id("CAD-1") is not None
    finally:
        with ledger._engine.begin() as conn:  # tidy up the shared database
            for table in (
                ledger.incidents,
                ledger.decisions,
                ledger.signals,
                ledger.inbound,
                ledger.outbox,
            ):
                table.drop(conn)
        ledger.close()


# -- with a broker, the connector and the simulated CAD ----------------------------------------


@pytest.mark.kafka
def test_silent_panic_reaches_cad_with_building_room_and_alrpans(
    hub: Hub, cad: SimulatorHandle, validator: EidoValidator, spans: InMemorySpanExporter
) -> None:
    alert = panic_alert()
    hub.publish(alert)
    incident_id = new_incident_id()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("panic pressed") as root:
        hub.publish(
            incident_event(
                incident_id=incident_id,
                correlated=[alert["envelope"]["event_id"]],
                srp_action="LOCKDOWN",
            )
        )
    at_cad = cad.wait_incident(incident_id)
    eido = at_cad["lastEido"]
    assert validator.problems(eido) == []
    assert at_cad["apcoCode"] == "ALRPANS" and at_cad["versions"] == [1]
    civic = _civic(eido)
    assert (civic["NAM"], civic["BLD"], civic["ROOM"]) == ("Lincoln High School", "B", "214")
    assert "Building B" in eido["locationComponent"][0]["locationDescriptionText"]
    assert "Room 214" in eido["locationComponent"][0]["locationDescriptionText"]

    dispatch = wait_until(lambda: hub.dispatch_events(1, "CadDispatch"), what="CadDispatch")[0]
    assert dispatch["incident_id"] == incident_id and dispatch["incident_version"] == 1
    assert (dispatch["psap_id"], dispatch["apco_incident_type"], dispatch["status"]) == (
        "psap-north-county",
        "ALRPANS",
        "Active",
    )
    assert json.loads(dispatch["eido"]) == eido and dispatch["eido_id"] == eido["$id"]
    assert "STUDENT_RECORD" in dispatch["envelope"]["classification"]

    # One trace: test root → Kafka send → consumer process → dispatch → HTTP client span,
    # and the traceparent header CAD received belongs to it.
    trace_id = f"{root.get_span_context().trace_id:032x}"
    delivery = next(d for d in cad.deliveries() if d["trackingId"] == incident_id)
    assert delivery["traceparent"].split("-")[1] == trace_id
    finished = wait_until(
        lambda: [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT],
        what="HTTP client span",
    )
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    client = finished[0]
    assert client.parent is not None
    dispatch_span = by_id[client.parent.span_id]
    assert dispatch_span.name == "psap_cad dispatch" and dispatch_span.parent is not None
    process_span = by_id[dispatch_span.parent.span_id]
    assert process_span.name.startswith("process ") and process_span.kind == SpanKind.CONSUMER
    assert f"{client.context.trace_id:032x}" == trace_id


@pytest.mark.kafka
def test_a_school_changed_at_run_time_is_in_the_next_eido(
    hub: Hub, cad: SimulatorHandle, validator: EidoValidator
) -> None:
    """The connector follows the live directory: a school's new address, published on the
    directory topic while it runs, is in the next EIDO, without a restart."""
    seed = directory()
    lincoln = seed.school("sch-lincoln-hs")
    moved = lincoln.model_copy(update={"address": "77 Temporary Campus Rd, Northville, TX"})
    assert moved.address != lincoln.address
    hub.publish(
        change_event(
            seed, "SCHOOL", moved, version=1, changed_by="ops-1", district_id="dist-north-isd"
        )
    )
    wait_until(
        lambda: hub.connector.directory.current().school(lincoln.id).address == moved.address,
        what="the new address followed",
    )
    incident_id = new_incident_id()
    hub.publish(incident_event(incident_id=incident_id))
    eido = cad.wait_incident(incident_id)["lastEido"]
    assert validator.problems(eido) == []
    place = eido["locationComponent"][0]["locationDescriptionText"]
    assert "77 Temporary Campus Rd" in place and lincoln.address not in place


@pytest.mark.kafka
def test_exercises_and_non_dispatchable_incidents_never_reach_cad(
    hub: Hub, cad: SimulatorHandle
) -> None:
    drill, sneaky, quiet, real = (new_incident_id() for _ in range(4))
    hub.publish(panic_alert(exercise=True))
    hub.publish(incident_event(incident_id=drill, exercise=True))
    # Defence in depth: an exercise marked dispatchable by mistake is still never sent.
    mistaken = incident_event(incident_id=sneaky, exercise=True)
    mistaken["dispatchable"] = True
    hub.publish(mistaken)
    hub.publish(cleared_event(incident_id=drill, version=2, outcome="DRILL_COMPLETE"))
    hub.publish(incident_event(incident_id=quiet, dispatchable=False, incident_type="FIGHT"))
    hub.publish(incident_event(incident_id=real, incident_type="FIGHT"))

    cad.wait_incident(real)
    others = (drill, sneaky, quiet)

    def decided() -> dict[tuple[str, int], str] | None:
        found = {
            (d.incident_id, d.version): d.decision
            for d in hub.ledger.history()
            if d.incident_id in others
        }
        return found if len(found) == 4 else None

    decisions = wait_until(decided, what="decisions on the other incidents")
    assert decisions == {
        (drill, 1): Decision.EXERCISE,
        (drill, 2): Decision.EXERCISE,
        (sneaky, 1): Decision.EXERCISE,
        (quiet, 1): Decision.NOT_DISPATCHABLE,
    }
    assert [i["trackingId"] for i in cad.incidents()] == [real]
    assert {d["trackingId"] for d in cad.deliveries()} == {real}


@pytest.mark.kafka
def test_duplicate_event_gives_one_cad_incident_and_one_delivery(
    hub: Hub, cad: SimulatorHandle
) -> None:
    incident_id = new_incident_id()
    opened = incident_event(incident_id=incident_id, incident_type="WEAPON")
    hub.publish(opened)
    hub.publish(opened)  # a redelivery: the same event, the same event id
    hub.settle(2)
    at_cad = cad.incident(incident_id)
    assert at_cad is not None and at_cad["deliveries"] == 1 and at_cad["versions"] == [1]
    assert len(cad.incidents()) == 1
    assert [d["outcome"] for d in cad.deliveries()] == ["created"]
    assert [d.decision for d in hub.ledger.history(incident_id)] == [Decision.SENT]


@pytest.mark.kafka
def test_version_change_updates_the_same_cad_incident(hub: Hub, cad: SimulatorHandle) -> None:
    incident_id = new_incident_id()
    hub.publish(incident_event(incident_id=incident_id))
    created = cad.wait_incident(incident_id)
    hub.publish(
        incident_event(
            "IncidentChanged",
            incident_id=incident_id,
            version=2,
            incident_type="ACTIVE_ASSAILANT",
            state="CONFIRMED",
            srp_action="LOCKDOWN",
            summary="Confirmed: armed intruder, Building B",
        )
    )
    # Only staff wording and the (CAD-known) RESPONDING state change: nothing to send.
    hub.publish(
        incident_event(
            "IncidentChanged",
            incident_id=incident_id,
            version=3,
            incident_type="ACTIVE_ASSAILANT",
            state="RESPONDING",
            srp_action="LOCKDOWN",
            summary="Officers on the way",
        )
    )
    hub.settle(3)
    updated = cad.incident(incident_id)
    assert updated is not None
    assert updated["cadIncidentId"] == created["cadIncidentId"]
    assert updated["versions"] == [1, 2] and updated["apcoCode"] == "ACTSHOOT"
    assert "LOCKDOWN" in updated["lastEido"]["notesComponent"][0]["notesActionComments"]
    assert len(cad.incidents()) == 1
    assert [d.decision for d in hub.ledger.history(incident_id)] == [
        Decision.SENT,
        Decision.SENT,
        Decision.UNCHANGED,
    ]
    dispatches = wait_until(lambda: hub.dispatch_events(2, "CadDispatch"), what="dispatches")
    assert sorted(d["incident_version"] for d in dispatches) == [1, 2]


@pytest.mark.kafka
def test_cad_outage_delays_but_does_not_lose_the_dispatch(hub: Hub, cad: SimulatorHandle) -> None:
    cad.outage(seconds=2.5)
    incident_id = new_incident_id()
    published = time.time()
    hub.publish(incident_event(incident_id=incident_id, incident_type="ACTIVE_ASSAILANT"))
    at_cad = cad.wait_incident(incident_id)
    refused = [d for d in cad.deliveries() if d["outcome"] == "outage"]
    assert len(refused) >= 2, "the connector kept retrying while CAD was down"
    assert at_cad["createdAt"] - published >= 2.0
    assert at_cad["versions"] == [1] and at_cad["deliveries"] == 1
    assert hub.connector.incident_consumer is not None
    assert hub.connector.incident_consumer.stats.dead_lettered == 0


@pytest.mark.kafka
def test_stop_during_an_outage_leaves_the_dispatch_to_the_next_run(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    pki: DevPki,
    cad: SimulatorHandle,
    tmp_path: Path,
) -> None:
    settings = connector_settings(kafka, catalog, pki, tmp_path, cad_url=cad.intake_url)
    incident_id = new_incident_id()
    cad.outage(down=True)
    with EventProducer(kafka, codec, catalog) as producer:
        with running_connector(settings, codec) as connector:
            producer.publish(incident_event(incident_id=incident_id))
            wait_until(
                lambda: [d for d in cad.deliveries() if d["outcome"] == "outage"],
                what="the connector retrying against a CAD that is down",
            )
        # Stopped mid-retry: not dead-lettered, not committed.
        assert connector.incident_consumer is not None
        assert connector.incident_consumer.stats.dead_lettered == 0
        assert cad.incident(incident_id) is None
        cad.outage(down=False)
        with running_connector(settings, codec):
            at_cad = cad.wait_incident(incident_id)
    assert at_cad["versions"] == [1] and at_cad["deliveries"] == 1
    dead = read_topic(kafka, catalog.dead_letter, expect=1, timeout=1)
    assert dead == []


@pytest.mark.kafka
def test_cancellation_reaches_cad_as_cancelled(hub: Hub, cad: SimulatorHandle) -> None:
    by_state, by_clear = new_incident_id(), new_incident_id()
    for incident_id in (by_state, by_clear):
        hub.publish(incident_event(incident_id=incident_id))
    cad.wait_incident(by_state)
    cad.wait_incident(by_clear)
    hub.publish(
        incident_event(
            "IncidentChanged",
            incident_id=by_state,
            version=2,
            state="CANCELLED",
            dispatchable=False,
            summary="Panic pressed by mistake",
        )
    )
    hub.publish(cleared_event(incident_id=by_clear, version=2, outcome="FALSE_ALARM"))
    for incident_id in (by_state, by_clear):
        cancelled = cad.wait_incident(incident_id, until=lambda c: c["status"] == "Cancelled")
        assert cancelled["versions"] == [1, 2]
        assert cancelled["lastEido"]["incidentComponent"]["incidentStatusCommonRegistryText"] == [
            "Cancelled"
        ]
    dispatches = wait_until(lambda: hub.dispatch_events(4, "CadDispatch"), what="dispatches")
    cancels = {d["incident_id"] for d in dispatches if d["cancel"]}
    assert cancels == {by_state, by_clear}


@pytest.mark.kafka
def test_cad_status_update_comes_back_as_an_event_and_is_not_echoed(
    hub: Hub, cad: SimulatorHandle
) -> None:
    incident_id = new_incident_id()
    hub.publish(incident_event(incident_id=incident_id, incident_type="WEAPON"))
    cad_id = cad.wait_incident(incident_id)["cadIncidentId"]

    answer = cad.post_status(
        cad_id, "ResourcesEnroute", units=["P-12", {"id": "E-7", "status": "Dispatched"}]
    )
    assert answer["callbackStatus"] == 202
    update = wait_until(lambda: hub.dispatch_events(2, "CadStatusUpdate"), what="update")[0]
    assert update["cad_incident_id"] == cad_id and update["incident_id"] == incident_id
    assert update["psap_id"] == "psap-north-county" and update["status"] == "ResourcesEnroute"
    assert [(u["unit_id"], u["status"]) for u in update["units"]] == [
        ("P-12", "Enroute"),
        ("E-7", "Dispatched"),
    ]
    assert update["units"][0]["agency"] == "urn:cad:cad.sim.local:agency:police"
    assert update["envelope"]["tenant"]["school"] == "sch-lincoln-hs"
    assert update["envelope"]["building"] == "B" and update["envelope"]["room"] == "214"

    # The incidents service reacts to CAD (responding, then closed): nothing goes back to CAD.
    hub.publish(
        incident_event(
            "IncidentChanged",
            incident_id=incident_id,
            version=2,
            incident_type="WEAPON",
            state="RESPONDING",
            summary="Units en route",
            causation_id=update["envelope"]["event_id"],
        )
    )
    closed = cad.post_status(cad_id, "Closed", disposition="03")
    assert closed["callbackStatus"] == 202
    updates = wait_until(lambda: hub.dispatch_events(3, "CadStatusUpdate"), what="close")
    closing = next(u for u in updates if u["status"] == "Closed")
    assert closing["disposition_code"] == "03"
    hub.publish(
        incident_event(
            "IncidentChanged",
            incident_id=incident_id,
            version=3,
            incident_type="WEAPON",
            state="CLOSED",
            summary="Closed by CAD",
            causation_id=closing["envelope"]["event_id"],
        )
    )
    hub.settle(3)
    assert [d.decision for d in hub.ledger.history(incident_id)] == [
        Decision.SENT,
        Decision.UNCHANGED,
        Decision.CAD_ORIGINATED,
    ]
    at_cad = cad.incident(incident_id)
    assert at_cad is not None and at_cad["versions"] == [1]


@pytest.mark.kafka
def test_inbound_endpoint_rejects_bad_input(
    hub: Hub, cad: SimulatorHandle, pki: DevPki, validator: EidoValidator
) -> None:
    url = connector_callback_url(hub.connector)
    client = httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca.cert)), timeout=10)
    auth = {"Authorization": f"Bearer {INBOUND_TOKEN}"}
    marker = "PAYLOAD-MARKER-7731"
    with client:
        assert (
            client.post(url, content=b"{}", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        assert client.post(url, content=b"{}").status_code == 401

        bad_json = client.post(url, content=f'{{"{marker}": '.encode(), headers=auth)
        assert bad_json.status_code == 400
        assert bad_json.json() == {"error": "body is not valid JSON"}
        assert marker not in bad_json.text

        document = EidoBuilder(directory(), "cad.test").build(_snapshot()).document
        document["incidentComponent"]["incidentTypeInternalText"] = marker
        del document["eidoVersion"]
        invalid = client.post(url, json=document, headers=auth)
        assert invalid.status_code == 400
        assert invalid.json()["problems"] == ["eidoVersion: is required"]
        assert marker not in invalid.text

        document["eidoVersion"] = "1.0"
        no_cad_id = client.post(url, json=document, headers=auth)
        assert no_cad_id.status_code == 400 and "internalIncidentId" in no_cad_id.json()["error"]

        document["incidentComponent"]["internalIncidentId"] = "CAD-X"
        unknown = client.post(url, json=document, headers=auth)
        assert unknown.status_code == 404 and marker not in unknown.text
    topic = hub.catalog.name("safehub.dispatch.v1")
    assert read_topic(hub.kafka, topic, expect=1, timeout=1) == []


@pytest.mark.kafka
@pytest.mark.slow
def test_simulator_auto_mode_reports_en_route_then_on_scene(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, pki: DevPki, tmp_path: Path
) -> None:
    with running_simulator(pki, auto=True) as cad:
        settings = connector_settings(
            kafka, catalog, pki, tmp_path, cad_url=cad.intake_url, client_cert=False
        )
        with (
            EventProducer(kafka, codec, catalog) as producer,
            running_connector(settings, codec) as connector,
        ):
            cad.set_callback(connector_callback_url(connector))
            incident_id = new_incident_id()
            producer.publish(incident_event(incident_id=incident_id))
            topic = catalog.name("safehub.dispatch.v1")

            def statuses() -> list[str] | None:
                events = [
                    codec.decode(r.value()) for r in read_topic(kafka, topic, expect=3, timeout=1)
                ]
                found = [
                    e["status"]
                    for e in events
                    if e["envelope"]["event_type"] == "safehub.events.CadStatusUpdate"
                ]
                return found if len(found) >= 2 else None

            got = wait_until(statuses, timeout=20, what="en route and on scene")
            assert got == ["ResourcesEnroute", "ResourcesOnscene"]


# -- crash and latency ------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
def test_kill_9_mid_burst_leaves_every_incident_at_cad_exactly_once(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    pki: DevPki,
    cad: SimulatorHandle,
    tmp_path: Path,
) -> None:
    settings = connector_settings(kafka, catalog, pki, tmp_path, cad_url=cad.intake_url)
    cad.latency(20)  # a slower CAD keeps the burst in flight long enough to kill mid-way
    incident_ids = [new_incident_id() for _ in range(50)]
    log_file = tmp_path / "connector.log"
    process = start_connector_process(settings, log_file)
    try:
        with EventProducer(kafka, codec, catalog) as producer:
            futures = [
                producer.publish_nowait(
                    incident_event(incident_id=i, incident_type="ACTIVE_ASSAILANT")
                )
                for i in incident_ids
            ]
            for future in futures:
                future.result(timeout=30)
        wait_until(lambda: len(cad.incidents()) >= 15, timeout=60, what="burst under way")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        at_kill = len(cad.incidents())
        assert at_kill < 50, "the burst finished before the kill; nothing was proven"
        cad.latency(0)
        process = start_connector_process(settings, log_file)
        wait_until(lambda: len(cad.incidents()) == 50, timeout=90, what="all 50 at CAD")
        ledger = Ledger(settings.psap_cad.ledger_url)
        try:
            wait_until(
                lambda: len([d for d in ledger.history() if d.decision == Decision.SENT]) == 50,
                timeout=30,
                what="every dispatch recorded",
            )
        finally:
            ledger.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except Exception:
            process.kill()
    incidents = cad.incidents()
    assert sorted(i["trackingId"] for i in incidents) == sorted(incident_ids)
    assert all(i["versions"] == [1] for i in incidents), "a version was accepted twice"
    accepted = [d for d in cad.deliveries() if d["outcome"] in ("created", "updated")]
    assert len(accepted) == 50
    # At most the one request in flight at the kill is sent again (and CAD sees it as such).
    duplicates = [d for d in cad.deliveries() if d["outcome"] == "duplicate"]
    assert len(duplicates) <= 1, duplicates


@pytest.mark.kafka
@pytest.mark.slow
def test_latency_from_incident_event_to_eido_at_cad(
    hub: Hub, cad: SimulatorHandle, record_property: Any
) -> None:
    count = 200
    published: dict[str, float] = {}
    for _ in range(count):
        alert = panic_alert()
        hub.publish(alert)
        incident_id = new_incident_id()
        event = incident_event(incident_id=incident_id, correlated=[alert["envelope"]["event_id"]])
        published[incident_id] = time.time()
        hub.publish(event)
        time.sleep(0.02)  # pacing: ~50 incidents/s, so this measures latency, not a backlog
    wait_until(lambda: len(cad.incidents()) == count, timeout=120, what="all incidents at CAD")
    arrived = {d["trackingId"]: d["at"] for d in cad.deliveries() if d["outcome"] == "created"}
    latencies_ms = sorted((arrived[i] - t) * 1000 for i, t in published.items())
    p50 = statistics.median(latencies_ms)
    p99 = latencies_ms[int(len(latencies_ms) * 0.99) - 1]
    codes = {i["apcoCode"] for i in cad.incidents()}
    record_property("p50_ms", round(p50, 1))
    record_property("p99_ms", round(p99, 1))
    log.warning("incident event → EIDO at CAD: p50 %.1f ms, p99 %.1f ms (n=%d)", p50, p99, count)
    assert codes == {"ALRPANS"}, "every alert's details arrived in time"
    assert p50 < 100, f"p50 {p50:.1f} ms"


# -- issue 17 ---------------------------------------------------------------------------------


def _wait_signals(hub: Hub, alerts: list[dict[str, Any]]) -> None:
    """Wait until the connector has the alerts' facts (they travel on another topic)."""
    ids = [a["envelope"]["event_id"] for a in alerts]
    wait_until(lambda: len(hub.ledger.signals_for(ids)) == len(ids), what="alert facts")


@pytest.mark.kafka
def test_silent_panic_of_any_type_reaches_cad_as_alrpans_at_top_priority(
    hub: Hub, cad: SimulatorHandle, validator: EidoValidator
) -> None:
    # (panic type, silent, incident type the incidents service gives it) → (APCO, priority)
    cases = {
        ("OTHER", True, "THREAT"): ("ALRPANS", 10),
        ("MEDICAL", True, "MEDICAL"): ("ALRPANS", 10),
        ("FIRE", True, "FIRE"): ("ALRPANS", 10),
        ("OTHER", False, "THREAT"): ("THREATS", 7),
    }
    alerts = {case: panic_alert(panic_type=case[0], silent=case[1]) for case in cases}
    for alert in alerts.values():
        hub.publish(alert)
    _wait_signals(hub, list(alerts.values()))
    incidents: dict[tuple[str, bool, str], str] = {}
    for case, alert in alerts.items():
        incidents[case] = new_incident_id()
        hub.publish(
            incident_event(
                incident_id=incidents[case],
                incident_type=case[2],
                correlated=[alert["envelope"]["event_id"]],
            )
        )
    top = max(PRIORITY_BY_CODE.values())
    assert top == 10
    for case, (code, priority) in cases.items():
        at_cad = cad.wait_incident(incidents[case])
        component = at_cad["lastEido"]["incidentComponent"]
        got = (at_cad["apcoCode"], component["incidentCommonPriorityNumber"])
        assert got == (code, priority), case
        assert validator.problems(at_cad["lastEido"]) == []
        alarm = at_cad["lastEido"]["alarmsSensorsComponent"][0]["csaaAlarmInformation"]
        assert ("silent panic" if case[1] else "audible panic") in alarm


def _update_times(node: Any) -> list[str]:
    """Every lastUpdateTimeStamp anywhere in an EIDO."""
    if isinstance(node, dict):
        found = [node["lastUpdateTimeStamp"]] if "lastUpdateTimeStamp" in node else []
        return found + [t for v in node.values() for t in _update_times(v)]
    if isinstance(node, list):
        return [t for v in node for t in _update_times(v)]
    return []


@pytest.mark.kafka
def test_eido_update_times_are_hub_time_never_a_device_clock(
    hub: Hub, cad: SimulatorHandle
) -> None:
    device_clock = datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)
    alert = panic_alert(occurred_at=device_clock)
    hub.publish(alert)
    _wait_signals(hub, [alert])
    incident_id = new_incident_id()
    before = datetime.now(UTC).replace(microsecond=0)
    # An incident event as older incidents services wrote it: occurred_at from the device.
    hub.publish(
        incident_event(
            incident_id=incident_id,
            correlated=[alert["envelope"]["event_id"]],
            occurred_at=device_clock,
        )
    )
    opened = cad.wait_incident(incident_id)["lastEido"]
    hub.publish(
        cleared_event(
            incident_id=incident_id, version=2, outcome="FALSE_ALARM", occurred_at=device_clock
        )
    )
    cleared = cad.wait_incident(incident_id, until=lambda c: c["status"] == "Cancelled")
    after = datetime.now(UTC)
    for eido in (opened, cleared["lastEido"]):
        stamps = _update_times(eido)
        assert len(stamps) >= 5
        for stamp in stamps:
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            assert before <= when <= after, stamp
        root = ET.fromstring(eido["locationComponent"][0]["locationByValue"])
        expiry = next(e.text for e in root.iter() if e.tag.endswith("retention-expiry"))
        assert expiry is not None and datetime.fromisoformat(expiry.replace("Z", "+00:00")) > after


def _malformed_status_bodies(valid: dict[str, Any], marker: str) -> list[tuple[str, bytes, str]]:
    """(what, body, content type) of status updates CAD should never send (a few hundred)."""
    json_type = "application/json"
    raw = json.dumps(valid).encode()
    bodies: list[tuple[str, bytes, str]] = [
        ("empty", b"", json_type),
        ("invalid UTF-8", b'{"' + marker.encode() + b'": "\xff\xfe"}', json_type),
        ("invalid UTF-8 in a valid update", raw.replace(b'"1.0"', b'"1.0\xc3"'), json_type),
        ("UTF-16", json.dumps(valid).encode("utf-16"), json_type),
        ("UTF-32", json.dumps(valid).encode("utf-32"), json_type),
        ("BOM", b"\xef\xbb\xbf" + raw, json_type),
        ("NaN", raw[:-1] + b',"x":NaN}', json_type),
        ("Infinity", raw[:-1] + b',"x":-Infinity}', json_type),
        ("huge integer", raw[:-1] + b',"x":' + b"9" * 5000 + b"}", json_type),
        ("huge float", raw[:-1] + b',"x":1e999999}', json_type),
        ("deep arrays", b"[" * 100_000 + b"]" * 100_000, json_type),
        ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, json_type),
        (
            "deep in a valid update",
            raw[:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
            json_type,
        ),
        ("truncated", raw[: len(raw) // 2], json_type),
        (
            "lone surrogate",
            raw.replace(b'"1.0"', b'"1.0"').replace(
                valid["incidentComponent"]["internalIncidentId"].encode(),
                valid["incidentComponent"]["internalIncidentId"].encode() + b"\\ud800",
            ),
            json_type,
        ),
    ]
    for content_type in (
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "image/png",
        "application/json; charset=latin-1",
    ):
        bodies.append((f"content type {content_type}", raw, content_type))
    for cut in range(1, 40):
        bodies.append((f"truncated at {cut}/40", raw[: len(raw) * cut // 40], json_type))
    for value in ([], "text", 1, 1.5, None, True, [valid]):
        bodies.append((f"document {value!r:.20}", json.dumps(value).encode(), json_type))
    wrong_types: list[Any] = [None, 0, -1, 1.5, 10**30, True, "", [], [1], {}, {"a": 1}]
    # Absent or empty, these are a legitimate update (no units, no disposition, CAD id only).
    optional = {
        ("emergencyResourceComponent", None),
        ("emergencyResourceComponent", "[]"),
        ("dispositionComponent", None),
        ("dispositionComponent", "[]"),
        ("incidentTrackingIdentifier", None),
        ("emergencyResourceName", None),
    }
    top_fields = [
        "$id",
        "eidoVersion",
        "issuingElementIdentification",
        "lastUpdateTimeStamp",
        "updatedByAgencyReference",
        "agencyComponent",
        "incidentComponent",
        "agentComponent",
        "emergencyResourceComponent",
    ]
    incident_fields = [
        "$id",
        "internalIncidentId",
        "incidentTrackingIdentifier",
        "incidentStatusCommonRegistryText",
        "incidentTypeCommonRegistryText",
        "lastUpdateTimeStamp",
        "updatedByAgencyReference",
        "dispositionComponent",
    ]
    resource_fields = [
        "$id",
        "agentReference",
        "emergencyResourceName",
        "primaryUnitStatusRegistryText",
    ]

    def variant(what: str, change: Any) -> None:
        words = what.split()
        if (words[-1], None) in optional and words[0] == "missing":
            return
        if "=" in words and (words[-3], words[-1]) in optional | {(n, "None") for n, _ in optional}:
            return
        document = json.loads(raw)
        change(document)
        bodies.append((what, json.dumps(document).encode(), json_type))

    for name in top_fields:
        variant(f"missing {name}", lambda d, n=name: d.pop(n))
        for value in wrong_types:
            variant(f"{name} = {value!r:.20}", lambda d, n=name, v=value: d.__setitem__(n, v))
    for name in incident_fields:
        if name in valid["incidentComponent"]:
            variant(f"missing incident {name}", lambda d, n=name: d["incidentComponent"].pop(n))
        for value in wrong_types:
            variant(
                f"incident {name} = {value!r:.20}",
                lambda d, n=name, v=value: d["incidentComponent"].__setitem__(n, v),
            )
    for name in resource_fields:
        variant(f"missing unit {name}", lambda d, n=name: d["emergencyResourceComponent"][0].pop(n))
        for value in wrong_types:
            variant(
                f"unit {name} = {value!r:.20}",
                lambda d, n=name, v=value: d["emergencyResourceComponent"][0].__setitem__(n, v),
            )
    for value in wrong_types:
        variant(
            f"agent agencyReference = {value!r:.20}",
            lambda d, v=value: d["agentComponent"][0].__setitem__("agencyReference", v),
        )
        variant(
            f"disposition item = {value!r:.20}",
            lambda d, v=value: d["incidentComponent"].__setitem__("dispositionComponent", [v]),
        )
    return bodies


@pytest.mark.kafka
def test_inbound_endpoint_answers_every_malformed_request_with_4xx_never_5xx(
    hub: Hub, cad: SimulatorHandle, pki: DevPki
) -> None:
    incident_id = new_incident_id()
    hub.publish(incident_event(incident_id=incident_id, incident_type="WEAPON"))
    cad_id = cad.wait_incident(incident_id)["cadIncidentId"]
    simulated = cad.server.simulator.by_cad_id[cad_id]
    valid = cad.server.simulator.status_eido(simulated, "ResourcesEnroute", [{"id": "P-12"}], "03")
    marker = "PAYLOAD-MARKER-5150"
    bodies = _malformed_status_bodies(valid, marker)
    assert len(bodies) >= 300
    url = connector_callback_url(hub.connector)
    client = httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca.cert)), timeout=30)
    auth = f"Bearer {INBOUND_TOKEN}"
    answers: dict[str, int] = {}
    wrong: list[str] = []
    with client:
        for what, body, content_type in bodies:
            headers = {"Authorization": auth, "Content-Type": content_type}
            response = client.post(url, content=body, headers=headers)
            answers[what] = response.status_code
            if not 400 <= response.status_code < 500:
                wrong.append(f"{what}: {response.status_code}")
                continue
            reason = response.json()
            assert isinstance(reason.get("error"), str) and reason["error"], what
            assert marker not in response.text and "P-12" not in response.text, what
        odd_token = client.post(
            url, content=json.dumps(valid).encode(), headers={b"Authorization": b"Bearer \xff"}
        )
        if odd_token.status_code != 401:
            wrong.append(f"non-UTF-8 bearer: {odd_token.status_code}")
        assert wrong == [], f"{len(wrong)} of {len(bodies)} not answered 4xx: {wrong}"
        log.warning("malformed status updates: %d, all 4xx", len(bodies))
        accepted = client.post(url, json=valid, headers={"Authorization": auth})
        assert accepted.status_code == 202, accepted.text
    update = wait_until(lambda: hub.dispatch_events(2, "CadStatusUpdate"), what="update")
    assert [(u["status"], u["disposition_code"]) for u in update] == [("ResourcesEnroute", "03")]


def _camera_alert(index: int, *, building: str = "B") -> dict[str, Any]:
    """A CameraAlert with every text at the gateway's maximum size."""
    camera = f"cam-{index % 40:02d}-" + "x" * 121  # 128 characters, 40 cameras
    return new_event(
        "CameraAlert",
        source="video-analytics-north",
        tenant=directory().tenant("sch-lincoln-hs"),
        building=building,
        payload={
            "camera_id": camera,
            "vendor_alert_id": f"va-{index}-" + "v" * 100,
            "analytic": "WEAPON",
            "confidence": 0.97,
            "clip_url": f"https://video.example/clip/{index}/" + "c" * 2000,
            "snapshot_url": None,
        },
    )


@pytest.mark.kafka
def test_a_noisy_incident_keeps_its_eido_within_budget_and_summarises_the_rest(
    hub: Hub, cad: SimulatorHandle, validator: EidoValidator
) -> None:
    """Item 10: 480 maximum-size weapon alerts in one incident once made a 1 MB EIDO."""
    alerts = [_camera_alert(i) for i in range(480)]
    for alert in alerts:
        hub.publish(alert)
    _wait_signals(hub, alerts)
    incident_id = new_incident_id()
    ids = [a["envelope"]["event_id"] for a in alerts]
    hub.publish(
        incident_event(incident_id=incident_id, incident_type="WEAPON", correlated=ids, room=None)
    )
    eido = cad.wait_incident(incident_id)["lastEido"]
    size = len(json.dumps(eido, separators=(",", ":"), ensure_ascii=False).encode())
    assert size <= EIDO_MAX_BYTES, f"EIDO of {size} bytes"
    assert validator.problems(eido) == []
    alarms = [a["csaaAlarmInformation"] for a in eido["alarmsSensorsComponent"]]
    summaries = [a for a in alarms if "more camera alert" in a]
    assert len(summaries) == 1, alarms
    shown = len(alarms) - 1
    assert f"and {480 - shown} more camera alert(s) ({480 - shown} weapon)" in summaries[0]
    assert "and 32 other camera(s)" in summaries[0]  # 8 of the 40 cameras named
    assert incident_id in summaries[0]
    dispatch = wait_until(lambda: hub.dispatch_events(1, "CadDispatch"), what="CadDispatch")
    assert json.loads(dispatch[0]["eido"]) == eido


@pytest.mark.kafka
def test_a_burst_on_one_incident_does_not_delay_another_schools_dispatch(
    hub: Hub, cad: SimulatorHandle
) -> None:
    """Item 10: versions of a noisy incident coalesce; the other school goes ahead of them."""
    cad.latency(40)
    noisy, other = new_incident_id(), new_incident_id()
    versions = 100
    for version in range(1, versions + 1):
        hub.publish(
            incident_event(
                "IncidentOpened" if version == 1 else "IncidentChanged",
                incident_id=noisy,
                version=version,
                # Each version names one more signal: a change CAD is sent.
                correlated=[f"signal-{noisy}-{n}" for n in range(version)],
            )
        )
    hub.publish(
        incident_event(incident_id=other, school="sch-washington-ms", building="MAIN", room=None)
    )
    cad.wait_incident(other)
    final = cad.wait_incident(noisy, until=lambda c: c["versions"][-1] == versions)
    order = [d["trackingId"] for d in cad.deliveries() if d["outcome"] != "outage"]
    before_other = order[: order.index(other)].count(noisy)
    # Serially, all 100 versions went first (4 s at this CAD's pace) and CAD lagged behind.
    assert before_other < versions / 2, f"{before_other} noisy deliveries before the other school"
    assert final["versions"] == sorted(final["versions"]), "versions reach CAD in order"
    assert len(final["versions"]) < versions, "waiting versions were coalesced into the newest"


@pytest.mark.kafka
def test_a_psap_whose_cad_is_down_does_not_delay_another_psaps_dispatch(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    pki: DevPki,
    cad: SimulatorHandle,
    tmp_path: Path,
) -> None:
    """Item 10: each PSAP has its own delivery lane."""
    with running_simulator(pki, require_client_cert=True) as north_cad:
        north_cad.outage(down=True)
        settings = connector_settings(
            kafka,
            catalog,
            pki,
            tmp_path,
            cad_url=cad.intake_url,
            cad_endpoints={"psap-north-county": north_cad.intake_url},
        )
        north = [new_incident_id() for _ in range(20)]
        south = new_incident_id()
        with (
            EventProducer(kafka, codec, catalog) as producer,
            running_connector(settings, codec),
        ):
            for incident_id in north:
                producer.publish(incident_event(incident_id=incident_id))
            wait_until(
                lambda: [d for d in north_cad.deliveries() if d["outcome"] == "outage"],
                what="north county's CAD refusing",
            )
            producer.publish(
                incident_event(
                    incident_id=south, school="sch-riverside-es", building="1", room=None
                )
            )
            at_south = cad.wait_incident(south)
            assert at_south["versions"] == [1]
            assert all(north_cad.incident(i) is None for i in north)
            north_cad.outage(down=False)
            for incident_id in north:
                assert north_cad.wait_incident(incident_id)["deliveries"] == 1
        assert north_cad.stats()["exerciseDeliveries"] == 0


# -- ThreatReported: a life-safety tip sent down the emergency path ----------------------------


def _threat_facts(category: str, event_id: str = "sig-tip-1") -> SignalFacts:
    return SignalFacts(
        event_id,
        "threat",
        report_source="TIP",
        category=category,
        imminent=True,
        summary=TIP_SUMMARY,
        report_url="https://tips.example.org/api/tips/tip-1",
    )


@pytest.mark.parametrize(
    ("incident_type", "signals", "code"),
    [
        ("THREAT", [_threat_facts("WEAPON")], "WEAPON"),
        ("THREAT", [_threat_facts("SELF_HARM")], "SUICTHRT"),
        ("THREAT", [_threat_facts("THREAT_OF_VIOLENCE")], "THREATS"),
        ("THREAT", [_threat_facts("OTHER")], "THREATS"),
        ("THREAT", [_threat_facts("SELF_HARM"), _threat_facts("WEAPON", "sig-tip-2")], "WEAPON"),
        ("THREAT", [_threat_facts("WEAPON"), SILENT_PANIC], "ALRPANS"),
        ("ACTIVE_ASSAILANT", [_threat_facts("WEAPON")], "ACTSHOOT"),
    ],
)
def test_apco_codes_of_reported_threats(
    incident_type: str, signals: list[SignalFacts], code: str, validator: EidoValidator
) -> None:
    assert apco_code(incident_type, signals) == code
    assert code in validator.rules.registries["EIDO-IncidentType-Common (all values)"]


def test_builder_makes_a_valid_eido_for_a_reported_threat(validator: EidoValidator) -> None:
    snapshot = _snapshot(
        incident_type="THREAT",
        building=None,
        room=None,
        srp_action=None,
        correlated_event_ids=("sig-tip-1",),
        summary="Threat at Lincoln High School; imminent threat reported by a tip (weapon)",
    )
    built = EidoBuilder(directory(), "safehub.test").build(snapshot, [_threat_facts("WEAPON")])
    assert validator.problems(built.document) == []
    assert built.apco_code == "WEAPON"
    assert built.document["incidentComponent"]["incidentCommonPriorityNumber"] == 9
    (alarm,) = built.document["alarmsSensorsComponent"]
    assert "imminent threat reported by a tip (weapon)" in alarm["csaaAlarmInformation"]
    assert TIP_SUMMARY in alarm["csaaAlarmInformation"]
    assert alarm["alarmUrl"] == "https://tips.example.org/api/tips/tip-1"


@pytest.mark.kafka
def test_a_threat_report_reaches_cad_through_the_incidents_service_as_a_valid_eido(
    hub: Hub, cad: SimulatorHandle, validator: EidoValidator, tmp_path: Path
) -> None:
    incidents = Component("services.incidents", hub.kafka, hub.catalog.prefix, tmp_path)
    try:
        incidents.start()
        now = datetime.now(UTC)
        drill = threat_reported(at=now, exercise=True)
        report = threat_reported(at=now, category="WEAPON")
        hub.publish(drill)  # a drill first: it must never reach CAD (the cad fixture checks)
        hub.publish(report)
        hub.publish(threat_reported(report["report_id"], at=now, event_id="tip-cad-retry"))
        incident_id = report_incident_id(report["report_id"])
        at_cad = cad.wait_incident(incident_id)
        eido = at_cad["lastEido"]
        assert validator.problems(eido) == []
        assert at_cad["apcoCode"] == "WEAPON" and at_cad["versions"] == [1]
        assert eido["incidentComponent"]["incidentTypeInternalText"] == "THREAT"
        alarm = eido["alarmsSensorsComponent"][0]
        assert TIP_SUMMARY in alarm["csaaAlarmInformation"]
        assert alarm["alarmUrl"] == report["tip_link"]
        assert report["envelope"]["event_id"] in alarm["csaaAlarmInformation"]
        notes = eido["notesComponent"][0]["notesActionComments"]
        assert "imminent threat reported by a tip (weapon)" in notes
        assert _civic(eido)["NAM"] == "Lincoln High School"
        drill_id = report_incident_id(drill["report_id"])
        wait_until(
            lambda: [d.decision for d in hub.ledger.history(drill_id)] == [Decision.EXERCISE],
            what="the drill's decision",
        )
        assert [i["trackingId"] for i in cad.incidents()] == [incident_id]
        dispatch = wait_until(lambda: hub.dispatch_events(1, "CadDispatch"), what="CadDispatch")
        assert dispatch[0]["apco_incident_type"] == "WEAPON"
    finally:
        incidents.kill()
