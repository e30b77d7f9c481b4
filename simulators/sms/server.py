"""A simulator of Twilio's Programmable Messaging and Voice APIs, for tests and the demo.

It stands in for the SMS/voice provider and speaks Twilio's wire format, so any HTTP client
written for Twilio works against it (only the base URL differs).

REST API (HTTP Basic auth ``AccountSid:AuthToken``; form-encoded requests; JSON answers)::

    POST /2010-04-01/Accounts/{AccountSid}/Messages.json    To, From, Body, StatusCallback
         201 Message resource {"sid": "SM…", "status": "queued", …}
    GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json
    POST /2010-04-01/Accounts/{AccountSid}/Calls.json       To, From, Twiml | Url, StatusCallback
         201 Call resource {"sid": "CA…", "status": "queued", …}
    GET  /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json

    errors: {"code": N, "message": …, "more_info": "https://www.twilio.com/docs/errors/N",
    "status": S} — 20003 (401, bad credentials), 20404 (404), 21604/21201 (no To), 21211
    (To not E.164), 21603/21213 (no From), 21212, 21602 (no Body), 21617 (Body > 1600),
    21205 (no Url/Twiml), 21609 (bad StatusCallback), 20429 (429, over the configured rate),
    20503 (503, while "down").

Webhooks (form-encoded POSTs signed with ``X-Twilio-Signature`` by the account's token):

- message status callbacks to ``StatusCallback``: ``sent`` then ``delivered`` (or the
  scripted ``undelivered``/``failed`` with ``ErrorCode``), with MessageSid, MessageStatus,
  SmsSid, SmsStatus, AccountSid, From, To, ApiVersion;
- calls: answered (``in-progress``) unless scripted ``busy``/``no-answer``/``failed``/
  ``canceled``; the TwiML is the ``Twiml`` parameter or fetched from ``Url``; a ``<Gather>``
  waits ``timeout`` seconds for ``/_sim/press``, which POSTs ``Digits`` to its ``action``;
  then the ``completed`` (or scripted) status goes to ``StatusCallback`` with CallSid,
  CallStatus, CallDuration, AccountSid, From, To, Direction, ApiVersion;
- inbound SMS (``/_sim/reply``) to the account's inbound URL: MessageSid, SmsSid, AccountSid,
  From, To, Body, NumMedia, NumSegments, SmsStatus=received, ApiVersion.

Control API (the simulator's own state; no auth; for tests and the demo)::

    POST /_sim/script  {"number": "+1555…", "outcome": "undelivered", "error_code": 30003,
                        "delay_ms": 0}   outcome: delivered|sent|undelivered|failed (SMS),
                        completed|busy|no-answer|failed|canceled (voice); "clear": true removes
    POST /_sim/reply   {"from": "+1…", "body": "1", "to": optional, "account_sid": optional}
                        → {"message_sid", "http_status", "response"} of the inbound webhook
    POST /_sim/press   {"call_sid": "CA…", "digits": "1"} → {"http_status", "response"}
    POST /_sim/config  {"account_sid", "auth_token", "inbound_url", "callback_delay_ms",
                        "max_requests_per_s", "down"} (all optional; a new account_sid with
                        an auth_token adds an account)
    POST /_sim/reset   forget messages, calls and scripts
    GET  /_sim/messages[?to=…]   GET /_sim/calls[?to=…]

Run: ``python -m simulators.sms --port 8790 [--port-file F] [--account-sid AC…
--auth-token T] [--inbound-url URL] [--callback-ca PEM]`` (the token may instead come from
``SAFEHUB_SIM_TWILIO_AUTH_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import re
import ssl
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import structlog
from aiohttp import web

from safehub.kernel.errors import SafeHubError
from safehub.kernel.http_server import serve_until_signalled
from safehub.kernel.logging import configure_logging
from safehub.kernel.settings import ListenSettings

log = structlog.get_logger(__name__)

#: Twilio signs every callback; written here from Twilio's documentation rather than shared
#: with notify's client, so a mistake in notify's check is caught instead of mirrored.
SIGNATURE_HEADER = "X-Twilio-Signature"


def sign(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Twilio's ``X-Twilio-Signature``: HMAC-SHA1 of the URL and the sorted form fields."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "ACsafehub0000000000000000000000000"
DEFAULT_PORT = 8790
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
MAX_BODY_CHARS = 1600
#: Twilio waits 15 s for a webhook to answer.
WEBHOOK_TIMEOUT_S = 15.0
SMS_OUTCOMES = frozenset({"delivered", "sent", "undelivered", "failed"})
CALL_OUTCOMES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
DEFAULT_ERROR_CODES = {"undelivered": 30003, "failed": 30008}


class TwilioApiError(SafeHubError):
    """An error answer in Twilio's JSON shape."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def response(self) -> web.Response:
        """The HTTP answer."""
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if self.status == 401 else {}
        return web.json_response(
            {
                "code": self.code,
                "message": self.message,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
                "status": self.status,
            },
            status=self.status,
            headers=headers,
        )


