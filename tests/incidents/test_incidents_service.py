"""The incidents service as a real process on a real broker: correlation, SRP, restarts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Client, Directory, Scope, default_directory_file
from safehub.kernel.envelope import new_event
from safehub.kernel.live_directory import change_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.directory.helpers import person_changed
from tests.support.examples import LINCOLN, at_hub, panic_at
from tests.support.kafka import read_all, read_topic
from tests.support.processes import Component
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


def _camera(at: datetime) -> dict[str, Any]:
    return at_hub(
        new_event(
            "CameraAlert",
            source="test",
            tenant=LINCOLN,
            building="B",
            room="corridor-2",
            occurred_at=at,
            payload={
                "camera_id": "cam-B2-07",
                "vendor_alert_id": "v1",
                "analytic": "WEAPON",
                "confidence": 0.93,
                "clip_url": None,
                "snapshot_url": None,
            },
        )
    )


def _srp(action: str, at: datetime, exercise: bool = False) -> dict[str, Any]:
    return at_hub(
        new_event(
            "SrpActionRequested",
            source="test",
            tenant=LINCOLN,
            building="B",
            occurred_at=at,
            exercise=exercise,
            payload={
                "request_id": f"r-{action}-{at.timestamp()}",
                "action": action,
                "evacuate_location": None,
                "shelter_hazard": None,
                "shelter_strategy": None,
                "requested_by": "staff-principal",
                "requested_by_role": "ADMINISTRATOR",
                "message": None,
            },
        )
    )


def _decoded(
    kafka: KafkaSettings, codec: Codec, topic: str, expect: int, *, decisions: int = 0
) -> list[dict[str, Any]]:
    """The first ``expect`` incident events of ``topic`` (after reading ``decisions`` more)."""
    records = read_topic(kafka, topic, expect=expect + decisions, timeout=30)
    events = [codec.decode(r.value()) for r in records]
    return [e for e in events if not e["envelope"]["event_type"].endswith("SignalDecided")]


@pytest.fixture
def incidents(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path
) -> Callable[..., Component]:
    made: list[Component] = []

    def make(**env: str) -> Component:
        component = Component("services.incidents", kafka, catalog.prefix, tmp_path, env=env)
        made.append(component)
        return component

    yield make
    for component in made:
        component.kill()


def test_three_correlated_signals_yield_one_incident_and_state_survives_restart(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, incidents: Callable[..., Component]
) -> None:
    now = datetime.now(UTC)
    topic = catalog.topic_for("safehub.events.IncidentOpened")
    service = incidents().start()
    with EventProducer(kafka, codec, catalog) as producer:
        panic = panic_at(now)
        producer.publish(panic)
        producer.publish(_camera(now + timedelta(seconds=2)))
        events = _decoded(kafka, codec, topic, expect=2)
        assert [e["envelope"]["event_type"] for e in events] == [
            "safehub.events.IncidentOpened",
            "safehub.events.IncidentChanged",
        ]
        incident_id = events[0]["incident_id"]
        assert events[0]["dispatchable"] is True
        assert events[0]["envelope"]["room"] == "214"
        assert events[0]["envelope"]["causation_id"] == panic["envelope"]["event_id"]

        # Restart: the book comes back from the incidents topic, so the third signal
        # (an SRP LOCKDOWN) joins the same incident instead of opening a new one.
        service.stop()
        service.start()
        producer.publish(_srp("LOCKDOWN", now + timedelta(seconds=4)))
        events = _decoded(kafka, codec, topic, expect=3, decisions=1)
    assert {e["incident_id"] for e in events} == {incident_id}
    assert events[-1]["version"] == 3
    assert events[-1]["srp_action"] == "LOCKDOWN"
    assert len(events[-1]["correlated_event_ids"]) == 3
    (command,) = _decoded(kafka, codec, catalog.topic_for("safehub.events.LockCommand"), expect=1)
    assert command["scope"] == "ALL" and command["envelope"]["incident_id"] == incident_id


def test_drill_lockdown_is_not_dispatchable_and_invalid_transition_is_refused_on_the_topic(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, incidents: Callable[..., Component]
) -> None:
    now = datetime.now(UTC)
    incidents().start()
    with EventProducer(kafka, codec, catalog) as producer:
        producer.publish(_srp("LOCKDOWN", now, exercise=True))
        hold = _srp("HOLD", now + timedelta(seconds=1), exercise=True)  # invalid
        producer.publish(hold)
    topic = catalog.topic_for("safehub.events.IncidentOpened")
    events = [codec.decode(r.value()) for r in read_topic(kafka, topic, expect=3, timeout=30)]
    (opened,) = [e for e in events if e["envelope"]["event_type"].endswith("IncidentOpened")]
    assert opened["envelope"]["exercise"] is True and opened["dispatchable"] is False
    assert opened["summary"].startswith("EXERCISE")
    decided = {
        e["signal_event_id"]: e
        for e in events
        if e["envelope"]["event_type"].endswith("SignalDecided")
    }
    refused = decided[hold["envelope"]["event_id"]]
    assert refused["outcome"] == "REFUSED" and refused["refusal"] == "INVALID_TRANSITION"
    assert "LOCKDOWN → HOLD is not allowed" in refused["reason"]
    assert refused["envelope"]["incident_id"] == opened["incident_id"]  # on its timeline


def test_records_the_service_cannot_take_are_dead_lettered_and_it_keeps_going(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, incidents: Callable[..., Component]
) -> None:
    now = datetime.now(UTC)
    incidents().start()
    nowhere = {**LINCOLN, "school": "sch-nowhere"}
    stray = panic_at(now)
    stray["envelope"]["tenant"] = nowhere
    misrouted = new_event(
        "LockCommand",
        source="test",
        tenant=LINCOLN,
        incident_id="inc-1",
        payload={
            "command_id": "c-1",
            "scope": "ALL",
            "door_ids": [],
            "target": "LOCKED",
            "srp_action": "LOCKDOWN",
            "reason": "test",
            "requested_by": "staff-1",
        },
    )
    alerts = catalog.name("safehub.alerts.v1")
    doors = catalog.name("safehub.doors.v1")
    with EventProducer(kafka, codec, catalog) as producer:
        producer.publish(stray)  # a school the directory does not know
        body = codec.encode(misrouted)
        headers = [("safehub-event-type", b"safehub.events.LockCommand")]
        producer.publish_raw(alerts, b"sch-lincoln-hs", body, headers)  # not an alert
        producer.publish_raw(doors, b"sch-lincoln-hs", b"\xc3\x01garbage", [])  # not Avro
        producer.publish(panic_at(now + timedelta(seconds=1)))  # still handled afterwards
    letters = read_topic(kafka, catalog.dead_letter, expect=3, timeout=30)
    reasons = {
        dict(r.headers())["safehub-dlq-group"].decode()
        + ": "
        + dict(r.headers())["safehub-dlq-reason"].decode()
        for r in letters
    }
    assert any("incidents-alerts" in r and "sch-nowhere" in r for r in reasons), reasons
    assert any("incidents-alerts" in r and "LockCommand is not declared" in r for r in reasons)
    assert any(".incidents-doors: " in r for r in reasons), reasons
    (opened,) = _decoded(kafka, codec, catalog.topic_for("safehub.events.IncidentOpened"), 1)
    assert opened["envelope"]["tenant"]["school"] == "sch-lincoln-hs"


BURST = 600


def test_kill_9_in_a_burst_loses_no_incident_and_duplicates_none(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, incidents: Callable[..., Component]
) -> None:
    # Every panic its own incident: a tiny correlation window, timestamps a second apart.
    service = incidents(SAFEHUB_INCIDENTS__CORRELATION_WINDOW_S="0.001").start()
    topic = catalog.topic_for("safehub.events.IncidentOpened")
    now = datetime.now(UTC)
    panics = [panic_at(now + timedelta(seconds=i)) for i in range(BURST)]
    with EventProducer(kafka, codec, catalog) as producer:
        futures = [producer.publish_nowait(p) for p in panics]
        for future in futures:
            future.result(10)
        # Kill as soon as some, not all, incidents are out.
        wait_until(
            lambda: len(read_topic(kafka, topic, expect=5, timeout=0.5)) >= 5,
            what="first incidents",
        )
        service.kill()
        before_restart = len(read_all(kafka, topic))
        assert before_restart < BURST, "the kill must land in the middle of the burst"
        service.start()
        wait_until(
            lambda: len(read_topic(kafka, topic, expect=BURST, timeout=1)) >= BURST,
            timeout=60,
            what="every panic's incident",
        )
        service.stop()  # drain: anything still to come is out before we count
    events = [codec.decode(r.value()) for r in read_all(kafka, topic)]
    per_panic = Counter(e["envelope"]["causation_id"] for e in events)
    expected = {p["envelope"]["event_id"] for p in panics}
    lost = expected - set(per_panic)
    assert not lost, f"{len(lost)} panics lost ({before_restart} incidents before the kill)"
    assert set(per_panic) == expected
    assert max(per_panic.values()) == 1, "a panic opened two incidents"


def _cancel(panic: dict[str, Any], *, source: str, cancelled_by: str) -> dict[str, Any]:
    return at_hub(
        new_event(
            "PanicCancelled",
            source=source,
            tenant=LINCOLN,
            building="B",
            room="214",
            payload={
                "panic_event_id": panic["envelope"]["event_id"],
                "device_id": "badge-1",
                "reason": "pressed by mistake",
                "cancelled_by": cancelled_by,
            },
        )
    )


def _decision(kafka: KafkaSettings, codec: Codec, topic: str, signal: dict[str, Any]) -> Any:
    """The SignalDecided the service published for ``signal`` (waits for it)."""
    signal_id = signal["envelope"]["event_id"]

    def found() -> dict[str, Any] | None:
        for record in read_all(kafka, topic):
            event = codec.decode(record.value())
            if event.get("signal_event_id") == signal_id:
                return event
        return None

    return wait_until(found, what=f"the decision on {signal_id}")


def test_a_staff_app_and_an_administrator_added_at_run_time_may_cancel_a_panic(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, incidents: Callable[..., Component]
) -> None:
    """Who may cancel comes from the live directory (which client systems sign staff in) and
    the live people (who a school's administrators are), read per signal: a staff app and
    an administrator published while the service runs count without a restart."""
    topic = catalog.topic_for("safehub.events.IncidentOpened")
    service = incidents().start()
    app = Client(id="staff-app-new", district=LINCOLN["district"], scopes={Scope.SRP})
    admin = "stf-new-principal"
    with EventProducer(kafka, codec, catalog) as producer:
        panic = panic_at(datetime.now(UTC))
        producer.publish(panic)
        (opened,) = _decoded(kafka, codec, topic, expect=1)
        early = _cancel(panic, source=app.id, cancelled_by=admin)
        producer.publish(early)
        refused = _decision(kafka, codec, topic, early)
        assert (refused["outcome"], refused["refusal"]) == ("REFUSED", "NOT_PERMITTED")

        seed = Directory.load(default_directory_file())
        producer.publish(change_event(seed, "CLIENT", app, version=1, changed_by="ops-1"))
        producer.publish(person_changed(admin, version=1, kind="STAFF", staff_role="administrator"))
        wait_until(
            lambda: all(
                line in service.log_file.read_text(errors="replace")
                for line in ('"directory changed"', '"people changed"')
            ),
            what="the service applied the new staff app and administrator",
        )
        later = _cancel(panic, source=app.id, cancelled_by=admin)
        producer.publish(later)
        applied = _decision(kafka, codec, topic, later)
    assert applied["outcome"] == "APPLIED", applied["reason"]
    assert applied["envelope"]["incident_id"] == opened["incident_id"]
