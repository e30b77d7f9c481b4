"""SMS and voice through a Twilio-compatible REST API (Twilio itself or the provider simulator).

A pool of keep-alive ``httpx.Client``s (one connection each, one per concurrent sender:
threads sharing one client's pool queue on its lock), HTTP Basic auth (account SID : auth
token), form-encoded requests, instrumented so every call to the provider is a client span::

    POST {api}/2010-04-01/Accounts/{AccountSid}/Messages.json   To, From, Body, StatusCallback
    POST {api}/2010-04-01/Accounts/{AccountSid}/Calls.json      To, From, Twiml, StatusCallback

201 with a ``sid`` is acceptance (delivery is reported later to the status callback); a
4xx with Twilio's error JSON (``{"code": 21211, ...}``) is a definitive refusal,
``SendResult(accepted=False, error="21211 Invalid 'To' Phone Number")``; 429, 5xx and
transport failures raise :class:`ChannelError` so the dispatcher retries. Errors carry our
own wording of the code, never the provider's message (it quotes the phone number).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from pydantic import BaseModel, Field, SecretStr

from safehub.kernel.errors import ConfigError
from safehub.kernel.lifecycle import Closing
from safehub.standards.twilio import VOICE_ACK_DELIVERY_PARAM, describe_error, twiml_say
from services.notify.channels.base import ChannelError, OutboundMessage, SendResult

log = structlog.get_logger(__name__)

API_VERSION = "2010-04-01"
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
#: Twilio refuses longer bodies (21617); an alert is better cut than not sent.
MAX_SMS_CHARS = 1600
#: Twilio's limit on an inline ``Twiml`` parameter.
MAX_TWIML_CHARS = 4000


class TwilioConfig(BaseModel):
    """Where the Twilio-compatible API is and the account to use (embeddable in settings)."""

    api_base_url: str = Field(
        default="https://api.twilio.com",
        description="Twilio's API, or the provider simulator (http://127.0.0.1:<port>)",
    )
    account_sid: str = Field(
        default="ACsafehub0000000000000000000000000", pattern=r"^AC[0-9A-Za-z]{32}$"
    )
    auth_token: SecretStr = Field(
        default=SecretStr(""), description="the account's auth token (also signs callbacks)"
    )
    from_number: str = Field(default="+15550009999", pattern=E164_PATTERN)
    voice_from_number: str | None = Field(
        default=None, pattern=E164_PATTERN, description="caller id of voice calls (from_number)"
    )
    ca_bundle: Path | None = Field(default=None, description="CA bundle for the API's TLS")
    connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    request_timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_connections: int = Field(default=16, ge=1, le=1000)


class _TwilioClient(Closing):
    """Creates Message and Call resources; maps answers to SendResult or ChannelError."""

    def __init__(self, config: TwilioConfig) -> None:
        token = config.auth_token.get_secret_value()
        if not token:
            raise ConfigError("the Twilio auth token is empty (set the provider's auth token)")
        self._config = config
        self._auth = httpx.BasicAuth(config.account_sid, token)
        self._account_path = f"/{API_VERSION}/Accounts/{config.account_sid}"
        # httpcore's pool checks every connection under one lock per request: with a dozen
        # sender threads they queue there, not at the provider. One client per sender.
        self._idle: queue.LifoQueue[httpx.Client] = queue.LifoQueue()
        self._clients: list[httpx.Client] = []
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._lock = threading.Lock()

    def _new_client(self) -> httpx.Client:
        config = self._config
        client = httpx.Client(
            base_url=config.api_base_url.rstrip("/"),
            auth=self._auth,
            headers={"Accept": "application/json"},
            timeout=httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=str(config.ca_bundle) if config.ca_bundle else True,
        )
        HTTPXClientInstrumentor.instrument_client(client)
        with self._lock:
            self._clients.append(client)
        return client

    def _post(self, path: str, form: dict[str, str]) -> httpx.Response:
        with self._slots:
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                client = self._new_client()
            try:
                return client.post(path, data=form)
            finally:
                self._idle.put(client)

    def create(self, resource: str, form: dict[str, str], *, delivery_id: str) -> SendResult:
        """POST ``form`` to ``{resource}.json``; see the module docstring for the mapping."""
        path = f"{self._account_path}/{resource}.json"
        try:
            response = self._post(path, form)
        except httpx.HTTPError as exc:
            log.warning(
                "provider unreachable",
                resource=resource,
                delivery_id=delivery_id,
                reason=type(exc).__name__,
            )
            raise ChannelError(f"provider unreachable: {type(exc).__name__}") from exc
        data = _json_object(response)
        code = data.get("code")
        if response.status_code in (200, 201):
            sid = data.get("sid")
            if isinstance(sid, str) and sid:
                return SendResult(accepted=True, provider_message_id=sid)
            return self._refused(resource, delivery_id, "provider accepted without a sid")
        if response.status_code == 429 or response.status_code >= 500:
            reason = describe_error(code) or f"HTTP {response.status_code}"
            log.warning(
                "provider busy or failing",
                resource=resource,
                delivery_id=delivery_id,
                status_code=response.status_code,
                reason=reason,
            )
            raise ChannelError(f"provider answered HTTP {response.status_code}: {reason}")
        if 400 <= response.status_code < 500:
            reason = describe_error(code) or f"HTTP {response.status_code}"
            if response.status_code == 401:
                log.error("provider rejected the account credentials", delivery_id=delivery_id)
            return self._refused(resource, delivery_id, reason)
        raise ChannelError(f"provider answered unexpected HTTP {response.status_code}")

    @staticmethod
    def _refused(resource: str, delivery_id: str, reason: str) -> SendResult:
        log.warning("provider refused", resource=resource, delivery_id=delivery_id, reason=reason)
        return SendResult(accepted=False, provider_message_id=None, error=reason)

    def close(self) -> None:
        """Close every client's connection."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


