"""Deterministic example events built from the schemas themselves (so every type is covered)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from safehub.kernel.envelope import new_event

SENSITIVE_MARK = "SENSITIVE-VALUE-"

#: Named types met so far (by fullname and short name), for later references by name.
_NAMED: dict[str, Any] = {}


def example_value(schema: Any, path: str) -> Any:
    """A valid value for ``schema``; sensitive strings carry a recognisable marker."""
    if isinstance(schema, list):
        non_null = [branch for branch in schema if branch != "null"]
        return example_value(non_null[0], path) if non_null else None
    if isinstance(schema, str):
        # A named type used again after its definition (Avro writes it by name).
        schema = _NAMED.get(schema) or _NAMED.get(schema.rsplit(".", 1)[-1]) or {"type": schema}
    kind = schema["type"]
    if isinstance(kind, str) and kind in ("enum", "record", "fixed") and "name" in schema:
        fullname = schema["name"]
        if "." not in fullname and schema.get("namespace"):
            fullname = f"{schema['namespace']}.{fullname}"
        _NAMED[fullname] = _NAMED[schema["name"]] = schema
    if isinstance(kind, dict | list):
        return example_value(kind, path)
    logical = schema.get("logicalType")
    if logical in ("timestamp-micros", "timestamp-millis"):
        return datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    match kind:
        case "string":
            return f"{path}-example"
        case "boolean":
            return True
        case "int" | "long":
            return 7
        case "float" | "double":
            return 0.5
        case "bytes":
            return b"example"
        case "enum":
            symbols = [s for s in schema["symbols"] if s != schema.get("default")]
            return (symbols or schema["symbols"])[0]
        case "array":
            return [example_value(schema["items"], path + "[]")]
        case "map":
            return {"k": example_value(schema["values"], path + "{}")}
        case "record":
            return {
                field["name"]: (
                    f"{SENSITIVE_MARK}{field['name']}"
                    if field.get("classification") and _is_string(field["type"])
                    else example_value(field["type"], f"{path}.{field['name']}")
                )
                for field in schema["fields"]
            }
        case "fixed":
            return b"\0" * schema["size"]
    raise ValueError(f"no example for {schema!r}")


def _is_string(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(_is_string(branch) for branch in schema)
    return schema == "string" or (isinstance(schema, dict) and schema.get("type") == "string")


def example_event(
    schema: dict[str, Any], *, school: str = "sch-lincoln-hs", incident: str = "inc-1"
) -> dict[str, Any]:
    """A complete, valid event of the record type ``schema`` (an expanded event schema)."""
    payload = example_value(schema, schema["name"])
    payload.pop("envelope", None)
    classes = set(schema.get("classification", ["INTERNAL"]))
    return new_event(
        f"{schema.get('namespace', 'safehub.events')}.{schema['name']}"
        if "." not in schema["name"]
        else schema["name"],
        source="test-suite",
        tenant={"state": "US-TX", "district": "dist-north", "school": school},
        building="B",
        room="214",
        incident_id=incident,
        case_id="case-1",
        classification=sorted(classes | {"INTERNAL"}),
        payload=payload,
    )


#: The tenant of the demo's Lincoln High School.
LINCOLN = {"state": "US-TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"}


def at_hub(event: dict[str, Any]) -> dict[str, Any]:
    """As the gateway records it: the hub's clock (recorded_at) is the signal's time."""
    event["envelope"]["recorded_at"] = event["envelope"]["occurred_at"]
    return event


def panic_at(at: datetime, room: str = "214", exercise: bool = False) -> dict[str, Any]:
    """A silent panic at Lincoln HS building B, recorded by the hub at ``at``."""
    return at_hub(
        new_event(
            "PanicAlert",
            source="test",
            tenant=LINCOLN,
            building="B",
            room=room,
            occurred_at=at,
            exercise=exercise,
            payload={
                "device_id": "badge-1",
                "device_kind": "WEARABLE",
                "panic_type": "ACTIVE_ASSAILANT",
                "silent": True,
                "reporter_role": "TEACHER",
                "activated_by": None,
                "floor": None,
                "latitude": None,
                "longitude": None,
                "location_text": None,
            },
        )
    )
