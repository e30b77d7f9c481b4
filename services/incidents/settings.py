"""Settings of the incidents service (``SAFEHUB_INCIDENTS__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from safehub.kernel.directory import default_directory_file
from safehub.kernel.settings import HubSettings, directory_ready_field


class IncidentsSection(BaseModel):
    """Correlation and dispatch policy, and how fast a dead worker's signals move on."""

    directory_file: Path = Field(default_factory=default_directory_file)
    directory_ready_s: float = directory_ready_field(10.0)
    correlation_window_s: float = Field(default=600.0, gt=0, le=86_400)
    cancel_window_s: float = Field(default=120.0, ge=0, le=3600)
    camera_min_confidence: float = Field(default=0.6, ge=0, le=1)
    alerts_fetch_wait_ms: int = Field(default=10, ge=1, le=500)
    doors_fetch_wait_ms: int = Field(default=50, ge=1, le=1000)
    # The incidents groups (alerts, doors) use their own, short session: after a kill -9
    # the broker hands the dead worker's partitions to its replacement only once the dead
    # member's session expired, and every panic of those schools waits that long. The
    # kernel default (SAFEHUB_KAFKA__SESSION_TIMEOUT_MS, 6 s) is right for bulk consumers;
    # on the 911 path 2.5 s (tansu joins take about session/2, BROKER.md) keeps a takeover
    # well inside 5 s. Not below 1.5 s: on a saturated box a live worker whose heartbeat
    # thread is starved that long would be evicted and its partitions moved for nothing.
    group_session_timeout_ms: int = Field(default=2500, ge=1500, le=30_000)
    group_heartbeat_interval_ms: int = Field(default=400, ge=100, le=10_000)

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> IncidentsSection:
        # Kafka's rule of thumb: at least three heartbeats per session, so one lost or late
        # heartbeat never costs a live worker its partitions.
        if self.group_heartbeat_interval_ms * 3 > self.group_session_timeout_ms:
            raise ValueError(
                "SAFEHUB_INCIDENTS__GROUP_HEARTBEAT_INTERVAL_MS must be at most a third of "
                "SAFEHUB_INCIDENTS__GROUP_SESSION_TIMEOUT_MS (three heartbeats per session)"
            )
        return self

    def group_config(self) -> dict[str, int]:
        """librdkafka settings of the incidents consumer groups (session and heartbeat)."""
        return {
            "session.timeout.ms": self.group_session_timeout_ms,
            "heartbeat.interval.ms": self.group_heartbeat_interval_ms,
        }


class IncidentsSettings(HubSettings):
    """Everything the incidents service reads from the environment."""

    service_name: str = "incidents"
    incidents: IncidentsSection = Field(default_factory=IncidentsSection)
