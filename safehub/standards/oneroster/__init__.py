"""OneRoster 1.1 / 1.2 CSV: a pure codec reading packages into typed records and defects.

The reading half of the ``sis_roster`` connector: no Kafka, no database. Open a package
(a zip or a folder), stream its records, collect defects, check references, and map each
record to the fields of a ``RosterChange`` event::

    package = OneRosterPackage(path)          # manifest + headers checked, or refused
    for item in package.records():            # records and defects, file by file
        ...
    package.stats["users.csv"].rejected

Shipped artefact: ``oneroster-csv-columns.json``, the column facts (order, Required flag,
format, permitted values) of the OneRoster CSV binding, written for this project: v1.2 taken
mechanically from the 1EdTech "OneRoster 1.2 CSV Binding" tables (imsjapan/github.io @
ec356f87, ``or12.html``), the 1.2.1 users.csv header difference from the 1.2.1 final binding
(@ 29e99675), v1.1 compiled from the 1EdTech OneRoster 1.1 CSV Tables. No specification text
is reproduced. It is a byte-for-byte copy of ``../shared/standards/oneroster`` (whose
SOURCE.md gives the full provenance); ``tests/roster/test_oneroster_csv.py`` checks it
still matches.
The GPL sample packages there are test data only and are not shipped.
"""

from __future__ import annotations

from safehub.standards.oneroster.model import (
    ENTITY_FILES,
    AcademicSession,
    Class,
    Course,
    Defect,
    Demographics,
    Enrollment,
    Mode,
    OneRosterPackageError,
    Org,
    Record,
    Role,
    RosterChangeFields,
    RosterChangeKind,
    RosterEntity,
    Severity,
    Status,
    User,
    UserProfile,
    roster_change,
)
from safehub.standards.oneroster.reader import (
    COLUMNS_FILE,
    REFERENCES,
    FileStats,
    OneRosterPackage,
    load_facts,
)

__all__ = [
    "COLUMNS_FILE",
    "ENTITY_FILES",
    "REFERENCES",
    "AcademicSession",
    "Class",
    "Course",
    "Defect",
    "Demographics",
    "Enrollment",
    "FileStats",
    "Mode",
    "OneRosterPackage",
    "OneRosterPackageError",
    "Org",
    "Record",
    "Role",
    "RosterChangeFields",
    "RosterChangeKind",
    "RosterEntity",
    "Severity",
    "Status",
    "User",
    "UserProfile",
    "load_facts",
    "roster_change",
]
