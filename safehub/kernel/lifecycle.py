"""Context-manager lifecycle shared by the kernel's clients, and publishing a bound port."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
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


def write_port_file(path: Path, port: int) -> None:
    """Publish a bound port: write then rename, so a reader never sees a half-written number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n", encoding="utf-8")
    temporary.replace(path)
