"""OneRoster CSV codec: the three reference sample sets, negative packages, and fuzzing.

The GPL sample sets are read from ``../shared/standards/oneroster/samples`` (never shipped in
the package); every negative fixture is written to ``tmp_path`` here.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safehub.standards.oneroster import (
    COLUMNS_FILE,
    Class,
    Defect,
    Enrollment,
    Mode,
    OneRosterPackage,
    OneRosterPackageError,
    Org,
    Record,
    RosterChangeKind,
    RosterEntity,
    Severity,
    Status,
    User,
    load_facts,
    roster_change,
)

#: The project's reference set beside the repository.
STANDARDS = Path(__file__).resolve().parents[2].parent / "shared" / "standards" / "oneroster"
SAMPLES = STANDARDS / "samples"
DELTA = SAMPLES / "v1p2-delta-catalyst-oneroster_test_data"
MINIMAL = SAMPLES / "v1p1-bulk-catalyst-Test_minimal_data_set"
FULL = SAMPLES / "v1p1-bulk-catalyst-Test_full_data_set"

FACTS = load_facts()
V11_MANIFEST = FACTS["v1.1"].manifest_required
V12_MANIFEST = FACTS["v1.2"].manifest_required


def header(version: str, file: str) -> list[str]:
    return [c.name for c in FACTS[version].files[file].columns]


def write_package(
    root: Path,
    files: dict[str, str | bytes],
    *,
    version: str = "1.1",
    mode: str = "bulk",
    manifest: str | None = None,
) -> Path:
    """A package folder: ``files`` by name, and a manifest listing them in ``mode``."""
    root.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        required = V11_MANIFEST if version == "1.1" else V12_MANIFEST
        lines = ["propertyName,value"]
        for prop in required:
            if prop == "manifest.version":
                lines.append("manifest.version,1.0")
            elif prop == "oneroster.version":
                lines.append(f"oneroster.version,{version}")
            else:
                listed = prop[len("file.") :] + ".csv" in files
                lines.append(f"{prop},{mode if listed else 'absent'}")
        manifest = "\n".join(lines) + "\n"
    (root / "manifest.csv").write_text(manifest, encoding="utf-8")
    for name, content in files.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
    return root


def csv_text(columns: list[str], *rows: dict[str, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([row.get(c, "") for c in columns] for row in rows)
    return out.getvalue()


USERS11 = header("v1.1", "users.csv")
ENROLLMENTS11 = header("v1.1", "enrollments.csv")
ORGS11 = header("v1.1", "orgs.csv")


def user(sourced_id: str, **extra: str) -> dict[str, str]:
    row = {
        "sourcedId": sourced_id,
        "enabledUser": "true",
        "orgSourcedIds": "org-1",
        "role": "student",
        "username": f"u{sourced_id}",
        "givenName": "Ada",
        "familyName": "Lovelace",
    }
    row.update(extra)
    return row


def read_all(package: OneRosterPackage) -> tuple[list[Record], list[Defect]]:
    records: list[Record] = []
    defects: list[Defect] = []
    for item in package.records():
        if isinstance(item, Defect):
            defects.append(item)
        else:
            records.append(item)
    return records, defects


def where(defects: list[Defect]) -> set[tuple[str, int | None, str | None, Severity]]:
    return {(d.file, d.line, d.column, d.severity) for d in defects}


# -- the shipped facts ------------------------------------------------------------------


def test_columns_file_is_the_shared_copy() -> None:
    assert COLUMNS_FILE.read_bytes() == (STANDARDS / "oneroster-csv-columns.json").read_bytes()
    assert "safehub/standards/oneroster" in COLUMNS_FILE.as_posix()
    # The GPL samples stay outside the package.
    assert not list(COLUMNS_FILE.parent.rglob("*.csv"))


# -- the sample sets --------------------------------------------------------------------


def test_delta_sample_reads_with_its_known_deviation() -> None:
    package = OneRosterPackage(DELTA)
    assert package.version == "1.2"
    assert package.modes["users.csv"] is Mode.DELTA
    records, defects = read_all(package)
    # users.csv follows the 1.2.1 header (no resourceSourcedIds): accepted without a defect.
    assert where(defects) == {("users.csv", 2, "enabledUser", Severity.WARNING)}
    assert Counter(type(r).__name__ for r in records) == {
        "Org": 1,
        "AcademicSession": 1,
        "Course": 1,
        "Class": 1,
        "User": 1,
        "UserProfile": 1,
        "Role": 1,
        "Enrollment": 1,
        "Demographics": 1,
    }
    (u,) = [r for r in records if isinstance(r, User)]
    assert u.enabled_user is True and u.sourced_id == "USER_0" and u.line == 2
    assert u.date_last_modified == datetime(2023, 10, 2, tzinfo=UTC)
    assert "password" not in u.attributes  # credentials are never kept
    change = roster_change(u)
    assert change.entity is RosterEntity.USER and change.change is RosterChangeKind.UPSERTED
    assert change.attributes["givenName"] == "Bruce" and "password" not in change.attributes
    (e,) = [r for r in records if isinstance(r, Enrollment)]
    assert (e.class_sourced_id, e.user_sourced_id, e.role) == ("CLASS_001", "USER_0", "student")
    assert roster_change(e).role == "student"
    assert package.stats["users.csv"].warnings == 1
    assert all(s.rejected == 0 and s.read == s.accepted == 1 for s in package.stats.values())


def test_minimal_sample_reports_case_and_the_course_gap() -> None:
    package = OneRosterPackage(MINIMAL)
    assert package.version == "1.1" and package.modes["courses.csv"] is Mode.ABSENT
    records, defects = read_all(package)
    assert where(defects) == {
        ("classes.csv", 2, "classType", Severity.WARNING),
        *{("users.csv", n, "enabledUser", Severity.WARNING) for n in range(2, 8)},
        ("classes.csv", 2, "courseSourcedId", Severity.WARNING),
        ("classes.csv", 3, "courseSourcedId", Severity.WARNING),
    }
    gap = next(d for d in defects if d.column == "courseSourcedId")
    assert "courses.csv" in gap.reason
    (physics,) = [r for r in records if isinstance(r, Class) and r.line == 2]
    assert physics.class_type == "scheduled"
    assert {s.file: (s.read, s.accepted, s.rejected) for s in package.stats.values()} == {
        "orgs.csv": (1, 1, 0),
        "academicSessions.csv": (5, 5, 0),
        "classes.csv": (2, 2, 0),
        "users.csv": (6, 6, 0),
        "enrollments.csv": (6, 6, 0),
    }


def test_full_sample_reports_bulk_status_dates_and_references() -> None:
    package = OneRosterPackage(FULL)
    records, defects = read_all(package)
    kinds = Counter(
        (d.severity.value, d.column, d.reason.split(":")[0].split(" (")[0]) for d in defects
    )
    assert kinds == {
        ("warning", "status", "should be blank in a bulk file"): 18,
        ("warning", "dateLastModified", "should be blank in a bulk file"): 12,
        ("warning", "dateLastModified", "a date without a time"): 7,
        ("warning", "enabledUser", "'TRUE' taken as 'true'"): 6,
        ("warning", "classType", "'Scheduled' taken as 'scheduled'"): 1,
        ("error", "status", "'inactive' is not a permitted value"): 1,
        (
            "warning",
            "parentSourcedId",
            "references a sourcedId that no accepted row of orgs.csv has",
        ): 1,
        (
            "warning",
            "parentSourcedId",
            "references a sourcedId that no accepted row of academicSessions.csv has",
        ): 2,
        (
            "warning",
            "courseSourcedId",
            "references courses.csv, which this package does not have",
        ): 2,
    }
    (error,) = [d for d in defects if d.severity is Severity.ERROR]
    assert (error.file, error.line) == ("academicSessions.csv", 4)
    assert package.stats["academicSessions.csv"].rejected == 1
    assert package.stats["academicSessions.csv"].accepted == 4
    (history,) = [r for r in records if isinstance(r, Class) and r.line == 3]
    assert history.term_sourced_ids == ("as-trm-222-1234", "as-trm-222-1235")
    assert history.periods == ("1", "2", "3")
    assert history.status is Status.TOBEDELETED
    (physics,) = [r for r in records if isinstance(r, Class) and r.line == 2]
    assert physics.grades == ("09", "10", "11")
    assert physics.subjects == ("Science", "Physics", "Biology")
    users = [r for r in records if isinstance(r, User)]
    assert users[2].user_ids == ("{LDAP:12}", "{LTI:15}", "{Fed:23}")
    assert users[0].role == "teacher" and users[0].org_sourced_ids == ("org-sch-222-456",)


@pytest.mark.parametrize("sample", [DELTA, MINIMAL, FULL], ids=lambda p: p.name)
@pytest.mark.parametrize("wrapped", [False, True], ids=["root", "in-a-folder"])
def test_a_zip_reads_like_the_folder(tmp_path: Path, sample: Path, wrapped: bool) -> None:
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sample.iterdir():
            zf.write(path, f"export/{path.name}" if wrapped else path.name)
    assert list(OneRosterPackage(archive).records()) == list(OneRosterPackage(sample).records())


# -- encoding and quoting ---------------------------------------------------------------


def test_a_bom_is_tolerated(tmp_path: Path) -> None:
    users = csv_text(USERS11, user("u1")).encode("utf-8-sig")
    manifest_bom = tmp_path / "p"
    write_package(manifest_bom, {"users.csv": users})
    (manifest_bom / "manifest.csv").write_bytes(
        b"\xef\xbb\xbf" + (manifest_bom / "manifest.csv").read_bytes()
    )
    records, defects = read_all(OneRosterPackage(manifest_bom))
    assert [r.sourced_id for r in records] == ["u1"]
    assert all(d.column == "orgSourcedIds" for d in defects)  # only the missing orgs


def test_quoted_fields_with_commas_and_newlines(tmp_path: Path) -> None:
    columns = ",".join(ORGS11)
    orgs = (
        f"{columns}\r\n"
        'org-1,,,"Lincoln High, East Campus",school,"id\r\nwith a break",\r\n'
        'org-2,,,"Say ""hi""",district,,\r\n'
        "org-3,,,Plain,Nope,,\r\n"
    )
    records, defects = read_all(OneRosterPackage(write_package(tmp_path, {"orgs.csv": orgs})))
    first, second = records
    assert isinstance(first, Org) and first.name == "Lincoln High, East Campus"
    assert first.identifier == "id\r\nwith a break"
    assert (
        isinstance(second, Org) and second.name == 'Say "hi"' and second.line == 4
    )  # line 2 spans two physical lines
    assert where(defects) == {("orgs.csv", 5, "type", Severity.ERROR)}


