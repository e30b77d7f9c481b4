"""Context-manager lifecycle shared by the kernel's clients."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Closing(ABC):
    """Base for clients opened as context managers: leaving the block calls :meth:`close`."""

    @abstractmethod
    def close(self) -> None:
        """Release the resource (idempotent in every subclass)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
