"""Twilio's webhook side: request signing, status callbacks, inbound SMS, Gather, TwiML.

Twilio (and the provider simulator) POSTs form-encoded webhooks signed with
``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, URL + every POST parameter sorted by
name, each as name + value)). The URL is the one Twilio called, exactly (scheme, host,
port, path, query): behind a proxy, check against the public URL, not the local one.

Status callbacks (``MessageSid``/``MessageStatus`` or ``CallSid``/``CallStatus``) map to
SafeHub ``DeliveryStatus`` symbols; an inbound SMS (``MessageSid``, ``From``, ``Body``) is a
possible reply "1"; a ``<Gather>`` action carries the ``Digits`` the callee pressed.
Phone numbers are PII: nothing here logs them or puts them in an error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

from safehub.kernel.errors import SafeHubError

#: Where notify's web server takes Twilio's requests (relative to its public URL).
STATUS_PATH = "/providers/twilio/status"
INBOUND_PATH = "/providers/twilio/inbound"
VOICE_ACK_PATH = "/providers/twilio/voice-ack"
#: The query parameter of VOICE_ACK_PATH naming the delivery a keypress acknowledges.
VOICE_ACK_DELIVERY_PARAM = "d"
SIGNATURE_HEADER = "X-Twilio-Signature"
#: The key the callee presses to acknowledge a voice message.
ACK_DIGIT = "1"
#: What Twilio's webhooks are: form-encoded, UTF-8, a few hundred bytes, a few dozen fields.
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MAX_WEBHOOK_BYTES = 64 * 1024
MAX_WEBHOOK_FIELDS = 200

#: Meanings of the Twilio error codes SafeHub meets (REST answers and status callbacks).
ERROR_MEANINGS: dict[str, str] = {
    "12100": "Document parse failure",
    "20003": "Authentication failed",
    "20404": "Resource not found",
    "20429": "Too many requests",
    "20500": "Internal server error",
    "20503": "Service unavailable",
    "21201": "No 'To' number specified",
    "21205": "Url parameter is required",
    "21210": "'From' phone number not verified",
    "21211": "Invalid 'To' Phone Number",
    "21212": "Invalid 'From' Phone Number",
    "21213": "'From' phone number is required",
    "21602": "Message body is required",
    "21603": "'From' phone number is required",
    "21604": "'To' phone number is required",
    "21609": "Invalid StatusCallback",
    "21610": "Recipient unsubscribed (replied STOP)",
    "21614": "'To' number is not a valid mobile number",
    "21617": "Message body exceeds the 1600 character limit",
    "30001": "Queue overflow",
    "30002": "Account suspended",
    "30003": "Unreachable destination handset",
    "30004": "Message blocked",
    "30005": "Unknown destination handset",
    "30006": "Landline or unreachable carrier",
    "30007": "Message filtered by the carrier",
    "30008": "Unknown error",
    "30009": "Missing segment",
    "30010": "Message price exceeds max price",
}

_MESSAGE_STATUS = {
    "accepted": "QUEUED",
    "scheduled": "QUEUED",
    "queued": "QUEUED",
    "sending": "SENT",
    "sent": "SENT",
    "delivered": "DELIVERED",
    "read": "DELIVERED",
    "undelivered": "FAILED",
    "failed": "FAILED",
    "canceled": "FAILED",
}
_CALL_STATUS = {
    "queued": "QUEUED",
    "initiated": "SENT",
    "ringing": "SENT",
    "in-progress": "SENT",
    "completed": "DELIVERED",
    "busy": "FAILED",
    "no-answer": "FAILED",
    "failed": "FAILED",
    "canceled": "FAILED",
}
_CALL_FAILURES = {
    "busy": "call busy",
    "no-answer": "call not answered",
    "failed": "call failed",
    "canceled": "call canceled",
}

#: Amazon Polly voices Twilio offers per language (``<Say voice=...>``).
_VOICES = {"en-US": "Polly.Joanna", "es-US": "Polly.Lupe"}
#: Seconds the callee has to press a key after the message (Twilio's default is 5).
GATHER_TIMEOUT_S = 10


class TwilioRequestError(SafeHubError):
    """A webhook from the provider lacks a parameter or carries an unknown value."""


@dataclass(frozen=True)
class ProviderStatus:
    """A status callback, mapped to a SafeHub ``DeliveryStatus`` symbol."""

    provider_message_id: str  # MessageSid "SM..." or CallSid "CA..."
    status: str  # "QUEUED", "SENT", "DELIVERED" or "FAILED"
    error: str | None  # e.g. "30003 Unreachable destination handset"; no PII
    provider_status: str = ""  # Twilio's own word (e.g. "undelivered", "no-answer")


@dataclass(frozen=True)
class InboundReply:
    """An SMS the recipient sent back."""

    from_number: str  # PII: never log it
    body: str
    provider_message_id: str

    @property
    def acknowledges(self) -> bool:
        """Whether the reply is "1" (surrounding blanks ignored)."""
        return self.body.strip() == ACK_DIGIT


@dataclass(frozen=True)
class GatherInput:
    """Keys pressed during a voice message's ``<Gather>``."""

    provider_message_id: str  # CallSid
    digits: str

    @property
    def acknowledged(self) -> bool:
        """Whether the callee pressed 1."""
        return self.digits == ACK_DIGIT


