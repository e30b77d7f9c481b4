"""The rules of the doorstate service, as plain functions over the table values (no faust).

Table values are JSON objects (faust stores them as JSON in the changelog):

* ``door_states["<school>/<door_id>"]``: the latest report of a door, see :func:`door_record`.
  The newest ``occurred_at`` wins (ties broken by event id, so the outcome does not depend
  on arrival order); a report seen before (same event id) is a no-op.
* ``lock_commands["<school>"]``: ``{"commands": {command_id: entry}}``, the lock commands
  of one school under way or recently finished, see :func:`new_command`. Keyed by school
  (like both input topics) so a door report finds its school's commands in one lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from safehub.contracts.names import EventType
from safehub.kernel.codec import Event
from safehub.kernel.directory import Directory
from safehub.kernel.envelope import caused_by, event_id_for, new_event
from safehub.kernel.errors import HandlerError

SOURCE = "doorstate"

#: Outcomes a command is reported with, each at most once.
COMPLETE = "complete"
DEADLINE = "deadline"

DoorLookup = Callable[[str], Mapping[str, Any] | None]


def iso(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds (fixed width, so equal instants give equal text)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse(text: str) -> datetime:
    """The inverse of :func:`iso`."""
    return datetime.fromisoformat(text)


def door_key(school: str, door_id: str) -> str:
    """Key of a door in ``door_states``."""
    return f"{school}/{door_id}"


def school_of(event: Event) -> str:
    """The school an event belongs to (both input topics are keyed by it)."""
    school = (event["envelope"].get("tenant") or {}).get("school")
    if not school:
        raise HandlerError(f"{event['envelope']['event_type']} has no envelope.tenant.school")
    return str(school)


def door_record(event: Event) -> dict[str, Any]:
    """The ``door_states`` value for a DoorLockState event."""
    envelope = event["envelope"]
    return {
        "door_id": event["door_id"],
        "state": event["state"],
        "exterior": bool(event["exterior"]),
        "building": envelope.get("building"),
        "command_id": event.get("command_id"),
        "occurred_at": iso(envelope["occurred_at"]),
        "event_id": envelope["event_id"],
    }


def supersedes(record: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """True if ``record`` should replace ``current`` (newer; duplicates and older lose)."""
    if current is None:
        return True
    if record["event_id"] == current["event_id"]:
        return False
    return (parse(record["occurred_at"]), record["event_id"]) > (
        parse(current["occurred_at"]),
        current["event_id"],
    )


def expected_doors(event: Event, directory: Directory) -> list[str]:
    """The doors a LockCommand covers (scope DOORS, EXTERIOR or ALL of a building/school)."""
    school = school_of(event)
    building = event["envelope"].get("building")
    scope = event["scope"]
    if scope == "DOORS":
        return sorted(set(event.get("door_ids") or ()))
    try:
        doors = directory.doors(school, building, exterior_only=scope == "EXTERIOR")
    except Exception as exc:  # UnknownPlaceError: a permanent problem of this message
        raise HandlerError(f"LockCommand for unknown school {school!r}") from exc
    return sorted({door.id for door in doors})


def new_command(
    event: Event,
    expected: list[str],
    *,
    deadline_s: float,
    partition: int,
    traceparent: str | None,
) -> dict[str, Any]:
    """The ``lock_commands`` entry that tracks a LockCommand."""
    envelope = event["envelope"]
    return {
        "command_id": event["command_id"],
        # tenant, building, incident_id, exercise and causation_id: what LockdownProgress takes
        **caused_by(envelope),
        "target": event["target"],
        "expected": expected,
        "confirmed": [],
        "issued_at": iso(envelope["occurred_at"]),
        "deadline": iso(envelope["recorded_at"] + timedelta(seconds=deadline_s)),
        "traceparent": traceparent,
        "partition": partition,
        "reported": [],
        "closed_at": None,
        "superseded_by": None,
    }


def confirms(entry: Mapping[str, Any], report: Mapping[str, Any]) -> bool:
    """True if a door report confirms ``entry`` for its door.

    The door must be expected and unconfirmed, in the target state, and the report must
    answer the command (echoed command id) or have happened at or after it was issued.
    """
    return (
        entry["closed_at"] is None
        and report["door_id"] in entry["expected"]
        and report["door_id"] not in entry["confirmed"]
        and report["state"] == entry["target"]
        and (
            report.get("command_id") == entry["command_id"]
            or parse(report["occurred_at"]) >= parse(entry["issued_at"])
        )
    )


def confirm_known(entry: dict[str, Any], school: str, lookup: DoorLookup) -> bool:
    """Confirm doors whose latest known report already satisfies ``entry``.

    The doors topic and the commands topic are not ordered with each other: a door can
    report LOCKED before its command is read here. Returns True if anything changed.
    """
    changed = False
    for door_id in entry["expected"]:
        report = lookup(door_key(school, door_id))
        if report is not None and confirms(entry, report):
            entry["confirmed"].append(door_id)
            changed = True
    return changed


def supersede(commands: dict[str, dict[str, Any]], newer: Mapping[str, Any], now: datetime) -> bool:
    """Close open commands that ``newer`` overrides (other target on some of the same doors).

    A lockdown followed by an all-clear unlock must not end in a "doors unconfirmed"
    report for doors that were unlocked on purpose. Returns True if anything changed.
    """
    changed = False
    doors = set(newer["expected"])
    for entry in commands.values():
        if (
            entry["closed_at"] is None
            and entry["command_id"] != newer["command_id"]
            and entry["target"] != newer["target"]
            and doors.intersection(entry["expected"])
            and parse(entry["issued_at"]) <= parse(newer["issued_at"])
        ):
            entry["closed_at"] = iso(now)
            entry["superseded_by"] = newer["command_id"]
            changed = True
    return changed


def due_outcome(entry: Mapping[str, Any], now: datetime) -> str | None:
    """The outcome to report for ``entry`` now, if one is due and was not reported yet."""
    if COMPLETE in entry["reported"] or entry["superseded_by"]:
        return None
    if set(entry["confirmed"]) >= set(entry["expected"]):
        return COMPLETE
    if DEADLINE not in entry["reported"] and now >= parse(entry["deadline"]):
        return DEADLINE
    return None


def mark_reported(entry: dict[str, Any], outcome: str, now: datetime) -> None:
    """Record that ``outcome`` was published (a complete command is finished)."""
    entry["reported"].append(outcome)
    if outcome == COMPLETE:
        entry["closed_at"] = iso(now)


def unmark_reported(entry: dict[str, Any], outcome: str) -> None:
    """Undo :func:`mark_reported` (publishing failed; the outcome is due again)."""
    entry["reported"].remove(outcome)
    if outcome == COMPLETE:
        entry["closed_at"] = None


def expired(entry: Mapping[str, Any], now: datetime, retention: timedelta) -> bool:
    """True once a finished (or long abandoned) command may be forgotten."""
    end = entry["closed_at"] or (entry["deadline"] if DEADLINE in entry["reported"] else None)
    return end is not None and now - parse(end) > retention


def progress_event(entry: Mapping[str, Any], outcome: str, now: datetime) -> Event:
    """The LockdownProgress for ``entry``; its id is derived from (command, outcome).

    A repeat after a crash therefore carries the same event id and downstream
    deduplication folds it.
    """
    expected = list(entry["expected"])
    confirmed = [door for door in expected if door in entry["confirmed"]]
    unconfirmed = [door for door in expected if door not in entry["confirmed"]]
    return new_event(
        EventType.LOCKDOWN_PROGRESS,
        source=SOURCE,
        tenant=entry["tenant"],
        building=entry["building"],
        incident_id=entry["incident_id"],
        causation_id=entry["causation_id"],
        exercise=entry["exercise"],
        event_id=event_id_for(SOURCE, f"{entry['command_id']}/{outcome}"),
        payload={
            "incident_id": entry["incident_id"],
            "command_id": entry["command_id"],
            "target": entry["target"],
            "doors_expected": expected,
            "doors_confirmed": confirmed,
            "doors_unconfirmed": unconfirmed,
            "deadline_passed": now >= parse(entry["deadline"]),
            "complete": not unconfirmed,
        },
    )
