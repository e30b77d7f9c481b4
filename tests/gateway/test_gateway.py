"""The gateway over real mTLS sockets and a real broker: what lands, who may, what is refused."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from safehub.contracts.registry import load_schemas
from safehub.devstack.pki import DevPki
from safehub.gen.safehub.common.v1 import door_pb2, srp_pb2
from safehub.gen.safehub.connector.v1 import connector_pb2
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec, Event
from safehub.kernel.directory import Client, Scope
from safehub.kernel.envelope import event_id_for, new_event
from safehub.kernel.live_directory import change_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from services.gateway import mapping
from tests.support.gateway import (
    GatewayHandle,
    camera_request,
    door_request,
    gateway_process,
    has_event,
    issued_env,
    panic_request,
    place,
    read_events,
    running_access_control_sim,
    running_gateway,
    timestamp,
)
from tests.support.gateway import (
    field_violations as bad_request,
)
from tests.support.processes import Component
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

ALERTS = "safehub.alerts.v1"
DOORS = "safehub.doors.v1"
TIMEOUT = 15


@pytest.fixture
def gw(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> Iterator[GatewayHandle]:
    with running_gateway(
        kafka,
        catalog.prefix,
        tmp_path,
        codec=codec,
        door_commands_group=f"gw-{uuid.uuid4().hex[:8]}",
    ) as handle:
        yield handle


def events_on(
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    base: str,
    until: Callable[[list[Event]], bool],
) -> list[Event]:
    return read_events(kafka, codec, catalog.name(base), until)


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# -- the happy path ------------------------------------------------------------------------


def test_panic_lands_as_a_valid_panic_alert_with_building_room_and_exercise(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    request = panic_request(exercise=True)
    response = gw.stub_for("panic-badges-north").ReportPanic(request, timeout=TIMEOUT)

    assert response.event_id == event_id_for("panic-badges-north", request.client_event_id)
    assert not response.duplicate
    events = events_on(kafka, codec, catalog, ALERTS, has_event(response.event_id))
    (event,) = events
    envelope = event["envelope"]
    assert envelope["event_type"] == "safehub.events.PanicAlert"
    assert envelope["tenant"] == {
        "state": "US-TX",
        "district": "dist-north-isd",
        "school": "sch-lincoln-hs",
    }
    assert (envelope["building"], envelope["room"]) == ("B", "214")
    assert envelope["exercise"] is True
    assert envelope["source"] == "panic-badges-north"
    assert envelope["occurred_at"] == request.occurred_at.ToDatetime(tzinfo=UTC)
    assert event["panic_type"] == "ACTIVE_ASSAILANT"
    assert event["reporter_role"] == "TEACHER"
    assert event["silent"] is True
    assert event["device_id"] == "badge-0042"
    # Re-encoding proves the event is valid against the current schema.
    assert codec.decode(codec.encode(event)) == event


def test_a_retry_is_answered_as_duplicate_and_publishes_nothing(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    stub = gw.stub_for("panic-badges-north")
    request = panic_request()
    first = stub.ReportPanic(request, timeout=TIMEOUT)
    second = stub.ReportPanic(request, timeout=TIMEOUT)
    assert (second.event_id, second.duplicate) == (first.event_id, True)

    # Concurrent retries of one new id: exactly one publishes.
    racing = panic_request()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: stub.ReportPanic(racing, timeout=TIMEOUT), range(8)))
    assert len({a.event_id for a in answers}) == 1
    assert sum(not a.duplicate for a in answers) == 1

    # The same client_event_id for a different request is a conflict, not a duplicate.
    changed = panic_request(client_event_id=request.client_event_id, device_id="other")
    error = refused(lambda: stub.ReportPanic(changed, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS

    # Same school → same partition, in order: once the marker is there, all before it is.
    marker = stub.ReportPanic(panic_request(), timeout=TIMEOUT)
    events = events_on(kafka, codec, catalog, ALERTS, has_event(marker.event_id))
    ids = [e["envelope"]["event_id"] for e in events]
    assert ids.count(first.event_id) == 1
    assert ids.count(answers[0].event_id) == 1
    assert len(ids) == 3


def test_srp_lockdown_from_the_staff_app_publishes_srp_action_requested(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    request = ingest_pb2.RequestSrpActionRequest(
        client_event_id="srp-1",
        action=srp_pb2.SRP_ACTION_LOCKDOWN,
        place=place(building="B"),
        requested_by="staff-1234",
        note="intruder seen near the library",
    )
    response = gw.stub_for("staff-app-lincoln").RequestSrpAction(request, timeout=TIMEOUT)

    (event,) = events_on(kafka, codec, catalog, ALERTS, has_event(response.event_id))
    assert event["envelope"]["event_type"] == "safehub.events.SrpActionRequested"
    assert event["envelope"]["building"] == "B"
    assert event["envelope"]["exercise"] is False
    assert event["action"] == "LOCKDOWN"
    assert event["request_id"] == "srp-1"
    assert event["requested_by"] == "staff-1234"
    assert event["shelter_hazard"] is None


def test_shelter_maps_hazard_and_strategy(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    request = ingest_pb2.RequestSrpActionRequest(
        client_event_id="srp-shelter",
        action=srp_pb2.SRP_ACTION_SHELTER,
        place=place(building=""),
        requested_by="staff-1",
        shelter_hazard=srp_pb2.SHELTER_HAZARD_EARTHQUAKE,
        shelter_strategy=srp_pb2.SHELTER_STRATEGY_DROP_COVER_AND_HOLD,
        exercise=True,
    )
    response = gw.stub_for("staff-app-lincoln").RequestSrpAction(request, timeout=TIMEOUT)
    (event,) = events_on(kafka, codec, catalog, ALERTS, has_event(response.event_id))
    assert (event["shelter_hazard"], event["shelter_strategy"]) == (
        "EARTHQUAKE",
        "DROP_COVER_HOLD",
    )
    assert event["envelope"]["building"] is None
    assert event["envelope"]["exercise"] is True


def test_cancel_panic_references_the_panic_event(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    stub = gw.stub_for("panic-badges-north")
    panic = stub.ReportPanic(panic_request(client_event_id="p-77"), timeout=TIMEOUT)
    by_client_id = stub.CancelPanic(
        ingest_pb2.CancelPanicRequest(
            client_event_id="cancel-p-77",
            place=place(room="214"),
            panic_client_event_id="p-77",
            device_id="badge-0042",
            reason="pressed by mistake",
        ),
        timeout=TIMEOUT,
    )
    assert by_client_id.panic_event_id == panic.event_id
    by_event_id = stub.CancelPanic(
        ingest_pb2.CancelPanicRequest(
            client_event_id="cancel-again",
            place=place(),
            panic_event_id=panic.event_id,
            device_id="badge-0042",
            reason="pressed by mistake",
            cancelled_by="staff-9",
        ),
        timeout=TIMEOUT,
    )

    events = events_on(kafka, codec, catalog, ALERTS, has_event(by_event_id.event_id))
    cancels = [e for e in events if e["envelope"]["event_type"].endswith("PanicCancelled")]
    assert [c["envelope"]["event_id"] for c in cancels] == [
        by_client_id.event_id,
        by_event_id.event_id,
    ]
    for cancel in cancels:
        assert cancel["panic_event_id"] == panic.event_id
        assert cancel["envelope"]["causation_id"] == panic.event_id
        assert cancel["reason"] == "pressed by mistake"
    assert [c["cancelled_by"] for c in cancels] == ["panic-badges-north", "staff-9"]


def test_camera_alert_lands_with_confidence_and_clip(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    request = ingest_pb2.ReportCameraAlertRequest(
        client_event_id="cam-1",
        place=place(building="A", room="gym"),
        camera_id="cam-A-gym-2",
        analytic=ingest_pb2.CAMERA_ANALYTIC_WEAPON,
        confidence=0.93,
        clip_url="https://video.example/clips/1",
        occurred_at=timestamp(),
    )
    response = gw.stub_for("vision-analytics-north").ReportCameraAlert(request, timeout=TIMEOUT)
    (event,) = events_on(kafka, codec, catalog, ALERTS, has_event(response.event_id))
    assert (event["analytic"], event["confidence"]) == ("WEAPON", 0.93)
    assert event["vendor_alert_id"] == "cam-1"
    assert event["clip_url"] == "https://video.example/clips/1"


# -- who may -------------------------------------------------------------------------------


def test_a_door_vendor_may_not_report_a_panic(shared_gw: GatewayHandle) -> None:
    error = refused(
        lambda: shared_gw.stub_for("acme-access-north").ReportPanic(
            panic_request(), timeout=TIMEOUT
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_another_district_is_denied_without_revealing_the_school(shared_gw: GatewayHandle) -> None:
    stub = shared_gw.stub_for("panic-badges-south")
    other = refused(lambda: stub.ReportPanic(panic_request(), timeout=TIMEOUT))
    missing = refused(
        lambda: stub.ReportPanic(
            panic_request(place=place(school="sch-nowhere", room="214")), timeout=TIMEOUT
        )
    )
    assert other.code() == missing.code() == grpc.StatusCode.PERMISSION_DENIED
    assert other.details().replace("sch-lincoln-hs", "X") == missing.details().replace(
        "sch-nowhere", "X"
    )


def test_a_client_limited_to_one_school_is_denied_the_others(shared_gw: GatewayHandle) -> None:
    request = panic_request(place=place(school="sch-washington-ms", building="MAIN", room="1"))
    error = refused(
        lambda: shared_gw.stub_for("staff-app-lincoln").ReportPanic(request, timeout=TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_foreign_and_missing_certificates_are_refused(
    shared_gw: GatewayHandle, tmp_path: Path
) -> None:
    foreign = DevPki(tmp_path / "foreign-ca")
    pair = foreign.client("panic-badges-north")  # right name, wrong CA
    foreign_creds = grpc.ssl_channel_credentials(
        root_certificates=shared_gw.pki.ca.cert.read_bytes(),
        private_key=pair.key.read_bytes(),
        certificate_chain=pair.cert.read_bytes(),
    )
    no_cert_creds = grpc.ssl_channel_credentials(
        root_certificates=shared_gw.pki.ca.cert.read_bytes()
    )
    for credentials in (foreign_creds, no_cert_creds):
        stub = ingest_pb2_grpc.IngestServiceStub(shared_gw.channel(credentials))
        error = refused(partial(stub.ReportPanic, panic_request(), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails

    # A valid certificate of our CA for a client the directory does not know.
    stranger = shared_gw.stub_for("stranger-system")
    error = refused(lambda: stranger.ReportPanic(panic_request(), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_client_systems_added_and_deleted_at_run_time_count_from_the_next_call(
    gw: GatewayHandle, producer: EventProducer
) -> None:
    """The gateway follows the live directory: a client system added on the directory topic
    is authorised by its certificate's CN from the next call, one deleted is refused, and
    neither needs a restart."""
    seed = gw.directory
    newcomer = Client(id="panic-app-new", district="dist-north-isd", scopes={Scope.PANIC})
    stub = gw.stub_for(newcomer.id)
    before = refused(lambda: stub.ReportPanic(panic_request(), timeout=TIMEOUT))
    assert before.code() == grpc.StatusCode.UNAUTHENTICATED

    producer.publish(change_event(seed, "CLIENT", newcomer, version=1, changed_by="ops-1"))
    wait_until(lambda: gw.directory.client(newcomer.id), what="the new client served")
    request = panic_request()
    answer = stub.ReportPanic(request, timeout=TIMEOUT)
    assert answer.event_id == event_id_for(newcomer.id, request.client_event_id)

    veteran = seed.client("panic-badges-north")
    assert veteran is not None
    gw.stub_for(veteran.id).ReportPanic(panic_request(), timeout=TIMEOUT)  # allowed so far
    producer.publish(
        change_event(seed, "CLIENT", veteran, version=1, changed_by="ops-1", change="DELETED")
    )
    wait_until(lambda: gw.directory.client(veteran.id) is None, what="the client removed")
    after = refused(lambda: gw.stub_for(veteran.id).ReportPanic(panic_request(), timeout=TIMEOUT))
    assert after.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.ReportPanic(panic_request(), timeout=TIMEOUT).event_id  # the newcomer still may


# -- what is refused -----------------------------------------------------------------------


def test_an_unknown_room_is_invalid_argument_on_place_room(shared_gw: GatewayHandle) -> None:
    stub = shared_gw.stub_for("panic-badges-north")
    error = refused(
        lambda: stub.ReportPanic(panic_request(place=place(room="999")), timeout=TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(error) == {
        "place.room": "unknown room '999' in building 'B' of sch-lincoln-hs"
    }

    error = refused(
        lambda: stub.ReportPanic(panic_request(place=place(building="Z")), timeout=TIMEOUT)
    )
    assert set(bad_request(error)) == {"place.building"}


LONG = "x" * 5000

PANIC_CASES: list[tuple[str, dict[str, Any]]] = [
    ("client_event_id", {"client_event_id": ""}),
    ("client_event_id", {"client_event_id": "a" * 129}),
    ("place", {"place": None}),
    ("place.school_id", {"place": place(school="")}),
    ("place.building", {"place": place(building="")}),
    ("place.building", {"place": place(building="", room="214")}),
    ("device_id", {"device_id": ""}),
    ("device_id", {"device_id": LONG}),
    ("device_id", {"device_id": "badge\n42"}),
    ("panic_type", {"panic_type": ingest_pb2.PANIC_TYPE_UNSPECIFIED}),
    ("panic_type", {"panic_type": 99}),
    ("reporter_role", {"reporter_role": 42}),
    ("occurred_at", {"occurred_at": None}),
    # A panic from a clock days ahead is accepted (hub time rules); a year past 2100 is no
    # clock reading at all (tests/gateway/test_gateway_input.py has the whole policy).
    ("occurred_at", {"occurred_at": timestamp(datetime(2150, 1, 1, tzinfo=UTC))}),
    ("occurred_at", {"occurred_at": timestamp(datetime(1, 1, 1, tzinfo=UTC))}),
]


@pytest.mark.parametrize(("field", "change"), PANIC_CASES)
def test_bad_panic_input_names_the_field(
    shared_gw: GatewayHandle, field: str, change: dict[str, Any]
) -> None:
    request = panic_request()
    for name, value in change.items():
        if value is None:
            request.ClearField(name)  # type: ignore[arg-type]
        elif hasattr(value, "CopyFrom"):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    error = refused(
        lambda: shared_gw.stub_for("panic-badges-north").ReportPanic(request, timeout=TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_request(error)
    assert LONG not in (error.details() or "")


def srp(**fields: Any) -> ingest_pb2.RequestSrpActionRequest:
    values: dict[str, Any] = {
        "client_event_id": f"srp-{uuid.uuid4()}",
        "action": srp_pb2.SRP_ACTION_LOCKDOWN,
        "place": place(),
        "requested_by": "staff-1",
        **fields,
    }
    return ingest_pb2.RequestSrpActionRequest(**values)


SECRET_NOTE = "Student Jane Roe said " + "y" * 1200

SRP_CASES: list[tuple[set[str], ingest_pb2.RequestSrpActionRequest]] = [
    ({"action"}, srp(action=srp_pb2.SRP_ACTION_UNSPECIFIED)),
    ({"evacuate_to"}, srp(action=srp_pb2.SRP_ACTION_EVACUATE)),
    ({"evacuate_to"}, srp(evacuate_to="North lot")),
    ({"shelter_hazard", "shelter_strategy"}, srp(action=srp_pb2.SRP_ACTION_SHELTER)),
    ({"shelter_hazard"}, srp(shelter_hazard=srp_pb2.SHELTER_HAZARD_TORNADO)),
    ({"requested_by"}, srp(requested_by="")),
    ({"place.room"}, srp(place=place(room="214"))),
    ({"note"}, srp(note=SECRET_NOTE)),
]


@pytest.mark.parametrize(("fields", "request_"), SRP_CASES)
def test_bad_srp_input_names_the_fields(
    shared_gw: GatewayHandle, fields: set[str], request_: ingest_pb2.RequestSrpActionRequest
) -> None:
    error = refused(
        lambda: shared_gw.stub_for("staff-app-lincoln").RequestSrpAction(request_, timeout=TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request(error)) == fields
    assert "Jane" not in (error.details() or "")
    assert "Jane" not in str(bad_request(error))


camera = camera_request


CAMERA_CASES: list[tuple[str, ingest_pb2.ReportCameraAlertRequest]] = [
    ("confidence", camera(confidence=1.5)),
    ("confidence", camera(confidence=-0.1)),
    ("confidence", camera(confidence=math.nan)),
    ("analytic", camera(analytic=ingest_pb2.CAMERA_ANALYTIC_UNSPECIFIED)),
    ("camera_id", camera(camera_id="")),
    ("clip_url", camera(clip_url="javascript:alert(1)")),
]


@pytest.mark.parametrize(("field", "request_"), CAMERA_CASES)
def test_bad_camera_input_names_the_field(
    shared_gw: GatewayHandle, field: str, request_: ingest_pb2.ReportCameraAlertRequest
) -> None:
    error = refused(
        lambda: shared_gw.stub_for("vision-analytics-north").ReportCameraAlert(
            request_, timeout=TIMEOUT
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request(error)) == {field}


def test_every_bad_field_is_named_in_one_answer(shared_gw: GatewayHandle) -> None:
    request = ingest_pb2.ReportPanicRequest()
    error = refused(
        lambda: shared_gw.stub_for("panic-badges-north").ReportPanic(request, timeout=TIMEOUT)
    )
    assert set(bad_request(error)) == {
        "client_event_id",
        "place",
        "device_id",
        "panic_type",
        "occurred_at",
    }


def test_cancel_panic_needs_the_panic_and_a_reason(shared_gw: GatewayHandle) -> None:
    request = ingest_pb2.CancelPanicRequest(
        client_event_id="c-1", place=place(), device_id="badge-1"
    )
    error = refused(
        lambda: shared_gw.stub_for("panic-badges-north").CancelPanic(request, timeout=TIMEOUT)
    )
    assert set(bad_request(error)) == {"panic", "reason"}
    request.panic_event_id = "not-a-uuid"
    request.reason = "mistake"
    error = refused(
        lambda: shared_gw.stub_for("panic-badges-north").CancelPanic(request, timeout=TIMEOUT)
    )
    assert set(bad_request(error)) == {"panic_event_id"}


# -- door states ---------------------------------------------------------------------------


door = door_request


@pytest.mark.parametrize("call", ["StreamDoorStates", "ReportDoorStates"])
def test_door_state_batches_report_bad_items_by_index_and_publish_the_good(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, call: str
) -> None:
    good = [door(), door(door_id="B-214", state=door_pb2.DOOR_STATE_FORCED_OPEN)]
    items = [
        good[0],
        door(state=door_pb2.DOOR_STATE_UNSPECIFIED),
        good[1],
        door(place=place(school="sch-riverside-es", building="1"), door_id="1-front"),
        door(door_id="B-nope"),
        good[0],  # a retry inside the same stream
    ]
    stub = gw.stub_for("acme-access-north")
    if call == "StreamDoorStates":
        response = stub.StreamDoorStates(iter(items), timeout=TIMEOUT)
    else:
        request = ingest_pb2.ReportDoorStatesRequest(items=items)
        response = stub.ReportDoorStates(request, timeout=TIMEOUT)

    assert (response.accepted_count, response.rejected_count, response.duplicate_count) == (
        3,
        3,
        1,
    )
    assert [(e.index, e.reason) for e in response.errors] == [
        (1, ingest_pb2.REJECT_REASON_INVALID_ARGUMENT),
        (3, ingest_pb2.REJECT_REASON_PERMISSION_DENIED),
        (4, ingest_pb2.REJECT_REASON_NOT_FOUND),
    ]
    assert response.errors[0].detail.startswith("invalid request: state:")
    assert response.errors[0].client_event_id == items[1].client_event_id

    ids = [event_id_for("acme-access-north", g.client_event_id) for g in good]
    events = events_on(
        kafka,
        codec,
        catalog,
        DOORS,
        lambda evs: all(has_event(i)(evs) for i in ids),
    )
    assert len(events) == 2
    by_door = {e["door_id"]: e for e in events}
    assert by_door["B-east-entry"]["state"] == "LOCKED"
    assert by_door["B-east-entry"]["exterior"] is True  # from the directory
    assert by_door["B-214"]["state"] == "FORCED_OPEN"
    assert by_door["B-214"]["exterior"] is False


def test_report_door_state_unary(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    response = gw.stub_for("acme-access-north").ReportDoorState(door(), timeout=TIMEOUT)
    (event,) = events_on(kafka, codec, catalog, DOORS, has_event(response.event_id))
    assert event["door_name"] == "B east entry"
    assert event["command_id"] is None


# -- operations ----------------------------------------------------------------------------


def test_health_serves_and_reflection_lists_the_services(gw: GatewayHandle) -> None:
    health = gw.health_stub()
    for service in (
        "",
        "safehub.ingest.v1.IngestService",
        "safehub.connector.v1.ConnectorService",
    ):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel_for("panic-badges-north"))
    (answer,) = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"safehub.ingest.v1.IngestService", "safehub.connector.v1.ConnectorService"} <= names

    gw.gw.health.enter_graceful_shutdown()  # what the drain does first
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_broker_failure_answers_unavailable_and_a_retry_can_succeed_later(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    dead = kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:9", "delivery_timeout_s": 1.0})
    with running_gateway(dead, catalog.prefix, tmp_path, codec=codec) as gw:
        stub = gw.stub_for("panic-badges-north")
        request = panic_request()
        error = refused(lambda: stub.ReportPanic(request, timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        # The failed id was released: the retry publishes again (and fails again here).
        error = refused(lambda: stub.ReportPanic(request, timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert len(gw.gw.deduper) == 0


def test_the_rpc_span_is_the_parent_of_the_send_span(
    gw: GatewayHandle, spans: InMemorySpanExporter, catalog: TopicCatalog
) -> None:
    request = panic_request(device_id="badge-span-test")
    gw.stub_for("panic-badges-north").ReportPanic(request, timeout=TIMEOUT)

    def pair() -> tuple[Any, Any] | None:
        finished = spans.get_finished_spans()
        server = [
            s
            for s in finished
            if s.name == "/safehub.ingest.v1.IngestService/ReportPanic"
            and s.kind == SpanKind.SERVER
        ]
        send = [s for s in finished if s.name == f"send {catalog.name(ALERTS)}"]
        return (server[0], send[0]) if server and send else None

    found = wait_until(pair, timeout=TIMEOUT, what="rpc and send spans")
    assert found is not None
    server, send = found
    assert send.parent is not None
    assert send.parent.span_id == server.context.span_id
    assert send.context.trace_id == server.context.trace_id
    values = [str(v) for s in (server, send) for v in (s.attributes or {}).values()]
    assert not any("badge-span-test" in v or request.client_event_id in v for v in values)


def test_gateway_runs_as_a_process_and_drains_on_sigterm(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path
) -> None:
    with gateway_process(kafka, catalog.prefix, tmp_path) as gw:
        health = gw.health_stub()
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        response = gw.stub_for("panic-badges-north").ReportPanic(panic_request(), timeout=TIMEOUT)
        assert response.event_id
        assert gw.component is not None
        returncode = gw.component.stop()
    assert returncode == 0


# -- connectors ----------------------------------------------------------------------------


def lock_command(
    catalog: TopicCatalog, *, scope: str = "ALL", target: str = "LOCKED", building: str = "B"
) -> Event:
    command_id = f"cmd-{uuid.uuid4().hex[:8]}"
    return new_event(
        "LockCommand",
        source="incidents",
        tenant={"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"},
        building=building,
        incident_id="inc-lock-1",
        payload={
            "command_id": command_id,
            "scope": scope,
            "door_ids": [],
            "target": target,
            "srp_action": "LOCKDOWN",
            "reason": "SRP LOCKDOWN",
            "requested_by": "staff-1",
        },
    )


def test_a_lock_command_reaches_the_connector_and_doors_report_locked(
    gw: GatewayHandle,
    kafka: KafkaSettings,
    codec: Codec,
    catalog: TopicCatalog,
    spans: InMemorySpanExporter,
) -> None:
    building_b = {"B-east-entry", "B-west-entry", "B-north-exit", "B-library", "B-214", "B-stair-2"}
    with running_access_control_sim(gw, jammed_doors=["B-214"]) as sim:
        wait_until(
            lambda: gw.gw.connectors.sessions_for("sch-lincoln-hs"), what="session registered"
        )
        command = lock_command(catalog)
        with EventProducer(
            kafka.model_copy(update={"topic_prefix": catalog.prefix}), codec, catalog
        ) as producer:
            producer.publish(command)
        command_id = command["command_id"]

        def locked(events: list[Event]) -> bool:
            return {e["door_id"] for e in events if e["command_id"] == command_id} >= building_b - {
                "B-214"
            }

        events = events_on(kafka, codec, catalog, DOORS, locked)
        assert {e["door_id"] for e in events} == building_b - {"B-214"}
        assert len(events) == 5  # one confirmation per door, not one per message
        for event in events:
            assert event["state"] == "LOCKED"
            assert event["envelope"]["incident_id"] == "inc-lock-1"
            assert event["envelope"]["causation_id"] == command["envelope"]["event_id"]
            assert event["envelope"]["source"] == "acme-access-north"
        assert sim.states["B-214"] == door_pb2.DOOR_STATE_UNLOCKED
        assert sim.states["B-east-entry"] == door_pb2.DOOR_STATE_LOCKED
        assert sim.states["A-main-entry"] == door_pb2.DOOR_STATE_UNLOCKED

    # The door reports continue the command's trace.
    finished = spans.get_finished_spans()
    trace_ids = {s.context.trace_id for s in finished if s.name == "ConnectorService/DoorState"}
    command_traces = {
        s.context.trace_id
        for s in finished
        if s.name == f"process {catalog.name('safehub.door-commands.v1')}"
    }
    assert trace_ids and trace_ids <= command_traces


def test_a_secure_command_locks_only_exterior_doors(
    gw: GatewayHandle, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog
) -> None:
    with running_access_control_sim(gw):
        wait_until(lambda: gw.gw.connectors.sessions_for("sch-lincoln-hs"), what="session")
        command = lock_command(catalog, scope="EXTERIOR", building="A")
        with EventProducer(
            kafka.model_copy(update={"topic_prefix": catalog.prefix}), codec, catalog
        ) as producer:
            producer.publish(command)
        exterior = {"A-main-entry", "A-gym-exit", "A-cafeteria-exit"}
        events = events_on(
            kafka,
            codec,
            catalog,
            DOORS,
            lambda evs: {e["door_id"] for e in evs} >= exterior,
        )
        assert {e["door_id"] for e in events} == exterior


def test_hello_for_a_school_of_another_district_is_refused(shared_gw: GatewayHandle) -> None:
    stub = shared_gw.connector_stub_for("acme-access-south")
    hello = connector_pb2.ConnectorMessage(
        hello=connector_pb2.Hello(connector_id="acme-access-south", school_ids=["sch-lincoln-hs"])
    )
    error = refused(lambda: list(stub.Attach(iter([hello]), timeout=TIMEOUT)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    # Not a connector at all, and a hello that claims another identity.
    panic_stub = shared_gw.connector_stub_for("panic-badges-north")
    error = refused(lambda: list(panic_stub.Attach(iter([hello]), timeout=TIMEOUT)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    north = shared_gw.connector_stub_for("acme-access-north")
    error = refused(lambda: list(north.Attach(iter([hello]), timeout=TIMEOUT)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_simulator_reconnects_after_a_gateway_restart(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    port_file = tmp_path / "gateway.port"
    with running_gateway(kafka, catalog.prefix, tmp_path, codec=codec) as first:
        sim_context = running_access_control_sim(first, port_file=port_file)
        sim = sim_context.__enter__()
    try:
        wait_until(lambda: not sim.connected.is_set(), timeout=TIMEOUT, what="session ended")
        with running_gateway(kafka, catalog.prefix, tmp_path, codec=codec) as second:
            wait_until(
                lambda: second.gw.connectors.sessions_for("sch-lincoln-hs"),
                timeout=TIMEOUT,
                what="reattached",
            )
            # The gateway registers the session before the simulator counts it: wait for both.
            wait_until(lambda: sim.sessions == 2, timeout=TIMEOUT, what="second session counted")
    finally:
        sim_context.__exit__(None, None, None)


# -- contracts -----------------------------------------------------------------------------


def _symbols(name: str) -> set[str]:
    schemas = load_schemas()

    def find(node: Any) -> set[str] | None:
        if isinstance(node, dict):
            if node.get("type") == "enum" and str(node.get("name")).rsplit(".", 1)[-1] == name:
                return set(node["symbols"])
            for value in node.values():
                found = find(value)
                if found:
                    return found
        if isinstance(node, list):
            for value in node:
                found = find(value)
                if found:
                    return found
        return None

    found = find(list(schemas.values()))
    assert found, name
    return found


@pytest.mark.parametrize(
    ("table", "proto_enum", "avro_enum", "with_unspecified"),
    [
        (mapping.REPORTER_ROLE, ingest_pb2.ReporterRole, "PersonRole", True),
        (mapping.PANIC_TYPE, ingest_pb2.PanicType, "PanicType", False),
        (mapping.CAMERA_ANALYTIC, ingest_pb2.CameraAnalytic, "CameraAnalytic", False),
        (mapping.DOOR_STATE, door_pb2.DoorState, "DoorState", False),
        (mapping.SRP_ACTION, srp_pb2.SrpAction, "SrpAction", False),
        (mapping.SHELTER_HAZARD, srp_pb2.ShelterHazard, "ShelterHazard", False),
        (mapping.SHELTER_STRATEGY, srp_pb2.ShelterStrategy, "ShelterStrategy", False),
    ],
)
def test_enum_tables_cover_every_proto_value_with_a_real_avro_symbol(
    table: Any, proto_enum: Any, avro_enum: str, with_unspecified: bool
) -> None:
    values = {v for v in proto_enum.values() if with_unspecified or v != 0}
    assert set(table) == values
    assert set(table.values()) <= _symbols(avro_enum)


def test_lock_tables_cover_the_avro_symbols() -> None:
    assert set(mapping.LOCK_TARGET) == _symbols("LockTarget") - {"UNKNOWN"}
    assert set(mapping.LOCK_SCOPE) == _symbols("LockScope") - {"DOORS"}


def test_the_simulator_runs_as_a_process(
    gw: GatewayHandle, kafka: KafkaSettings, tmp_path: Path
) -> None:
    with Component(
        "vendors.access_control_sim",
        kafka,
        "unused.",
        tmp_path,
        env={
            "SAFEHUB_ACCESS_CONTROL_SIM__GATEWAY_ADDRESS": gw.address,
            **issued_env(gw.pki, "ACCESS_CONTROL_SIM", "acme-access-north"),
            "SAFEHUB_ACCESS_CONTROL_SIM__SCHOOL_IDS": '["sch-washington-ms"]',
        },
    ) as sim:
        sessions = wait_until(
            lambda: gw.gw.connectors.sessions_for("sch-washington-ms"), what="process attached"
        )
        assert sessions[0].schools == {"sch-washington-ms"}
        assert sim.stop() == 0


def test_connector_sessions_are_bounded(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    with running_gateway(
        kafka, catalog.prefix, tmp_path, codec=codec, max_workers=4, max_connector_sessions=1
    ) as gw:
        with running_access_control_sim(gw):
            hello = connector_pb2.ConnectorMessage(
                hello=connector_pb2.Hello(
                    connector_id="acme-access-north", school_ids=["sch-lincoln-hs"]
                )
            )
            stub = gw.connector_stub_for("acme-access-north")
            error = refused(lambda: list(stub.Attach(iter([hello]), timeout=TIMEOUT)))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_connector_that_never_says_hello_is_cut_off(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> None:
    with running_gateway(kafka, catalog.prefix, tmp_path, codec=codec, hello_timeout_s=0.3) as gw:
        silent = threading.Event()

        def nothing() -> Iterator[connector_pb2.ConnectorMessage]:
            silent.wait(TIMEOUT)  # the client stays connected but sends nothing
            yield from ()

        stub = gw.connector_stub_for("acme-access-north")
        error = refused(lambda: list(stub.Attach(nothing(), timeout=TIMEOUT)))
        silent.set()
        assert error.code() == grpc.StatusCode.CANCELLED
