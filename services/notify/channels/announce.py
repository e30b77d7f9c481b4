"""PA/intercom and digital signage: AnnouncementCommand events on the announcements topic.

The gateway hands each command to the connectors attached for the school over the gRPC
connector stream and publishes their CommandResults as DeliveryReceipts (so acceptance
here is SENT, not DELIVERED). The command id is the delivery id: connectors execute it at
most once, so a re-sent command is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from safehub.contracts.names import EventType
from safehub.kernel.envelope import new_event, now
from safehub.kernel.errors import BusError
from services.notify.channels.base import ChannelError, OutboundMessage, SendResult

#: How long a connector may still play a command it received late.
ANNOUNCEMENT_TTL = timedelta(minutes=30)
#: A PA repeats a life-safety announcement; a sign shows it once (until replaced).
REPEAT = {"PUBLIC_ADDRESS": 3, "DIGITAL_SIGNAGE": 1}


@dataclass(frozen=True)
class AnnouncementContext:
    """What the event needs beyond the message: tenant, place, incident, SRP action."""

    tenant: dict[str, str | None]
    building: str | None
    incident_id: str | None
    causation_id: str | None
    srp_action: str | None


class AnnouncementAdapter:
    """Channel PUBLIC_ADDRESS or DIGITAL_SIGNAGE (one adapter per channel)."""

    def __init__(
        self,
        channel: str,
        publish: Callable[[dict[str, Any]], Any],
        context: Callable[[str], AnnouncementContext],
    ) -> None:
        self.channel = channel
        self._publish = publish
        self._context = context

    def send(self, message: OutboundMessage) -> SendResult:
        """Publish the command (confirmed by the broker)."""
        context = self._context(message.notification_id)
        event = new_event(
            EventType.ANNOUNCEMENT_COMMAND,
            source="notify",
            tenant=context.tenant,
            building=context.building,
            incident_id=context.incident_id,
            causation_id=context.causation_id,
            exercise=message.exercise,
            event_id=message.delivery_id,
            payload={
                "command_id": message.delivery_id,
                "notification_id": message.notification_id,
                "recipient_id": message.recipient_id,
                "channel": self.channel,
                "srp_action": context.srp_action,
                "text": message.text,
                "language": message.language,
                "repeat": REPEAT.get(self.channel, 1),
                "expires_at": now() + ANNOUNCEMENT_TTL,
            },
        )
        try:
            self._publish(event)
        except BusError as exc:
            raise ChannelError(f"announcement not published: {exc}") from exc
        return SendResult(accepted=True, provider_message_id=message.delivery_id)

    def close(self) -> None:
        """Nothing to release (the runtime owns the producer)."""
