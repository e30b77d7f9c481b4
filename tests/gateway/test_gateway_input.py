"""Clock and text hygiene at the gateway's edge (issue 17 items 3 and 9), over real mTLS gRPC.

What is not a clock reading is refused naming ``occurred_at``; a life-safety report with a
wildly wrong (but real) clock is still accepted: the hub works on its own time. Identifiers
with invisible, format or non-NFC characters and free text with bidi overrides are refused,
naming the field and the code point, never echoing the value.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc
import pytest

from safehub.gen.safehub.common.v1 import srp_pb2
from safehub.gen.safehub.ingest.v1 import ingest_pb2
from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.support.gateway import (
    GatewayHandle,
    camera_request,
    door_request,
    field_violations,
    has_event,
    panic_request,
    place,
    read_events,
    timestamp,
)

pytestmark = pytest.mark.kafka

TIMEOUT = 15
ANCIENT = datetime(1, 1, 1, tzinfo=UTC)


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def violations(error: grpc.RpcError) -> dict[str, str]:
    """The fields an INVALID_ARGUMENT answer names."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    return field_violations(error)


def camera(**fields: Any) -> ingest_pb2.ReportCameraAlertRequest:
    return camera_request(**{"confidence": 0.9, **fields})


door = door_request


def srp(**fields: Any) -> ingest_pb2.RequestSrpActionRequest:
    values: dict[str, Any] = {
        "client_event_id": f"srp-{uuid.uuid4()}",
        "action": srp_pb2.SRP_ACTION_HOLD,
        "place": place(building="A"),
        "requested_by": "staff-1",
        "exercise": True,
        **fields,
    }
    return ingest_pb2.RequestSrpActionRequest(**values)


# -- clocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when", [ANCIENT, datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)], ids=["year-1", "1969"]
)
def test_an_occurred_at_that_is_no_clock_reading_is_refused_naming_it(
    shared_gw: GatewayHandle, when: datetime
) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: shared_gw.stub_for("panic-badges-north").ReportPanic(
            panic_request(occurred_at=timestamp(when)), timeout=TIMEOUT
        ),
        lambda: shared_gw.stub_for("vision-analytics-north").ReportCameraAlert(
            camera(occurred_at=timestamp(when)), timeout=TIMEOUT
        ),
        lambda: shared_gw.stub_for("acme-access-north").ReportDoorState(
            door(occurred_at=timestamp(when)), timeout=TIMEOUT
        ),
    ]
    for call in calls:
        found = violations(refused(call))
        assert set(found) == {"occurred_at"}
        assert "1970" in found["occurred_at"]


def test_a_panic_or_camera_alert_from_a_wildly_wrong_clock_is_still_accepted(
    shared_gw: GatewayHandle,
    module_kafka: KafkaSettings,
    codec: Codec,
    module_catalog: TopicCatalog,
) -> None:
    """A badge whose clock was reset, or runs days ahead, still reaches the hub."""
    panics = shared_gw.stub_for("panic-badges-north")
    accepted = [
        panics.ReportPanic(
            panic_request(occurred_at=timestamp(datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC))),
            timeout=TIMEOUT,
        ).event_id,
        panics.ReportPanic(
            panic_request(occurred_at=timestamp(datetime.now(UTC) + timedelta(days=3))),
            timeout=TIMEOUT,
        ).event_id,
        shared_gw.stub_for("vision-analytics-north")
        .ReportCameraAlert(
            camera(occurred_at=timestamp(datetime.now(UTC) + timedelta(days=3))), timeout=TIMEOUT
        )
        .event_id,
    ]
    events = read_events(
        module_kafka,
        codec,
        module_catalog.name("safehub.alerts.v1"),
        lambda found: all(has_event(i)(found) for i in accepted),
    )
    by_id = {e["envelope"]["event_id"]: e["envelope"] for e in events}
    for event_id in accepted:
        envelope = by_id[event_id]
        # The device's time is kept as reported; the hub's is beside it.
        assert abs(envelope["recorded_at"] - datetime.now(UTC)) < timedelta(minutes=5)
        assert envelope["occurred_at"] != envelope["recorded_at"]
    # Not a date at all, even for a panic:
    found = violations(
        refused(
            lambda: panics.ReportPanic(
                panic_request(occurred_at=timestamp(datetime(2150, 1, 1, tzinfo=UTC))),
                timeout=TIMEOUT,
            )
        )
    )
    assert set(found) == {"occurred_at"}


def test_a_door_report_from_the_future_is_still_refused(shared_gw: GatewayHandle) -> None:
    """Bulk device feeds keep the skew limit: their clocks order door states."""
    found = violations(
        refused(
            lambda: shared_gw.stub_for("acme-access-north").ReportDoorState(
                door(occurred_at=timestamp(datetime.now(UTC) + timedelta(days=3))),
                timeout=TIMEOUT,
            )
        )
    )
    assert "in the future" in found["occurred_at"]


# -- text ------------------------------------------------------------------------------------

BAD_IDS = {
    "zero-width space": ("badge-\u200b0042", "U+200B"),
    "right-to-left override": ("badge-\u202e2400", "U+202E"),
    "byte order mark": ("\ufeffbadge-0042", "U+FEFF"),
    "private use": ("badge-\ue000", "U+E000"),
    "unassigned": ("badge-\u0378", "U+0378"),
    "line separator": ("badge-\u20280042", "U+2028"),
    "not NFC": ("badge-caf\u0065\u0301", "NFC"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
def test_ids_with_invisible_format_or_unnormalised_characters_are_refused(
    shared_gw: GatewayHandle, case: str
) -> None:
    value, named = BAD_IDS[case]
    error = refused(
        lambda: shared_gw.stub_for("panic-badges-north").ReportPanic(
            panic_request(device_id=value), timeout=TIMEOUT
        )
    )
    found = violations(error)
    assert set(found) == {"device_id"}
    assert named in found["device_id"]
    assert value not in (error.details() or "") and value not in found["device_id"]


def test_place_ids_get_the_same_rules(shared_gw: GatewayHandle) -> None:
    error = refused(
        lambda: shared_gw.stub_for("acme-access-north").ReportDoorState(
            door(place=place(building="B\u200d"), door_id="B-east-\u2066entry"), timeout=TIMEOUT
        )
    )
    assert set(violations(error)) == {"place.building", "door_id"}


def test_free_text_with_bidi_overrides_is_refused_and_emoji_joiners_are_fine(
    shared_gw: GatewayHandle,
) -> None:
    staff = shared_gw.stub_for("staff-app-lincoln")
    for override in ("\u202e", "\u2067", "\u200f"):
        request = srp(note=f"Hold in rooms {override}evif moor ni nug")
        error = refused(partial(staff.RequestSrpAction, request, timeout=TIMEOUT))
        found = violations(error)
        assert set(found) == {"note"}
        assert f"U+{ord(override):04X}" in found["note"]
        assert "nug" not in found["note"] and "nug" not in (error.details() or "")
    # A person's emoji (joined with U+200D) is ordinary text.
    answer = staff.RequestSrpAction(
        srp(note="Teacher \U0001f469\u200d\U0001f3eb in 214 is safe"), timeout=TIMEOUT
    )
    assert answer.event_id
