"""The incident book's decisions: correlation, SRP state machine, drills, cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import new_event
from safehub.kernel.people import People
from services.incidents.model import SRP_TRANSITIONS, IncidentBook, Rejected

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
LINCOLN = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"}


def _book() -> IncidentBook:
    return IncidentBook(
        Directory.load(default_directory_file()),
        People.load(default_directory_file()),
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
    source: str = "test",
    tenant: dict[str, str] | None = None,
    device_at: datetime | None = None,
    **payload: Any,
) -> dict[str, Any]:
    event = new_event(
        kind,
        source=source,
        tenant=tenant or LINCOLN,
        building=building,
        room=room,
        exercise=exercise,
        occurred_at=T0 + at if device_at is None else device_at,
        payload=payload,
    )
    event["envelope"]["recorded_at"] = T0 + at  # the hub's clock when the gateway took it
    return event


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


def _without_decision(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if not e["envelope"]["event_type"].endswith("SignalDecided")]


def _decision(events: list[dict[str, Any]]) -> dict[str, Any]:
    (decided,) = [e for e in events if e["envelope"]["event_type"].endswith("SignalDecided")]
    return decided


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
    assert [e["envelope"]["exercise"] for e in drill] == [True, True, True]
    assert _without_decision(drill)[-1]["dispatchable"] is False
    feed(book, panic(exercise=True))
    assert all(not i.dispatchable for i in book.incidents.values())
    real = feed(book, panic())
    assert _types(real) == ["IncidentOpened"] and real[0]["dispatchable"] is True
    assert len(book.incidents) == 2


def test_lockdown_and_secure_issue_lock_commands() -> None:
    book = _book()
    out = feed(book, srp("SECURE"))
    assert _types(out) == ["LockCommand", "IncidentOpened", "SignalDecided"]
    assert out[0]["scope"] == "EXTERIOR" and out[0]["target"] == "LOCKED"
    out = feed(book, srp("LOCKDOWN", timedelta(seconds=5)))
    assert _types(out) == ["LockCommand", "IncidentChanged", "SignalDecided"]
    assert out[0]["scope"] == "ALL"
    assert out[1]["srp_action"] == "LOCKDOWN" and out[1]["dispatchable"] is True


def test_invalid_srp_transitions_are_refused_naming_state_and_allowed_actions() -> None:
    book = _book()
    out = feed(book, srp("ALL_CLEAR"))
    assert _types(out) == ["SignalDecided"]
    assert out[0]["outcome"] == "REFUSED" and out[0]["refusal"] == "INVALID_TRANSITION"
    assert "NORMAL → ALL_CLEAR" in out[0]["reason"]
    assert out[0]["srp_action_in_force"] is None
    feed(book, srp("LOCKDOWN"))
    hold = srp("HOLD", timedelta(seconds=1))
    out = feed(book, hold)
    assert _types(out) == ["SignalDecided"]
    assert "LOCKDOWN → HOLD" in out[0]["reason"]
    assert out[0]["srp_action_in_force"] == "LOCKDOWN"
    assert out[0]["allowed_actions"] == ["ALL_CLEAR", "EVACUATE", "SECURE", "SHELTER"]
    assert book.decide(hold) == []  # redelivered: decided once
    repeat = feed(book, srp("LOCKDOWN", timedelta(seconds=2)))
    assert _types(repeat) == ["SignalDecided"] and repeat[0]["outcome"] == "UNCHANGED"


def test_lockdown_to_shelter_for_a_tornado_keeps_the_doors_locked() -> None:
    book = _book()
    feed(book, srp("LOCKDOWN"))
    out = feed(
        book,
        srp(
            "SHELTER",
            timedelta(minutes=3),
            shelter_hazard="TORNADO",
            shelter_strategy="EVACUATE_TO_SHELTER_AREA",
        ),
    )
    assert _types(out) == ["IncidentChanged", "SignalDecided"]  # no unlock, no new lock
    assert out[0]["srp_action"] == "SHELTER" and out[0]["shelter_hazard"] == "TORNADO"
    assert _decision(out)["outcome"] == "APPLIED"


def test_school_wide_lockdown_joining_a_building_incident_locks_every_building() -> None:
    book = _book()
    feed(book, panic())  # building B
    out = feed(book, srp("LOCKDOWN", timedelta(seconds=20), building=None))
    command, changed, _decided = out
    assert _types(out) == ["LockCommand", "IncidentChanged", "SignalDecided"]
    assert command["envelope"]["building"] is None and command["scope"] == "ALL"
    assert changed["envelope"]["building"] is None  # the incident is school-wide now
    (incident,) = book.incidents.values()
    assert incident.building is None
    # A later signal in another building joins it rather than opening a second incident.
    assert _types(feed(book, panic(timedelta(seconds=40), building="A", room=None))) == [
        "IncidentChanged"
    ]


def test_an_incident_cad_closed_is_over_and_the_next_lockdown_opens_a_new_one() -> None:
    book = _book()
    (opened,) = feed(book, panic())
    closed = _signal(
        "CadStatusUpdate",
        timedelta(minutes=5),
        building=None,
        incident_id=opened["incident_id"],
        cad_incident_id="CAD-1",
        psap_id="psap-1",
        status="Closed",
        units=[],
        disposition_code="RESOLVED",
    )
    (changed,) = feed(book, closed)
    assert changed["state"] == "CLOSED"
    out = feed(book, srp("LOCKDOWN", timedelta(minutes=6)))
    assert _types(out) == ["LockCommand", "IncidentOpened", "SignalDecided"]
    assert out[1]["incident_id"] != opened["incident_id"] and out[1]["dispatchable"] is True


def test_windows_and_correlation_use_the_hub_clock_not_the_device_clock() -> None:
    book = _book()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    (opened,) = feed(book, panic(device_at=epoch))
    assert opened["envelope"]["occurred_at"] == T0  # the incident happened on hub time
    assert "device clock" in opened["summary"] and "behind" in opened["summary"]
    # A weapon alert 0.1 s later (hub time) from a correct clock joins the same incident.
    out = feed(book, camera(timedelta(milliseconds=100)))
    assert _types(out) == ["IncidentChanged"]
    # A cancellation sent 125 s later but backdated to the panic's time is outside the window.
    cancel = _signal(
        "PanicCancelled",
        timedelta(seconds=125),
        device_at=epoch,
        panic_event_id=opened["correlated_event_ids"][0],
        device_id="badge-1",
        reason="mistake",
        cancelled_by="teacher-7",
    )
    decided = _decision(book.decide(cancel))
    assert decided["outcome"] == "REFUSED"


def _cancel_of(
    panic_event: dict[str, Any], at: timedelta = timedelta(seconds=30), **kw: Any
) -> dict[str, Any]:
    return _signal(
        "PanicCancelled",
        at,
        panic_event_id=panic_event["envelope"]["event_id"],
        device_id="badge-1",
        reason="pressed by mistake",
        cancelled_by=kw.pop("cancelled_by", "teacher-7"),
        **kw,
    )


def test_only_the_raiser_or_a_school_administrator_may_cancel_a_panic() -> None:
    book = _book()
    signal = panic(source="panic-vendor-a")
    feed(book, signal)
    other_client = _decision(feed(book, _cancel_of(signal, source="other-system")))
    assert other_client["outcome"] == "REFUSED" and other_client["refusal"] == "NOT_PERMITTED"
    south = {"state": "US-TX", "district": "dist-south-isd", "school": "sch-riverside-es"}
    foreign = _decision(feed(book, _cancel_of(signal, source="south-vendor", tenant=south)))
    assert foreign["refusal"] == "NOT_PERMITTED"
    assert foreign["envelope"]["incident_id"] is None  # nothing of the incident is revealed
    (incident,) = book.incidents.values()
    assert incident.active
    admin = next(
        s.id for s in book.people.school("sch-lincoln-hs").staff if s.role == "administrator"
    )
    # A system that does not sign staff in cannot speak for an administrator.
    claimed = _decision(
        feed(book, _cancel_of(signal, source="panic-badges-north", cancelled_by=admin))
    )
    assert claimed["refusal"] == "NOT_PERMITTED"
    out = feed(book, _cancel_of(signal, source="staff-app-lincoln", cancelled_by=admin))
    assert _decision(out)["outcome"] == "APPLIED"
    assert _without_decision(out)[0]["state"] == "CANCELLED"


def test_a_cancellation_with_the_wrong_drill_flag_is_refused_and_the_incident_stays() -> None:
    book = _book()
    signal = panic()
    feed(book, signal)
    out = feed(book, _cancel_of(signal, exercise=True))
    assert _types(out) == ["SignalDecided"]
    assert out[0]["refusal"] == "EXERCISE_MISMATCH"
    (incident,) = book.incidents.values()
    assert incident.active and not incident.exercise


def test_a_signal_for_a_school_not_in_the_directory_is_rejected() -> None:
    book = _book()
    unknown = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-nowhere"}
    with pytest.raises(Rejected, match="sch-nowhere"):
        book.decide(panic(tenant=unknown))


def test_all_clear_ends_the_incident() -> None:
    book = _book()
    feed(book, panic())
    feed(book, srp("LOCKDOWN", timedelta(seconds=3)))
    out = feed(book, srp("ALL_CLEAR", timedelta(minutes=30)))
    assert _types(out) == ["IncidentCleared", "SignalDecided"]
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
    (changed,) = _without_decision(feed(book, cancel))
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
    out = feed(book, cancel)
    (changed,) = _without_decision(out)
    assert changed["state"] != "CANCELLED"
    assert "not applied" in changed["change_reason"]
    assert _decision(out)["refusal"] == "CANCEL_WINDOW_PASSED"


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
        out = feed(book, signal)
        if not allowed:
            assert _types(out) == ["SignalDecided"] and out[0]["outcome"] == "REFUSED"
            continue
        assert _decision(out)["outcome"] in ("APPLIED", "UNCHANGED")
        current = None if action == "ALL_CLEAR" else action
        active = [i for i in book.incidents.values() if i.active]
        assert len(active) == (0 if current is None else 1)
        if active:
            assert active[0].srp_action == current


def test_the_books_indexes_agree_with_a_scan_of_every_incident() -> None:
    """active_for and incident_of_panic use indexes kept by apply(); they must find exactly
    what a scan of every incident ever opened finds (drills, buildings, cleared, cancelled)."""
    book = _book()
    panics: list[dict[str, Any]] = []
    for n in range(60):
        signal = panic(
            timedelta(minutes=11 * n),  # beyond the window: each its own incident
            building="A" if n % 3 else "B",
            exercise=n % 4 == 0,
        )
        panics.append(signal)
        feed(book, signal)
    for n, signal in enumerate(panics):
        if n % 5 == 0:  # cancelled within the window
            feed(book, _cancel_of(signal, timedelta(minutes=11 * n, seconds=30)))
        elif n % 7 == 0:  # an ALL CLEAR ends it
            feed(book, srp("ALL_CLEAR", timedelta(minutes=11 * n, seconds=40), building=None))
    assert any(not i.active for i in book.incidents.values())
    assert any(i.active for i in book.incidents.values())

    def scanned(building: str | None, exercise: bool, within: datetime | None) -> Any:
        found = [
            i
            for i in book.incidents.values()
            if i.active
            and i.school == LINCOLN["school"]
            and i.exercise == exercise
            and (building is None or i.building in (None, building))
            and (within is None or within - i.last_signal_at <= book.correlation_window)
        ]
        return max(found, key=lambda i: i.last_signal_at, default=None)

    for minutes in range(0, 11 * 60, 7):
        within = T0 + timedelta(minutes=minutes)
        for building in ("A", "B", None):
            for exercise in (False, True):
                expected = scanned(building, exercise, within)
                got = book.active_for(LINCOLN["school"], building, exercise, within=within)
                assert got is expected, (minutes, building, exercise)
    for signal in panics:
        event_id = signal["envelope"]["event_id"]
        expected = next(
            (
                i
                for i in book.incidents.values()
                if event_id in i.panic_sources or event_id in i.correlated_event_ids
            ),
            None,
        )
        assert book.incident_of_panic(event_id) is expected is not None
    assert book.incident_of_panic("never-seen") is None
