"""Settings of the incidents service (``SAFEHUB_INCIDENTS__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from safehub.kernel.directory import default_directory_file
from safehub.kernel.settings import HubSettings


class IncidentsSection(BaseModel):
    """Correlation and dispatch policy."""

    directory_file: Path = Field(default_factory=default_directory_file)
    correlation_window_s: float = Field(default=600.0, gt=0, le=86_400)
    cancel_window_s: float = Field(default=120.0, ge=0, le=3600)
    camera_min_confidence: float = Field(default=0.6, ge=0, le=1)
    alerts_fetch_wait_ms: int = Field(default=10, ge=1, le=500)
    doors_fetch_wait_ms: int = Field(default=50, ge=1, le=1000)


class IncidentsSettings(HubSettings):
    """Everything the incidents service reads from the environment."""

    service_name: str = "incidents"
    incidents: IncidentsSection = Field(default_factory=IncidentsSection)
