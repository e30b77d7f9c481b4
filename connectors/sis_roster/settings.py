"""Settings of the SIS roster connector (section ``sis_roster``, ``SAFEHUB_SIS_ROSTER__*``).

``SAFEHUB_SIS_ROSTER__SOURCES`` is a JSON list; each source is one SIS export of one
district: a OneRoster CSV package dropped at ``path`` (zip or folder) or a OneRoster REST
provider (``rest``), synced every ``interval_s``, optionally with an emergency-contact /
custody feed CSV at ``custody_path`` (columns in :mod:`connectors.sis_roster.custody`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from connectors.sis_roster.rest_client import OneRosterRestSettings
from safehub.kernel.settings import HubSettings


class RosterSource(BaseModel):
    """One SIS feed of one district."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="source id (roster_source)")
    district: str = Field(min_length=1, description="the district these people belong to")
    state: str = Field(default="US-TX", description="ISO 3166-2 code of the state agency")
    kind: Literal["csv", "rest"] = "csv"
    path: Path | None = Field(default=None, description="csv: the package (zip or folder)")
    rest: OneRosterRestSettings | None = Field(default=None, description="rest: the provider")
    custody_path: Path | None = Field(default=None, description="emergency-contact feed CSV")
    interval_s: float = Field(default=8 * 3600.0, gt=0, description="schedule interval")
    full_sync_interval_s: float | None = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description=(
            "rest: a scheduled sync is a full listing (removing what the provider no longer "
            "lists) once this long after the last full one; deltas in between; null: never"
        ),
    )
    schools: dict[str, str] = Field(
        default_factory=dict,
        description="OneRoster org sourcedId → directory school id (absent: the sourcedId)",
    )

    @model_validator(mode="after")
    def _kind_has_its_settings(self) -> RosterSource:
        if self.kind == "csv" and self.path is None:
            raise ValueError("a csv source needs path")
        if self.kind == "rest" and self.rest is None:
            raise ValueError("a rest source needs rest settings")
        return self


class SisRosterConfig(BaseModel):
    """The sources, the state database and the import's pacing."""

    sources: list[RosterSource] = Field(default_factory=list)
    state_url: str = Field(
        default="sqlite:///var/run/sis_roster.sqlite3",
        description="SQLAlchemy URL of the sync state (SQLite file or PostgreSQL)",
    )
    checkpoint_rows: int = Field(
        default=1000, ge=1, le=100_000, description="rows between state checkpoints"
    )
    progress_every: int = Field(default=10_000, ge=1, description="log counts every N rows")
    lease_ttl_s: float = Field(
        default=120.0,
        ge=0.5,
        description=(
            "a run's lease on its source lasts this long unless renewed (every third of it); "
            "after a crash the source is free again within this time"
        ),
    )
    #: Test hook: exit the process (as a crash would) right after this many rows were applied.
    crash_after_rows: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _unique_names(self) -> SisRosterConfig:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError("source names must be unique")
        return self

    def source(self, name: str) -> RosterSource:
        """The source called ``name`` (KeyError if none)."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


class SisRosterSettings(HubSettings):
    """Hub settings plus the ``sis_roster`` section."""

    sis_roster: SisRosterConfig = Field(default_factory=SisRosterConfig)
