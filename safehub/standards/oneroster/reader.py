"""Reading a OneRoster 1.1 / 1.2 CSV package (a zip or a folder) as a stream of records.

The package is checked when it is opened: ``manifest.csv`` (version, and ``bulk`` /
``delta`` / ``absent`` per file) and the header of every file it lists. Anything wrong
there refuses the whole package (:class:`OneRosterPackageError`). Rows are then read one
at a time; a bad row yields :class:`Defect` objects instead of a record and never stops
the read. References between files are checked by :meth:`OneRosterPackage.check_references`
once the files have been read.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import IO, Any

from safehub.standards.oneroster.model import (
    ENTITY_FILES,
    Defect,
    Mode,
    OneRosterPackageError,
    Record,
    Severity,
    Status,
)

#: The column facts shipped beside this module.
COLUMNS_FILE = Path(__file__).resolve().parent / "oneroster-csv-columns.json"

#: Versions this reader knows (``oneroster.version`` in the manifest → facts key).
VERSIONS = {"1.1": "v1.1", "1.2": "v1.2", "1.2.1": "v1.2"}

#: Columns never kept in records: credentials do not belong in roster events.
DROPPED_COLUMNS = frozenset({"password"})

#: Columns holding comma-separated lists. 1.2 marks most of them "List of ..."; 1.1 has no
#: formats, and users.grades is a list in practice although 1.2 calls it a String.
LIST_COLUMNS = frozenset(
    {
        "orgSourcedIds",
        "agentSourcedIds",
        "userIds",
        "grades",
        "termSourcedIds",
        "subjects",
        "subjectCodes",
        "periods",
        "classCodes",
        "resourceSourcedIds",
    }
)

#: (file, column) → file whose sourcedIds the column references.
REFERENCES: dict[tuple[str, str], str] = {
    ("orgs.csv", "parentSourcedId"): "orgs.csv",
    ("academicSessions.csv", "parentSourcedId"): "academicSessions.csv",
    ("courses.csv", "schoolYearSourcedId"): "academicSessions.csv",
    ("courses.csv", "orgSourcedId"): "orgs.csv",
    ("classes.csv", "courseSourcedId"): "courses.csv",
    ("classes.csv", "schoolSourcedId"): "orgs.csv",
    ("classes.csv", "termSourcedIds"): "academicSessions.csv",
    ("users.csv", "orgSourcedIds"): "orgs.csv",
    ("users.csv", "agentSourcedIds"): "users.csv",
    ("users.csv", "primaryOrgSourcedId"): "orgs.csv",
    ("roles.csv", "userSourcedId"): "users.csv",
    ("roles.csv", "orgSourcedId"): "orgs.csv",
    ("roles.csv", "userProfileSourcedId"): "userProfiles.csv",
    ("userProfiles.csv", "userSourcedId"): "users.csv",
    ("enrollments.csv", "classSourcedId"): "classes.csv",
    ("enrollments.csv", "schoolSourcedId"): "orgs.csv",
    ("enrollments.csv", "userSourcedId"): "users.csv",
    ("demographics.csv", "sourcedId"): "users.csv",
}

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)([Zz]|[+-]\d{2}:?\d{2})?"
)
_YEAR = re.compile(r"\d{4}")
# Bytes that are not UTF-8 come through the surrogateescape decoder as lone surrogates.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_MAX_SHOWN = 40


class Kind(Enum):
    """How a column's value is checked and parsed."""

    STRING = "string"
    ENUM = "enum"
    BOOL = "bool"
    DATE = "date"
    DATE_TIME = "datetime"
    YEAR = "year"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column of a file: ``required`` is ``"yes"``, ``"delta"`` (Yes for Delta) or ``"no"``."""

    name: str
    required: str
    kind: Kind
    enum: frozenset[str] = frozenset()
    extensible: bool = False
    #: May be left out of the header without a warning (1.2.1 users.csv resourceSourcedIds).
    may_be_absent: bool = False


@dataclass(frozen=True, slots=True)
class FileSpec:
    """The columns of one CSV file, in their normative order."""

    name: str
    columns: tuple[ColumnSpec, ...]


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """The facts for one OneRoster version."""

    key: str
    files: dict[str, FileSpec]
    manifest_required: tuple[str, ...]


_DELTA = frozenset({"status", "dateLastModified"})
_DEMOGRAPHIC_FLAGS = frozenset(
    {
        "americanIndianOrAlaskaNative",
        "asian",
        "blackOrAfricanAmerican",
        "nativeHawaiianOrOtherPacificIslander",
        "white",
        "demographicRaceTwoOrMoreRaces",
        "hispanicOrLatinoEthnicity",
    }
)


def _kind(name: str, fmt: str, enum: frozenset[str]) -> Kind:
    if enum == {"true", "false"}:
        return Kind.BOOL
    if enum:
        return Kind.ENUM
    if name in LIST_COLUMNS or fmt.startswith("List of"):
        return Kind.LIST
    if fmt == "DateTime" or name == "dateLastModified":
        return Kind.DATE_TIME
    if fmt == "Date" or name in {"beginDate", "endDate", "startDate", "birthDate"}:
        return Kind.DATE
    if fmt == "Year" or name == "schoolYear":
        return Kind.YEAR
    return Kind.STRING


def load_facts(path: Path = COLUMNS_FILE) -> dict[str, VersionSpec]:
    """Read the column facts file into a :class:`VersionSpec` per version key."""
    data = json.loads(path.read_text(encoding="utf-8"))
    v12 = data["v1.2"]
    extensible = {
        (fname, c["name"])
        for fname, spec in v12.items()
        for c in spec.get("columns", [])
        if c.get("enumExtensible")
    }
    optional_in_121 = set(data["v1.2.1_header_differences"]["users.csv"]["v1.2"]) - set(
        data["v1.2.1_header_differences"]["users.csv"]["v1.2.1"]
    )
    files12: dict[str, FileSpec] = {}
    for fname, spec in v12.items():
        if "columns" not in spec:
            continue
        cols = []
        for c in spec["columns"]:
            enum = frozenset(c.get("enum", ()))
            required = {"Yes": "yes", "Yes for Delta": "delta"}.get(c["required"], "no")
            cols.append(
                ColumnSpec(
                    name=c["name"],
                    required=required,
                    kind=_kind(c["name"], c["format"], enum),
                    enum=enum,
                    extensible=bool(c.get("enumExtensible")),
                    may_be_absent=fname == "users.csv" and c["name"] in optional_in_121,
                )
            )
        files12[fname] = FileSpec(fname, tuple(cols))
    manifest12 = tuple(
        p["name"] for p in v12["manifest.csv"]["properties"] if p["required"] == "Yes"
    )

    v11 = data["v1.1"]
    status_enum = frozenset(v11["statusEnum"])
    flags = frozenset(v11["demographics.csv"]["enum"].get("race/ethnicity flags", ()))
    files11: dict[str, FileSpec] = {}
    for fname, spec in v11.items():
        if not isinstance(spec, dict) or fname == "manifest.csv":
            continue
        required_names = set(spec["required"])
        enums = {k: frozenset(v) for k, v in spec.get("enum", {}).items()}
        cols = []
        for name in spec["header"]:
            enum = enums.get(name, frozenset())
            if name == "status":
                enum = status_enum
            elif fname == "demographics.csv" and not enum and name in _DEMOGRAPHIC_FLAGS:
                enum = flags
            req = "yes" if name in required_names else "delta" if name in _DELTA else "no"
            cols.append(
                ColumnSpec(
                    name=name,
                    required=req,
                    kind=_kind(name, "", enum),
                    enum=enum,
                    extensible=(fname, name) in extensible,
                )
            )
        files11[fname] = FileSpec(fname, tuple(cols))
    manifest11 = tuple(p.split(" ")[0] for p in v11["manifest.csv"]["requiredProperties"])
    return {
        "v1.1": VersionSpec("v1.1", files11, manifest11),
        "v1.2": VersionSpec("v1.2", files12, manifest12),
    }


@functools.cache
def facts() -> dict[str, VersionSpec]:
    """The shipped column facts, read once (the file does not change at run time)."""
    return load_facts()


@dataclass(slots=True)
class FileStats:
    """Counts for one file: rows read, accepted, rejected, and warnings raised."""

    file: str
    entity: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    warnings: int = 0


# ---------------------------------------------------------------------------------------
# Sources: a folder or a zip


class _Source:
    """The files of a package, by name at its root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prefix = ""
        if path.is_dir():
            self.zipped = False
            self.names = {p.name for p in path.iterdir() if p.is_file()}
            return
        self.zipped = True
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if not n.endswith("/")]
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise OneRosterPackageError(f"{path.name}: not a zip file or folder") from exc
        members = [m for m in members if not m.startswith("__MACOSX/")]
        if "manifest.csv" not in members:
            # The spec wants files at the zip's root, but exporters often wrap them in one
            # folder: accept that when it is unambiguous.
            wrapped = [m for m in members if m.endswith("/manifest.csv") and m.count("/") == 1]
            if len(wrapped) == 1:
                self.prefix = wrapped[0][: -len("manifest.csv")]
        self.names = {
            m[len(self.prefix) :]
            for m in members
            if m.startswith(self.prefix) and "/" not in m[len(self.prefix) :]
        }

    @contextmanager
    def open(self, name: str) -> Iterator[IO[str]]:
        """The file as text (UTF-8, BOM dropped, bad bytes kept as surrogates)."""
        if self.zipped:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.prefix + name) as raw:
                yield io.TextIOWrapper(
                    raw, encoding="utf-8-sig", errors="surrogateescape", newline=""
                )
        else:
            with (self.path / name).open(
                encoding="utf-8-sig", errors="surrogateescape", newline=""
            ) as text:
                yield text


