"""``safehub schemas check``: contract rules and schema evolution against a git ref.

Rules (every schema file):

- it parses (fastavro and Apache Avro) and defines the fullname its path names;
- every record, enum and field has a non-empty ``doc``; every enum has a ``default`` symbol;
- timestamps are ``{"type": "long", "logicalType": "timestamp-micros"}`` (and ``*_at`` fields
  are timestamps);
- a field-level ``classification`` is one of STUDENT_RECORD, HEALTH, TIPSTER_IDENTITY;
- an event record starts with ``envelope: safehub.common.Envelope`` and declares a top-level
  ``classification`` list covering every field-level class it uses.

Evolution: each schema present at the ref must still exist and be both backward compatible
(the new reader reads old data) and forward compatible (the old reader reads new data).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    lookup_writer_field,
)

from safehub.contracts.errors import SchemaError
from safehub.contracts.names import DataClass
from safehub.contracts.registry import (
    COMMON_NAMESPACE,
    EVENTS_NAMESPACE,
    FIELD_CLASSES,
    HISTORY_DIR,
    NAMESPACES,
    LoadedSchema,
    Schema,
    expected_fullname,
    fingerprint_of,
    iter_fields,
    load_history,
    load_schemas,
    parse_schema_texts,
    read_schema_texts,
)

_log = logging.getLogger(__name__)
_Report = Callable[[str | None, str], None]

ENVELOPE = f"{COMMON_NAMESPACE}.Envelope"
DATA_CLASS = f"{COMMON_NAMESPACE}.DataClass"
_DATA_CLASSES = tuple(c.value for c in DataClass)
_TIMESTAMP = {"type": "long", "logicalType": "timestamp-micros"}
_GIT_TIMEOUT_S = 60


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a schema: its fullname, the dotted field path (if any), why."""

    schema: str
    field: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.schema}: {self.reason}"


def check_schemas(schema_dir: Path, against: str | None = "main") -> list[Problem]:
    """Check every schema under ``schema_dir``; with ``against``, also its evolution.

    ``against`` is a git ref of the repository holding ``schema_dir``; if it does not exist
    (e.g. before the first commit) the evolution check is skipped with a logged note.
    """
    try:
        texts = read_schema_texts(schema_dir)
    except SchemaError as exc:
        return [Problem("schemas", None, str(exc))]
    schemas, errors = parse_schema_texts(texts)
    problems = [Problem(expected_fullname(e.path), None, f"{e.path}: {e.reason}") for e in errors]
    for loaded in schemas.values():
        problems.extend(check_rules(loaded, schemas))
    if against:
        failed = {expected_fullname(e.path) for e in errors}
        problems.extend(_check_against_ref(schema_dir, schemas, failed, against))
    return sorted(set(problems), key=lambda p: (p.schema, p.field or "", p.reason))


# --------------------------------------------------------------------------- rules


def check_rules(loaded: LoadedSchema, schemas: dict[str, LoadedSchema]) -> list[Problem]:
    """The contract rules for one loaded schema file."""
    out: list[Problem] = []

    def report(path: str | None, reason: str) -> None:
        out.append(Problem(loaded.fullname, path or None, reason))

    _visit(loaded.parsed, None, report)
    if loaded.fullname.startswith(EVENTS_NAMESPACE + "."):
        _check_event(loaded, schemas, report)
    return out


def _has_doc(node: Schema) -> bool:
    doc = node.get("doc")
    return isinstance(doc, str) and bool(doc.strip())


def _is_timestamp(node: Any) -> bool:
    if isinstance(node, list):
        return any(_is_timestamp(branch) for branch in node) and all(
            branch == "null" or _is_timestamp(branch) for branch in node
        )
    return isinstance(node, dict) and {k: node.get(k) for k in _TIMESTAMP} == _TIMESTAMP


def _at(path: str | None) -> str:
    return f"field '{path}': " if path else ""


def _visit(node: Any, path: str | None, report: _Report) -> None:
    """Check one type node (and what it contains) defined in the file itself."""
    if isinstance(node, list):
        for branch in node:
            _visit(branch, path, report)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    logical = node.get("logicalType")
    if isinstance(logical, str) and "timestamp" in logical and not _is_timestamp(node):
        report(path, f"{_at(path)}timestamp must be {json.dumps(_TIMESTAMP)}")
    if kind in ("record", "error", "enum", "fixed") and not _has_doc(node):
        report(path, f"{_at(path)}{kind} {node.get('name')} has no doc")
    if kind == "enum":
        default = node.get("default")
        name = node.get("name")
        if default is None:
            report(path, f"{_at(path)}enum {name} has no default symbol")
        elif default not in node.get("symbols", []):
            report(path, f"{_at(path)}enum {name} default {default!r} is not one of its symbols")
    elif kind in ("record", "error"):
        for field in node.get("fields", []):
            name = str(field.get("name"))
            field_path = f"{path}.{name}" if path else name
            _check_field(field, field_path, report)
            _visit(field.get("type"), field_path, report)
    elif kind == "array":
        _visit(node.get("items"), path, report)
    elif kind == "map":
        _visit(node.get("values"), path, report)


