"""Structured logging for every deployable (structlog over the standard library).

Log events name what happened and carry identifiers (event id, incident id, topic,
offset) but never payloads: payloads may hold student records, health data or a
tipster's identity. The ``drop_sensitive_keys`` processor is a second line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from safehub.kernel.settings import LogFormat, LogSettings

#: Keys that must never appear in a log line, whatever a caller passes.
SENSITIVE_KEYS = frozenset(
    {"payload", "body", "value", "record", "password", "secret", "token", "contact"}
)


def drop_sensitive_keys(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace values of keys that could carry personal data or secrets."""
    for key in SENSITIVE_KEYS.intersection(event_dict):
        event_dict[key] = "[withheld]"
    return event_dict


def configure_logging(settings: LogSettings | None = None) -> None:
    """Configure structlog and the standard library once, at process start."""
    settings = settings or LogSettings()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_sensitive_keys,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
