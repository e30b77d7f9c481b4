"""One interface for every notification channel (email, SMS, voice, push, PA, signage).

Adapters are blocking and thread-safe; the dispatcher calls them from worker threads.
Addresses are contact details (PII): adapters never log them or put them in errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from safehub.kernel.errors import SafeHubError


class ChannelError(SafeHubError):
    """A transient transport failure (connection refused, timeout, 5xx): retried with backoff."""


@dataclass(frozen=True)
class OutboundMessage:
    """One message to one recipient on one channel (one attempt)."""

    delivery_id: str  # unique per (notification, recipient, channel, attempt); idempotency key
    notification_id: str
    recipient_id: str
    address: str  # email / E.164 phone / push token / endpoint id. PII: never log it.
    subject: str  # short headline (email subject, push title); "DRILL - " prefixed for drills
    text: str  # full plain text in the recipient's language, incl. ack instructions
    language: str  # BCP 47, "en-US" or "es-US"
    ack_url: str | None  # link that acknowledges (email link, push button)
    exercise: bool  # a drill: every message says so


@dataclass(frozen=True)
class SendResult:
    """What the provider answered for one message."""

    accepted: bool  # the provider took the message (SMTP 250, HTTP 201, ...)
    provider_message_id: str | None  # e.g. Twilio "SM..." sid, SMTP Message-ID
    error: str | None = None  # provider's reason when not accepted (code + text, no PII)
    delivered: bool = False  # True if acceptance already means delivered (no callback comes)


class ChannelAdapter(Protocol):
    """A channel: sends one message, blocking; a definitive refusal is ``accepted=False``."""

    channel: str  # safehub.common.Channel symbol: "SMS","VOICE","EMAIL","PUSH",...

    def send(self, message: OutboundMessage) -> SendResult:
        """Send one message; raise ChannelError only for transient transport failures."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