def test_bytes_that_are_not_utf8_reject_the_row_only(tmp_path: Path) -> None:
    good = csv_text(USERS11, user("u1"), user("u2")).encode()
    bad = good.replace(b"Ada", b"A\xffa", 1)
    records, defects = read_all(OneRosterPackage(write_package(tmp_path, {"users.csv": bad})))
    assert [r.sourced_id for r in records] == ["u2"]
    assert ("users.csv", 2, "givenName", Severity.ERROR) in where(defects)


# -- refused packages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "named"),
    [
        ([c for c in USERS11 if c != "givenName"], "givenName"),
        ([*USERS11, "prefferedGivenName"], "prefferedGivenName"),
        ([*USERS11, ""], "(empty)"),
        (["status", "sourcedId", *USERS11[2:]], "status"),
        ([*USERS11[:3], "metadata.x", *USERS11[3:]], "metadata"),
        ([*USERS11, "username"], "username"),
    ],
    ids=["missing-required", "unknown", "trailing-empty", "order", "metadata-first", "repeated"],
)
def test_a_bad_header_refuses_the_package(tmp_path: Path, columns: list[str], named: str) -> None:
    write_package(tmp_path, {"users.csv": ",".join(columns) + "\n"})
    with pytest.raises(OneRosterPackageError) as caught:
        OneRosterPackage(tmp_path)
    assert "users.csv" in str(caught.value) and named in str(caught.value)