def _check_field(field: Schema, path: str, report: _Report) -> None:
    if not _has_doc(field):
        report(path, f"field '{path}' has no doc")
    if "classification" in field and field["classification"] not in FIELD_CLASSES:
        report(
            path,
            f"field '{path}': classification {field['classification']!r} is not one of "
            f"{sorted(FIELD_CLASSES)}",
        )
    if str(field.get("name")).endswith("_at") and not _is_timestamp(field.get("type")):
        report(path, f"field '{path}': a *_at field must be a timestamp {json.dumps(_TIMESTAMP)}")


def _check_event(loaded: LoadedSchema, schemas: dict[str, LoadedSchema], report: _Report) -> None:
    parsed = loaded.parsed
    if parsed.get("type") != "record":
        report(None, "an event must be a record")
        return
    fields = parsed.get("fields", [])
    if not fields or fields[0].get("name") != "envelope" or fields[0].get("type") != ENVELOPE:
        report(None, f"the first field must be 'envelope' of type {ENVELOPE}")
    declared = parsed.get("classification")
    data_class = schemas.get(DATA_CLASS)
    symbols = data_class.parsed.get("symbols", _DATA_CLASSES) if data_class else _DATA_CLASSES
    if not isinstance(declared, list) or not declared:
        report(None, "missing top-level 'classification': list of DataClass symbols it carries")
        return
    unknown = [c for c in declared if c not in symbols]
    if unknown:
        report(None, f"classification {unknown} not in DataClass symbols {list(symbols)}")
    for path, field in iter_fields(loaded.expanded):
        data_class_symbol = field.get("classification")
        if data_class_symbol in FIELD_CLASSES and data_class_symbol not in declared:
            report(
                path,
                f"field '{path}' is classified {data_class_symbol} but the record's "
                f"classification {declared} does not include it",
            )


# --------------------------------------------------------------------------- evolution


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=_GIT_TIMEOUT_S,
    )


