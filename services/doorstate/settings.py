"""Settings of the doorstate service (``SAFEHUB_DOORSTATE__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from safehub.kernel.directory import default_directory_file
from safehub.kernel.settings import HubSettings, directory_ready_field


class DoorstateSection(BaseModel):
    """Lockdown confirmation policy and the query API."""

    directory_file: Path = Field(default_factory=default_directory_file)
    directory_ready_s: float = directory_ready_field(10.0)
    confirm_deadline_s: float = Field(
        default=30.0, gt=0, le=3600, description="time doors have to confirm a lock command"
    )
    check_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="how often deadlines are checked"
    )
    retention_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86_400,
        description="how long a finished command is kept (duplicates of it stay no-ops)",
    )
    web_port: int | None = Field(
        default=6066, ge=0, le=65_535, description="query API port; 0 picks a free one"
    )
    web_bind: str = "127.0.0.1"
    web_host: str | None = Field(
        default=None, description="name other workers reach this one by (default: bind address)"
    )
    data_dir: Path | None = Field(
        default=None, description="faust's data directory (default: under the temp directory)"
    )


class DoorstateSettings(HubSettings):
    """Everything the doorstate service reads from the environment."""

    service_name: str = "doorstate"
    doorstate: DoorstateSection = Field(default_factory=DoorstateSection)
