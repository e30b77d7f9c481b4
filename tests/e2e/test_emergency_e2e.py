"""The emergency path end to end: gRPC over mTLS → gateway → Kafka → incidents → psap_cad →
HTTPS → CAD simulator, every component a real process (as ``safehub up`` runs them)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2

from safehub.devstack.hub import Hub
from safehub.gen.safehub.common.v1 import place_pb2, srp_pb2
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.codec import Codec
from safehub.kernel.directory import DIRECTORY_FILE_VARIABLE, default_directory_file
from safehub.kernel.envelope import event_id_for
from safehub.kernel.people import People
from safehub.kernel.settings import HubSettings, KafkaSettings
from safehub.standards.eido import EidoValidator
from services.incidents.model import incident_id_for
from tests.support.cad import EIDO_RULES, CadAdmin
from tests.support.kafka import read_topic
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WINDOW_S = 5.0
CANCEL_WINDOW_S = 8.0


def _test_directory(run_dir: Path) -> Path:
    """The demo directory plus buildings T01…T99 at Lincoln: one per test, so that signals of
    different tests (all on the hub's clock within seconds) never correlate."""
    data = json.loads(default_directory_file().read_text(encoding="utf-8"))
    lincoln = next(
        s for d in data["districts"] for s in d["schools"] if s["id"] == "sch-lincoln-hs"
    )
    for n in range(1, 100):
        building = f"T{n:02d}"
        lincoln["buildings"].append(
            {
                "id": building,
                "name": f"Test building {building}",
                "rooms": ["214", "101", "corridor-2"],
                "doors": [{"id": f"{building}-east-entry", "name": "east", "exterior": True}],
            }
        )
    path = run_dir / "directory.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


class E2E:
    """The running hub, gRPC stubs per client system, and the CAD simulator's admin API."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.cad = CadAdmin(hub.cad_simulator_url, hub.pki)
        self._channels: list[grpc.Channel] = []

    def stub(self, client_id: str) -> ingest_pb2_grpc.IngestServiceStub:
        channel = self.hub.pki.grpc_channel(self.hub.gateway_address, client_id)
        self._channels.append(channel)
        return ingest_pb2_grpc.IngestServiceStub(channel)

    def cad_incident(self, incident_id: str) -> dict[str, Any] | None:
        return next((i for i in self.cad.incidents() if i["trackingId"] == incident_id), None)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.cad.close()


@pytest.fixture(scope="module")
def e2e(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    settings = HubSettings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=f"e2e{uuid.uuid4().hex[:6]}.",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
    )
    run_dir = tmp_path_factory.mktemp("hub")
    env = {
        "SAFEHUB_INCIDENTS__CORRELATION_WINDOW_S": str(WINDOW_S),
        "SAFEHUB_INCIDENTS__CANCEL_WINDOW_S": str(CANCEL_WINDOW_S),
        DIRECTORY_FILE_VARIABLE: str(_test_directory(run_dir)),
    }
    with Hub(settings, run_dir=run_dir, cad_auto=False, env=env) as hub:
        running = E2E(hub)
        try:
            yield running
            # Over the whole run: not one exercise reached the 911 centre.
            stats = running.cad.stats()
            assert stats["exerciseDeliveries"] == 0
            assert all(
                "EXERCISE" not in str(i["lastEido"]).upper() for i in running.cad.incidents()
            )
        finally:
            running.close()


def _at(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _place(building: str = "B", room: str = "") -> place_pb2.Place:
    return place_pb2.Place(school_id="sch-lincoln-hs", building=building, room=room)


def _panic(
    e2e: E2E,
    *,
    when: datetime | None = None,
    client_event_id: str | None = None,
    exercise: bool = False,
    building: str = "B",
    room: str = "214",
) -> tuple[str, str]:
    """Send a panic; returns (client_event_id, expected incident id if it opens one)."""
    client_event_id = client_event_id or str(uuid.uuid4())
    answer = e2e.stub("panic-badges-north").ReportPanic(
        ingest_pb2.ReportPanicRequest(
            client_event_id=client_event_id,
            place=_place(building, room),
            device_id="badge-0042",
            reporter_role=ingest_pb2.REPORTER_ROLE_TEACHER,
            panic_type=ingest_pb2.PANIC_TYPE_ACTIVE_ASSAILANT,
            silent=True,
            exercise=exercise,
            occurred_at=_at(when or datetime.now(UTC)),
        ),
        timeout=10,
    )
    assert answer.event_id == event_id_for("panic-badges-north", client_event_id)
    return client_event_id, incident_id_for(answer.event_id)


#: Each test places its signals at its own offset from here, far apart from the others,
#: so no test's signals fall into another's correlation window.
EPOCH = datetime.now(UTC) - timedelta(hours=2)


def _quiet_slot(offset_s: float) -> datetime:
    """A moment of this test's own (outside every other test's correlation window)."""
    return EPOCH + timedelta(seconds=offset_s)


def test_panic_reaches_cad_as_a_valid_eido_with_building_and_room(e2e: E2E) -> None:
    _, incident_id = _panic(e2e, when=_quiet_slot(0), building="T01")
    cad = wait_until(lambda: e2e.cad_incident(incident_id), what="CAD incident")
    eido = cad["lastEido"]
    EidoValidator.from_file(EIDO_RULES).validate(eido)
    location = cad["locationByValue"]
    assert "214" in location and ">T01<" in location.replace(" ", "")
    assert eido["incidentComponent"]["incidentTrackingIdentifier"] == incident_id


def test_the_same_panic_sent_twice_is_one_cad_incident(e2e: E2E) -> None:
    when = _quiet_slot(20)
    client_event_id, incident_id = _panic(e2e, when=when, building="T02")
    again = e2e.stub("panic-badges-north").ReportPanic(
        ingest_pb2.ReportPanicRequest(
            client_event_id=client_event_id,
            place=_place("T02", "214"),
            device_id="badge-0042",
            reporter_role=ingest_pb2.REPORTER_ROLE_TEACHER,
            panic_type=ingest_pb2.PANIC_TYPE_ACTIVE_ASSAILANT,
            silent=True,
            occurred_at=_at(when),
        ),
        timeout=10,
    )
    assert again.duplicate
    wait_until(lambda: e2e.cad_incident(incident_id), what="CAD incident")
    trackings = Counter(i["trackingId"] for i in e2e.cad.incidents())
    assert trackings[incident_id] == 1
    assert e2e.cad_incident(incident_id)["versions"] == [1]  # type: ignore[index]


def test_three_correlated_signals_are_one_incident_at_cad(e2e: E2E) -> None:
    start = _quiet_slot(40)
    _, incident_id = _panic(e2e, when=start, building="T03")
    # The panic alone goes to CAD at once; it is not held for the signals that follow.
    wait_until(lambda: e2e.cad_incident(incident_id), what="the panic at CAD")
    e2e.stub("vision-analytics-north").ReportCameraAlert(
        ingest_pb2.ReportCameraAlertRequest(
            client_event_id=str(uuid.uuid4()),
            place=_place("T03", "corridor-2"),
            camera_id="cam-B2-07",
            analytic=ingest_pb2.CAMERA_ANALYTIC_WEAPON,
            confidence=0.93,
            occurred_at=_at(start + timedelta(seconds=1)),
        ),
        timeout=10,
    )
    from safehub.gen.safehub.common.v1 import door_pb2

    e2e.stub("acme-access-north").ReportDoorState(
        ingest_pb2.ReportDoorStateRequest(
            client_event_id=str(uuid.uuid4()),
            place=_place("T03"),
            door_id="T03-east-entry",
            state=door_pb2.DOOR_STATE_FORCED_OPEN,
            exterior=True,
            occurred_at=_at(start + timedelta(seconds=2)),
        ),
        timeout=10,
    )
    cad = wait_until(
        lambda: (i := e2e.cad_incident(incident_id)) and i["versions"][-1] >= 3 and i,
        what="three signals folded into one CAD incident",
    )
    # Versions 2 and 3 may wait behind one in flight and be coalesced into 3 (issue 17.10).
    assert cad["versions"][0] == 1 and cad["versions"][-1] == 3
    assert cad["versions"] == sorted(set(cad["versions"]))
    assert sum(1 for i in e2e.cad.incidents() if i["trackingId"] == incident_id) == 1
    assert cad["apcoCode"] in ("ACTSHOOT", "ALRPANS", "WEAPON")


def test_a_drill_never_reaches_cad(e2e: E2E) -> None:
    staff = e2e.stub("staff-app-lincoln")
    before = e2e.cad.stats()["requests"]
    staff.RequestSrpAction(
        ingest_pb2.RequestSrpActionRequest(
            client_event_id=str(uuid.uuid4()),
            action=srp_pb2.SRP_ACTION_LOCKDOWN,
            place=_place("T04"),
            requested_by="staff-principal-01",
            exercise=True,
        ),
        timeout=10,
    )
    _, drill_incident = _panic(e2e, when=_quiet_slot(60), exercise=True, building="T05")
    # A real panic sent after the drill arrives; the drill's never does.
    _, real_incident = _panic(e2e, when=_quiet_slot(80), building="T06")
    wait_until(lambda: e2e.cad_incident(real_incident), what="real panic at CAD")
    assert e2e.cad_incident(drill_incident) is None
    assert e2e.cad.stats()["exerciseDeliveries"] == 0
    assert e2e.cad.stats()["requests"] >= before + 1


def test_cad_down_for_a_while_gets_the_dispatch_once_back(e2e: E2E) -> None:
    e2e.cad.outage(down=True)
    try:
        _, incident_id = _panic(e2e, when=_quiet_slot(100), building="T07")
        wait_until(
            lambda: sum(1 for d in e2e.cad.deliveries() if d.get("outcome") == "outage") >= 2,
            what="the connector retrying against the outage",
        )
        assert e2e.cad_incident(incident_id) is None
    finally:
        e2e.cad.outage(down=False)
    wait_until(lambda: e2e.cad_incident(incident_id), timeout=30, what="dispatch after outage")


@pytest.mark.parametrize("victim", ["services.incidents", "connectors.psap_cad"])
def test_kill_9_mid_burst_loses_no_dispatch_and_duplicates_none(e2e: E2E, victim: str) -> None:
    burst = 30
    base = _quiet_slot(1000 if victim == "services.incidents" else 2000)
    first_building = 10 if victim == "services.incidents" else 40
    sent: list[str] = []
    for i in range(burst):
        # Each panic in a building of its own: 30 separate incidents.
        _, incident_id = _panic(
            e2e,
            when=base + timedelta(seconds=(WINDOW_S + 1) * i),
            building=f"T{first_building + i:02d}",
        )
        sent.append(incident_id)
        if i == burst // 3:
            e2e.hub.stop_component(victim, kill=True)
            e2e.hub.start_component(victim, wait=False)
    wait_until(
        lambda: all(e2e.cad_incident(i) for i in sent), timeout=90, what="every dispatch at CAD"
    )
    incidents = e2e.cad.incidents()
    trackings = Counter(i["trackingId"] for i in incidents)
    assert all(trackings[i] == 1 for i in sent), "one CAD incident per SafeHub incident"
    for incident in incidents:
        if incident["trackingId"] in sent:
            assert incident["versions"] == [1], "no version accepted twice or skipped"


def test_a_panic_cancelled_in_the_window_is_dispatched_then_cancelled_at_cad(e2e: E2E) -> None:
    when = _quiet_slot(3000)
    client_event_id, incident_id = _panic(e2e, when=when, building="T70")
    # Dispatch is never held back waiting for a possible cancellation.
    wait_until(lambda: e2e.cad_incident(incident_id), what="first dispatch")
    answer = e2e.stub("panic-badges-north").CancelPanic(
        ingest_pb2.CancelPanicRequest(
            client_event_id=str(uuid.uuid4()),
            place=_place("T70", "214"),
            panic_client_event_id=client_event_id,
            device_id="badge-0042",
            reason="pressed by mistake",
            cancelled_by="teacher-7",
            occurred_at=_at(when + timedelta(seconds=20)),
        ),
        timeout=10,
    )
    assert answer.outcome == ingest_pb2.SIGNAL_OUTCOME_APPLIED
    cad = wait_until(
        lambda: (i := e2e.cad_incident(incident_id)) and i["status"] == "Cancelled" and i,
        what="cancellation at CAD",
    )
    assert cad["versions"] == [1, 2]


AUDITOR = {"Authorization": "Bearer demo-token-state-auditor"}


def _timeline(e2e: E2E, path: str) -> Any:
    response = httpx.get(e2e.hub.timeline_url + path, headers=AUDITOR, timeout=10)
    return response.json() if response.status_code == 200 else None


def test_the_timeline_holds_every_step_in_order_with_one_trace_from_gateway_to_cad(
    e2e: E2E,
) -> None:
    # Now, in building A: the SRP request (stamped now by the gateway) joins this incident.
    _, incident_id = _panic(e2e, building="T71", room="101")
    # The panic goes to CAD on its own first: a version still waiting when the next one comes
    # is coalesced into it (issue 17.10), and would reach CAD under the SRP request's trace.
    wait_until(lambda: e2e.cad_incident(incident_id), what="the panic at CAD")
    e2e.stub("staff-app-lincoln").RequestSrpAction(
        ingest_pb2.RequestSrpActionRequest(
            client_event_id=str(uuid.uuid4()),
            action=srp_pb2.SRP_ACTION_LOCKDOWN,
            place=_place("T71"),
            requested_by="staff-principal-01",
        ),
        timeout=10,
    )
    wanted = {
        "PanicAlert": "gateway",
        "IncidentOpened": "incidents",
        "CadDispatch": "cad",
        "SrpActionRequested": "people",
        "LockCommand": "doors",
        "NotificationRequested": "notifications",
        "DeliveryReceipt": "notifications",
    }
    through = {"safehub-gateway", "safehub-incidents", "safehub-psap_cad"}

    def complete() -> tuple[list[Any], list[Any]] | None:
        page = _timeline(e2e, f"/api/v1/subjects/{incident_id}/timeline?limit=5000")
        if page is None:
            return None
        entries = page["entries"]
        kinds = {e["event_type"].rsplit(".", 1)[-1] for e in entries}
        panic = next((e for e in entries if e["event_type"].endswith("PanicAlert")), None)
        if not set(wanted) <= kinds or panic is None:
            return None
        trace = _timeline(e2e, f"/api/v1/traces/{panic['trace_id']}")
        spans = trace["spans"] if trace else []
        if not through <= {s["service"] for s in spans}:
            return None
        # Spans are exported in batches by each process: wait until the tree is whole.
        known = {s["span_id"] for s in spans}
        if sum(1 for s in spans if s["parent_span_id"] not in known) != 1:
            return None
        return entries, spans

    entries, spans = wait_until(complete, timeout=60, what="the incident's timeline and trace")
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    first = {}
    for entry in entries:
        kind = entry["event_type"].rsplit(".", 1)[-1]
        first.setdefault(kind, entry)
        if kind in wanted and kind != "SrpActionRequested":
            assert entry["lane"] == wanted[kind], kind
    # In the order things happened (the chain's seq is the order of recording, which across
    # topics need not be causal): the panic, then the incident, then the dispatch to CAD.
    occurred = {kind: datetime.fromisoformat(e["occurred_at"]) for kind, e in first.items()}
    assert occurred["PanicAlert"] <= occurred["IncidentOpened"] <= occurred["CadDispatch"]
    # One trace: the dispatch to CAD carries the panic's trace, and its spans form one tree
    # rooted at the gateway's gRPC server span.
    trace_id = first["PanicAlert"]["trace_id"]
    assert first["IncidentOpened"]["trace_id"] == trace_id
    assert first["CadDispatch"]["trace_id"] == trace_id
    by_id = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_span_id"] not in by_id]
    assert [r["service"] for r in roots] == ["safehub-gateway"]
    for span in spans:
        ancestor, hops = span, 0
        while ancestor["parent_span_id"] in by_id:
            ancestor = by_id[ancestor["parent_span_id"]]
            hops += 1
            assert hops < 50
        assert ancestor is roots[0], f"{span['name']} is not in the gateway's tree"
    chain = _timeline(e2e, f"/api/v1/subjects/{incident_id}/verify")
    assert chain["ok"], chain
    # The lockdown told the school's staff; the people view lists each of them.
    staff = {m.id for m in People.load(default_directory_file()).school("sch-lincoln-hs").staff}

    def people_listed() -> bool:
        people = _timeline(e2e, f"/api/v1/subjects/{incident_id}/people")
        return bool(people) and staff <= {r["recipient_id"] for r in people["recipients"]}

    wait_until(people_listed, timeout=60, what="every staff member in the people view")


# -- issue 17: life-safety defects found by driving the gateway as an outside vendor ------------


def _cancel(
    e2e: E2E,
    client_id: str,
    panic_event_id: str,
    *,
    school: str = "sch-lincoln-hs",
    building: str = "",
    exercise: bool = False,
    occurred_at: datetime | None = None,
    cancelled_by: str = "",
) -> ingest_pb2.CancelPanicResponse:
    request = ingest_pb2.CancelPanicRequest(
        client_event_id=str(uuid.uuid4()),
        place=place_pb2.Place(school_id=school, building=building),
        panic_event_id=panic_event_id,
        device_id="badge-0042",
        reason="pressed by mistake",
        cancelled_by=cancelled_by,
        exercise=exercise,
    )
    if occurred_at is not None:
        request.occurred_at.CopyFrom(_at(occurred_at))
    answer: ingest_pb2.CancelPanicResponse = e2e.stub(client_id).CancelPanic(request, timeout=10)
    return answer


def _srp_call(e2e: E2E, action: int, building: str = "", **fields: Any) -> Any:
    return e2e.stub("staff-app-lincoln").RequestSrpAction(
        ingest_pb2.RequestSrpActionRequest(
            client_event_id=str(uuid.uuid4()),
            action=action,
            place=place_pb2.Place(school_id="sch-lincoln-hs", building=building),
            requested_by="stf-lincoln-000",
            **fields,
        ),
        timeout=10,
    )


def _refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: grpc.RpcError = caught.value
    return error


def test_only_the_raiser_may_cancel_a_real_panic_others_are_denied(e2e: E2E) -> None:
    client_event_id = str(uuid.uuid4())
    _, incident_id = _panic(e2e, client_event_id=client_event_id, building="T81")
    panic_id = event_id_for("panic-badges-north", client_event_id)
    wait_until(lambda: e2e.cad_incident(incident_id), what="dispatch")
    # Another client system of the same district, and another district's panic vendor.
    same_district = _refused(lambda: _cancel(e2e, "staff-app-lincoln", panic_id))
    assert same_district.code() == grpc.StatusCode.PERMISSION_DENIED
    other_district = _refused(
        lambda: _cancel(e2e, "panic-badges-south", panic_id, school="sch-riverside-es")
    )
    assert other_district.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "sch-lincoln" not in (other_district.details() or "")
    cad = e2e.cad_incident(incident_id)
    assert cad is not None and cad["status"] != "Cancelled"
    # The raiser may (within the window on the hub's clock).
    answer = _cancel(e2e, "panic-badges-north", panic_id, building="T81")
    assert answer.outcome == ingest_pb2.SIGNAL_OUTCOME_APPLIED


def test_the_cancel_window_is_measured_on_the_hub_clock_not_a_backdated_device_time(
    e2e: E2E,
) -> None:
    client_event_id = str(uuid.uuid4())
    sent = datetime.now(UTC)
    _, incident_id = _panic(e2e, client_event_id=client_event_id, building="T82", when=sent)
    panic_id = event_id_for("panic-badges-north", client_event_id)
    wait_until(lambda: e2e.cad_incident(incident_id), what="dispatch")
    # Wait (on a condition, with a deadline) until the window has passed on the hub's clock.
    wait_until(
        lambda: datetime.now(UTC) > sent + timedelta(seconds=CANCEL_WINDOW_S + 1),
        timeout=CANCEL_WINDOW_S + 10,
        what="the cancel window to pass",
    )
    late = _refused(
        lambda: _cancel(e2e, "panic-badges-north", panic_id, building="T82", occurred_at=sent)
    )
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cancel window" in (late.details() or "")
    cad = e2e.cad_incident(incident_id)
    assert cad is not None and cad["status"] != "Cancelled"


def test_a_drill_flag_on_the_cancellation_of_a_real_panic_is_refused(e2e: E2E) -> None:
    client_event_id = str(uuid.uuid4())
    _, incident_id = _panic(e2e, client_event_id=client_event_id, building="T83")
    panic_id = event_id_for("panic-badges-north", client_event_id)
    wait_until(lambda: e2e.cad_incident(incident_id), what="dispatch")
    mismatch = _refused(
        lambda: _cancel(e2e, "panic-badges-north", panic_id, building="T83", exercise=True)
    )
    assert mismatch.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "exercise flag" in (mismatch.details() or "")
    cad = e2e.cad_incident(incident_id)
    assert cad is not None and cad["status"] == "Active"


def test_refused_srp_actions_fail_naming_the_state_and_allowed_actions(e2e: E2E) -> None:
    nothing = _refused(lambda: _srp_call(e2e, srp_pb2.SRP_ACTION_ALL_CLEAR, "T84"))
    assert nothing.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "NORMAL → ALL_CLEAR" in (nothing.details() or "")
    locked = _srp_call(e2e, srp_pb2.SRP_ACTION_LOCKDOWN, "T84")
    assert locked.outcome == ingest_pb2.SIGNAL_OUTCOME_APPLIED and locked.incident_hint
    hold = _refused(lambda: _srp_call(e2e, srp_pb2.SRP_ACTION_HOLD, "T84"))
    assert hold.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "LOCKDOWN → HOLD" in (hold.details() or "")
    assert "SECURE" in (hold.details() or "") and "SHELTER" in (hold.details() or "")
    again = _srp_call(e2e, srp_pb2.SRP_ACTION_LOCKDOWN, "T84")
    assert again.outcome == ingest_pb2.SIGNAL_OUTCOME_UNCHANGED
    tornado = _srp_call(
        e2e,
        srp_pb2.SRP_ACTION_SHELTER,
        "T84",
        shelter_hazard=srp_pb2.SHELTER_HAZARD_TORNADO,
        shelter_strategy=srp_pb2.SHELTER_STRATEGY_EVACUATE_TO_SHELTER_AREA,
    )
    assert tornado.outcome == ingest_pb2.SIGNAL_OUTCOME_APPLIED
    assert tornado.incident_hint == locked.incident_hint


def test_a_new_emergency_after_cad_closed_the_old_one_is_dispatched_anew(e2e: E2E) -> None:
    _, first = _panic(e2e, building="T85")
    cad = wait_until(lambda: e2e.cad_incident(first), what="first dispatch")
    e2e.cad.post_status(cad["cadIncidentId"], "Closed")
    wait_until(
        lambda: (i := e2e.cad_incident(first)) and i["status"] == "Closed",
        what="CAD closed the incident",
    )

    def lockdown_opens_a_new_incident() -> str | None:
        try:
            answer = _srp_call(e2e, srp_pb2.SRP_ACTION_LOCKDOWN, "T85")
        except grpc.RpcError:
            return None
        return answer.incident_hint if answer.incident_hint != first else None

    # The CAD's Closed reaches the incident service through psap_cad; until it has, the
    # LOCKDOWN would still join the old incident, so retry (new request each time).
    second = wait_until(lockdown_opens_a_new_incident, what="a new incident for the LOCKDOWN")
    assert second and second != first
    wait_until(lambda: e2e.cad_incident(second), what="the new incident dispatched")


def _lock_commands(e2e: E2E, expect: int) -> list[dict[str, Any]]:
    codec = Codec.from_contracts()
    topic = e2e.hub.catalog.name("safehub.door-commands.v1")
    records = read_topic(e2e.hub.settings.kafka, topic, expect=expect, timeout=2)
    return [codec.decode(r.value()) for r in records]


def test_a_school_wide_lockdown_joining_a_building_incident_commands_every_building(
    e2e: E2E,
) -> None:
    _, incident_id = _panic(e2e, building="T86")
    wait_until(lambda: e2e.cad_incident(incident_id), what="dispatch")
    answer = _srp_call(e2e, srp_pb2.SRP_ACTION_LOCKDOWN)  # no building: the whole school
    assert answer.incident_hint == incident_id  # joined the panic's incident
    srp_event_id = answer.event_id

    def command() -> dict[str, Any] | None:
        found = [
            c
            for c in _lock_commands(e2e, expect=10_000)
            if c["envelope"]["causation_id"] == srp_event_id
        ]
        return found[0] if found else None

    lock = wait_until(command, what="the lockdown's LockCommand")
    assert lock["envelope"]["building"] is None  # every building, not only T86
    assert lock["scope"] == "ALL"
    # End it so later tests at Lincoln start from NORMAL.
    assert _srp_call(e2e, srp_pb2.SRP_ACTION_ALL_CLEAR).outcome == ingest_pb2.SIGNAL_OUTCOME_APPLIED


def test_a_panic_with_a_1970_clock_and_a_weapon_alert_just_after_are_one_incident(
    e2e: E2E,
) -> None:
    _, incident_id = _panic(e2e, building="T87", when=datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC))
    camera = e2e.stub("vision-analytics-north").ReportCameraAlert(
        ingest_pb2.ReportCameraAlertRequest(
            client_event_id=str(uuid.uuid4()),
            place=_place("T87", "corridor-2"),
            camera_id="cam-T87",
            analytic=ingest_pb2.CAMERA_ANALYTIC_WEAPON,
            confidence=0.95,
            occurred_at=_at(datetime.now(UTC)),
        ),
        timeout=10,
    )
    cad = wait_until(
        lambda: (i := e2e.cad_incident(incident_id)) and i["versions"][-1] >= 2 and i,
        what="the weapon alert folded into the panic's incident",
    )
    assert e2e.cad_incident(incident_id_for(camera.event_id)) is None
    # Version 1 may have been coalesced into 2 if both waited for the panic's facts.
    assert cad["versions"] in ([1, 2], [2])
