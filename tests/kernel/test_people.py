"""The directory (tenancy, facilities, clients, reviewers) and the people (staff, guardians,
responders with contact details) are two models read from one seed file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.errors import ConfigError
from safehub.kernel.people import People, SchoolPeople, StaffMember, StaffRole

LINCOLN = "sch-lincoln-hs"
WASHINGTON = "sch-washington-ms"
SEED = default_directory_file()


def seed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SEED.read_text(encoding="utf-8"))
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def seed_people(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        person
        for district in data["districts"]
        for school in district["schools"]
        for kind in ("staff", "guardians", "responders")
        for person in school.get(kind, [])
    ]


def test_one_seed_file_loads_into_both_models() -> None:
    data = seed()
    directory = Directory.load(SEED)
    people = People.load(SEED)
    schools = [s["id"] for d in data["districts"] for s in d["schools"]]
    assert [s.id for d in directory.districts for s in d.schools] == schools
    assert [s.id for s in people.schools] == schools
    for district in data["districts"]:
        for raw in district["schools"]:
            roster = people.school(raw["id"])
            assert [m.id for m in roster.staff] == [m["id"] for m in raw["staff"]]
            assert [g.id for g in roster.guardians] == [g["id"] for g in raw["guardians"]]
            assert [r.id for r in roster.responders] == [r["id"] for r in raw["responders"]]
            assert directory.school(raw["id"]).psap_id == raw["psap_id"]
    assert directory.client("panic-badges-north") is not None
    assert directory.reviewer("rev-state-auditor") is not None


def test_the_directory_alone_carries_no_person_and_no_contact_detail() -> None:
    directory = Directory.load(SEED)
    dumped = directory.model_dump_json()
    persons = seed_people(seed())
    assert persons, "the demo seed lists people"
    secrets = {
        value
        for person in persons
        for value in (
            person["name"],
            person["contact"].get("email"),
            person["contact"].get("phone"),
            person["contact"].get("push_token"),
        )
        if value
    }
    leaked = sorted(v for v in secrets if v in dumped)
    assert not leaked, f"{len(leaked)} person values in the directory"
    # Call trees name who is called by id, and nothing else of the directory names a person.
    without_trees = directory.model_copy(update={"call_trees": []}).model_dump_json()
    ids = sorted(p["id"] for p in persons if p["id"] in without_trees)
    assert not ids, f"{len(ids)} person ids outside the call trees"
    assert any(tree.steps for tree in directory.call_trees)
    for key in ('"staff"', '"guardians"', '"responders"', '"contact"', '"student_ids"'):
        assert key not in dumped


def test_the_directory_ignores_the_people_keys_even_when_they_are_wrong(tmp_path: Path) -> None:
    data = seed()
    data["districts"][0]["schools"][0]["staff"][0]["contact"]["phone"] = "not a phone"
    data["districts"][0]["schools"][0]["guardians"] = "not a list"
    path = write(tmp_path, data)
    assert Directory.load(path).has_school(LINCOLN)
    with pytest.raises(ConfigError):
        People.load(path)


def test_people_lookups() -> None:
    people = People.load(SEED)
    raw = next(s for d in seed()["districts"] for s in d["schools"] if s["id"] == LINCOLN)

    first = raw["staff"][0]
    member = people.staff_member(LINCOLN, first["id"])
    assert isinstance(member, StaffMember) and member.name == first["name"]
    assert people.staff_member(WASHINGTON, first["id"]) is None  # of another school
    assert people.staff_member("sch-nowhere", first["id"]) is None
    assert people.school_of(first["id"]) == LINCOLN
    assert people.school_of("stf-nobody") is None

    nurses = people.staff(LINCOLN, role=StaffRole.NURSE)
    assert nurses and [m.id for m in nurses] == [
        m["id"] for m in raw["staff"] if m["role"] == "nurse"
    ]
    in_a = people.staff(LINCOLN, building="A")
    assert [m.id for m in in_a] == [
        m["id"] for m in raw["staff"] if not m.get("buildings") or "A" in m["buildings"]
    ]
    assert len(people.staff(LINCOLN)) == len(raw["staff"])
    admins = people.administrators(LINCOLN)
    assert admins and all(m.role is StaffRole.ADMINISTRATOR for m in admins)
    assert [m.id for m in admins] == [m["id"] for m in raw["staff"] if m["role"] == "administrator"]

    guardian = raw["guardians"][0]
    assert [g.id for g in people.guardians(LINCOLN)] == [g["id"] for g in raw["guardians"]]
    assert guardian["id"] in {g.id for g in people.guardians_of(guardian["student_ids"][0])}
    assert people.guardians_of("stu-nobody") == []
    assert [r.id for r in people.responders(LINCOLN)] == [r["id"] for r in raw["responders"]]

    # A school nobody is listed at (yet): an empty roster, not an error.
    assert people.school("sch-new") == SchoolPeople(id="sch-new")
    assert people.staff("sch-new") == [] and people.administrators("sch-new") == []


def test_a_seed_without_people_has_empty_rosters(tmp_path: Path) -> None:
    data = seed()
    for district in data["districts"]:
        for school in district["schools"]:
            for kind in ("staff", "guardians", "responders"):
                school.pop(kind)
    path = write(tmp_path, data)
    people = People.load(path)
    assert [s.id for s in people.schools] == [
        s.id for d in Directory.load(path).districts for s in d.schools
    ]
    assert not any(s.staff or s.guardians or s.responders for s in people.schools)


@pytest.mark.parametrize(
    ("kind", "field", "value", "where"),
    [
        ("staff", "contact", {"phone": "555-0100-secret"}, "staff.1.contact.phone"),
        ("staff", "role", "janitor-in-chief", "staff.1.role"),
        ("guardians", "contact", None, "guardians.1.contact"),
        ("responders", "agency", None, "responders.1.agency"),
    ],
)
def test_a_bad_person_is_refused_naming_the_field_never_the_value(
    tmp_path: Path, kind: str, field: str, value: Any, where: str
) -> None:
    data = seed()
    person = data["districts"][0]["schools"][1][kind][1]
    if value is None:
        person.pop(field)
    else:
        person[field] = value
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as refused:
        People.load(path)
    message = str(refused.value)
    assert f"districts.0.schools.1.{where}" in message
    assert str(path) in message
    assert "secret" not in message and "janitor" not in message


def test_a_person_id_used_twice_is_refused(tmp_path: Path) -> None:
    data = seed()
    schools = data["districts"][0]["schools"]
    schools[1]["guardians"][0]["id"] = schools[0]["staff"][3]["id"]
    with pytest.raises(ConfigError, match=r"guardians\.0\.id: person id .* is not unique"):
        People.load(write(tmp_path, data))


def test_an_unreadable_people_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match="cannot be read"):
        People.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not JSON"):
        People.load(broken)