def test_extension_and_optional_columns(tmp_path: Path) -> None:
    columns = [c for c in USERS11 if c != "middleName"] + ["metadata.house"]
    users = csv_text(columns, {**user("u1"), "metadata.house": "Ravenclaw", "password": "pw"})
    package = OneRosterPackage(write_package(tmp_path, {"users.csv": users}))
    assert package.defects[0].column == "middleName"  # optional column left out: a warning
    (record,) = [r for r in package.read("users.csv") if isinstance(r, User)]
    assert record.attributes == {"metadata.house": "Ravenclaw"}


def test_both_v12_users_headers_are_accepted(tmp_path: Path) -> None:
    full = header("v1.2", "users.csv")
    assert "resourceSourcedIds" in full
    row = {"sourcedId": "u1", "enabledUser": "false", "username": "x", "givenName": "A"}
    row |= {"familyName": "B", "status": "active", "dateLastModified": "2024-01-31T08:00:00Z"}
    for n, columns in enumerate([full, [c for c in full if c != "resourceSourcedIds"]]):
        root = write_package(
            tmp_path / str(n), {"users.csv": csv_text(columns, row)}, version="1.2", mode="delta"
        )
        records, defects = read_all(OneRosterPackage(root))
        assert [r.sourced_id for r in records] == ["u1"] and defects == []


