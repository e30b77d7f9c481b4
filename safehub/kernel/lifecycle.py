"""Context-manager lifecycle shared by the kernel's clients."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """Base for clients opened as context managers: leaving the block calls :meth:`close`."""

    def close(self) -> None:
        """Release the resource (idempotent in every subclass)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