def _read_ref_texts(schema_dir: Path, ref: str) -> dict[str, str] | None:
    """Schema texts at ``ref`` (relative path → text), or None if there is nothing to compare."""
    top = _git(schema_dir, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        _log.warning("%s is not in a git repository: evolution not checked", schema_dir)
        return None
    root = Path(top.stdout.strip()).resolve()
    if _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        _log.warning("git ref %r not found: evolution not checked", ref)
        return None
    rel = schema_dir.resolve().relative_to(root).as_posix()
    prefix = "" if rel == "." else rel + "/"
    listing = _git(root, "ls-tree", "-r", "--name-only", ref, "--", prefix or ".")
    if listing.returncode != 0:
        raise SchemaError(f"git ls-tree {ref} failed: {listing.stderr.strip()}")
    texts: dict[str, str] = {}
    for repo_path in listing.stdout.splitlines():
        path = repo_path.removeprefix(prefix)
        folder, _, name = path.partition("/")
        if folder not in NAMESPACES or "/" in name or not name.endswith(".avsc"):
            continue
        shown = _git(root, "show", f"{ref}:{repo_path}")
        if shown.returncode != 0:
            raise SchemaError(f"git show {ref}:{repo_path} failed: {shown.stderr.strip()}")
        texts[path] = shown.stdout
    return texts


def _check_against_ref(
    schema_dir: Path, schemas: dict[str, LoadedSchema], failed: set[str], ref: str
) -> list[Problem]:
    try:
        old_texts = _read_ref_texts(schema_dir, ref)
    except (SchemaError, OSError, subprocess.SubprocessError) as exc:
        return [Problem("schemas", None, f"cannot read schemas at {ref}: {exc}")]
    if old_texts is None:
        return []
    old_schemas, old_errors = parse_schema_texts(old_texts)
    for error in old_errors:
        _log.warning("%s at %s does not load (%s): not compared", error.path, ref, error.reason)
    problems: list[Problem] = []
    for name, old in sorted(old_schemas.items()):
        new = schemas.get(name)
        if new is None:
            if name not in failed:
                problems.append(
                    Problem(
                        name,
                        None,
                        f"schema removed (it exists at {ref}): consumers and "
                        "stored events still use it",
                    )
                )
            continue
        # Shared types are compared once, as schemas of their own, not again in each event.
        shared = frozenset(n for n in schemas if n != name and n.startswith(COMMON_NAMESPACE))
        problems.extend(compare(name, old.expanded, new.expanded, skip=shared))
        if name.startswith(EVENTS_NAMESPACE + ".") and not _kept_in_history(
            schema_dir, old.expanded, new.expanded
        ):
            problems.append(
                Problem(
                    name,
                    None,
                    f"changed since {ref} but the old version is not kept in "
                    f"schemas/{HISTORY_DIR}/: consumers could not decode messages already "
                    f"on the topics (run `safehub schemas keep-history --against {ref}`)",
                )
            )
    return problems


def _kept_in_history(schema_dir: Path, old: Schema, new: Schema) -> bool:
    """True if ``old`` equals ``new`` on the wire or is kept in ``history/``."""
    wanted = fingerprint_of(old)
    if wanted == fingerprint_of(new):
        return True
    return any(fingerprint_of(kept) == wanted for kept in load_history(schema_dir))


def keep_history(schema_dir: Path, ref: str) -> list[Path]:
    """Write the ``ref`` version of every changed event schema into ``history/``."""
    old_texts = _read_ref_texts(schema_dir, ref)
    if old_texts is None:
        return []
    old_schemas, _ = parse_schema_texts(old_texts)
    current = load_schemas(schema_dir)
    written: list[Path] = []
    for name, old in sorted(old_schemas.items()):
        new = current.get(name)
        if not name.startswith(EVENTS_NAMESPACE + ".") or new is None:
            continue
        if _kept_in_history(schema_dir, old.expanded, new):
            continue
        target = (
            schema_dir / HISTORY_DIR / f"{name}.{fingerprint_of(old.expanded)[::-1].hex()}.avsc"
        )
        target.parent.mkdir(exist_ok=True)
        target.write_text(json.dumps(old.expanded, indent=2) + "\n", encoding="utf-8")
        written.append(target)
    return written


class _Direction(Enum):
    BACKWARD = "backward"  # new reader, old writer
    FORWARD = "forward"  # old reader, new writer


@dataclass(frozen=True)
class _Break:
    path: str | None
    direction: _Direction
    missing_field: bool
    old: Any  # avro.schema.Schema of the old side
    new: Any
    detail: str


def compare(
    name: str, old: Schema, new: Schema, skip: frozenset[str] = frozenset()
) -> list[Problem]:
    """Problems that keep ``new`` from being backward and forward compatible with ``old``.

    Named types listed in ``skip`` (same name on both sides) are not looked into.
    """
    old_avro = avro.schema.parse(json.dumps(old))
    new_avro = avro.schema.parse(json.dumps(new))
    breaks: list[_Break] = []
    for direction in _Direction:
        drill = _Drill(direction, skip)
        reader, writer = (
            (new_avro, old_avro) if direction is _Direction.BACKWARD else (old_avro, new_avro)
        )
        result = drill.checker.get_compatibility(reader, writer)
        if result.compatibility is SchemaCompatibilityType.compatible:
            continue
        found = list(drill.walk(reader, writer, None))
        if not found and not drill.skipped:  # safety net: report what the checker said
            detail = "; ".join(sorted(result.messages))
            located = {_locate(reader, loc) for loc in result.locations} - {""}
            paths: list[str | None] = [*sorted(located)] or [None]
            found = [_Break(p, direction, False, None, None, detail) for p in paths]
        breaks.extend(found)
    return _problems(name, breaks)


class _Drill:
    """Walk records field by field to find where a reader cannot read a writer."""

    def __init__(self, direction: _Direction, skip: frozenset[str]) -> None:
        self.direction = direction
        self.skip = skip
        self.skipped: list[str] = []
        self.checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]

    def walk(self, reader: Any, writer: Any, path: str | None) -> Iterator[_Break]:
        result = self.checker.get_compatibility(reader, writer)
        if result.compatibility is SchemaCompatibilityType.compatible:
            return
        fullname = getattr(reader, "fullname", None)
        if fullname in self.skip and fullname == getattr(writer, "fullname", None):
            self.skipped.append(str(fullname))
            return
        kind = reader.type if reader.type == writer.type else None
        if kind == "record" and reader.fullname == writer.fullname:
            for reader_field in reader.fields:
                field_path = f"{path}.{reader_field.name}" if path else str(reader_field.name)
                writer_field = lookup_writer_field(writer_schema=writer, reader_field=reader_field)
                if writer_field is not None:
                    yield from self.walk(reader_field.type, writer_field.type, field_path)
                elif not reader_field.has_default:
                    yield _Break(field_path, self.direction, True, None, None, "")
            return
        if kind == "array":
            yield from self.walk(reader.items, writer.items, path)
            return
        if kind == "map":
            yield from self.walk(reader.values, writer.values, path)
            return
        if kind == "union" and _describe(reader) == _describe(writer):
            for reader_branch, writer_branch in zip(reader.schemas, writer.schemas, strict=True):
                yield from self.walk(reader_branch, writer_branch, path)
            return
        backward = self.direction is _Direction.BACKWARD
        old, new = (writer, reader) if backward else (reader, writer)
        where = sorted({_locate(reader, loc) for loc in result.locations} - {""})
        detail = "; ".join(sorted(result.messages))
        if where:
            detail += f" (at {', '.join(where)})"
        yield _Break(path, self.direction, False, old, new, detail)