@pytest.mark.parametrize(
    ("manifest", "named"),
    [
        (None, "manifest.csv: missing"),
        ("property,value\noneroster.version,1.1\n", "propertyName,value"),
        ("propertyName,value\nmanifest.version,1.0\noneroster.version,2.0\n", "'2.0'"),
        ("propertyName,value\nmanifest.version,1.0\noneroster.version,1.1\n", "file.users"),
    ],
    ids=["missing", "header", "version", "properties"],
)
def test_a_missing_or_wrong_manifest_refuses(
    tmp_path: Path, manifest: str | None, named: str
) -> None:
    write_package(tmp_path, {}, manifest=manifest or "")
    if manifest is None:
        (tmp_path / "manifest.csv").unlink()
    with pytest.raises(OneRosterPackageError, match=r"manifest\.csv") as caught:
        OneRosterPackage(tmp_path)
    assert named in str(caught.value)


def test_a_file_listed_but_missing_refuses(tmp_path: Path) -> None:
    write_package(tmp_path, {"users.csv": csv_text(USERS11)})
    (tmp_path / "users.csv").unlink()
    with pytest.raises(OneRosterPackageError, match=r"file\.users.*missing"):
        OneRosterPackage(tmp_path)


# -- bad rows ---------------------------------------------------------------------------


