"""One root exception for everything SafeHub raises.

Third-party failures are wrapped (``raise ... from exc``) so callers only ever need to
catch :class:`SafeHubError` or one of its subclasses. Messages name what was wrong but
never carry event payloads: they end up in logs and dead-letter headers.
"""

from __future__ import annotations

# Defined below the kernel, so the contracts raise them without importing the kernel.
from safehub.contracts.errors import SafeHubError, SchemaError

__all__ = [
    "BrokerError",
    "BusError",
    "ClassificationError",
    "CodecError",
    "ConfigError",
    "CorruptMessageError",
    "DeliveryError",
    "HandlerError",
    "SafeHubError",
    "SchemaError",
    "StopWithoutCommit",
    "UnknownSchemaError",
]


class ConfigError(SafeHubError):
    """A setting is missing or has a wrong value (the message names the variable)."""


class CodecError(SafeHubError):
    """A message could not be encoded or decoded."""


class CorruptMessageError(CodecError):
    """The bytes are not a valid single-object-encoded Avro message."""


class UnknownSchemaError(CodecError):
    """The message names a writer schema (by fingerprint) that this hub does not know."""


class ClassificationError(CodecError):
    """An event carries data of a class that its envelope does not declare."""


class BusError(SafeHubError):
    """Producing to or consuming from Kafka failed."""


class DeliveryError(BusError):
    """The broker did not confirm a message within the deadline."""


class BrokerError(SafeHubError):
    """The embedded broker could not be started, checked or stopped."""


class HandlerError(SafeHubError):
    """A consumer handler rejected a message permanently (it goes to the dead-letter topic)."""


class StopWithoutCommit(SafeHubError):  # noqa: N818 - a signal to stop, not a failure
    """The deployable is stopping with a message not yet handled: leave it for the next run.

    Raised by a handler (or by a consumer of the kernel on a failure while stopping), it is
    neither retried nor dead-lettered, its offset is not committed, and the consumer's
    ``run`` returns: the next run (after the restart, or on another worker) handles the
    message again. For what must never be dead-lettered, such as a real dispatch to 911.
    """
