"""Avro codec with the Avro single-object encoding.

Every Kafka value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's parsing canonical form + the Avro binary body. The fingerprint names the
writer schema, so a consumer decodes with the exact schema the producer used and resolves
it to its own (reader) schema: old and new versions of a service can share a topic.

Events are plain dicts shaped like their schema, with the envelope under ``"envelope"``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.schema import parse_schema

from safehub.contracts.names import EVENT_NAMESPACE
from safehub.contracts.registry import FIELD_CLASSES, fingerprint_of, load_history, load_schemas
from safehub.kernel.errors import (
    ClassificationError,
    CodecError,
    CorruptMessageError,
    UnknownSchemaError,
)

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

Event = dict[str, Any]

#: Data classes that need a declared, enforced classification on the envelope.
SENSITIVE_CLASSES = FIELD_CLASSES

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "SENSITIVE_CLASSES",
    "Codec",
    "Event",
    "fingerprint_of",
]


@dataclass(frozen=True)
class _Writer:
    fullname: str
    parsed: Any
    fingerprint: bytes
    sensitive_fields: tuple[tuple[str, str], ...]  # (top-level field, data class)


def _sensitive_fields(schema: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (field["name"], field["classification"])
        for field in schema.get("fields", [])
        if field.get("classification") in SENSITIVE_CLASSES
    )


class Codec:
    """Encodes and decodes events; knows every writer schema by fingerprint.

    ``schemas`` maps fullname to the *current* expanded schema (the reader schema for that
    type); ``history`` adds older writer versions that may still be on the topics.
    """

    def __init__(
        self, schemas: Mapping[str, Mapping[str, Any]], history: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        self._current: dict[str, _Writer] = {}
        self._by_fingerprint: dict[bytes, _Writer] = {}
        for fullname, schema in schemas.items():
            writer = self._register(fullname, schema)
            self._current[fullname] = writer
        for schema in history:
            self._register(_fullname(schema), schema)

    def _register(self, fullname: str, schema: Mapping[str, Any]) -> _Writer:
        fp = fingerprint_of(schema)
        writer = _Writer(
            fullname=fullname,
            parsed=parse_schema(json.loads(json.dumps(schema))),
            fingerprint=fp,
            sensitive_fields=_sensitive_fields(schema),
        )
        self._by_fingerprint[fp] = writer
        return writer

    @classmethod
    def from_contracts(cls) -> Codec:
        """A codec over every schema in ``schemas/`` (current versions and history)."""
        return cls(load_schemas(), load_history())

    @property
    def event_types(self) -> list[str]:
        """Fullnames of every event record this codec can encode."""
        return sorted(name for name in self._current if name.startswith(EVENT_NAMESPACE))

    def fingerprint(self, event_type: str) -> bytes:
        """The fingerprint of the current schema of ``event_type``."""
        return self._writer_for(event_type).fingerprint

    def _writer_for(self, event_type: str) -> _Writer:
        try:
            return self._current[event_type]
        except KeyError:
            raise UnknownSchemaError(f"no schema for event type {event_type!r}") from None

    def encode(self, event: Mapping[str, Any]) -> bytes:
        """Encode ``event`` with the current schema of its ``envelope.event_type``.

        Refuses an event whose populated sensitive fields are not declared in
        ``envelope.classification``: consumers and the timeline rely on that declaration.
        """
        try:
            envelope = event["envelope"]
            event_type = envelope["event_type"]
        except (KeyError, TypeError) as exc:
            raise CodecError("event has no envelope.event_type") from exc
        writer = self._writer_for(event_type)
        declared = set(envelope.get("classification") or ())
        for field_name, data_class in writer.sensitive_fields:
            if event.get(field_name) not in (None, "", [], {}) and data_class not in declared:
                raise ClassificationError(
                    f"{event_type}.{field_name} carries {data_class} but the envelope "
                    f"declares only {sorted(declared)}"
                )
        buffer = io.BytesIO()
        buffer.write(MAGIC)
        buffer.write(writer.fingerprint)
        try:
            fastavro.schemaless_writer(buffer, writer.parsed, dict(event))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # fastavro's message quotes the offending value, which may be personal data:
            # keep only the field name.
            raise CodecError(
                f"{event_type}: {_offending_field(exc)} does not match the schema"
            ) from exc
        return buffer.getvalue()

    def writer_type(self, data: bytes) -> str:
        """The fullname of the schema that wrote ``data`` (without decoding the body)."""
        return self._writer_of(data).fullname

    def _writer_of(self, data: bytes) -> _Writer:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptMessageError(f"expected bytes, got {type(data).__name__}")
        if len(data) < HEADER_SIZE or bytes(data[:2]) != MAGIC:
            raise CorruptMessageError("not an Avro single-object encoded message (bad header)")
        fp = bytes(data[2:HEADER_SIZE])
        writer = self._by_fingerprint.get(fp)
        if writer is None:
            raise UnknownSchemaError(f"unknown writer schema fingerprint {fp[::-1].hex()}")
        return writer

    def decode(self, data: bytes, reader_type: str | None = None) -> Event:
        """Decode ``data``, resolving its writer schema to the current (or given) reader schema."""
        writer = self._writer_of(data)
        reader = self._writer_for(reader_type or writer.fullname)
        stream = io.BytesIO(bytes(data[HEADER_SIZE:]))
        try:
            record = fastavro.schemaless_reader(
                stream,
                writer.parsed,
                reader.parsed if reader is not writer else None,
            )
        except Exception as exc:  # fastavro raises many types on corrupt bytes
            raise CorruptMessageError(
                f"{writer.fullname} body does not decode: {type(exc).__name__}"
            ) from exc
        if stream.tell() != len(data) - HEADER_SIZE:
            raise CorruptMessageError(f"{writer.fullname} body has trailing bytes")
        if not isinstance(record, dict):
            raise CorruptMessageError(f"{writer.fullname} did not decode to a record")
        return record


def _fullname(schema: Mapping[str, Any]) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


_FIELD_IN_MESSAGE = re.compile(r"on field (\S+)")


def _offending_field(exc: BaseException) -> str:
    match = _FIELD_IN_MESSAGE.search(str(exc))
    if match:
        return f"field {match.group(1)!r}"
    if isinstance(exc, KeyError):
        return f"field {exc.args[0]!r} (missing)"
    return f"a field ({type(exc).__name__})"
