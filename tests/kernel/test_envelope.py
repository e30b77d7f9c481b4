"""Building envelopes: ``new_event`` takes the generated event types, and ``caused_by`` is the
one place a derived event inherits from its cause."""

from __future__ import annotations

from safehub.contracts.names import DataClass, EventType
from safehub.kernel.codec import Event
from safehub.kernel.envelope import caused_by, new_event

TENANT = {"state": "CO", "district": "d-1", "school": "s-1"}


def _panic(**envelope: object) -> Event:
    event = new_event(
        EventType.PANIC_ALERT,
        source="gateway",
        tenant=TENANT,
        building="b-1",
        room="r-101",
        exercise=True,
    )
    event["envelope"].update(envelope)
    return event


def test_new_event_puts_a_plain_string_type_and_the_default_class_on_the_envelope() -> None:
    envelope = _panic()["envelope"]
    assert envelope["event_type"] == "safehub.events.PanicAlert"
    assert type(envelope["event_type"]) is str
    assert envelope["classification"] == [DataClass.INTERNAL.value]
    assert new_event("PanicAlert", source="x", tenant=TENANT)["envelope"]["event_type"] == (
        EventType.PANIC_ALERT
    )


def test_a_derived_event_inherits_tenant_building_incident_exercise_and_its_cause() -> None:
    cause = _panic(incident_id="inc-1")["envelope"]
    derived = new_event(EventType.INCIDENT_CHANGED, source="incidents", **caused_by(cause))
    envelope = derived["envelope"]
    assert envelope["causation_id"] == cause["event_id"]
    assert envelope["tenant"] == TENANT and envelope["tenant"] is not cause["tenant"]
    assert (envelope["building"], envelope["incident_id"], envelope["exercise"]) == (
        "b-1",
        "inc-1",
        True,
    )
    assert envelope["room"] is None  # the room, case and times are the deriving code's


def test_what_the_deriving_code_states_replaces_the_inherited_value() -> None:
    cause = _panic()["envelope"]
    fields = caused_by(cause, incident_id="inc-2", exercise=False, building=None)
    assert fields == {
        "tenant": TENANT,
        "building": None,
        "incident_id": "inc-2",
        "causation_id": cause["event_id"],
        "exercise": False,
    }
