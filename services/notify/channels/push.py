"""App push through a webhook: one JSON POST per message to the push gateway.

Body: ``{"delivery_id", "notification_id", "recipient_id", "token", "title", "body",
"language", "exercise", "ack_url"}`` (the app's acknowledge button opens ``ack_url``).
2xx is acceptance (the gateway's ``id`` if it answers one); 429, 5xx and transport failures
are transient; other 4xx a refusal. The device token is never logged.
"""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from pydantic import SecretStr

from safehub.kernel.lifecycle import Closing
from services.notify.channels.base import ChannelError, OutboundMessage, SendResult

log = structlog.get_logger(__name__)


class WebhookPushAdapter(Closing):
    """Channel "PUSH"."""

    channel = "PUSH"

    def __init__(
        self,
        url: str,
        *,
        token: SecretStr | None = None,
        timeout_s: float = 10.0,
        max_connections: int = 8,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if token is not None and token.get_secret_value():
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self._url = url
        self._client = httpx.Client(
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        # A client span (and traceparent) per webhook call, like every outbound HTTP call.
        HTTPXClientInstrumentor.instrument_client(self._client)

    def send(self, message: OutboundMessage) -> SendResult:
        """POST the message to the webhook."""
        payload = {
            "delivery_id": message.delivery_id,
            "notification_id": message.notification_id,
            "recipient_id": message.recipient_id,
            "token": message.address,
            "title": message.subject,
            "body": message.text,
            "language": message.language,
            "exercise": message.exercise,
            "ack_url": message.ack_url,
        }
        try:
            response = self._client.post(self._url, json=payload)
        except httpx.HTTPError as exc:
            raise ChannelError(f"push gateway unreachable: {type(exc).__name__}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise ChannelError(f"push gateway answered HTTP {response.status_code}")
        if response.is_success:
            return SendResult(accepted=True, provider_message_id=_id(response, message))
        reason = f"push gateway refused: HTTP {response.status_code}"
        log.warning("push refused", delivery_id=message.delivery_id, reason=reason)
        return SendResult(accepted=False, provider_message_id=None, error=reason)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _id(response: httpx.Response, message: OutboundMessage) -> str:
    try:
        data: Any = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]:
        return str(data["id"])
    return message.delivery_id