class TwilioSmsAdapter(Closing):
    """Channel "SMS": one Twilio Message per OutboundMessage; delivery via status callback."""

    channel = "SMS"

    def __init__(self, config: TwilioConfig, *, status_callback_url: str | None) -> None:
        self._from = config.from_number
        self._status_callback_url = status_callback_url
        self._client = _TwilioClient(config)

    def send(self, message: OutboundMessage) -> SendResult:
        """Create the Message; raises ChannelError on transient failures."""
        body = message.text
        if len(body) > MAX_SMS_CHARS:
            log.warning("SMS body cut to the provider's limit", delivery_id=message.delivery_id)
            body = body[: MAX_SMS_CHARS - 1] + "…"
        form = {"To": message.address, "From": self._from, "Body": body}
        if self._status_callback_url:
            form["StatusCallback"] = self._status_callback_url
        return self._client.create("Messages", form, delivery_id=message.delivery_id)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class TwilioVoiceAdapter(Closing):
    """Channel "VOICE": a Call reading the text; pressing 1 posts to the ack action URL.

    ``ack_action_url`` is notify's Gather action endpoint; the delivery id is added as the
    ``d`` query parameter so the keypress names the delivery it acknowledges.
    """

    channel = "VOICE"

    def __init__(
        self,
        config: TwilioConfig,
        *,
        status_callback_url: str | None,
        ack_action_url: str | None,
    ) -> None:
        self._from = config.voice_from_number or config.from_number
        self._status_callback_url = status_callback_url
        self._ack_action_url = ack_action_url
        self._client = _TwilioClient(config)

    def ack_url_for(self, delivery_id: str) -> str | None:
        """The Gather action URL of one delivery."""
        if self._ack_action_url is None:
            return None
        separator = "&" if "?" in self._ack_action_url else "?"
        query = urlencode({VOICE_ACK_DELIVERY_PARAM: delivery_id})
        return f"{self._ack_action_url}{separator}{query}"

    def send(self, message: OutboundMessage) -> SendResult:
        """Place the Call; raises ChannelError on transient failures."""
        twiml = twiml_say(message.text, message.language, self.ack_url_for(message.delivery_id))
        if len(twiml) > MAX_TWIML_CHARS:
            return SendResult(
                accepted=False,
                provider_message_id=None,
                error=f"voice text too long ({len(twiml)} > {MAX_TWIML_CHARS} TwiML characters)",
            )
        form = {"To": message.address, "From": self._from, "Twiml": twiml}
        if self._status_callback_url:
            form["StatusCallback"] = self._status_callback_url
        return self._client.create("Calls", form, delivery_id=message.delivery_id)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data: Any = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
