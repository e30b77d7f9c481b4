"""The Avro event contracts in schemas/ and `safehub schemas check`."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from safehub.contracts.check import Problem, check_schemas
from safehub.contracts.registry import (
    SCHEMA_DIR,
    event_classification,
    event_schemas,
    field_classifications,
    load_schemas,
)
from safehub.kernel.errors import SchemaError

REQUIRED_EVENTS = [
    "TipSubmitted",
    "TipUpdated",
    "ThreatCaseOpened",
    "ThreatCaseUpdated",
    "DoorLockState",
    "LockCommand",
    "CameraAlert",
    "PanicAlert",
    "SrpActionRequested",
    "IncidentOpened",
    "IncidentChanged",
    "IncidentCleared",
    "NotificationRequested",
    "DeliveryReceipt",
    "NotificationAcknowledged",
    "ReunificationStatus",
    "CadDispatch",
    "CadStatusUpdate",
    "RosterChange",
    "Referral",
    "RecordDisclosure",
]

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    """A git repo whose branch main holds a copy of schemas/; returns its schemas dir."""
    repo = tmp_path / "repo"
    shutil.copytree(SCHEMA_DIR, repo / "schemas")
    _git(tmp_path, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "schemas")
    _git(
        repo,
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "schemas",
    )
    return repo / "schemas"


def _edit(schema_dir: Path, rel: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = schema_dir / rel
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _reasons(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


# --------------------------------------------------------------------------- the schemas


def test_schema_dir_is_the_source_tree() -> None:
    assert Path(__file__).resolve().parents[2] / "schemas" == SCHEMA_DIR


def test_all_schemas_load_and_parse_with_both_libraries() -> None:
    schemas = load_schemas()
    events = event_schemas()
    assert {f"safehub.events.{n}" for n in REQUIRED_EVENTS} <= events.keys()
    assert {"safehub.common.Envelope", "safehub.common.DataClass"} <= schemas.keys()
    for name, schema in schemas.items():
        assert schema["name"] == name
        json.dumps(schema)  # plain JSON
        parse_schema(schema)
        avro.schema.parse(json.dumps(schema))
    for schema in events.values():
        assert schema["fields"][0]["name"] == "envelope"
        assert schema["fields"][0]["type"]["name"] == "safehub.common.Envelope"


def test_repository_schemas_pass_the_rules() -> None:
    assert check_schemas(SCHEMA_DIR, against=None) == []


def test_expanded_schema_round_trips_with_fastavro() -> None:
    schema = parse_schema(load_schemas()["safehub.events.PanicAlert"])
    now = datetime(2026, 1, 5, 8, 30, 0, 123456, tzinfo=UTC)
    event = {
        "envelope": {
            "event_id": "0b7f2c4e-8a57-4c1e-9c3c-2f1a2b3c4d5e",
            "event_type": "safehub.events.PanicAlert",
            "schema_version": 1,
            "occurred_at": now,
            "recorded_at": now,
            "source": "panic-connector-1",
            "tenant": {"state": "US-TX", "district": "101912", "school": "041"},
            "building": "B",
            "room": "214",
            "incident_id": None,
            "case_id": None,
            "causation_id": None,
            "classification": ["INTERNAL"],
            "exercise": False,
        },
        "device_id": "badge-77",
        "device_kind": "WEARABLE",
        "panic_type": "ACTIVE_ASSAILANT",
        "silent": True,
        "reporter_role": "TEACHER",
        "activated_by": None,
        "floor": "2",
        "latitude": None,
        "longitude": None,
        "location_text": None,
    }
    buf = io.BytesIO()
    schemaless_writer(buf, schema, event)
    buf.seek(0)
    assert schemaless_reader(buf, schema) == event


def test_classifications() -> None:
    events = event_schemas()
    tip = events["safehub.events.TipSubmitted"]
    assert field_classifications(tip)["tipster_contact_sealed"] == "TIPSTER_IDENTITY"
    assert field_classifications(events["safehub.events.Referral"])["reason"] == "HEALTH"
    assert field_classifications(events["safehub.events.RecordDisclosure"])["student_id"] == (
        "STUDENT_RECORD"
    )
    assert field_classifications(events["safehub.events.PanicAlert"]) == {}
    for schema in events.values():
        assert set(field_classifications(schema).values()) <= set(event_classification(schema))


def test_load_schemas_names_the_bad_file(tmp_path: Path) -> None:
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    (tmp_path / "schemas/events/PanicAlert.avsc").write_text("{")
    with pytest.raises(SchemaError, match=r"PanicAlert\.avsc: invalid JSON"):
        load_schemas(tmp_path / "schemas")


# --------------------------------------------------------------------------- rules


def test_missing_doc_is_reported(tmp_path: Path) -> None:
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    _edit(
        tmp_path / "schemas", "events/CameraAlert.avsc", lambda s: _field(s, "camera_id").pop("doc")
    )
    problems = check_schemas(tmp_path / "schemas", against=None)
    assert problems == [
        Problem("safehub.events.CameraAlert", "camera_id", "field 'camera_id' has no doc")
    ]


def test_enum_without_default_and_bad_timestamp_are_reported(tmp_path: Path) -> None:
    def change(schema: dict[str, Any]) -> None:
        del _field(schema, "analytic")["type"]["default"]
        schema["fields"].append(
            {
                "name": "seen_at",
                "type": {"type": "long", "logicalType": "timestamp-millis"},
                "doc": "When the camera saw it.",
                "default": 0,
            }
        )

    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    _edit(tmp_path / "schemas", "events/CameraAlert.avsc", change)
    problems = check_schemas(tmp_path / "schemas", against=None)
    assert {p.field for p in problems} == {"analytic", "seen_at"}
    assert "no default symbol" in _reasons(problems)
    assert "timestamp-micros" in _reasons(problems)


def test_undeclared_field_class_is_reported(tmp_path: Path) -> None:
    def change(schema: dict[str, Any]) -> None:
        schema["fields"].append(
            {
                "name": "student_id",
                "type": ["null", "string"],
                "default": None,
                "doc": "Student who pressed it.",
                "classification": "STUDENT_RECORD",
            }
        )

    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas")
    _edit(tmp_path / "schemas", "events/PanicAlert.avsc", change)
    (problem,) = check_schemas(tmp_path / "schemas", against=None)
    assert problem.field == "student_id"
    assert "STUDENT_RECORD" in problem.reason


# --------------------------------------------------------------------------- evolution


@needs_git
def test_check_passes_when_main_equals_the_work_tree(schema_dir: Path) -> None:
    assert _evolution(schema_dir) == []


def _evolution(schema_dir: Path) -> list[Problem]:
    """Compatibility problems against main, without the keep-history reminder."""
    return [p for p in check_schemas(schema_dir, against="main") if "not kept in" not in p.reason]


@needs_git
def test_changed_event_schema_must_keep_its_old_version(schema_dir: Path) -> None:
    from safehub.contracts.check import keep_history
    from safehub.contracts.registry import load_history, load_schemas
    from safehub.kernel.codec import Codec
    from tests.support.examples import example_event

    old_codec = Codec(load_schemas(schema_dir))
    old_event = example_event(load_schemas(schema_dir)["safehub.events.CameraAlert"])
    _edit(
        schema_dir,
        "events/CameraAlert.avsc",
        lambda s: s["fields"].append(
            {"name": "zone", "type": ["null", "string"], "default": None, "doc": "Zone."}
        ),
    )
    (problem,) = check_schemas(schema_dir, against="main")
    assert problem.schema == "safehub.events.CameraAlert"
    assert "not kept in schemas/history/" in problem.reason
    (kept,) = keep_history(schema_dir, "main")
    assert kept.parent.name == "history"
    assert check_schemas(schema_dir, against="main") == []
    # The kept version lets the new codec decode what the old one wrote.
    new_codec = Codec(load_schemas(schema_dir), load_history(schema_dir))
    assert new_codec.decode(old_codec.encode(old_event))["zone"] is None


@needs_git
def test_missing_ref_skips_evolution_with_a_note(
    schema_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _edit(schema_dir, "events/CameraAlert.avsc", lambda s: s["fields"].pop())
    with caplog.at_level(logging.WARNING):
        assert check_schemas(schema_dir, against="no-such-branch") == []
    assert "no-such-branch" in caplog.text


@needs_git
def test_field_added_without_default_is_reported(schema_dir: Path) -> None:
    _edit(
        schema_dir,
        "events/CameraAlert.avsc",
        lambda s: s["fields"].append({"name": "zone", "type": "string", "doc": "Camera zone."}),
    )
    (problem,) = _evolution(schema_dir)
    assert (problem.schema, problem.field) == ("safehub.events.CameraAlert", "zone")
    assert "field 'zone' added without a default" in problem.reason


@needs_git
def test_field_added_with_default_passes(schema_dir: Path) -> None:
    _edit(
        schema_dir,
        "events/CameraAlert.avsc",
        lambda s: s["fields"].append(
            {"name": "zone", "type": ["null", "string"], "default": None, "doc": "Camera zone."}
        ),
    )
    assert _evolution(schema_dir) == []


@needs_git
def test_changed_type_is_reported(schema_dir: Path) -> None:
    _edit(
        schema_dir,
        "events/CameraAlert.avsc",
        lambda s: _field(s, "confidence").update(type="string"),
    )
    (problem,) = _evolution(schema_dir)
    assert problem.field == "confidence"
    assert "type of field 'confidence' changed from double to string" in problem.reason


@needs_git
def test_widened_type_breaks_only_old_readers(schema_dir: Path) -> None:
    _edit(
        schema_dir,
        "events/DeliveryReceipt.avsc",
        lambda s: _field(s, "attempt").update(type="long"),
    )
    (problem,) = _evolution(schema_dir)
    assert problem.field == "attempt"
    assert "readers of the old schema cannot read new data" in problem.reason


@needs_git
def test_removed_field_without_default_is_reported(schema_dir: Path) -> None:
    _edit(
        schema_dir,
        "events/CameraAlert.avsc",
        lambda s: s["fields"].remove(_field(s, "camera_id")),
    )
    (problem,) = _evolution(schema_dir)
    assert problem.field == "camera_id"
    assert "removed" in problem.reason
    assert "readers of the old schema cannot read new data" in problem.reason


@needs_git
def test_removed_field_with_default_passes(schema_dir: Path) -> None:
    _edit(
        schema_dir,
        "events/CameraAlert.avsc",
        lambda s: s["fields"].remove(_field(s, "snapshot_url")),
    )
    assert _evolution(schema_dir) == []


@needs_git
def test_nested_field_is_named_by_its_path(schema_dir: Path) -> None:
    def change(schema: dict[str, Any]) -> None:
        recipient = _field(schema, "recipients")["type"]["items"]
        recipient["fields"].append({"name": "language", "type": "string", "doc": "Language."})

    _edit(schema_dir, "events/NotificationRequested.avsc", change)
    (problem,) = _evolution(schema_dir)
    assert problem.field == "recipients.language"


@needs_git
def test_envelope_change_is_reported_once_on_the_envelope(schema_dir: Path) -> None:
    _edit(
        schema_dir,
        "common/Envelope.avsc",
        lambda s: s["fields"].append({"name": "floor", "type": "string", "doc": "Floor."}),
    )
    (problem,) = _evolution(schema_dir)
    assert (problem.schema, problem.field) == ("safehub.common.Envelope", "floor")


@needs_git
def test_removed_schema_is_reported(schema_dir: Path) -> None:
    (schema_dir / "events/CameraAlert.avsc").unlink()
    (problem,) = _evolution(schema_dir)
    assert problem.schema == "safehub.events.CameraAlert"
    assert problem.field is None
    assert "removed" in problem.reason
