"""Load the Avro event contracts from ``schemas/``.

Layout: ``common/<Name>.avsc`` holds shared named types (namespace ``safehub.common``),
``events/<Name>.avsc`` one record per event type (namespace ``safehub.events``). Every schema
is returned fully expanded: each named type is inlined at its first use and referenced by
fullname afterwards, so the result is a valid, self-contained Avro schema (a plain JSON dict).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import avro.errors
import avro.schema
from fastavro.schema import UnknownType, parse_schema, to_parsing_canonical_form
from fastavro.schema import fingerprint as avro_fingerprint

from safehub.contracts.errors import SchemaError
from safehub.contracts.names import EVENT_NAMESPACE, DataClass

Schema = dict[str, Any]

COMMON_NAMESPACE = "safehub.common"
EVENTS_NAMESPACE = EVENT_NAMESPACE.removesuffix(".")
#: Sub-directory of the schema directory → namespace of the schemas it holds.
NAMESPACES: dict[str, str] = {"common": COMMON_NAMESPACE, "events": EVENTS_NAMESPACE}
#: Field-level classes (custom ``classification`` attribute on a field).
#: They are the sensitive ones: the codec refuses an event whose envelope does not declare them.
FIELD_CLASSES: frozenset[str] = frozenset(
    c.value for c in (DataClass.STUDENT_RECORD, DataClass.HEALTH, DataClass.TIPSTER_IDENTITY)
)

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def _default_schema_dir() -> Path:
    source_tree = Path(__file__).resolve().parents[2] / "schemas"
    if source_tree.is_dir():
        return source_tree
    return Path(__file__).resolve().parents[1] / "_contracts" / "schemas"


#: Where the schemas live: ``<repo>/schemas`` in a checkout, bundled data in a wheel.
SCHEMA_DIR: Path = _default_schema_dir()


def fingerprint_of(schema: Mapping[str, Any]) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of an (expanded) schema.

    It names the writer schema in the codec's single-object encoding and the files kept in
    ``history/``.
    """
    try:
        canonical = to_parsing_canonical_form(parse_schema(dict(schema), _write_hint=False))
    except Exception as exc:
        raise SchemaError(f"schema {schema.get('name')!r} does not parse: {exc}") from exc
    return int(avro_fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")


@dataclass(frozen=True)
class LoadedSchema:
    """One schema file, parsed.

    ``parsed`` holds only the file's own definitions (other named types by fullname);
    ``expanded`` is self-contained.
    """

    fullname: str
    path: str
    parsed: Schema
    expanded: Schema


@dataclass(frozen=True)
class LoadError:
    """A schema file that could not be loaded: its path (relative to the schema dir) and why."""

    path: str
    reason: str


def expected_fullname(path: str) -> str:
    """Fullname a schema file must define, from its relative path (``events/X.avsc``)."""
    folder, _, file_name = path.partition("/")
    return f"{NAMESPACES.get(folder, folder)}.{file_name.removesuffix('.avsc')}"


def read_schema_texts(schema_dir: Path) -> dict[str, str]:
    """Read every ``common/*.avsc`` and ``events/*.avsc`` below ``schema_dir``.

    Keys are paths relative to ``schema_dir`` with ``/`` separators.
    """
    if not schema_dir.is_dir():
        raise SchemaError(f"{schema_dir}: schema directory not found")
    texts: dict[str, str] = {}
    for folder in NAMESPACES:
        for file in sorted((schema_dir / folder).glob("*.avsc")):
            try:
                texts[f"{folder}/{file.name}"] = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SchemaError(f"{file}: cannot read: {exc}") from exc
    return texts


def parse_schema_texts(
    texts: Mapping[str, str],
) -> tuple[dict[str, LoadedSchema], list[LoadError]]:
    """Parse schema file texts (relative path → JSON text); return schemas and load errors.

    Common files are parsed first, in dependency order; each event file is parsed on its own
    against the common types, so events cannot reference each other's types.
    """
    loader = _Loader()
    raw = loader.read_json(texts)
    loader.parse_common({p: s for p, s in raw.items() if p.startswith("common/")})
    for path, schema in raw.items():
        if not path.startswith("common/"):
            loader.parse_file(path, schema)
    return loader.finish(), loader.errors


class _Loader:
    """State of one :func:`parse_schema_texts` run."""

    def __init__(self) -> None:
        self.errors: list[LoadError] = []
        self.named: dict[str, Any] = {}  # fullname → parsed definition, common types only
        self.owner: dict[str, str] = {}  # fullname → file that defines it
        self.parsed: dict[str, Schema] = {}  # path → parsed schema (own definitions)

    def read_json(self, texts: Mapping[str, str]) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        for path in sorted(texts):
            try:
                schema = json.loads(texts[path])
            except json.JSONDecodeError as exc:
                self.errors.append(LoadError(path, f"invalid JSON: {exc}"))
                continue
            if isinstance(schema, dict) and schema.get("type") in _NAMED:
                raw[path] = schema
            else:
                self.errors.append(LoadError(path, "top level must be a record, enum or fixed"))
        return raw

    def parse_file(
        self, path: str, schema: Any, *, raise_unknown: bool = False
    ) -> dict[str, Any] | None:
        """Parse one file against the common types; the names known afterwards, or None."""
        trial = dict(self.named)
        try:
            self.parsed[path] = cast(Schema, parse_schema(schema, trial, _write_hint=False))
        except UnknownType as exc:
            if raise_unknown:
                raise
            self.errors.append(LoadError(path, f"unknown type {exc}"))
            return None
        except Exception as exc:  # fastavro raises assorted types on bad input
            self.errors.append(LoadError(path, f"invalid schema: {exc}"))
            return None
        for name in trial.keys() & self.named.keys():
            if trial[name] is not self.named[name]:
                self.errors.append(LoadError(path, f"redefines {name} ({self.owner[name]})"))
                del self.parsed[path]
                return None
        return trial

    def parse_common(self, raw: dict[str, Any]) -> None:
        """Parse the common files, each once the types it references are known."""
        pending = dict(raw)
        while pending:
            done = [p for p in sorted(pending) if self._parse_common(p, pending[p], last=False)]
            if not done:  # the rest reference unknown types (or each other in a cycle)
                for path in sorted(pending):
                    self._parse_common(path, pending[path], last=True)
                return
            for path in done:
                del pending[path]

    def _parse_common(self, path: str, schema: Any, *, last: bool) -> bool:
        """Try one common file; False if it must wait for types not parsed yet."""
        try:
            trial = self.parse_file(path, schema, raise_unknown=not last)
        except UnknownType:
            return False
        if trial is not None:
            self.owner.update({name: path for name in trial.keys() - self.named.keys()})
            self.named = trial
        return True

    def finish(self) -> dict[str, LoadedSchema]:
        """Check file names, expand, validate with Apache Avro."""
        schemas: dict[str, LoadedSchema] = {}
        for path, own in sorted(self.parsed.items()):
            fullname = str(own["name"])
            if fullname != expected_fullname(path):
                reason = f"defines {fullname}, expected {expected_fullname(path)}"
                self.errors.append(LoadError(path, reason))
                continue
            expanded = _inline(own, self.named, set())
            try:
                avro.schema.parse(json.dumps(expanded))
            except (avro.errors.AvroException, ValueError, TypeError) as exc:
                self.errors.append(LoadError(path, f"invalid schema (Apache Avro): {exc}"))
                continue
            schemas[fullname] = LoadedSchema(fullname, path, own, expanded)
        return schemas


_TYPE_KEYS = ("type", "name", "doc")
_FIELD_KEYS = ("name", "type", "default", "doc")


def _ordered(node: Mapping[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    """Deep copy of ``node`` with the ``first`` keys in front (readable dumps)."""
    keys = [k for k in first if k in node] + [k for k in node if k not in first]
    return {k: copy.deepcopy(node[k]) for k in keys}


def _inline(node: Any, named: Mapping[str, Any], defined: set[str]) -> Any:
    """Copy ``node`` inlining each named type at its first occurrence."""
    if isinstance(node, str):
        if node in _PRIMITIVES or node in defined:
            return node
        if node not in named:
            raise SchemaError(f"unknown type {node}")
        return _inline(named[node], named, defined)
    if isinstance(node, list):
        return [_inline(branch, named, defined) for branch in node]
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    out = _ordered(node, _TYPE_KEYS)
    kind = node.get("type")
    if kind in _NAMED:
        defined.add(str(node["name"]))
    if kind in ("record", "error"):
        out["fields"] = []
        for field in node["fields"]:
            inlined = _ordered(field, _FIELD_KEYS)
            inlined["type"] = _inline(field["type"], named, defined)
            out["fields"].append(inlined)
    elif kind == "array":
        out["items"] = _inline(node["items"], named, defined)
    elif kind == "map":
        out["values"] = _inline(node["values"], named, defined)
    elif not isinstance(kind, str) or kind not in _PRIMITIVES | _NAMED:
        out["type"] = _inline(kind, named, defined)
    return out


def load_all(schema_dir: Path | None = None) -> dict[str, LoadedSchema]:
    """Load every schema file; raise :class:`SchemaError` naming the file on the first problem."""
    directory = SCHEMA_DIR if schema_dir is None else schema_dir
    schemas, errors = parse_schema_texts(read_schema_texts(directory))
    if errors:
        detail = "; ".join(f"{directory / e.path}: {e.reason}" for e in errors)
        raise SchemaError(detail)
    return schemas


def load_schemas(schema_dir: Path | None = None) -> dict[str, Schema]:
    """Fullname → fully expanded schema, for every common and event schema."""
    return {name: loaded.expanded for name, loaded in load_all(schema_dir).items()}


def event_schemas(schema_dir: Path | None = None) -> dict[str, Schema]:
    """Like :func:`load_schemas`, only the event records (``EVENT_NAMESPACE`` + name)."""
    schemas = load_schemas(schema_dir)
    return {name: s for name, s in schemas.items() if name.startswith(EVENT_NAMESPACE)}


HISTORY_DIR = "history"


def load_history(schema_dir: Path | None = None) -> list[Schema]:
    """Older, expanded versions of event schemas kept in ``history/`` (one JSON file each).

    Messages written with an older version stay on the topics after a schema evolves; the
    codec needs their writer schema to decode them (it finds it by fingerprint).
    """
    directory = (SCHEMA_DIR if schema_dir is None else schema_dir) / HISTORY_DIR
    history: list[Schema] = []
    for path in sorted(directory.glob("*.avsc")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            parse_schema(copy.deepcopy(schema), _write_hint=False)
        except (OSError, ValueError, UnknownType) as exc:
            raise SchemaError(f"{path}: {exc}") from exc
        history.append(schema)
    return history


def _walk_fields(
    node: Any, prefix: str, defs: dict[str, Any], stack: tuple[str, ...]
) -> Iterator[tuple[str, Schema]]:
    """Yield (dotted path, field dict) for every record field reachable from ``node``."""
    if isinstance(node, list):
        for branch in node:
            yield from _walk_fields(branch, prefix, defs, stack)
        return
    if isinstance(node, str):
        if node in defs and node not in stack:
            yield from _walk_fields(defs[node], prefix, defs, stack)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in _NAMED:
        defs.setdefault(str(node["name"]), node)
    if kind in ("record", "error"):
        inner = (*stack, str(node.get("name")))
        for field in node.get("fields", []):
            path = f"{prefix}.{field['name']}" if prefix else str(field["name"])
            yield path, field
            yield from _walk_fields(field.get("type"), path, defs, inner)
    elif kind == "array":
        yield from _walk_fields(node.get("items"), prefix, defs, stack)
    elif kind == "map":
        yield from _walk_fields(node.get("values"), prefix, defs, stack)
    elif isinstance(kind, dict | list):
        yield from _walk_fields(kind, prefix, defs, stack)


def iter_fields(schema: Schema) -> Iterator[tuple[str, Schema]]:
    """Yield (dotted path, field dict) for every field of ``schema``, nested ones included.

    Paths go through records, unions, arrays and maps by field name only
    (``recipients.channels``, ``envelope.tenant.school``).
    """
    yield from _walk_fields(schema, "", {}, ())


def field_classifications(schema: Schema) -> dict[str, str]:
    """Dotted field path → data class, for every field with a ``classification`` attribute."""
    out: dict[str, str] = {}
    for path, field in iter_fields(schema):
        if "classification" in field:
            value = field["classification"]
            if value not in FIELD_CLASSES:
                raise SchemaError(
                    f"{schema.get('name')}: field {path!r} has classification {value!r}, "
                    f"expected one of {sorted(FIELD_CLASSES)}"
                )
            out[path] = str(value)
    return out


def event_classification(schema: Schema) -> list[str]:
    """The data classes an event record declares (its top-level ``classification``)."""
    value = schema.get("classification")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SchemaError(f"{schema.get('name')}: missing or invalid top-level classification")
    return [str(v) for v in value]