def test_bad_rows_are_defects_and_good_rows_still_come_out(tmp_path: Path) -> None:
    users = csv_text(
        USERS11,
        user("u1"),
        user("u2", givenName=""),  # line 3: required empty
        user("u1"),  # line 4: duplicate sourcedId
        user("u4", role="headmaster"),  # line 5: unknown enum
        user("u5", enabledUser="TRUE"),  # line 6: accepted with a warning
        user("u6", dateLastModified="31/01/2024"),  # line 7: bad date-time
        user("u7"),
    )
    enrollments = csv_text(
        ENROLLMENTS11,
        {
            "sourcedId": "e1",
            "classSourcedId": "c1",
            "schoolSourcedId": "org-1",
            "userSourcedId": "u1",
            "role": "student",
            "beginDate": "2024-02-30",  # line 2: no such day
        },
        {
            "sourcedId": "e2",
            "classSourcedId": "c1",
            "schoolSourcedId": "org-1",
            "userSourcedId": "u9",  # not in users.csv: warning after reading
            "role": "student",
            "primary": "false",
            "beginDate": "2024-01-08",
        },
    )
    orgs = csv_text(ORGS11, {"sourcedId": "org-1", "name": "Lincoln", "type": "school"})
    classes = csv_text(
        header("v1.1", "classes.csv"),
        {
            "sourcedId": "c1",
            "title": "Physics",
            "courseSourcedId": "k1",
            "classType": "homeroom",
            "schoolSourcedId": "org-1",
            "termSourcedIds": "t1",
        },
    )
    root = write_package(
        tmp_path,
        {
            "users.csv": users,
            "enrollments.csv": enrollments,
            "orgs.csv": orgs,
            "classes.csv": classes,
        },
    )
    package = OneRosterPackage(root)
    records, defects = read_all(package)
    assert [r.sourced_id for r in records if isinstance(r, User)] == ["u1", "u5", "u7"]
    assert [r.sourced_id for r in records if isinstance(r, Enrollment)] == ["e2"]
    (e2,) = [r for r in records if isinstance(r, Enrollment)]
    assert e2.primary is False and e2.begin_date == date(2024, 1, 8)
    assert where(defects) == {
        ("users.csv", 3, "givenName", Severity.ERROR),
        ("users.csv", 4, "sourcedId", Severity.ERROR),
        ("users.csv", 5, "role", Severity.ERROR),
        ("users.csv", 6, "enabledUser", Severity.WARNING),
        ("users.csv", 7, "dateLastModified", Severity.ERROR),
        ("enrollments.csv", 2, "beginDate", Severity.ERROR),
        ("enrollments.csv", 3, "userSourcedId", Severity.WARNING),
        ("classes.csv", 2, "courseSourcedId", Severity.WARNING),
        ("classes.csv", 2, "termSourcedIds", Severity.WARNING),
    }
    stats = package.stats["users.csv"]
    assert (stats.read, stats.accepted, stats.rejected, stats.warnings) == (7, 3, 4, 1)
    assert package.stats["enrollments.csv"].warnings == 1
    # Reasons name columns and rules; enum values may be shown, personal data never.
    for d in defects:
        assert "Ada" not in d.reason and "Lovelace" not in d.reason and "u1" not in d.reason
    assert "'headmaster'" in next(d.reason for d in defects if d.column == "role")


def test_a_row_with_the_wrong_number_of_fields(tmp_path: Path) -> None:
    users = (
        csv_text(USERS11, user("u1"))
        + "u2,,,true\r\n"
        + csv_text(USERS11, user("u3"))[len(",".join(USERS11)) + 2 :]
    )
    records, defects = read_all(OneRosterPackage(write_package(tmp_path, {"users.csv": users})))
    assert [r.sourced_id for r in records] == ["u1", "u3"]
    (bad,) = [d for d in defects if d.severity is Severity.ERROR]
    assert (bad.line, bad.column) == (3, None)


def test_delta_tobedeleted_maps_to_deleted(tmp_path: Path) -> None:
    orgs = csv_text(
        ORGS11,
        {"sourcedId": "o1", "status": "active", "dateLastModified": "2024-01-31T08:00:00.000Z"}
        | {"name": "A", "type": "school"},
        {
            "sourcedId": "o2",
            "status": "tobedeleted",
            "dateLastModified": "2024-02-01T09:30:00+01:00",
        }
        | {"name": "B", "type": "school"},
        {
            "sourcedId": "o3",
            "dateLastModified": "2024-02-01T09:30:00Z",
            "name": "C",
            "type": "local",
        },
    )
    package = OneRosterPackage(write_package(tmp_path, {"orgs.csv": orgs}, mode="delta"))
    records, defects = read_all(package)
    changes = [roster_change(r) for r in records]
    assert [(c.sourced_id, c.change) for c in changes] == [
        ("o1", RosterChangeKind.UPSERTED),
        ("o2", RosterChangeKind.DELETED),
    ]
    assert changes[1].date_last_modified == datetime(2024, 2, 1, 8, 30, tzinfo=UTC)
    assert changes[1].entity is RosterEntity.ORG
    assert changes[1].attributes == {"name": "B", "type": "school"}
    # Delta rows must carry a status.
    assert where(defects) == {("orgs.csv", 4, "status", Severity.ERROR)}