def _shown(value: str) -> str:
    """An enum or format value quoted for a reason, cut short (only for such columns)."""
    value = _NOT_UTF8.sub("\ufffd", value)
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "…")


def _names(columns: list[str] | set[str]) -> str:
    return ", ".join(_shown(c)[1:-1] if c else "(empty)" for c in columns)


class _Rows:
    """csv.reader over a text file, yielding (start line, fields) or (line, csv error)."""

    def __init__(self, text: IO[str]) -> None:
        self.reader = csv.reader(text, strict=False)

    def __iter__(self) -> Iterator[tuple[int, list[str] | str]]:
        previous = 0
        while True:
            try:
                row = next(self.reader)
            except StopIteration:
                return
            except csv.Error as exc:
                line = self.reader.line_num
                yield previous + 1, f"not readable as CSV ({exc})"
                if line == previous:  # no progress: stop rather than loop
                    return
                previous = line
                continue
            start, previous = previous + 1, self.reader.line_num
            if row:  # csv gives [] for a blank line: nothing to report
                yield start, row


# ---------------------------------------------------------------------------------------
# The package


@dataclass(slots=True)
class _Header:
    """A checked header: known columns with their field index, and the untyped ones."""

    columns: list[str]
    index: dict[str, int]
    specs: list[tuple[int, ColumnSpec]]
    extra: list[tuple[int, str]]


