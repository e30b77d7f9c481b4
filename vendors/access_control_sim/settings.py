"""Settings of the access-control simulator (``SAFEHUB_ACCESS_CONTROL_SIM__*``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from safehub.kernel.settings import HubSettings
from safehub.sdk.client import ConnectorClientConfig


class AccessControlSimSection(ConnectorClientConfig):
    """The connector's identity and gateway (see the base), and how its doors behave."""

    section: ClassVar[str] = "ACCESS_CONTROL_SIM"

    client_id: str = Field(
        default="acme-access-north", description="client certificate CN and connector id"
    )
    vendor: str = "SafeHub access-control simulator"
    report_delay_ms: int = Field(default=50, ge=0, le=60_000, description="lock/unlock time")
    jammed_doors: list[str] = Field(
        default_factory=list, description="door ids that never reach a commanded state"
    )


class AccessControlSimSettings(HubSettings):
    """The simulator's settings."""

    access_control_sim: AccessControlSimSection = Field(default_factory=AccessControlSimSection)
