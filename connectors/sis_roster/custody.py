"""The emergency-contact / custody feed: who may collect which student, and who must not.

OneRoster has no custody data, so districts export it beside their roster as one CSV
(UTF-8, BOM allowed, a header row, columns in any order, one row per student and guardian)::

    column                   required  value
    student_sourced_id       yes       the student's OneRoster sourcedId
    guardian_sourced_id      yes       the guardian's sourcedId (a OneRoster user, or the
                                       SIS contact id of an emergency contact not in users)
    guardian_name            no        display name (kept when the roster has none)
    relationship             yes       parent, guardian, grandparent, relative,
                                       emergency contact, … (free text, at most 40 chars)
    has_custody              yes       true/false (also yes/no, 1/0, any case)
    may_pick_up              yes       true/false: may take the student at reunification
    court_order_restriction  yes       true/false: a court order restricts this person;
                                       reunification must not release the student to them
    email                    no        e-mail address
    phone                    no        phone, E.164 (+15551234567) or 10 NANP digits
    language                 no        en or es (default en)

Each good row is one (student, guardian) pair and updates that guardian's ``PersonChanged``
at a new version: that student's entry of ``student_guardianships`` (relationship, custody,
pickup, ``restricted`` = the court-order flag), the student added to ``student_ids``, contact
details. A row sets its pair only: a guardian restricted for one student keeps what the
feed says for each of their other students (a parent barred from one child by a protective
order may still collect another). Two rows for the same pair merge (a restriction is never
lifted by another row). The single ``guardianship`` is written too, for readers that know one
per guardian: the summary (custody and pickup if any row says so, restricted if any row is).
A bad row is a
:class:`Defect` (file, line, column, reason; never the value) and never stops the feed; a
header missing a column refuses the file naming the columns.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from safehub.standards.oneroster import Defect, OneRosterPackageError, Severity

COLUMNS = (
    "student_sourced_id",
    "guardian_sourced_id",
    "guardian_name",
    "relationship",
    "has_custody",
    "may_pick_up",
    "court_order_restriction",
    "email",
    "phone",
    "language",
)
REQUIRED = frozenset(
    {
        "student_sourced_id",
        "guardian_sourced_id",
        "relationship",
        "has_custody",
        "may_pick_up",
        "court_order_restriction",
    }
)
_TRUE = frozenset({"true", "yes", "1", "y"})
_FALSE = frozenset({"false", "no", "0", "n"})
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LANGUAGES = frozenset({"en", "es"})


@dataclass(frozen=True, slots=True)
class CustodyRow:
    """One good row of the feed."""

    line: int
    student_id: str
    guardian_id: str
    name: str | None
    relationship: str
    has_custody: bool
    may_pick_up: bool
    restricted: bool
    email: str | None
    phone: str | None
    language: str


def is_custody_feed(path: Path) -> bool:
    """Whether ``path`` is a CSV file whose header is this feed's."""
    if not path.is_file() or path.suffix.lower() != ".csv":
        return False
    with path.open(encoding="utf-8-sig", newline="") as text:
        first = next(csv.reader(text), [])
    return "student_sourced_id" in [c.strip() for c in first]


def e164(raw: str | None) -> str | None:
    """A phone in E.164, from E.164 or 10 NANP digits (punctuation ignored); else None."""
    if not raw:
        return None
    text = raw.strip()
    if _E164.match(text):
        return text
    digits = re.sub(r"[\s().-]", "", text)
    if digits.isdigit() and len(digits) == 10:
        return "+1" + digits
    if digits.isdigit() and len(digits) == 11 and digits.startswith("1"):
        return "+" + digits
    return None


def read_feed(path: Path) -> Iterator[CustodyRow | Defect]:
    """Every row as a :class:`CustodyRow` or the defects that rejected it."""
    name = path.name
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
        reader = csv.reader(text)
        header = [c.strip() for c in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        unknown = [c for c in header if c not in COLUMNS]
        if missing or unknown:
            problems = []
            if missing:
                problems.append("missing column(s) " + ", ".join(missing))
            if unknown:
                problems.append(f"{len(unknown)} unknown column(s)")
            raise OneRosterPackageError(f"{name}: header is wrong: " + "; ".join(problems))
        index = {c: i for i, c in enumerate(header)}
        previous = reader.line_num
        for row in reader:
            line, previous = previous + 1, reader.line_num
            if not row:
                continue
            found = _row(name, line, row, index)
            if isinstance(found, list):
                yield from found
            else:
                yield found


def _row(  # noqa: PLR0912 - one check per column, in column order
    name: str, line: int, row: list[str], index: dict[str, int]
) -> CustodyRow | list[Defect]:
    if len(row) != len(index):
        reason = f"{len(row)} fields, the header has {len(index)}"
        return [Defect(name, line, None, reason, Severity.ERROR)]
    if any("\udc80" <= ch <= "\udcff" for cell in row for ch in cell):
        return [Defect(name, line, None, "not UTF-8", Severity.ERROR)]
    v = {c: row[i].strip() for c, i in index.items()}
    defects: list[Defect] = []

    def bad(column: str, reason: str) -> None:
        defects.append(Defect(name, line, column, reason, Severity.ERROR))

    for column in sorted(REQUIRED):
        if not v[column]:
            bad(column, "required but empty")
    flags: dict[str, bool] = {}
    for column in ("has_custody", "may_pick_up", "court_order_restriction"):
        raw = v[column].lower()
        if raw in _TRUE:
            flags[column] = True
        elif raw in _FALSE:
            flags[column] = False
        elif raw:
            bad(column, "not a boolean (true/false, yes/no, 1/0)")
    if len(v["relationship"]) > 40:
        bad("relationship", "longer than 40 characters")
    phone = e164(v["phone"])
    if v["phone"] and phone is None:
        bad("phone", "not a phone number (E.164 or 10 NANP digits)")
    if v["email"] and not _EMAIL.match(v["email"]):
        bad("email", "not an e-mail address")
    language = (v["language"] or "en").lower()
    if language not in LANGUAGES:
        bad("language", "not a supported language (en, es)")
    if defects:
        return defects
    return CustodyRow(
        line=line,
        student_id=v["student_sourced_id"],
        guardian_id=v["guardian_sourced_id"],
        name=v["guardian_name"] or None,
        relationship=v["relationship"],
        has_custody=flags["has_custody"],
        may_pick_up=flags["may_pick_up"],
        restricted=flags["court_order_restriction"],
        email=v["email"] or None,
        phone=phone,
        language=language,
    )