@dataclass
class Account:
    """A provider account: its credentials and where inbound SMS go."""

    sid: str
    auth_token: str
    inbound_url: str | None = None


@dataclass(frozen=True)
class Script:
    """What happens to messages and calls to one number."""

    outcome: str
    error_code: int | None
    delay_ms: int


@dataclass
class SimMessage:
    """A message as the provider holds it."""

    sid: str
    account_sid: str
    direction: str
    to: str
    from_: str
    body: str
    status: str
    status_callback: str | None
    created: datetime
    error_code: int | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    def resource(self) -> dict[str, Any]:
        """Twilio's Message resource JSON."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": format_datetime(self.created),
            "date_sent": None,
            "date_updated": format_datetime(datetime.now(UTC)),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(max(1, -(-len(self.body) // 153))),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": self.to,
            "uri": f"{uri}.json",
        }

    def view(self) -> dict[str, Any]:
        """The control API's view (includes the callbacks sent and how they were answered)."""
        return {
            **self.resource(),
            "status_callback": self.status_callback,
            "callbacks": list(self.callbacks),
        }


@dataclass
class Gather:
    """A ``<Gather>`` waiting for keys."""

    action: str | None
    timeout_s: float
    num_digits: int
    pressed: asyncio.Future[str]


@dataclass
class SimCall:
    """A call as the provider holds it."""

    sid: str
    account_sid: str
    to: str
    from_: str
    twiml: str | None
    url: str | None
    status_callback: str | None
    created: datetime
    status: str = "queued"
    answered_at: float | None = None
    duration_s: int | None = None
    error_code: int | None = None
    said: list[dict[str, str]] = field(default_factory=list)
    gather: Gather | None = None
    digits: str | None = None
    action_response: str | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    def resource(self) -> dict[str, Any]:
        """Twilio's Call resource JSON."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": format_datetime(self.created),
            "date_updated": format_datetime(datetime.now(UTC)),
            "direction": "outbound-api",
            "duration": None if self.duration_s is None else str(self.duration_s),
            "end_time": None,
            "forwarded_from": None,
            "from": self.from_,
            "from_formatted": self.from_,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "start_time": None,
            "status": self.status,
            "subresource_uris": {"recordings": f"{uri}/Recordings.json"},
            "to": self.to,
            "to_formatted": self.to,
            "uri": f"{uri}.json",
        }

    def view(self) -> dict[str, Any]:
        """The control API's view."""
        return {
            **self.resource(),
            "status_callback": self.status_callback,
            "twiml": self.twiml,
            "url": self.url,
            "said": list(self.said),
            "awaiting_digits": self.gather is not None and not self.gather.pressed.done(),
            "digits": self.digits,
            "action_response": self.action_response,
            "callbacks": list(self.callbacks),
        }


@dataclass
class SimulatorOptions:
    """Behaviour shared by every account."""

    inbound_url: str | None = None
    callback_delay_ms: int = 0
    max_requests_per_s: float | None = None
    down: bool = False
    callback_ca: Path | None = None


