"""ARCHITECTURE.md stays true: it names every declared topic and every deployable."""

from __future__ import annotations

from pathlib import Path

from safehub.devstack.manifest import Kind, discover
from safehub.kernel.topics import TOPICS

ROOT = Path(__file__).resolve().parents[2]


def test_every_topic_is_on_the_map() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = [spec.name for spec in TOPICS if f"`{spec.name}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not name topics {missing}"


def test_every_deployable_is_on_the_map() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    deployables = [m for m, manifest in discover().items() if manifest.kind is not Kind.SIMULATOR]
    missing = [name for name in deployables if f"`{name}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not name deployables {missing}"