def _locate(schema: Any, location: str) -> str:
    """Map a checker location such as ``/fields/3/type`` to a dotted field path."""
    parts = [t for t in location.split("/") if t]
    names: list[str] = []
    node = schema
    i = 0
    while i < len(parts):
        part = parts[i]
        if part == "fields" and node.type == "record" and i + 1 < len(parts):
            field = node.fields[int(parts[i + 1])]
            names.append(str(field.name))
            node = field.type
            i += 2
        elif part == "type":
            i += 1
        elif part.isdigit() and node.type == "union":
            node = node.schemas[int(part)]
            i += 1
        elif part == "items" and node.type == "array":
            node = node.items
            i += 1
        elif part == "values" and node.type == "map":
            node = node.values
            i += 1
        else:
            break
    return ".".join(names)


def _describe(schema: Any) -> str:
    """Short type description: ``string``, ``long (timestamp-micros)``, ``union[null, int]``."""
    kind = str(schema.type)
    if kind in ("record", "error", "enum", "fixed"):
        return str(schema.fullname)
    if kind == "union":
        return "union[" + ", ".join(_describe(s) for s in schema.schemas) + "]"
    if kind == "array":
        return f"array<{_describe(schema.items)}>"
    if kind == "map":
        return f"map<{_describe(schema.values)}>"
    logical = schema.get_prop("logicalType")
    return f"{kind} ({logical})" if logical else kind


def _consequence(directions: set[_Direction]) -> str:
    if directions == {_Direction.BACKWARD}:
        return "readers of the new schema cannot read old data"
    if directions == {_Direction.FORWARD}:
        return "readers of the old schema cannot read new data"
    return "readers of either version cannot read the other's data"


def _problems(name: str, breaks: list[_Break]) -> list[Problem]:
    """Merge the breaks of both directions into one problem per field and kind."""
    merged: dict[tuple[str | None, bool], list[_Break]] = {}
    for brk in breaks:
        merged.setdefault((brk.path, brk.missing_field), []).append(brk)
    problems: list[Problem] = []
    for (path, missing), group in merged.items():
        subject = f"field '{path}'" if path else "the schema"
        if not missing:
            reason = f"{_what_changed(subject, group)}: {_consequence(_dirs(group))}"
            problems.append(Problem(name, path, reason))
            continue
        for brk in group:
            if brk.direction is _Direction.BACKWARD:
                what = f"{subject} added without a default"
            else:
                what = f"{subject} removed, and it has no default in the old schema"
            problems.append(Problem(name, path, f"{what}: {_consequence({brk.direction})}"))
    return problems


def _dirs(group: list[_Break]) -> set[_Direction]:
    return {brk.direction for brk in group}


def _what_changed(subject: str, group: list[_Break]) -> str:
    brk = group[0]
    if brk.old is None or brk.new is None:
        return f"{subject} is incompatible ({brk.detail})"
    old, new = _describe(brk.old), _describe(brk.new)
    if old != new:
        return f"type of {subject} changed from {old} to {new}"
    if brk.old.type == "enum":
        added = sorted(set(brk.new.symbols) - set(brk.old.symbols))
        removed = sorted(set(brk.old.symbols) - set(brk.new.symbols))
        return (
            f"symbols of enum {old} ({subject}) changed (added {added}, removed {removed}) "
            "and the reading side has no default symbol"
        )
    details = "; ".join(sorted({b.detail for b in group}))
    return f"{subject} ({old}) changed incompatibly: {details}"
