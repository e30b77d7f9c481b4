"""Settings of the PA / signage simulator (``SAFEHUB_PA_SIGNAGE_SIM__*``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from safehub.kernel.settings import HubSettings
from safehub.sdk.client import ConnectorClientConfig

Output = Literal["PA_ANNOUNCEMENT", "INTERCOM", "SIGNAGE"]


def _default_outputs() -> list[Output]:
    return ["PA_ANNOUNCEMENT", "SIGNAGE"]


class PaSignageSimSection(ConnectorClientConfig):
    """The connector's identity and gateway (see the base), and how its endpoints behave."""

    section: ClassVar[str] = "PA_SIGNAGE_SIM"

    client_id: str = Field(
        default="pa-signage-north", description="client certificate CN and connector id"
    )
    vendor: str = "SafeHub PA and signage simulator"
    outputs: list[Output] = Field(
        default_factory=_default_outputs,
        min_length=1,
        description="announcement capabilities declared; one endpoint per school and output",
    )
    play_delay_ms: int = Field(default=50, ge=0, le=60_000, description="time to play or show")
    failing_endpoints: list[str] = Field(
        default_factory=list,
        description="endpoint ids (<school>/<output>, e.g. sch-lincoln-hs/pa) that fail",
    )
    played_file: Path | None = Field(
        default=None, description="append every played announcement here as a JSON line"
    )


class PaSignageSimSettings(HubSettings):
    """The simulator's settings."""

    pa_signage_sim: PaSignageSimSection = Field(default_factory=PaSignageSimSection)