class ProviderSimulator:
    """State and handlers of the simulated provider (one aiohttp application)."""

    def __init__(self, accounts: list[Account], options: SimulatorOptions) -> None:
        self.accounts = {account.sid: account for account in accounts}
        self.options = options
        self.messages: dict[str, SimMessage] = {}
        self.calls: dict[str, SimCall] = {}
        self.scripts: dict[str, Script] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=256 * 1024)
        base = f"/{API_VERSION}/Accounts/{{account}}"
        app.router.add_post(f"{base}/Messages.json", self.create_message)
        app.router.add_get(f"{base}/Messages/{{sid}}.json", self.fetch_message)
        app.router.add_post(f"{base}/Calls.json", self.create_call)
        app.router.add_get(f"{base}/Calls/{{sid}}.json", self.fetch_call)
        app.router.add_post("/_sim/script", self.script)
        app.router.add_post("/_sim/reply", self.reply)
        app.router.add_post("/_sim/press", self.press)
        app.router.add_post("/_sim/config", self.configure)
        app.router.add_post("/_sim/reset", self.reset)
        app.router.add_get("/_sim/messages", self.list_messages)
        app.router.add_get("/_sim/calls", self.list_calls)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # -- REST API --------------------------------------------------------------------------

    def _authorise(self, request: web.Request) -> Account:
        """The account the request's Basic credentials name; TwilioApiError otherwise."""
        if self.options.down:
            raise TwilioApiError(20503, "Service Unavailable", 503)
        try:
            credentials = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            credentials = None
        account = self.accounts.get(credentials.login) if credentials else None
        if (
            credentials is None
            or account is None
            or not _same(credentials.password, account.auth_token)
        ):
            raise TwilioApiError(20003, "Authenticate", 401)
        if request.match_info["account"] != account.sid:
            raise TwilioApiError(20404, f"The requested resource {request.path} was not found", 404)
        self._take_token(account.sid)
        return account

    def _take_token(self, account_sid: str) -> None:
        rate = self.options.max_requests_per_s
        if rate is None:
            return
        now = time.monotonic()
        burst = max(rate, 1.0)
        tokens, at = self._buckets.get(account_sid, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1:
            self._buckets[account_sid] = (tokens, now)
            raise TwilioApiError(20429, "Too Many Requests", 429)
        self._buckets[account_sid] = (tokens - 1, now)

    async def create_message(self, request: web.Request) -> web.Response:
        """POST …/Messages.json."""
        try:
            account = self._authorise(request)
            form = await request.post()
            to = _field(form, "To")
            from_ = _field(form, "From")
            body = _field(form, "Body")
            callback = _field(form, "StatusCallback") or None
            if not to:
                raise TwilioApiError(21604, "A 'To' phone number is required.")
            if not E164.match(to):
                raise TwilioApiError(21211, f"The 'To' number {to} is not a valid phone number.")
            if not from_ and not _field(form, "MessagingServiceSid"):
                raise TwilioApiError(21603, "A 'From' phone number is required.")
            if from_ and not E164.match(from_):
                raise TwilioApiError(
                    21212,
                    f"The 'From' number {from_} is not a valid phone number, shortcode, "
                    "or alphanumeric sender ID.",
                )
            if not body:
                raise TwilioApiError(21602, "Message body is required.")
            if len(body) > MAX_BODY_CHARS:
                raise TwilioApiError(
                    21617, "The concatenated message body exceeds the 1600 character limit."
                )
            if callback is not None and not _is_url(callback):
                raise TwilioApiError(21609, "Invalid StatusCallback")
        except TwilioApiError as error:
            return error.response()
        message = SimMessage(
            sid=f"SM{uuid.uuid4().hex}",
            account_sid=account.sid,
            direction="outbound-api",
            to=to,
            from_=from_,
            body=body,
            status="queued",
            status_callback=callback,
            created=datetime.now(UTC),
        )
        self.messages[message.sid] = message
        log.info("message queued", sid=message.sid, scripted=to in self.scripts)
        response = await _answered(request, web.json_response(message.resource(), status=201))
        self._spawn(self._deliver(account, message))
        return response

    async def fetch_message(self, request: web.Request) -> web.Response:
        """GET …/Messages/{sid}.json."""
        try:
            account = self._authorise(request)
            message = self.messages.get(request.match_info["sid"])
            if message is None or message.account_sid != account.sid:
                raise TwilioApiError(
                    20404, f"The requested resource {request.path} was not found", 404
                )
        except TwilioApiError as error:
            return error.response()
        return web.json_response(message.resource())

    async def create_call(self, request: web.Request) -> web.Response:
        """POST …/Calls.json."""
        try:
            account = self._authorise(request)
            form = await request.post()
            to = _field(form, "To")
            from_ = _field(form, "From")
            twiml = _field(form, "Twiml") or None
            url = _field(form, "Url") or None
            callback = _field(form, "StatusCallback") or None
            if not to:
                raise TwilioApiError(21201, "No 'To' number is specified")
            if not E164.match(to):
                raise TwilioApiError(21211, f"The 'To' number {to} is not a valid phone number.")
            if not from_:
                raise TwilioApiError(21213, "No 'From' number is specified")
            if not E164.match(from_):
                raise TwilioApiError(
                    21212, f"The 'From' number {from_} is not a valid phone number."
                )
            if twiml is None and url is None:
                raise TwilioApiError(
                    21205,
                    "Url parameter is required. For more information, see "
                    "http://www.twilio.com/docs/api/twiml",
                )
            if url is not None and not _is_url(url):
                raise TwilioApiError(21205, f"Url is not a valid URL: {url}")
            if callback is not None and not _is_url(callback):
                raise TwilioApiError(21609, "Invalid StatusCallback")
        except TwilioApiError as error:
            return error.response()
        call = SimCall(
            sid=f"CA{uuid.uuid4().hex}",
            account_sid=account.sid,
            to=to,
            from_=from_,
            twiml=twiml,
            url=url,
            status_callback=callback,
            created=datetime.now(UTC),
        )
        self.calls[call.sid] = call
        log.info("call queued", sid=call.sid, scripted=to in self.scripts)
        response = await _answered(request, web.json_response(call.resource(), status=201))
        self._spawn(self._place_call(account, call))
        return response

    async def fetch_call(self, request: web.Request) -> web.Response:
        """GET …/Calls/{sid}.json."""
        try:
            account = self._authorise(request)
            call = self.calls.get(request.match_info["sid"])
            if call is None or call.account_sid != account.sid:
                raise TwilioApiError(
                    20404, f"The requested resource {request.path} was not found", 404
                )
        except TwilioApiError as error:
            return error.response()
        return web.json_response(call.resource())

    # -- what happens after acceptance -----------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _script_for(self, number: str, outcomes: frozenset[str]) -> Script | None:
        script = self.scripts.get(number)
        return script if script is not None and script.outcome in outcomes else None

    async def _delay(self, number: str) -> None:
        script = self.scripts.get(number)
        delay_ms = script.delay_ms if script is not None else self.options.callback_delay_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)

    async def _deliver(self, account: Account, message: SimMessage) -> None:
        script = self._script_for(message.to, SMS_OUTCOMES)
        outcome = script.outcome if script else "delivered"
        await self._delay(message.to)
        if outcome != "failed":
            await self._message_status(account, message, "sent", None)
        if outcome == "sent":
            return
        error_code = None
        if outcome in DEFAULT_ERROR_CODES:
            error_code = (script.error_code if script else None) or DEFAULT_ERROR_CODES[outcome]
        await self._message_status(account, message, outcome, error_code)

    async def _message_status(
        self, account: Account, message: SimMessage, status: str, error_code: int | None
    ) -> None:
        message.status = status
        message.error_code = error_code
        if message.status_callback is None:
            return
        params = {
            "AccountSid": account.sid,
            "ApiVersion": API_VERSION,
            "From": message.from_,
            "MessageSid": message.sid,
            "MessageStatus": status,
            "SmsSid": message.sid,
            "SmsStatus": status,
            "To": message.to,
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        outcome = await self._webhook(account, message.status_callback, params)
        message.callbacks.append({"status": status, **outcome})

    async def _place_call(self, account: Account, call: SimCall) -> None:
        script = self._script_for(call.to, CALL_OUTCOMES)
        outcome = script.outcome if script else "completed"
        await self._delay(call.to)
        if outcome != "completed":
            call.error_code = script.error_code if script else None
            await self._call_status(account, call, outcome)
            return
        call.status = "in-progress"
        call.answered_at = time.monotonic()
        twiml = call.twiml or await self._fetch_twiml(account, call)
        try:
            root = _parse_twiml(twiml) if twiml is not None else None
        except ValueError as exc:
            log.warning("TwiML refused", sid=call.sid, reason=str(exc))
            call.error_code = 12100
            await self._call_status(account, call, "failed")
            return
        if root is not None:
            await self._run_twiml(account, call, root)
        call.duration_s = max(1, round(time.monotonic() - call.answered_at))
        await self._call_status(account, call, "completed")

    async def _fetch_twiml(self, account: Account, call: SimCall) -> str | None:
        assert call.url is not None  # a call has Twiml or Url (checked at creation)
        outcome = await self._webhook(account, call.url, self._call_params(account, call))
        call.callbacks.append({"status": "twiml-request", **outcome})
        body = outcome.get("response")
        return body if outcome.get("http_status") == 200 and isinstance(body, str) else None

    async def _run_twiml(self, account: Account, call: SimCall, root: ET.Element) -> None:
        for verb in root:
            if verb.tag == "Say":
                self._say(call, verb)
            elif verb.tag == "Gather":
                for child in verb:
                    if child.tag == "Say":
                        self._say(call, child)
                gather = Gather(
                    action=verb.get("action") or call.url,
                    timeout_s=float(verb.get("timeout") or 5),
                    num_digits=int(verb.get("numDigits") or 1),
                    pressed=asyncio.get_running_loop().create_future(),
                )
                call.gather = gather
                try:
                    await asyncio.wait_for(asyncio.shield(gather.pressed), gather.timeout_s)
                except TimeoutError:
                    gather.pressed.cancel()
                    continue  # no keys: Twilio goes on with the next verb
                # Keys: the call goes on with the TwiML the action answered.
                try:
                    following = _parse_twiml(call.action_response or "")
                except ValueError:
                    return
                await self._run_twiml(account, call, following)
                return
            elif verb.tag == "Hangup":
                return

    @staticmethod
    def _say(call: SimCall, verb: ET.Element) -> None:
        call.said.append(
            {
                "text": verb.text or "",
                "language": verb.get("language", "en-US"),
                "voice": verb.get("voice", "man"),
            }
        )

    async def _call_status(self, account: Account, call: SimCall, status: str) -> None:
        call.status = status
        if call.duration_s is None:
            call.duration_s = 0
        log.info("call ended", sid=call.sid, status=status)
        if call.status_callback is None:
            return
        params = {
            **self._call_params(account, call),
            "CallDuration": str(call.duration_s),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": "0",
            "Timestamp": format_datetime(datetime.now(UTC)),
        }
        if call.error_code is not None:
            params["ErrorCode"] = str(call.error_code)
        outcome = await self._webhook(account, call.status_callback, params)
        call.callbacks.append({"status": status, **outcome})

    @staticmethod
    def _call_params(account: Account, call: SimCall) -> dict[str, str]:
        return {
            "AccountSid": account.sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": call.status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }

    async def _webhook(self, account: Account, url: str, params: dict[str, str]) -> dict[str, Any]:
        """POST ``params`` signed to ``url``; returns the HTTP status and body (or the error)."""
        headers = {
            SIGNATURE_HEADER: sign(account.auth_token, url, params),
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        }
        try:
            async with self._client().post(
                url, data=urlencode(params), headers=headers
            ) as response:
                text = await response.text()
                return {"http_status": response.status, "response": text[:4000]}
        except (aiohttp.ClientError, TimeoutError) as exc:
            sid = params.get("MessageSid") or params.get("CallSid")
            log.warning("webhook failed", sid=sid, reason=type(exc).__name__)
            return {"http_status": None, "error": type(exc).__name__}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            ca = self.options.callback_ca
            context = ssl.create_default_context(cafile=str(ca) if ca else None)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=64),
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S),
            )
        return self._session

    # -- control API -----------------------------------------------------------------------

    async def script(self, request: web.Request) -> web.Response:
        """POST /_sim/script."""
        body = await _json_object(request)
        number = body.get("number")
        if not isinstance(number, str) or not number:
            raise _bad_request("'number' is required")
        if body.get("clear"):
            self.scripts.pop(number, None)
            return web.json_response({"number": number, "cleared": True})
        outcome = body.get("outcome", "delivered")
        if outcome not in SMS_OUTCOMES | CALL_OUTCOMES:
            raise _bad_request(
                f"unknown outcome {outcome!r}; one of {sorted(SMS_OUTCOMES | CALL_OUTCOMES)}"
            )
        error_code = body.get("error_code")
        delay_ms = body.get("delay_ms", 0)
        if error_code is not None and not isinstance(error_code, int):
            raise _bad_request("'error_code' must be an integer")
        if not isinstance(delay_ms, int) or not 0 <= delay_ms <= 600_000:
            raise _bad_request("'delay_ms' must be an integer from 0 to 600000")
        self.scripts[number] = Script(outcome, error_code, delay_ms)
        log.info("number scripted", outcome=outcome, error_code=error_code, delay_ms=delay_ms)
        return web.json_response(
            {"number": number, "outcome": outcome, "error_code": error_code, "delay_ms": delay_ms}
        )

    async def reply(self, request: web.Request) -> web.Response:
        """POST /_sim/reply: a recipient texts back; the inbound webhook is POSTed now."""
        body = await _json_object(request)
        from_ = body.get("from")
        text = body.get("body")
        if not isinstance(from_, str) or not E164.match(from_):
            raise _bad_request("'from' must be an E.164 number")
        if not isinstance(text, str):
            raise _bad_request("'body' is required")
        account = self._account(body.get("account_sid"))
        to = body.get("to") or self._last_sender(account.sid, from_)
        if not isinstance(to, str):
            raise _bad_request("'to' is required: no message was sent to this number")
        url = account.inbound_url or self.options.inbound_url
        if url is None:
            raise web.HTTPConflict(text="no inbound URL configured (--inbound-url, /_sim/config)")
        message = SimMessage(
            sid=f"SM{uuid.uuid4().hex}",
            account_sid=account.sid,
            direction="inbound",
            to=to,
            from_=from_,
            body=text,
            status="received",
            status_callback=None,
            created=datetime.now(UTC),
        )
        self.messages[message.sid] = message
        params = {
            "AccountSid": account.sid,
            "ApiVersion": API_VERSION,
            "Body": text,
            "From": from_,
            "MessageSid": message.sid,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsMessageSid": message.sid,
            "SmsSid": message.sid,
            "SmsStatus": "received",
            "To": to,
        }
        outcome = await self._webhook(account, url, params)
        message.callbacks.append({"status": "inbound", **outcome})
        return web.json_response({"message_sid": message.sid, **outcome})

    async def press(self, request: web.Request) -> web.Response:
        """POST /_sim/press: the callee presses keys during a ``<Gather>``."""
        body = await _json_object(request)
        call = self.calls.get(str(body.get("call_sid")))
        digits = body.get("digits")
        if call is None:
            raise web.HTTPNotFound(text="unknown call_sid")
        if not isinstance(digits, str) or not re.fullmatch(r"[0-9*#]{1,20}", digits):
            raise _bad_request("'digits' must be 1-20 of 0-9 * #")
        gather = call.gather
        if gather is None or gather.pressed.done():
            raise web.HTTPConflict(text=f"call {call.sid} is not waiting for keys")
        digits = digits[: gather.num_digits]
        call.digits = digits
        outcome: dict[str, Any] = {"http_status": None, "response": None}
        if gather.action is not None:
            account = self.accounts[call.account_sid]
            params = {
                **self._call_params(account, call),
                "Digits": digits,
                "FinishedOnKey": "",
                "msg": "Gather End",
            }
            outcome = await self._webhook(account, gather.action, params)
            call.action_response = outcome.get("response")
            call.callbacks.append({"status": "gather-action", **outcome})
        gather.pressed.set_result(digits)
        return web.json_response({"call_sid": call.sid, "digits": digits, **outcome})

    async def configure(self, request: web.Request) -> web.Response:
        """POST /_sim/config."""
        body = await _json_object(request)
        sid = body.get("account_sid")
        token = body.get("auth_token")
        if isinstance(sid, str) and sid not in self.accounts:
            if not isinstance(token, str) or not token:
                raise _bad_request("a new account_sid needs an auth_token")
            self.accounts[sid] = Account(sid, token)
        account = self._account(sid)
        if isinstance(token, str) and token:
            account.auth_token = token
        if "inbound_url" in body:
            inbound = body["inbound_url"]
            if inbound is not None and not (isinstance(inbound, str) and _is_url(inbound)):
                raise _bad_request("'inbound_url' must be an http(s) URL or null")
            account.inbound_url = inbound
        if "callback_delay_ms" in body:
            self.options.callback_delay_ms = _int(body, "callback_delay_ms", 0, 600_000)
        if "max_requests_per_s" in body:
            rate = body["max_requests_per_s"]
            if rate is not None and not (isinstance(rate, int | float) and rate > 0):
                raise _bad_request("'max_requests_per_s' must be a positive number or null")
            self.options.max_requests_per_s = None if rate is None else float(rate)
            self._buckets.clear()
        if "down" in body:
            self.options.down = bool(body["down"])
        return web.json_response(
            {
                "accounts": sorted(self.accounts),
                "account_sid": account.sid,
                "inbound_url": account.inbound_url or self.options.inbound_url,
                "callback_delay_ms": self.options.callback_delay_ms,
                "max_requests_per_s": self.options.max_requests_per_s,
                "down": self.options.down,
            }
        )

    async def reset(self, _request: web.Request) -> web.Response:
        """POST /_sim/reset."""
        self.messages.clear()
        self.calls.clear()
        self.scripts.clear()
        return web.json_response({"reset": True})

    async def list_messages(self, request: web.Request) -> web.Response:
        """GET /_sim/messages[?to=…]: every message, in arrival order."""
        to = request.query.get("to")
        return web.json_response(
            [m.view() for m in self.messages.values() if to is None or m.to == to]
        )

    async def list_calls(self, request: web.Request) -> web.Response:
        """GET /_sim/calls[?to=…]: every call, in arrival order."""
        to = request.query.get("to")
        return web.json_response(
            [c.view() for c in self.calls.values() if to is None or c.to == to]
        )

    def _account(self, sid: object) -> Account:
        if sid is None:
            return next(iter(self.accounts.values()))
        account = self.accounts.get(str(sid))
        if account is None:
            raise web.HTTPNotFound(text="unknown account_sid")
        return account

    def _last_sender(self, account_sid: str, number: str) -> str | None:
        for message in reversed(self.messages.values()):
            if (
                message.account_sid == account_sid
                and message.direction != "inbound"
                and (message.to == number)
            ):
                return message.from_
        return None


