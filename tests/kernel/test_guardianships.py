"""A guardian's custody and pickup authority per student: the model, PersonChanged both ways,
an event of an older writer (one guardianship, no per-student array) and the seed file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from safehub.contracts.registry import HISTORY_DIR, SCHEMA_DIR, load_schemas
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import new_event
from safehub.kernel.people import Contact, Guardian, Guardianship, People, SchoolPeople
from safehub.kernel.person_events import (
    InvalidPersonError,
    person_fields,
    person_from_event,
    seed_events,
)

SEED = default_directory_file()
LINCOLN = "sch-lincoln-hs"
PERSON = "safehub.events.PersonChanged"
#: The PersonChanged of writers before per-student guardianships (kept in schemas/history).
OLD_SCHEMA = SCHEMA_DIR / HISTORY_DIR / "safehub.events.PersonChanged.bd04eb07aff7ddc2.avsc"

PARENT = {"relationship": "parent", "has_custody": True, "may_pick_up": True, "restricted": False}
BARRED = {"relationship": "parent", "has_custody": False, "may_pick_up": False, "restricted": True}


def _event(**fields: Any) -> dict[str, Any]:
    payload = person_fields(
        "grd-split", kind="GUARDIAN", version=3, roster_source="sis", school_ids=[LINCOLN]
    )
    return new_event(
        "PersonChanged",
        source="sis_roster",
        tenant=Directory.load(SEED).tenant(LINCOLN),
        classification=("INTERNAL", "STUDENT_RECORD"),
        payload=payload | {"name": "Sam Split", "student_ids": ["stu-a", "stu-b"]} | fields,
    )


def _people(guardian: Guardian) -> People:
    return People(schools=[SchoolPeople(id=LINCOLN, guardians=[guardian])])


def test_a_restriction_for_one_student_does_not_bar_the_guardian_from_another() -> None:
    codec = Codec.from_contracts()
    event = _event(
        guardianship=BARRED | {"has_custody": True, "may_pick_up": True},  # the summary
        student_guardianships=[
            {"student_id": "stu-a", **PARENT},
            {"student_id": "stu-b", **BARRED},
        ],
    )

    decoded = codec.decode(codec.encode(event))
    *_, guardian = person_from_event(decoded)

    assert isinstance(guardian, Guardian)
    assert guardian.for_student("stu-a") == Guardianship(**PARENT)
    assert guardian.for_student("stu-b") == Guardianship(**BARRED)
    assert guardian.for_student("stu-elsewhere") is None
    people = _people(guardian)
    assert people.may_release_to("grd-split", "stu-a")
    assert not people.may_release_to("grd-split", "stu-b")
    assert not people.may_release_to("grd-split", "stu-elsewhere")
    assert not people.may_release_to("grd-unknown", "stu-a")


def test_an_event_of_an_older_writer_holds_its_one_guardianship_for_every_student() -> None:
    schemas = load_schemas()
    old_writer = Codec({**schemas, PERSON: json.loads(OLD_SCHEMA.read_text(encoding="utf-8"))})
    event = _event(guardianship=BARRED)
    del event["student_guardianships"]  # the old contract has no such field

    decoded = Codec.from_contracts().decode(old_writer.encode(event))

    assert decoded["student_guardianships"] == []
    *_, guardian = person_from_event(decoded)
    assert isinstance(guardian, Guardian)
    assert guardian.guardianships == {
        "stu-a": Guardianship(**BARRED),
        "stu-b": Guardianship(**BARRED),
    }
    assert not _people(guardian).may_release_to("grd-split", "stu-a")
    allowed = _event(guardianship=PARENT)
    del allowed["student_guardianships"]
    *_, guardian = person_from_event(Codec.from_contracts().decode(old_writer.encode(allowed)))
    assert isinstance(guardian, Guardian)
    assert _people(guardian).may_release_to("grd-split", "stu-b")


def test_an_old_reader_reads_what_the_new_writer_writes() -> None:
    schemas = load_schemas()
    old = json.loads(OLD_SCHEMA.read_text(encoding="utf-8"))
    old_reader = Codec({**schemas, PERSON: old}, history=[schemas[PERSON]])
    event = _event(guardianship=BARRED, student_guardianships=[{"student_id": "stu-b", **BARRED}])

    decoded = old_reader.decode(Codec.from_contracts().encode(event))

    assert "student_guardianships" not in decoded
    assert decoded["guardianship"] == BARRED


def test_without_the_summary_it_is_computed_most_restrictive() -> None:
    guardian = Guardian(
        id="g",
        name="G",
        student_ids=["stu-a", "stu-b"],
        guardianships={"stu-a": Guardianship(**PARENT), "stu-b": Guardianship(**BARRED)},
        contact=Contact(),
    )
    assert guardian.guardianship == Guardianship(
        relationship="parent", has_custody=True, may_pick_up=True, restricted=True
    )
    assert Guardian(id="g", name="G", contact=Contact()).guardianship is None


def test_a_guardianship_for_a_student_not_theirs_or_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match="not in student_ids"):
        Guardian(
            id="g",
            name="G",
            student_ids=["stu-a"],
            guardianships={"stu-z": Guardianship(**PARENT)},
            contact=Contact(),
        )
    twice = _event(
        student_guardianships=[
            {"student_id": "stu-a", **PARENT},
            {"student_id": "stu-a", **BARRED},
        ]
    )
    with pytest.raises(InvalidPersonError, match=r"student_guardianships\.1"):
        person_from_event(twice)
    stranger = _event(student_guardianships=[{"student_id": "stu-z", **PARENT}])
    with pytest.raises(InvalidPersonError, match="not in student_ids") as info:
        person_from_event(stranger)
    assert "stu-z" not in str(info.value)  # errors name fields, never values


def test_a_seed_guardianship_applies_to_each_of_the_guardians_students(tmp_path: Path) -> None:
    data = json.loads(SEED.read_text(encoding="utf-8"))
    school = data["districts"][0]["schools"][0]
    guardian = next(g for g in school["guardians"] if len(g["student_ids"]) > 1)
    guardian["guardianship"] = BARRED
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    loaded = People.load(path)
    for student in guardian["student_ids"]:
        assert loaded.guardianship(guardian["id"], student) == Guardianship(**BARRED)
        assert not loaded.may_release_to(guardian["id"], student)
    (event,) = [e for e in seed_events(path) if e["person_id"] == guardian["id"]]
    assert event["guardianship"] == BARRED
    assert event["student_guardianships"] == [
        {"student_id": s, **BARRED} for s in sorted(guardian["student_ids"])
    ]
    codec = Codec.from_contracts()
    assert (
        codec.decode(codec.encode(event))["student_guardianships"]
        == (event["student_guardianships"])
    )
    # The demo seed has no custody data: nobody may be released to without it.
    demo = People.load(SEED)
    first = demo.guardians(LINCOLN)[0]
    assert not demo.may_release_to(first.id, first.student_ids[0])