@dataclass(slots=True)
class _Refs:
    """References of one (file, column): unresolved ones wait for their target file."""

    pending: list[tuple[int, str]] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)


class OneRosterPackage:
    """A OneRoster CSV package, checked on opening and read lazily.

    Opening reads only the manifest and the headers, and raises
    :class:`OneRosterPackageError` if either is wrong. :meth:`read` streams one file,
    :meth:`records` all of them then :meth:`check_references`.

    ``version`` is ``"1.1"`` or ``"1.2"``; ``modes`` gives each known file's manifest mode;
    ``defects`` collects every defect yielded so far (package-level ones from opening
    included); ``stats`` the counts per file.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise OneRosterPackageError(f"{self.path.name}: no such zip file or folder")
        self._source = _Source(self.path)
        self.defects: list[Defect] = []
        self.modes: dict[str, Mode] = {}
        self.skipped: list[str] = []
        try:
            self.version, self.spec = self._read_manifest()
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            reason = f"unreadable ({type(exc).__name__})"
            raise OneRosterPackageError(f"manifest.csv: {reason}") from exc
        self._headers: dict[str, _Header] = {}
        for name in self.files:
            try:
                self._headers[name] = self._read_header(name)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise OneRosterPackageError(f"{name}: unreadable ({type(exc).__name__})") from exc
        self.stats: dict[str, FileStats] = {
            name: FileStats(name, ENTITY_FILES[name].__name__) for name in self.files
        }
        self._ids: dict[str, set[str]] = {name: set() for name in self.files}
        self._started: set[str] = set()
        self._finished: set[str] = set()
        self._refs: dict[tuple[str, str], _Refs] = {}

    @property
    def files(self) -> list[str]:
        """Entity files present in this package, in reading order."""
        return [n for n in ENTITY_FILES if self.modes.get(n, Mode.ABSENT) is not Mode.ABSENT]

    # -- manifest and headers -----------------------------------------------------------

    def _read_manifest(self) -> tuple[str, VersionSpec]:
        name = "manifest.csv"
        props = self._manifest_properties()
        version = props.get("oneroster.version", (0, ""))[1]
        if version not in VERSIONS:
            raise OneRosterPackageError(
                f"{name}: oneroster.version {_shown(version)} is not one of " + ", ".join(VERSIONS)
            )
        spec = facts()[VERSIONS[version]]
        missing = [p for p in spec.manifest_required if p not in props]
        if missing:
            raise OneRosterPackageError(f"{name}: required properties missing: {_names(missing)}")
        for key, (line, value) in props.items():
            if key.startswith("file."):
                self._file_mode(spec, key, line, value)
        for fname in ENTITY_FILES:
            self.modes.setdefault(fname, Mode.ABSENT)
        return ("1.1" if spec.key == "v1.1" else "1.2"), spec

    def _manifest_properties(self) -> dict[str, tuple[int, str]]:
        name = "manifest.csv"
        if name not in self._source.names:
            raise OneRosterPackageError(f"{name}: missing (the manifest is mandatory)")
        props: dict[str, tuple[int, str]] = {}
        with self._source.open(name) as text:
            rows = iter(_Rows(text))
            first = next(rows, None)
            if first is None or not isinstance(first[1], list):
                raise OneRosterPackageError(f"{name}: no header row")
            header = [c.strip() for c in first[1]]
            if header != ["propertyName", "value"]:
                raise OneRosterPackageError(
                    f"{name}: header must be propertyName,value, not {_names(header)}"
                )
            for line, row in rows:
                if not isinstance(row, list) or len(row) != 2 or _NOT_UTF8.search("".join(row)):
                    raise OneRosterPackageError(f"{name}: line {line} is not a property,value row")
                key, value = row[0].strip(), row[1].strip()
                if key in props:
                    raise OneRosterPackageError(f"{name}: property {_names([key])} repeated")
                props[key] = (line, value)
        return props

    def _file_mode(self, spec: VersionSpec, key: str, line: int, value: str) -> None:
        name = "manifest.csv"
        fname = key[len("file.") :] + ".csv"
        shown_key = _names([key])
        try:
            mode = Mode(value)
        except ValueError:
            lowered = value.lower()
            if lowered not in {m.value for m in Mode}:
                raise OneRosterPackageError(
                    f"{name}: {shown_key} is {_shown(value)}, not absent, bulk or delta"
                ) from None
            mode = Mode(lowered)
            self._defect(name, line, key, f"{_shown(value)} taken as {mode}")
        present = fname in self._source.names
        if mode is not Mode.ABSENT and not present:
            raise OneRosterPackageError(f"{name}: {shown_key} is {mode} but the file is missing")
        if mode is Mode.ABSENT and present:
            self._defect(fname, None, None, f"file present but {key} is absent: not read")
        if fname in ENTITY_FILES and fname in spec.files:
            self.modes[fname] = mode
        elif mode is not Mode.ABSENT:
            self.skipped.append(fname)

    def _read_header(self, name: str) -> _Header:
        fspec = self.spec.files[name]
        with self._source.open(name) as text:
            first = next(iter(_Rows(text)), None)
        if first is None or not isinstance(first[1], list) or first[0] != 1:
            raise OneRosterPackageError(f"{name}: no header row on line 1")
        header = first[1]
        known = {c.name: c for c in fspec.columns}
        problems: list[str] = []
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            problems.append(f"repeated column(s) {_names(dupes)}")
        unknown = [c for c in header if c not in known and not c.startswith("metadata.")]
        if unknown or any(_NOT_UTF8.search(c) for c in header):
            problems.append(f"unknown column(s) {_names(unknown)}")
        missing = [c.name for c in fspec.columns if c.required != "no" and c.name not in header]
        if missing:
            problems.append(f"missing required column(s) {_names(missing)}")
        order = [c for c in header if c in known]
        expected = [c.name for c in fspec.columns if c.name in order]
        if not problems and order != expected:
            wrong = [got for got, want in zip(order, expected, strict=True) if got != want]
            problems.append(f"columns out of order: {_names(wrong)}")
        positions = [i for i, c in enumerate(header) if c.startswith("metadata.")]
        if positions and not problems and min(positions) < len(order):
            problems.append("metadata.* columns must follow the OneRoster columns")
        if problems:
            raise OneRosterPackageError(f"{name}: header is wrong: " + "; ".join(problems))
        for col in fspec.columns:
            if col.name not in header and not col.may_be_absent:
                self._defect(name, 1, col.name, "optional column missing from the header")
        index = {c: i for i, c in enumerate(header)}
        return _Header(
            columns=header,
            index=index,
            specs=[(index[c.name], c) for c in fspec.columns if c.name in index],
            extra=[(i, c) for i, c in enumerate(header) if c.startswith("metadata.")],
        )

    # -- rows ---------------------------------------------------------------------------

    def _defect(
        self, file: str, line: int | None, column: str | None, reason: str, *, warn: bool = True
    ) -> Defect:
        d = Defect(file, line, column, reason, Severity.WARNING if warn else Severity.ERROR)
        self.defects.append(d)
        return d

    def records(self) -> Iterator[Record | Defect]:
        """Every file in reading order (referenced files first), then the reference check."""
        for name in self.files:
            yield from self.read(name)
        yield from self.check_references()

    def read(self, name: str) -> Iterator[Record | Defect]:
        """Stream one file: a record per good row, defects for bad ones (before the record,
        for warnings). A file can be read once; a second read yields nothing."""
        if name not in self._headers or name in self._started:
            return
        self._started.add(name)
        rows = _FileRows(self, name)
        stats = self.stats[name]
        line = 1
        try:
            with self._source.open(name) as text:
                lines = iter(_Rows(text))
                next(lines, None)  # the header, checked on opening
                for line, row in lines:
                    stats.read += 1
                    found, record = rows.row(line, row)
                    self.defects.extend(found)
                    if found:
                        stats.warnings += sum(d.severity is Severity.WARNING for d in found)
                        yield from found
                    if record is None:
                        stats.rejected += 1
                    else:
                        stats.accepted += 1
                        yield record
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            # A damaged zip member or a vanished file ends this file, not the whole read.
            reason = f"unreadable after line {line} ({type(exc).__name__}): rest of file lost"
            yield self._defect(name, None, None, reason, warn=False)
            return
        self._finished.add(name)

    def check_references(self) -> Iterator[Defect]:
        """Warnings for references to sourcedIds no accepted row of the package defines.

        Reads (and discards) any file not read yet, so the answer covers the package; its
        row defects still land in :attr:`defects` and :attr:`stats`.
        """
        found: list[Defect] = []
        for name in self.files:
            if name not in self._started:
                for _ in self.read(name):
                    pass
            elif name not in self._finished:
                reason = "not read to the end: its references were not all checked"
                found.append(Defect(name, None, None, reason, Severity.WARNING))
        for (name, column), refs in self._refs.items():
            target = REFERENCES[(name, column)]
            absent = self.modes.get(target, Mode.ABSENT) is Mode.ABSENT
            target_ids = self._ids.get(target, set())
            gaps = list(refs.gaps)
            gaps.extend(line for line, ident in refs.pending if ident not in target_ids)
            reason = (
                f"references {target}, which this package does not have"
                if absent
                else f"references a sourcedId that no accepted row of {target} has"
            )
            for line in sorted(set(gaps)):
                found.append(Defect(name, line, column, reason, Severity.WARNING))
            refs.gaps.clear()
            refs.pending.clear()
        order = list(ENTITY_FILES)
        found.sort(key=lambda d: (order.index(d.file), d.line or 0))
        for d in found:
            self.stats[d.file].warnings += 1
        self.defects.extend(found)
        yield from found


class _FileRows:
    """The per-file state of a read: column checkers, sourcedIds seen, references.

    This is the hot loop of a 50,000-user read, hence the split into plain string columns
    (copied) and checked ones, and one UTF-8 test per row rather than per cell.
    """

    def __init__(self, package: OneRosterPackage, name: str) -> None:
        self.package = package
        self.name = name
        header = package._headers[name]
        self.cls = ENTITY_FILES[name]
        typed = {f.name for f in fields(self.cls)}
        mode = package.modes[name]
        self.width = len(header.columns)
        #: (index, column, field name or "" for an attribute, required) of string columns.
        self.plain: list[tuple[int, str, str, bool]] = []
        #: (index, column, field name or "" for an attribute, required, checker) of the rest.
        self.checked: list[tuple[int, str, str, bool, _Check]] = []
        #: (index, column) of metadata.* columns, kept as attributes unchecked.
        self.extra = list(header.extra)
        for i, spec in header.specs:
            if spec.name in DROPPED_COLUMNS:
                continue
            fname = _CAMEL.sub("_", spec.name).lower()
            # Untyped columns become attributes, but are still checked (a bad enum rejects).
            fname = fname if fname in typed else ""
            required = spec.required == "yes" or (spec.required == "delta" and mode is Mode.DELTA)
            if spec.kind is Kind.STRING:
                self.plain.append((i, spec.name, fname, required))
            else:
                self.checked.append((i, spec.name, fname, required, _checker(spec, mode)))
        self.refs: list[tuple[int, bool, str, _Refs]] = []
        for i, spec in header.specs:
            target = REFERENCES.get((name, spec.name))
            if target is not None:
                refs = package._refs.setdefault((name, spec.name), _Refs())
                self.refs.append((i, spec.name in LIST_COLUMNS, target, refs))
        self.ids = package._ids[name]

    def row(self, line: int, row: list[str] | str) -> tuple[list[Defect], Record | None]:
        """The defects of one row, and its record unless one of them is an error."""
        name = self.name
        if isinstance(row, str):
            return [Defect(name, line, None, row, Severity.ERROR)], None
        if len(row) != self.width:
            reason = f"{len(row)} fields, the header has {self.width}"
            return [Defect(name, line, None, reason, Severity.ERROR)], None
        found: list[Defect] = []
        values: dict[str, Any] = {"line": line}
        attributes: dict[str, str] = {}
        if _NOT_UTF8.search("".join(row)):
            for i, column in enumerate(self.package._headers[name].columns):
                if _NOT_UTF8.search(row[i]):
                    found.append(Defect(name, line, column, "not UTF-8", Severity.ERROR))
            return found, None
        self._cells(line, row, found, values, attributes)
        sourced_id = values.get("sourced_id")
        if sourced_id is not None and sourced_id in self.ids:
            reason = "duplicate sourcedId in file"
            found.append(Defect(name, line, "sourcedId", reason, Severity.ERROR))
        if sourced_id is None or (found and any(d.severity is Severity.ERROR for d in found)):
            return found, None
        self.ids.add(sourced_id)
        self._note_refs(line, row)
        return found, self.cls(attributes=attributes, **values)

    def _cells(
        self,
        line: int,
        row: list[str],
        found: list[Defect],
        values: dict[str, Any],
        attributes: dict[str, str],
    ) -> None:
        """Check and parse every cell of a row into ``values`` (typed) and ``attributes``."""
        name = self.name
        for i, column, fname, required in self.plain:
            if raw := row[i]:
                if fname:
                    values[fname] = raw
                else:
                    attributes[column] = raw
            elif required:
                found.append(Defect(name, line, column, "required but empty", Severity.ERROR))
        for i, column, fname, required, check in self.checked:
            if not (raw := row[i]):
                if required:
                    reason = "required but empty"
                    found.append(Defect(name, line, column, reason, Severity.ERROR))
                continue
            value, problem, severe = check(raw)
            if problem:
                sev = Severity.ERROR if severe else Severity.WARNING
                found.append(Defect(name, line, column, problem, sev))
            if not fname:
                attributes[column] = raw
            elif value is not None and value != ():
                values[fname] = value
        attributes.update((column, row[i]) for i, column in self.extra if row[i])

    def _note_refs(self, line: int, row: list[str]) -> None:
        finished = self.package._finished
        for i, is_list, target, refs in self.refs:
            if not (raw := row[i]):
                continue
            targets = [t for part in raw.split(",") if (t := part.strip())] if is_list else [raw]
            if target in finished:
                target_ids = self.package._ids[target]
                if any(t not in target_ids for t in targets):
                    refs.gaps.append(line)
            else:
                # The target is read later (or is this very file): decide at the end.
                refs.pending.extend((line, t) for t in targets)


# ---------------------------------------------------------------------------------------
# Column checks: raw text → (parsed value, problem, problem rejects the row)

_Check = Callable[[str], tuple[Any, str | None, bool]]


def _checker(spec: ColumnSpec, mode: Mode) -> _Check:
    required = spec.required == "yes" or (spec.required == "delta" and mode is Mode.DELTA)
    blank_in_bulk = spec.required == "delta" and mode is Mode.BULK
    parse = _PARSERS[spec.kind](spec)

    def check(raw: str) -> tuple[Any, str | None, bool]:
        if not raw:
            return None, ("required but empty" if required else None), required
        value, problem, severe = parse(raw)
        if blank_in_bulk and not problem:
            return value, "should be blank in a bulk file", False
        return value, problem, severe

    return check


def _parse_string(_spec: ColumnSpec) -> _Check:
    return lambda raw: (raw, None, False)


def _parse_list(_spec: ColumnSpec) -> _Check:
    def parse(raw: str) -> tuple[Any, str | None, bool]:
        return tuple(item for part in raw.split(",") if (item := part.strip())), None, False

    return parse


def _parse_enum(spec: ColumnSpec) -> _Check:
    canonical = {v.lower(): v for v in spec.enum}
    is_status = spec.name == "status"

    def parse(raw: str) -> tuple[Any, str | None, bool]:
        value: Any
        if raw in spec.enum:
            value = raw
            problem = None
        elif raw.lower() in canonical:
            value = canonical[raw.lower()]
            problem = f"{_shown(raw)} taken as {value!r} (case differs from the specification)"
        elif spec.extensible and raw.startswith("ext:"):
            return raw, None, False
        else:
            return None, f"{_shown(raw)} is not a permitted value", True
        return (Status(value) if is_status else value), problem, False

    return parse


def _parse_bool(spec: ColumnSpec) -> _Check:
    enum = _parse_enum(spec)

    def parse(raw: str) -> tuple[Any, str | None, bool]:
        value, problem, severe = enum(raw)
        return (None if value is None else value == "true"), problem, severe

    return parse


def _parse_date(_spec: ColumnSpec) -> _Check:
    def parse(raw: str) -> tuple[Any, str | None, bool]:
        if _DATE.fullmatch(raw):
            try:
                return date.fromisoformat(raw), None, False
            except ValueError:
                pass
        return None, "not a date (YYYY-MM-DD)", True

    return parse


def _parse_date_time(_spec: ColumnSpec) -> _Check:
    def parse(raw: str) -> tuple[Any, str | None, bool]:
        try:
            if _DATE.fullmatch(raw):
                # Real exports put a plain date here; it is unambiguous, so keep the row.
                value = datetime.fromisoformat(raw).replace(tzinfo=UTC)
                return value, "a date without a time: taken as 00:00 UTC", False
            m = _DATE_TIME.fullmatch(raw)
            if m:
                day, clock, zone = m.groups()
                zone = "+00:00" if zone is None or zone in "Zz" else zone
                if len(zone) == 5:  # +hhmm
                    zone = zone[:3] + ":" + zone[3:]
                frac = clock.partition(".")[2]
                if len(frac) > 6:  # Python keeps microseconds only
                    clock = clock[: len(clock) - len(frac) + 6]
                value = datetime.fromisoformat(f"{day}T{clock}{zone}")
                if m.group(3) is None:
                    return value, "a date-time without a time zone: taken as UTC", False
                return value.astimezone(UTC), None, False
        except ValueError:
            pass
        return None, "not a date-time (ISO 8601, e.g. 2024-01-31T08:00:00.000Z)", True

    return parse


def _parse_year(_spec: ColumnSpec) -> _Check:
    def parse(raw: str) -> tuple[Any, str | None, bool]:
        if _YEAR.fullmatch(raw):
            return int(raw), None, False
        return None, "not a year (YYYY)", True

    return parse


_PARSERS: dict[Kind, Callable[[ColumnSpec], _Check]] = {
    Kind.STRING: _parse_string,
    Kind.LIST: _parse_list,
    Kind.ENUM: _parse_enum,
    Kind.BOOL: _parse_bool,
    Kind.DATE: _parse_date,
    Kind.DATE_TIME: _parse_date_time,
    Kind.YEAR: _parse_year,
}