async def _answered(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` now: as at Twilio, the 201 goes out before any callback starts."""
    await response.prepare(request)
    await response.write_eof()
    return response


def _parse_twiml(document: str) -> ET.Element:
    """The ``<Response>`` of a TwiML document; ValueError if it is not one.

    DTDs are refused outright, so no entity is ever declared or expanded.
    """
    if "<!DOCTYPE" in document.upper() or "<!ENTITY" in document.upper():
        raise ValueError("TwiML with a DTD is refused")
    try:
        root = ET.fromstring(document)  # noqa: S314 - no DTD (checked above), no entities
    except ET.ParseError as exc:
        raise ValueError(f"TwiML does not parse: {exc}") from exc
    if root.tag != "Response":
        raise ValueError(f"TwiML root is <{root.tag}>, not <Response>")
    return root


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body[name]
    if not isinstance(value, int) or not low <= value <= high:
        raise _bad_request(f"'{name}' must be an integer from {low} to {high}")
    return value


def _bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=reason)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _bad_request("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    return body


async def serve(
    simulator: ProviderSimulator, *, host: str, port: int, port_file: Path | None
) -> None:
    """Serve until SIGTERM or SIGINT; the bound port goes to ``port_file`` once listening."""

    def listening(bound: int) -> None:
        log.info(
            "provider simulator listening",
            url=f"http://{host}:{bound}",
            accounts=sorted(simulator.accounts),
        )

    await serve_until_signalled(
        simulator.app(),
        ListenSettings(host=host, port=port, port_file=port_file),
        on_listening=listening,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulator of Twilio's Messaging and Voice APIs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("SAFEHUB_SIM_TWILIO_AUTH_TOKEN"),
        help="the account's auth token (default: $SAFEHUB_SIM_TWILIO_AUTH_TOKEN)",
    )
    parser.add_argument("--inbound-url", help="where inbound SMS (/_sim/reply) are POSTed")
    parser.add_argument("--callback-ca", type=Path, help="CA bundle to verify https webhooks")
    args = parser.parse_args(argv)
    if not args.auth_token:
        parser.error("an auth token is required (--auth-token or SAFEHUB_SIM_TWILIO_AUTH_TOKEN)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    configure_logging()
    simulator = ProviderSimulator(
        [Account(args.account_sid, args.auth_token)],
        SimulatorOptions(inbound_url=args.inbound_url, callback_ca=args.callback_ca),
    )
    asyncio.run(serve(simulator, host=args.host, port=args.port, port_file=args.port_file))


if __name__ == "__main__":
    main()
