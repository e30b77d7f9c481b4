"""Avro event contracts: loading the schemas in ``schemas/`` and checking their evolution.

``safehub.contracts.names`` (generated from ``schemas/`` by ``make names``) holds every event
type (``EventType``) and data class (``DataClass``); nothing here imports the kernel, which sits
above the contracts.
"""

from safehub.contracts.errors import SchemaError
from safehub.contracts.names import EVENT_NAMESPACE, DataClass, EventType
from safehub.contracts.registry import (
    SCHEMA_DIR,
    event_classification,
    event_schemas,
    field_classifications,
    fingerprint_of,
    load_schemas,
)

__all__ = [
    "EVENT_NAMESPACE",
    "SCHEMA_DIR",
    "DataClass",
    "EventType",
    "SchemaError",
    "event_classification",
    "event_schemas",
    "field_classifications",
    "fingerprint_of",
    "load_schemas",
]
