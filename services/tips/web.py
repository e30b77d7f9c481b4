"""The tips service's HTTP side (aiohttp, own thread and loop).

Public, no login:

* ``GET /`` (``?lang=es``): the tip form; ``POST /tip`` (multipart) answers the receipt page
  with the tip code and passcode, or the form again naming the wrong field (400).
* ``GET /thread`` and ``POST /thread`` (code, passcode, optional text): the anonymous
  thread; a wrong code and a wrong passcode get the same answer (403), repeated guessing
  429 with ``Retry-After``.
* ``POST /sms/inbound``: Twilio's inbound-message webhook (form, ``X-Twilio-Signature``
  checked against ``public_url``): a text to a school's tip number is a new tip, or, from a
  number with an open tip, the next message of its thread; the TwiML answer gives the code
  and passcode, or the analysts' messages the tipster has not seen.

Analysts (``Authorization: Bearer``, :mod:`services.tips.analysts`), JSON:

* ``GET /api/tips`` (``?status=``), ``GET /api/tips/{id}`` (with the thread),
  ``POST /api/tips/{id}/messages`` ``{"text"}``, ``POST /api/tips/{id}/status``
  ``{"status", "assigned_to"?, "note"?}``, ``POST /api/tips/{id}/life-safety``
  ``{"life_safety", "reason"}``, ``POST /api/tips/{id}/split`` ``{"reason"?}``,
  ``POST /api/tips/{id}/close`` ``{"disposition", "note"?}``, ``POST /api/tips/{id}/psap``
  ``{"reason"}`` (send it to 911 now: a ThreatReported the incidents service dispatches),
  ``POST /api/tips`` (a phone tip typed by the analyst: ``{"school_id", "category",
  "text"}``),
  ``GET /api/attachments/{id}`` (the cleaned image only), ``GET /api/reports``
  (``?period=2026-12&scope=district:…&format=json|csv|html``: the programme's statistics,
  :mod:`services.tips.reports`) and ``GET /api/reports/export`` (averted-violence cases,
  no identities), each for the districts the analyst works (the state scope: ``*`` only).

Errors are JSON ``{"error", "field"}`` (400/401/403/404/429). The tipster's contact is never
in a page, an answer, a log line or an error; handlers log ids and outcomes only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import BodyPartReader, web

from safehub.kernel.directory import DirectorySource
from safehub.kernel.errors import SafeHubError
from safehub.standards import twilio
from services.tips import pages, reports
from services.tips.analysts import ALL_DISTRICTS, Analyst, AnalystsFile
from services.tips.console import Console
from services.tips.desk import Desk
from services.tips.intake import (
    Contact,
    Intake,
    IntakeError,
    TipRequest,
    Upload,
    parse_category,
)
from services.tips.model import Channel, Status
from services.tips.store import MessageRow, TipRow, TipStore

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SMS_PATH = "/sms/inbound"
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
#: Pages: no scripts, no frames, forms to ourselves only.
PAGE_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}
_STATUS = {"invalid": 400, "denied": 403, "not_found": 404, "throttled": 429}
SMS_HELP = {
    "en": "SafeHub tips: this number is not a school's tip line. Use the web form instead.",
}


def _source(request: web.Request) -> str:
    """What the guessing throttle counts per caller (hashed, never stored or logged)."""
    return request.remote or "unknown"


def _network(request: web.Request) -> dict[str, str]:
    """The request metadata sealed with the identity (never anywhere else)."""
    return {
        "remote": request.remote or "",
        "user_agent": request.headers.get("User-Agent", "")[:300],
        "forwarded_for": request.headers.get("X-Forwarded-For", "")[:300],
    }


class TipsWeb:
    """Routes of the public pages, the SMS webhook and the analysts' API."""

    def __init__(
        self,
        *,
        intake: Intake,
        desk: Desk,
        store: TipStore,
        directory: DirectorySource,
        analysts: AnalystsFile,
        public_url: Callable[[], str],
        twilio_token: str,
        sms_schools: dict[str, str],
        max_request_bytes: int,
    ) -> None:
        self.intake = intake
        self.desk = desk
        self.store = store
        self.directory = directory
        self.analysts = analysts
        self._public_url = public_url
        self._twilio_token = twilio_token
        self._sms_schools = sms_schools
        self.max_request_bytes = max_request_bytes

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_get("/", self._form)
        app.router.add_post("/tip", self._submit)
        app.router.add_get("/thread", self._thread_login)
        app.router.add_post("/thread", self._thread)
        app.router.add_post(SMS_PATH, self._sms)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/api/tips", self._api(self._list))
        app.router.add_post("/api/tips", self._api(self._phone_tip))
        app.router.add_get("/api/tips/{tip_id}", self._api(self._get))
        app.router.add_post("/api/tips/{tip_id}/messages", self._api(self._message))
        app.router.add_post("/api/tips/{tip_id}/status", self._api(self._move))
        app.router.add_post("/api/tips/{tip_id}/life-safety", self._api(self._flag))
        app.router.add_post("/api/tips/{tip_id}/split", self._api(self._split))
        app.router.add_post("/api/tips/{tip_id}/close", self._api(self._close))
        app.router.add_post("/api/tips/{tip_id}/psap", self._api(self._psap))
        app.router.add_get("/api/attachments/{attachment_id}", self._api(self._attachment))
        app.router.add_get("/api/reports", self._api(self._report))
        app.router.add_get("/api/reports/export", self._api(self._export))
        Console(
            intake=self.intake,
            desk=self.desk,
            store=self.store,
            analysts=self.analysts,
            public_url=self._public_url,
            school_names=self._school_names,
            district_of=self._district_of,
        ).add_routes(app)
        return app

    def _school_names(self) -> dict[str, str]:
        directory = self.directory.current()
        return {s.id: s.name for d in directory.districts for s in d.schools}

    def _district_of(self, school_id: str) -> str | None:
        directory = self.directory.current()
        return directory.district_of(school_id).id if directory.has_school(school_id) else None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # -- public pages -------------------------------------------------------------------

    def _schools(self) -> list[tuple[str, str]]:
        directory = self.directory.current()
        return sorted(
            ((s.id, s.name) for d in directory.districts for s in d.schools),
            key=lambda pair: pair[1],
        )

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(
            text=text,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers=PAGE_HEADERS,
        )

    async def _form(self, request: web.Request) -> web.Response:
        lang = pages.language_of(request.query.get("lang"), request.headers.get("Accept-Language"))
        return self._html(pages.form(lang, self._schools(), secrets.token_urlsafe(18)))

    async def _submit(self, request: web.Request) -> web.Response:
        fields: dict[str, str] = {}
        uploads: list[Upload] = []
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return self._html(pages.thread_login("en", error=("form", "send the form")), 400)
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                if part.filename is not None:
                    data = bytes(await part.read())
                    if data:
                        uploads.append(Upload(data, part.headers.get("Content-Type"), part.name))
                else:
                    fields[part.name] = await part.text()
        except web.HTTPRequestEntityTooLarge:
            return self._html(
                pages.form(
                    "en",
                    self._schools(),
                    secrets.token_urlsafe(18),
                    error=("photo", f"the request is larger than {self.max_request_bytes} bytes"),
                ),
                413,
            )
        lang = pages.language_of(fields.get("lang"), request.headers.get("Accept-Language"))
        kept = {k: fields.get(k, "") for k in ("school_id", "category", "text")}
        try:
            category = parse_category(fields.get("category", "OTHER") or "OTHER")
            anonymous = fields.get("anonymous") == "on"
            tip = TipRequest(
                channel=Channel.WEB,
                school_id=fields.get("school_id", ""),
                category=category,
                text=fields.get("text", ""),
                anonymous=anonymous,
                contact=Contact(
                    fields.get("name", "").strip()[:200],
                    fields.get("phone", "").strip()[:50],
                    fields.get("email", "").strip()[:300],
                ),
                attachments=uploads[: self.intake.max_attachments],
                language=lang,
                client_key=f"web:{fields['nonce']}" if fields.get("nonce") else None,
                network=_network(request),
                source=f"web:{_source(request)}",
            )
            receipt = await asyncio.to_thread(self.intake.submit, tip)
        except IntakeError as exc:
            page = pages.form(
                lang,
                self._schools(),
                secrets.token_urlsafe(18),
                error=(exc.field or "form", exc.reason),
                kept=kept,
            )
            return self._html(page, _STATUS.get(exc.kind, 400))
        return self._html(
            pages.receipt(lang, receipt.code, receipt.passcode, life_safety=receipt.life_safety)
        )

    async def _thread_login(self, request: web.Request) -> web.Response:
        lang = pages.language_of(request.query.get("lang"), request.headers.get("Accept-Language"))
        return self._html(pages.thread_login(lang))

    async def _thread(self, request: web.Request) -> web.Response:
        form = await request.post()
        lang = pages.language_of(str(form.get("lang", "")), request.headers.get("Accept-Language"))
        code, passcode = str(form.get("code", "")), str(form.get("passcode", ""))
        text = str(form.get("text", "")).strip()
        try:
            tip = await asyncio.to_thread(
                self.intake.open_thread, code, passcode, source=_source(request)
            )
        except IntakeError as exc:
            response = self._html(
                pages.thread_login(lang, error=("code", exc.reason)), _STATUS[exc.kind]
            )
            if exc.retry_after:
                response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
            return response
        error = None
        if text:
            try:
                await asyncio.to_thread(
                    self.intake.post, tip, text, author="TIPSTER", channel=Channel.WEB.value
                )
            except IntakeError as exc:
                error = (exc.field or "text", exc.reason)
        messages = await asyncio.to_thread(self.store.thread, tip.tip_id)
        page = pages.thread(lang, tip.code, passcode, tip.status, messages, error=error)
        return self._html(page, 400 if error else 200)

    # -- SMS ----------------------------------------------------------------------------

    async def _sms(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            params = twilio.parse_form(raw, request.headers.get("Content-Type"))
        except twilio.TwilioRequestError as exc:
            log.warning("malformed inbound SMS webhook refused")
            return web.Response(status=400, text=str(exc))
        url = self._public_url() + request.path_qs
        signature = request.headers.get(twilio.SIGNATURE_HEADER)
        if not twilio.validate_signature(self._twilio_token, url, params, signature):
            log.warning("inbound SMS with a bad signature refused")
            return web.Response(status=403, text="invalid X-Twilio-Signature")
        try:
            inbound = twilio.parse_inbound_sms(params)
        except twilio.TwilioRequestError as exc:
            return web.Response(status=400, text=str(exc))
        answer = await asyncio.to_thread(self._sms_tip, inbound, params.get("To", ""))
        return web.Response(
            text=twilio.twiml_message(answer), content_type="application/xml", charset="utf-8"
        )

    def _sms_tip(self, inbound: twilio.InboundReply, to: str) -> str:
        existing = self.intake.tip_by_reply_address(inbound.from_number)
        try:
            if existing is not None:
                before = self.store.thread(existing.tip_id)
                self.intake.post(
                    existing, inbound.body, author="TIPSTER", channel=Channel.SMS.value
                )
                # Answers already texted (SmsReplies) are not repeated in this reply.
                unseen = _since_tipster(before) if self.intake.on_message is None else []
                lines = ["Added to your tip."] + [f"Safety team: {m.text}" for m in unseen]
                return "\n".join(lines)
            school_id = self._sms_schools.get(to)
            if school_id is None:
                return SMS_HELP["en"]
            receipt = self.intake.submit(
                TipRequest(
                    channel=Channel.SMS,
                    school_id=school_id,
                    category=parse_category("OTHER"),
                    text=inbound.body,
                    anonymous=True,
                    client_key=f"sms:{inbound.provider_message_id}",
                    reply_address=inbound.from_number,
                    network={"provider_message_id": inbound.provider_message_id},
                    source=f"sms:{inbound.from_number}",
                )
            )
        except IntakeError as exc:
            return f"Your message could not be taken: {exc.reason}. Please send it again."
        urgent = " It has gone to the people on duty now." if receipt.life_safety else ""
        return (
            f"Tip received.{urgent} Code {receipt.code}, passcode {receipt.passcode}. "
            "Reply here to add more; we may ask you questions here. If someone is in danger "
            "now, call 911."
        )

    # -- analysts' API ------------------------------------------------------------------

    def _api(
        self, handler: Callable[[web.Request, Analyst], Awaitable[web.StreamResponse]]
    ) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            analyst = self.analysts.by_token(token.strip()) if scheme.lower() == "bearer" else None
            if analyst is None:
                return _json_error(
                    401, "send 'Authorization: Bearer <token>' with an analyst's token", None
                )
            try:
                return await handler(request, analyst)
            except IntakeError as exc:
                return _json_error(_STATUS.get(exc.kind, 400), exc.reason, exc.field)
            except SafeHubError as exc:
                log.error(
                    "analyst request failed", route=request.path, error_type=type(exc).__name__
                )
                return _json_error(503, "the tips store is not available; try again", None)

        return guarded

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntakeError.invalid("body", "must be a JSON object") from None
        if not isinstance(body, dict):
            raise IntakeError.invalid("body", "must be a JSON object")
        return body

    async def _list(self, request: web.Request, analyst: Analyst) -> web.Response:
        wanted = request.query.get("status")
        if wanted and wanted not in Status.__members__:
            raise IntakeError.invalid("status", f"must be one of {', '.join(Status)}")
        tips = await asyncio.to_thread(self.store.tips_of, None, 1000)
        shown = [
            _tip_json(t)
            for t in tips
            if analyst.may_see(t.district_id) and (not wanted or t.status == wanted)
        ]
        return web.json_response({"tips": shown}, headers=NO_STORE)

    async def _get(self, request: web.Request, analyst: Analyst) -> web.Response:
        # The escalation first: a change to both commits together, so the tip read after it
        # is at least as new (an acknowledgement never shows without its assignment).
        escalation = await asyncio.to_thread(self.store.escalation, request.match_info["tip_id"])
        tip = await asyncio.to_thread(self.desk.tip_for, analyst, request.match_info["tip_id"])
        thread = await asyncio.to_thread(self.store.thread, tip.tip_id)
        attachments = await asyncio.to_thread(self.store.attachment_ids, tip.tip_id)
        body = {
            **_tip_json(tip),
            "text": tip.text,
            "thread": [_message_json(m) for m in thread],
            "attachments": [f"/api/attachments/{a}" for a in attachments],
            "escalation": None
            if escalation is None
            else {
                "call": escalation.step,
                "steps": [s["name"] for s in escalation.chain],
                "acknowledged_by": escalation.acked_by,
                "acknowledged_at": escalation.acked_at,
                "exhausted": escalation.exhausted,
            },
        }
        return web.json_response(body, headers=NO_STORE)

    async def _message(self, request: web.Request, analyst: Analyst) -> web.Response:
        body = await self._body(request)
        tip = await asyncio.to_thread(self.desk.tip_for, analyst, request.match_info["tip_id"])
        message = await asyncio.to_thread(
            self.intake.post,
            tip,
            str(body.get("text", "")),
            author="ANALYST",
            channel="WEB",
            analyst_id=analyst.id,
        )
        return web.json_response(_message_json(message), status=201, headers=NO_STORE)

    async def _move(self, request: web.Request, analyst: Analyst) -> web.Response:
        body = await self._body(request)
        tip = await asyncio.to_thread(
            self.desk.move,
            analyst,
            request.match_info["tip_id"],
            str(body.get("status", "")),
            assigned_to=body.get("assigned_to"),
            note=body.get("note"),
        )
        return web.json_response(_tip_json(tip), headers=NO_STORE)

    async def _flag(self, request: web.Request, analyst: Analyst) -> web.Response:
        body = await self._body(request)
        value = body.get("life_safety")
        if not isinstance(value, bool):
            raise IntakeError.invalid("life_safety", "must be true or false")
        tip = await asyncio.to_thread(
            self.desk.set_life_safety,
            analyst,
            request.match_info["tip_id"],
            value,
            str(body.get("reason", "")),
        )
        return web.json_response(_tip_json(tip), headers=NO_STORE)

    async def _split(self, request: web.Request, analyst: Analyst) -> web.Response:
        body = await self._body(request)
        tip = await asyncio.to_thread(
            self.desk.split, analyst, request.match_info["tip_id"], body.get("reason")
        )
        return web.json_response(_tip_json(tip), headers=NO_STORE)

    async def _psap(self, request: web.Request, analyst: Analyst) -> web.Response:
        body = await self._body(request)
        tip = await asyncio.to_thread(
            self.desk.to_psap, analyst, request.match_info["tip_id"], str(body.get("reason", ""))
        )
        return web.json_response(_tip_json(tip), status=202, headers=NO_STORE)

    async def _close(self, request: web.Request, analyst: Analyst) -> web.Response:
        body = await self._body(request)
        tip = await asyncio.to_thread(
            self.desk.close,
            analyst,
            request.match_info["tip_id"],
            str(body.get("disposition", "")),
            body.get("note"),
        )
        return web.json_response(_tip_json(tip), headers=NO_STORE)

    async def _phone_tip(self, request: web.Request, analyst: Analyst) -> web.Response:
        body = await self._body(request)
        receipt = await asyncio.to_thread(
            functools.partial(
                self.desk.phone_tip,
                self.intake,
                analyst,
                school_id=str(body.get("school_id", "")),
                category=str(body.get("category", "OTHER")),
                text=str(body.get("text", "")),
                client_tip_id=str(body["client_tip_id"]) if body.get("client_tip_id") else None,
            )
        )
        return web.json_response(
            {
                "tip_id": receipt.tip_id,
                "tip_code": receipt.code,
                "passcode": receipt.passcode,
                "life_safety": receipt.life_safety,
                "folded_into": receipt.duplicate_of,
            },
            status=200 if receipt.retry else 201,
            headers=NO_STORE,
        )

    async def _attachment(self, request: web.Request, analyst: Analyst) -> web.Response:
        mime, data = await asyncio.to_thread(
            self.desk.photo, analyst, request.match_info["attachment_id"]
        )
        return web.Response(body=data, content_type=mime, headers=NO_STORE)

    def _may_report(self, analyst: Analyst, scope_text: str | None) -> None:
        """An analyst reports on the districts they work (the state centre on all)."""
        try:
            scope = reports.Scope.parse(scope_text)
        except reports.ReportError as exc:
            raise IntakeError.invalid(exc.field, str(exc)) from None
        directory = self.directory.current()
        if scope.kind == "state":
            allowed = ALL_DISTRICTS in analyst.districts
        elif scope.kind == "district":
            allowed = analyst.may_see(str(scope.id))
        else:
            allowed = directory.has_school(str(scope.id)) and analyst.may_see(
                directory.district_of(str(scope.id)).id
            )
        if not allowed:
            raise IntakeError(
                "not_found", "no such scope among the districts you work", field="scope"
            )

    async def _report(self, request: web.Request, analyst: Analyst) -> web.Response:
        self._may_report(analyst, request.query.get("scope"))
        directory = self.directory.current()
        names = {s.id: s.name for d in directory.districts for s in d.schools}
        status, content_type, body = await asyncio.to_thread(
            reports.report_response,
            self.store,
            request.query,
            school_names=names,
            now=time.time(),
        )
        return _bytes(status, content_type, body)

    async def _export(self, request: web.Request, analyst: Analyst) -> web.Response:
        self._may_report(analyst, request.query.get("scope"))
        status, content_type, body = await asyncio.to_thread(
            reports.export_response,
            self.store,
            request.query,
            state=self.directory.current().state,
        )
        return _bytes(status, content_type, body)


def _bytes(status: int, content_type: str, body: bytes) -> web.Response:
    media, _, params = content_type.partition(";")
    charset = params.partition("=")[2].strip() or None
    return web.Response(
        status=status, body=body, content_type=media.strip(), charset=charset, headers=NO_STORE
    )


def _since_tipster(messages: list[MessageRow]) -> list[MessageRow]:
    """The analysts' messages after the tipster's last one."""
    unseen: list[MessageRow] = []
    for message in messages:
        if message.author == "TIPSTER":
            unseen = []
        else:
            unseen.append(message)
    return unseen


def _tip_json(tip: TipRow) -> dict[str, Any]:
    return {
        "tip_id": tip.tip_id,
        "tip_code": tip.code,
        "school_id": tip.school_id,
        "district_id": tip.district_id,
        "channel": tip.channel,
        "category": tip.category,
        "life_safety": tip.life_safety,
        "imminent": tip.imminent,
        "status": tip.status,
        "disposition": tip.disposition,
        "assigned_to": tip.assigned_to,
        "folded_into": tip.primary_tip_id,
        "created_at": tip.created_at,
        "first_human_at": tip.first_human_at,
        "closed_at": tip.closed_at,
    }


def _message_json(message: MessageRow) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "author": message.author,
        "analyst_id": message.analyst_id,
        "text": message.text,
        "channel": message.channel,
        "sent_at": message.created_at,
    }


def _json_error(status: int, message: str, field: str | None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status, headers=NO_STORE)
