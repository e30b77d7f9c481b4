"""Avro event contracts: loading the schemas in ``schemas/`` and checking their evolution."""

from safehub.contracts.registry import (
    SCHEMA_DIR,
    event_classification,
    event_schemas,
    field_classifications,
    load_schemas,
)

__all__ = [
    "SCHEMA_DIR",
    "event_classification",
    "event_schemas",
    "field_classifications",
    "load_schemas",
]