# -- fuzzing ----------------------------------------------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=400),
        # CSV-shaped noise reaches the row checks more often than raw bytes do.
        st.text(alphabet=',"\r\n\ufeff\x00 aT1-:.Z{}\xe9', max_size=400).map(str.encode),
    ),
    keep_header=st.booleans(),
    target=st.sampled_from(["users.csv", "manifest.csv"]),
)
def test_random_bytes_never_crash_the_reader(
    tmp_path_factory: pytest.TempPathFactory, body: bytes, keep_header: bool, target: str
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    users = (",".join(USERS11) + "\n").encode() + body if keep_header else body
    write_package(root, {"users.csv": users})
    if target == "manifest.csv":
        (root / "users.csv").write_text(csv_text(USERS11, user("u1")))
        (root / "manifest.csv").write_bytes(body)
    try:
        package = OneRosterPackage(root)
    except OneRosterPackageError:
        return
    for item in package.records():
        assert isinstance(item, Defect | Record)
    stats = package.stats["users.csv"]
    assert stats.read == stats.accepted + stats.rejected


# -- damaged containers and partial reads -----------------------------------------------


def test_a_file_that_is_not_a_zip_refuses(tmp_path: Path) -> None:
    bogus = tmp_path / "roster.zip"
    bogus.write_bytes(b"sourcedId,status\n")
    with pytest.raises(OneRosterPackageError, match="not a zip file or folder"):
        OneRosterPackage(bogus)
    with pytest.raises(OneRosterPackageError, match="no such"):
        OneRosterPackage(tmp_path / "absent.zip")


def test_a_damaged_zip_member_ends_that_file_with_a_defect(tmp_path: Path) -> None:
    # Large enough that opening (which reads the header) does not reach the CRC check.
    users = csv_text(USERS11, *(user(f"u{n}") for n in range(3000)), user("last", familyName="Zed"))
    root = write_package(tmp_path / "p", {"users.csv": users})
    archive = tmp_path / "p.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in root.iterdir():
            zf.write(path, path.name)
    data = archive.read_bytes()
    at = data.index(b"Zed")  # stored, so the member's bytes are in the clear
    archive.write_bytes(data[:at] + b"Zee" + data[at + 3 :])
    package = OneRosterPackage(archive)
    items = list(package.read("users.csv"))
    last = items[-1]
    assert sum(isinstance(i, User) for i in items) > 1000  # the rows before the damage
    assert isinstance(last, Defect) and last.severity is Severity.ERROR and last.line is None
    assert "BadZipFile" in last.reason
    refs = list(package.check_references())
    assert ("users.csv", None, None, Severity.WARNING) in where(refs)


def test_bulk_rows_map_without_a_date(tmp_path: Path) -> None:
    root = write_package(tmp_path, {"users.csv": csv_text(USERS11, user("u1", grades="09, 10"))})
    (record,) = [r for r in OneRosterPackage(root).read("users.csv") if isinstance(r, Record)]
    change = roster_change(record)
    assert change.date_last_modified is None and change.change is RosterChangeKind.UPSERTED
    assert change.role == "student"
    assert change.attributes["grades"] == "09,10" and change.attributes["enabledUser"] == "true"
    assert "sourcedId" not in change.attributes and "role" not in change.attributes


def test_manifest_leniencies_are_warnings(tmp_path: Path) -> None:
    orgs = csv_text(ORGS11, {"sourcedId": "o1", "name": "A", "type": "ext:campus"})
    root = write_package(tmp_path, {"orgs.csv": orgs, "users.csv": csv_text(USERS11)})
    manifest = (root / "manifest.csv").read_text()
    manifest = manifest.replace("file.orgs,bulk", "file.orgs,Bulk")
    manifest = manifest.replace("file.users,bulk", "file.users,absent")
    (root / "manifest.csv").write_text(manifest)
    package = OneRosterPackage(root)
    assert package.files == ["orgs.csv"] and package.modes["users.csv"] is Mode.ABSENT
    assert {(d.file, d.column, d.severity) for d in package.defects} == {
        ("manifest.csv", "file.orgs", Severity.WARNING),
        ("users.csv", None, Severity.WARNING),
    }
    records, defects = read_all(package)
    assert [r.attributes for r in records] == [{}] and defects == []
    assert isinstance(records[0], Org) and records[0].type == "ext:campus"
