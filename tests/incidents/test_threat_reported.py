"""ThreatReported (a life-safety tip sent down the emergency path): the incident book's
decisions, then the incidents service as a real process on a real broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.people import People
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import ALERTS, TopicCatalog
from services.incidents.model import IncidentBook, Rejected, incident_id_for, report_incident_id
from tests.incidents.threats import LINCOLN, SUMMARY, threat_reported
from tests.support.examples import panic_at
from tests.support.kafka import read_all, read_topic
from tests.support.processes import Component
from tests.support.waiting import wait_until

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
OPENED = "safehub.events.IncidentOpened"
CHANGED = "safehub.events.IncidentChanged"


def _book() -> IncidentBook:
    return IncidentBook(
        Directory.load(default_directory_file()),
        People.load(default_directory_file()),
        correlation_window=timedelta(minutes=10),
        cancel_window=timedelta(minutes=2),
        camera_min_confidence=0.6,
    )


def _feed(book: IncidentBook, signal: dict[str, Any]) -> list[dict[str, Any]]:
    out = book.decide(signal)
    book.apply_all(out)
    return out


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["envelope"]["event_type"].rsplit(".", 1)[-1] for e in events]


# -- the book ---------------------------------------------------------------------------------


def test_a_threat_report_opens_a_dispatchable_threat_incident() -> None:
    book = _book()
    signal = threat_reported("tip-1", at=T0)
    (opened,) = _feed(book, signal)
    assert _types([opened]) == ["IncidentOpened"]
    assert opened["incident_type"] == "THREAT" and opened["dispatchable"] is True
    assert opened["correlated_event_ids"] == [signal["envelope"]["event_id"]]
    assert opened["incident_id"] == report_incident_id("tip-1")
    assert opened["envelope"]["causation_id"] == signal["envelope"]["event_id"]
    assert opened["envelope"]["building"] is None  # school-wide: the tip names no building
    assert opened["panic_sources"] == {}  # nobody may cancel it as a panic
    assert "imminent threat reported by a tip (weapon)" in opened["summary"]
    assert SUMMARY in opened["summary"]


def test_the_same_report_twice_opens_nothing_new_whatever_its_event_id() -> None:
    book = _book()
    first = threat_reported("tip-1", at=T0)
    published = _feed(book, first)
    assert published
    assert _feed(book, first) == []  # redelivered
    other_id = threat_reported("tip-1", at=T0 + timedelta(seconds=5), event_id="retry-1")
    assert _feed(book, other_id) == []  # re-published under another id
    assert len(book.incidents) == 1
    # After a restart the book is rebuilt from the incidents topic: still one incident.
    rebuilt = _book()
    rebuilt.apply_all(published)
    assert rebuilt.decide(first) == []
    assert rebuilt.decide(threat_reported("tip-1", at=T0, event_id="retry-2")) == []


def test_a_threat_report_joins_the_active_incident_at_its_school() -> None:
    book = _book()
    panic = panic_at(T0)  # a silent panic, active assailant, in building B
    (opened,) = _feed(book, panic)
    report = threat_reported("tip-2", at=T0 + timedelta(minutes=1))
    (changed,) = _feed(book, report)
    assert _types([changed]) == ["IncidentChanged"]
    assert (
        changed["incident_id"]
        == opened["incident_id"]
        == incident_id_for(panic["envelope"]["event_id"])
    )
    assert changed["incident_type"] == "ACTIVE_ASSAILANT"  # the more severe type stays
    assert changed["correlated_event_ids"] == [
        panic["envelope"]["event_id"],
        report["envelope"]["event_id"],
    ]
    assert "threat reported by a tip (weapon)" in changed["change_reason"]
    # The same report again, under another id: it is in that incident already.
    again = threat_reported("tip-2", at=T0 + timedelta(minutes=2), event_id="retry-3")
    assert _feed(book, again) == []
    assert len(book.incidents) == 1


def test_a_threat_report_outside_the_window_opens_its_own_incident() -> None:
    book = _book()
    _feed(book, panic_at(T0))
    (opened,) = _feed(book, threat_reported("tip-3", at=T0 + timedelta(minutes=30)))
    assert _types([opened]) == ["IncidentOpened"] and opened["dispatchable"] is True


def test_an_exercise_threat_report_never_dispatches_nor_joins_a_real_incident() -> None:
    book = _book()
    _feed(book, panic_at(T0))
    (drill,) = _feed(book, threat_reported("tip-4", at=T0, exercise=True))
    assert _types([drill]) == ["IncidentOpened"]
    assert drill["dispatchable"] is False and drill["envelope"]["exercise"] is True
    assert drill["summary"].startswith("EXERCISE - ")


def test_a_threat_report_without_a_school_is_rejected() -> None:
    book = _book()
    district_only = {**LINCOLN, "school": None}
    with pytest.raises(Rejected, match="names no school"):
        book.decide(threat_reported(tenant=district_only))
    with pytest.raises(Rejected, match="sch-nowhere"):
        book.decide(threat_reported(tenant={**LINCOLN, "school": "sch-nowhere"}))


# -- the service ------------------------------------------------------------------------------


@pytest.fixture
def incidents(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path
) -> Iterator[Callable[..., Component]]:
    made: list[Component] = []

    def make(**env: str) -> Component:
        component = Component("services.incidents", kafka, catalog.prefix, tmp_path, env=env)
        made.append(component)
        return component

    yield make
    for component in made:
        component.kill()


def _incident_events(kafka: KafkaSettings, codec: Codec, topic: str) -> list[dict[str, Any]]:
    events = [codec.decode(r.value()) for r in read_all(kafka, topic)]
    return [e for e in events if e["envelope"]["event_type"] in (OPENED, CHANGED)]


def _opened_for(kafka: KafkaSettings, codec: Codec, topic: str, cause: str) -> dict[str, Any]:
    """Wait for the IncidentOpened caused by event ``cause``."""
    return wait_until(
        lambda: next(
            (
                e
                for e in _incident_events(kafka, codec, topic)
                if e["envelope"]["event_type"] == OPENED and e["envelope"]["causation_id"] == cause
            ),
            None,
        ),
        timeout=30,
        what=f"the incident opened by {cause}",
    )


@pytest.mark.kafka
def test_service_a_threat_report_opens_one_dispatchable_incident_and_a_drill_none(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, incidents: Callable[..., Component]
) -> None:
    topic = catalog.topic_for(OPENED)
    service = incidents().start()
    now = datetime.now(UTC)
    report = threat_reported("tip-svc-1", at=now)
    with EventProducer(kafka, codec, catalog) as producer:
        producer.publish(report)
        opened = _opened_for(kafka, codec, topic, report["envelope"]["event_id"])
        assert opened["incident_type"] == "THREAT" and opened["dispatchable"] is True
        assert opened["incident_id"] == report_incident_id("tip-svc-1")
        assert opened["correlated_event_ids"] == [report["envelope"]["event_id"]]

        # Redelivered, and re-published under another event id (before and after a restart);
        # then a drill at the same school (same partition: handled after them, in order).
        producer.publish(report)
        producer.publish(threat_reported("tip-svc-1", at=now, event_id="tip-svc-1-retry-a"))
        service.stop()
        service.start()
        producer.publish(threat_reported("tip-svc-1", at=now, event_id="tip-svc-1-retry-b"))
        drill = threat_reported("tip-svc-2", at=now + timedelta(seconds=1), exercise=True)
        producer.publish(drill)
        drilled = _opened_for(kafka, codec, topic, drill["envelope"]["event_id"])
    assert drilled["dispatchable"] is False and drilled["envelope"]["exercise"] is True
    assert drilled["incident_id"] != opened["incident_id"]  # a drill never joins a real one
    events = _incident_events(kafka, codec, topic)
    assert [e["incident_id"] for e in events] == [opened["incident_id"], drilled["incident_id"]]


@pytest.mark.kafka
def test_service_a_threat_report_without_a_school_is_dead_lettered_with_the_reason(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, incidents: Callable[..., Component]
) -> None:
    incidents().start()
    nowhere = threat_reported(tenant={**LINCOLN, "school": None})
    headers = [("safehub-event-type", b"safehub.events.ThreatReported")]
    with EventProducer(kafka, codec, catalog) as producer:
        # The producer refuses to key it (alerts are keyed by school): sent as bytes.
        producer.publish_raw(
            catalog.name(ALERTS), b"dist-north-isd", codec.encode(nowhere), headers
        )
        after = threat_reported(at=datetime.now(UTC))
        producer.publish(after)  # still handled afterwards
        _opened_for(kafka, codec, catalog.topic_for(OPENED), after["envelope"]["event_id"])
    letters = read_topic(kafka, catalog.dead_letter, expect=1, timeout=30)
    reasons = [
        dict(r.headers())["safehub-dlq-group"].decode()
        + ": "
        + dict(r.headers())["safehub-dlq-reason"].decode()
        for r in letters
    ]
    assert any(
        "incidents-alerts" in r and "ThreatReported names no school" in r for r in reasons
    ), reasons