def sign(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The ``X-Twilio-Signature`` of a form POST of ``params`` to ``url``."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def validate_signature(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """Whether ``signature`` is Twilio's for this URL and these form parameters.

    Like Twilio's own helper libraries, the URL is also tried with and without the
    scheme's default port, since proxies add or drop it. A missing signature is invalid.
    """
    if not signature or not auth_token:
        return False
    return any(
        hmac.compare_digest(sign(auth_token, candidate, params), signature)
        for candidate in _url_variants(url)
    )


def _url_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    variants = [url]
    if default_port is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default_port}")))
    elif parts.port == default_port:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return variants


def parse_form(raw: bytes, content_type: str | None) -> dict[str, str]:
    """The parameters of a webhook body, decoded strictly (a repeated name: the last value).

    Raises TwilioRequestError with a short reason for anything Twilio would not send: not
    form-encoded, too large, not UTF-8, a field without ``=``. Neither the reason nor the
    error's context carries the body (it holds phone numbers and message text).
    """
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != FORM_MEDIA_TYPE:
        raise TwilioRequestError(f"the body must be {FORM_MEDIA_TYPE}")
    if len(raw) > MAX_WEBHOOK_BYTES:
        raise TwilioRequestError(f"the body is larger than {MAX_WEBHOOK_BYTES} bytes")
    reason = None
    pairs: list[tuple[str, str]] = []
    # The reason is raised after the except blocks, so no error chains back to the bytes.
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_WEBHOOK_FIELDS,
        )
    except UnicodeDecodeError:
        reason = "the body is not UTF-8 form data"
    except ValueError:
        reason = f"the body is not form data (name=value pairs, at most {MAX_WEBHOOK_FIELDS})"
    if reason is not None:
        raise TwilioRequestError(reason)
    return dict(pairs)


def parse_status_callback(params: Mapping[str, str]) -> ProviderStatus:
    """A message or call status callback; raises TwilioRequestError if it is neither."""
    if "MessageSid" in params or "MessageStatus" in params:
        sid = _required(params, "MessageSid")
        twilio_status = _required(params, "MessageStatus")
        status = _MESSAGE_STATUS.get(twilio_status)
        if status is None:
            raise TwilioRequestError(f"unknown MessageStatus {twilio_status!r}")
        error = describe_error(params.get("ErrorCode")) if status == "FAILED" else None
        if status == "FAILED" and error is None:
            error = f"message {twilio_status}"
        return ProviderStatus(sid, status, error, twilio_status)
    if "CallSid" in params or "CallStatus" in params:
        sid = _required(params, "CallSid")
        twilio_status = _required(params, "CallStatus")
        status = _CALL_STATUS.get(twilio_status)
        if status is None:
            raise TwilioRequestError(f"unknown CallStatus {twilio_status!r}")
        error = None
        if status == "FAILED":
            error = describe_error(params.get("ErrorCode")) or _CALL_FAILURES[twilio_status]
        return ProviderStatus(sid, status, error, twilio_status)
    raise TwilioRequestError("not a status callback: neither MessageSid nor CallSid")


def parse_inbound_sms(params: Mapping[str, str]) -> InboundReply:
    """An inbound SMS webhook; raises TwilioRequestError naming a missing parameter."""
    return InboundReply(
        from_number=_required(params, "From"),
        body=params.get("Body", ""),
        provider_message_id=_required(params, "MessageSid"),
    )


def parse_gather(params: Mapping[str, str]) -> GatherInput:
    """A ``<Gather>`` action request (``Digits`` is empty when nothing was pressed)."""
    return GatherInput(
        provider_message_id=_required(params, "CallSid"), digits=params.get("Digits", "")
    )


def describe_error(code: str | int | None) -> str | None:
    """``"<code> <meaning>"`` for a Twilio error code; None when there is no code."""
    if code is None or str(code).strip() in ("", "0"):
        return None
    text = str(code).strip()
    return f"{text} {ERROR_MEANINGS.get(text, 'Twilio error')}"


def twiml_say(text: str, language: str, gather_ack_url: str | None) -> str:
    """Voice TwiML reading ``text`` (twice); with ``gather_ack_url`` pressing a key posts there.

    The ``<Gather>`` wraps the message so the callee can press 1 while it is being read.
    """
    say = _say(text, language, loop=2)
    if gather_ack_url is None:
        return f'<?xml version="1.0" encoding="UTF-8"?><Response>{say}</Response>'
    gather = (
        f'<Gather input="dtmf" numDigits="1" timeout="{GATHER_TIMEOUT_S}" method="POST"'
        f" action={quoteattr(gather_ack_url)}>{say}</Gather>"
    )
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{gather}</Response>'


def twiml_reply(text: str, language: str) -> str:
    """Voice TwiML answering a ``<Gather>`` action: say ``text``, then hang up."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Response>{_say(text, language, loop=1)}'
        "<Hangup/></Response>"
    )


def twiml_message(text: str | None) -> str:
    """Messaging TwiML answering an inbound SMS: reply ``text``, or nothing when None."""
    if text is None:
        return '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Response><Message>{escape(text)}</Message>'
        "</Response>"
    )


def _say(text: str, language: str, *, loop: int) -> str:
    voice = _VOICES.get(language, _VOICES["en-US"])
    language = language if language in _VOICES else "en-US"
    return (
        f"<Say voice={quoteattr(voice)} language={quoteattr(language)} "
        f'loop="{loop}">{escape(text)}</Say>'
    )


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise TwilioRequestError(f"the provider's request has no {name}")
    return value
