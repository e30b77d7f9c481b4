"""The root of SafeHub's errors and the contracts' own, defined in the lowest layer that raises.

:mod:`safehub.kernel.errors` re-exports both: callers keep catching
``safehub.kernel.errors.SafeHubError`` and ``SchemaError``. They live here so that the contracts
(schema loading and checks) raise them without importing the kernel, which sits above the
contracts (``safehub.gen`` < ``safehub.contracts`` < ``safehub.kernel``).
"""

from __future__ import annotations


class SafeHubError(Exception):
    """Root of every error SafeHub raises."""


class SchemaError(SafeHubError):
    """A schema is invalid, unknown or incompatible."""
