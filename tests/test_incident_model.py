"""The incident book's decisions: correlation, SRP state machine, drills, cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import new_event
from services.incidents.model import SRP_TRANSITIONS, IncidentBook, Rejected

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
LINCOLN = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"}


def _book() -> IncidentBook:
    return IncidentBook(
        Directory.load(default_directory_file()),
        correlation_window=timedelta(minutes=10),
        cancel_window=timedelta(minutes=2),
        camera_min_confidence=0.6,
    )


def _signal(
    kind: str,
    at: timedelta = timedelta(0),
    *,
    building: str | None = "B",
    room: str | None = None,
    exercise: bool = False,
    **payload: Any,
) -> dict[str, Any]:
    return new_event(
        kind,
        source="test",
        tenant=LINCOLN,
        building=building,
        room=room,
        exercise=exercise,
        occurred_at=T0 + at,
        payload=payload,
    )


def panic(at: timedelta = timedelta(0), **kw: Any) -> dict[str, Any]:
    return _signal(
        "PanicAlert",
        at,
        room=kw.pop("room", "214"),
        device_id="badge-1",
        panic_type="ACTIVE_ASSAILANT",
        silent=True,
        **kw,
    )


def camera(
    at: timedelta = timedelta(0), analytic: str = "WEAPON", confidence: float = 0.9, **kw: Any
) -> dict[str, Any]:
    return _signal(
        "CameraAlert", at, camera_id="cam-1", analytic=analytic, confidence=confidence, **kw
    )


def forced_door(at: timedelta = timedelta(0), **kw: Any) -> dict[str, Any]:
    return _signal("DoorLockState", at, door_id="B-east-entry", state="FORCED_OPEN", **kw)


def srp(action: str, at: timedelta = timedelta(0), **kw: Any) -> dict[str, Any]:
    return _signal(
        "SrpActionRequested",
        at,
        action=action,
        requested_by="staff-1",
        evacuate_location=kw.pop("evacuate_location", None),
        **kw,
    )


def feed(book: IncidentBook, signal: dict[str, Any]) -> list[dict[str, Any]]:
    out = book.decide(signal)
    book.apply_all(out)
    return out


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["envelope"]["event_type"].rsplit(".", 1)[-1] for e in events]


def test_panic_weapon_and_forced_door_in_one_building_are_one_incident() -> None:
    book = _book()
    opened = feed(book, panic())
    assert _types(opened) == ["IncidentOpened"]
    assert opened[0]["dispatchable"] is True
    assert opened[0]["envelope"]["room"] == "214"
    feed(book, camera(timedelta(seconds=20)))
    feed(book, forced_door(timedelta(seconds=40)))
    assert len(book.incidents) == 1
    (incident,) = book.incidents.values()
    assert len(incident.correlated_event_ids) == 3
    assert incident.version == 3
    assert incident.incident_type == "ACTIVE_ASSAILANT"


def test_signals_outside_the_window_or_building_open_new_incidents() -> None:
    book = _book()
    feed(book, panic())
    feed(book, panic(timedelta(minutes=11)))
    feed(book, panic(building="A", room="101"))
    assert len(book.incidents) == 3


def test_forced_door_alone_and_weak_camera_alone_open_nothing() -> None:
    book = _book()
    assert feed(book, forced_door()) == []
    assert feed(book, camera(confidence=0.3)) == []
    assert feed(book, camera(analytic="TAMPER")) == []


def test_drill_is_never_dispatchable_and_never_joins_a_real_incident() -> None:
    book = _book()
    drill = feed(book, srp("LOCKDOWN", exercise=True))
    assert [e["envelope"]["exercise"] for e in drill] == [True, True]
    assert drill[-1]["dispatchable"] is False
    feed(book, panic(exercise=True))
    assert all(not i.dispatchable for i in book.incidents.values())
    real = feed(book, panic())
    assert _types(real) == ["IncidentOpened"] and real[0]["dispatchable"] is True
    assert len(book.incidents) == 2


def test_lockdown_and_secure_issue_lock_commands() -> None:
    book = _book()
    out = feed(book, srp("SECURE"))
    assert _types(out) == ["LockCommand", "IncidentOpened"]
    assert out[0]["scope"] == "EXTERIOR" and out[0]["target"] == "LOCKED"
    out = feed(book, srp("LOCKDOWN", timedelta(seconds=5)))
    assert _types(out) == ["LockCommand", "IncidentChanged"]
    assert out[0]["scope"] == "ALL"
    assert out[1]["srp_action"] == "LOCKDOWN" and out[1]["dispatchable"] is True


def test_invalid_srp_transitions_are_rejected() -> None:
    book = _book()
    with pytest.raises(Rejected, match="NORMAL → ALL_CLEAR"):
        book.decide(srp("ALL_CLEAR"))
    feed(book, srp("LOCKDOWN"))
    with pytest.raises(Rejected, match="LOCKDOWN → HOLD"):
        book.decide(srp("HOLD", timedelta(seconds=1)))
    assert feed(book, srp("LOCKDOWN", timedelta(seconds=2))) == []  # repeat: no-op


def test_all_clear_ends_the_incident() -> None:
    book = _book()
    feed(book, panic())
    feed(book, srp("LOCKDOWN", timedelta(seconds=3)))
    out = feed(book, srp("ALL_CLEAR", timedelta(minutes=30)))
    assert _types(out) == ["IncidentCleared"]
    assert out[0]["outcome"] == "RESOLVED"
    (incident,) = book.incidents.values()
    assert not incident.active and incident.srp_action is None


def test_the_same_signal_twice_changes_nothing() -> None:
    book = _book()
    signal = panic()
    assert feed(book, signal)
    assert feed(book, signal) == []
    assert len(book.incidents) == 1


def test_panic_cancelled_within_the_window_cancels_the_incident() -> None:
    book = _book()
    signal = panic()
    feed(book, signal)
    cancel = _signal(
        "PanicCancelled",
        timedelta(seconds=30),
        panic_event_id=signal["envelope"]["event_id"],
        device_id="badge-1",
        reason="pressed by mistake",
        cancelled_by="teacher-7",
    )
    (changed,) = feed(book, cancel)
    assert changed["state"] == "CANCELLED"
    assert not next(iter(book.incidents.values())).active


def test_late_cancellation_or_corroborated_panic_is_not_cancelled() -> None:
    book = _book()
    signal = panic()
    feed(book, signal)
    feed(book, camera(timedelta(seconds=10)))
    cancel = _signal(
        "PanicCancelled",
        timedelta(seconds=30),
        panic_event_id=signal["envelope"]["event_id"],
        device_id="badge-1",
        reason="mistake",
        cancelled_by="teacher-7",
    )
    (changed,) = feed(book, cancel)
    assert changed["state"] != "CANCELLED"
    assert "not applied" in changed["change_reason"]


def test_rebuilding_from_published_events_gives_the_same_book() -> None:
    book = _book()
    published: list[dict[str, Any]] = []
    for signal in (
        panic(),
        camera(timedelta(seconds=5)),
        srp("LOCKDOWN", timedelta(seconds=9)),
        srp("ALL_CLEAR", timedelta(minutes=20)),
        panic(timedelta(minutes=25)),
    ):
        published += feed(book, signal)
    rebuilt = _book()
    rebuilt.apply_all(published)
    assert rebuilt.incidents.keys() == book.incidents.keys()
    for incident_id, incident in book.incidents.items():
        assert rebuilt.incidents[incident_id].__dict__ == incident.__dict__
    assert rebuilt.seen == book.seen


ACTIONS = ["HOLD", "SECURE", "LOCKDOWN", "EVACUATE", "SHELTER", "ALL_CLEAR"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12))
def test_srp_state_machine_only_takes_valid_transitions(actions: list[str]) -> None:
    book = _book()
    current: str | None = None
    for step, action in enumerate(actions):
        signal = srp(
            action,
            timedelta(seconds=step),
            evacuate_location="field" if action == "EVACUATE" else None,
        )
        allowed = action in SRP_TRANSITIONS[current] or (action == current and action != "EVACUATE")
        if not allowed:
            with pytest.raises(Rejected):
                book.decide(signal)
            continue
        feed(book, signal)
        current = None if action == "ALL_CLEAR" else action
        active = [i for i in book.incidents.values() if i.active]
        assert len(active) == (0 if current is None else 1)
        if active:
            assert active[0].srp_action == current
