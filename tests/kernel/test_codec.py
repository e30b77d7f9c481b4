"""Codec: single-object encoding, schema evolution, typed errors, classification guard."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub.contracts.registry import event_schemas, load_schemas
from safehub.kernel.codec import MAGIC, Codec, fingerprint_of
from safehub.kernel.errors import (
    ClassificationError,
    CodecError,
    CorruptMessageError,
    UnknownSchemaError,
)
from tests.support.examples import SENSITIVE_MARK, example_event

PANIC = "safehub.events.PanicAlert"


def test_wire_format_is_avro_single_object_encoding(codec: Codec) -> None:
    event = example_event(event_schemas()[PANIC])
    data = codec.encode(event)
    assert data[:2] == MAGIC
    assert data[2:10] == fingerprint_of(load_schemas()[PANIC])
    assert codec.writer_type(data) == PANIC
    assert codec.decode(data) == event


def test_every_event_type_round_trips(codec: Codec) -> None:
    for name, schema in event_schemas().items():
        event = example_event(schema)
        assert codec.decode(codec.encode(event)) == event, name


def _evolved(schema: dict[str, Any]) -> dict[str, Any]:
    newer = copy.deepcopy(schema)
    newer["fields"].append(
        {
            "name": "added_in_v2",
            "type": ["null", "string"],
            "default": None,
            "doc": "A field added in version 2.",
        }
    )
    return newer


def test_old_writer_is_resolved_to_new_reader_schema() -> None:
    schemas = load_schemas()
    old_codec = Codec(schemas)
    new_schemas = {**schemas, PANIC: _evolved(schemas[PANIC])}
    new_codec = Codec(new_schemas, history=[schemas[PANIC]])
    event = example_event(schemas[PANIC])
    decoded = new_codec.decode(old_codec.encode(event))
    assert decoded["added_in_v2"] is None
    assert decoded["envelope"] == event["envelope"]
    # ...and the old reader reads what the new writer wrote (forward compatibility).
    newer_event = {**event, "added_in_v2": "2"}
    old_reader = Codec(schemas, history=[new_schemas[PANIC]])
    assert old_reader.decode(new_codec.encode(newer_event)) == event


def test_unknown_fingerprint_is_a_typed_error(codec: Codec) -> None:
    with pytest.raises(UnknownSchemaError, match="unknown writer schema"):
        codec.decode(MAGIC + b"\x00" * 8 + b"\x00")


@pytest.mark.parametrize("data", [b"", b"\xc3", b"\x00\x01" + b"\x00" * 10, b"plain text"])
def test_bad_header_is_corrupt(codec: Codec, data: bytes) -> None:
    with pytest.raises(CorruptMessageError, match="bad header"):
        codec.decode(data)


def test_truncated_and_trailing_bytes_are_corrupt(codec: Codec) -> None:
    data = codec.encode(example_event(event_schemas()[PANIC]))
    with pytest.raises(CorruptMessageError):
        codec.decode(data[:-5])
    with pytest.raises(CorruptMessageError, match="trailing"):
        codec.decode(data + b"\x00")


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300))
def test_random_bodies_never_crash(codec: Codec, body: bytes) -> None:
    data = MAGIC + codec.fingerprint(PANIC) + body
    with contextlib.suppress(CodecError):
        codec.decode(data)


def test_undeclared_sensitive_data_is_refused(codec: Codec) -> None:
    sensitive = {
        name: schema
        for name, schema in event_schemas().items()
        if any(f.get("classification") for f in schema["fields"])
    }
    assert sensitive, "some event types must carry classified fields"
    for name, schema in sensitive.items():
        event = example_event(schema)
        event["envelope"]["classification"] = ["INTERNAL"]
        with pytest.raises(ClassificationError, match=name):
            codec.encode(event)


def test_encode_error_names_the_field_but_not_the_value(codec: Codec) -> None:
    event = example_event(event_schemas()[PANIC])
    event["envelope"]["building"] = {"secret": SENSITIVE_MARK}
    with pytest.raises(CodecError) as info:
        codec.encode(event)
    assert SENSITIVE_MARK not in str(info.value)
    assert "building" in str(info.value) or "envelope" in str(info.value)


def test_unknown_event_type_is_refused(codec: Codec) -> None:
    event = example_event(event_schemas()[PANIC])
    event["envelope"]["event_type"] = "safehub.events.NoSuchThing"
    with pytest.raises(UnknownSchemaError, match="NoSuchThing"):
        codec.encode(event)


def test_stable_ids_keep_the_values_already_on_the_topics() -> None:
    """One helper for every deterministic id; ids of events already published never change."""
    from safehub.kernel.envelope import event_id_for
    from services.incidents.model import command_id_for, incident_id_for
    from services.notify.dispatcher import notify_id

    assert event_id_for("panic-badges-north", "p-1") == "603c4fc7-593f-51b1-85db-0ba4397c21bd"
    assert incident_id_for("sig-1") == "ab3f800f-7f2c-5fe2-be66-622c67df1cfa"
    assert command_id_for("sig-1") == "24a26d3a-13c1-5641-a5a2-217fd1d633de"
    assert notify_id("incident", "inc-1", "3") == "3910b5c0-e3df-5f5e-b1f0-f7d4494a87a8"


def test_the_codec_takes_fingerprints_and_sensitive_classes_from_the_contracts() -> None:
    from safehub.contracts import registry
    from safehub.kernel import codec

    # One definition each, in the contracts (below the kernel): the contracts never import it.
    assert codec.fingerprint_of is registry.fingerprint_of
    assert codec.SENSITIVE_CLASSES == registry.FIELD_CLASSES
