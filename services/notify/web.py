"""notify's HTTP side (aiohttp, own thread and loop): acknowledgements, provider callbacks,
the CAP feed and per-notification status.

* ``GET /ack/{token}`` shows a confirmation page; ``POST /ack/{token}`` acknowledges (mail
  scanners prefetch links with GET, so a GET never acknowledges). The token is
  ``<delivery id>.<HMAC-SHA256(secret, delivery id)>``: ids only, nothing personal.
* ``POST /providers/twilio/status`` (status callbacks), ``/providers/twilio/inbound`` (reply
  "1" acknowledges), ``/providers/twilio/voice-ack?d=<delivery>`` (keypress 1): the raw body
  is parsed strictly first (not form-encoded UTF-8: 400 with a short reason, the body never
  logged), then ``X-Twilio-Signature`` is checked against the public URL with the
  provider's auth token (403).
* ``GET /cap/feed.atom`` (Public alerts), ``GET /cap/alerts/{identifier}.xml`` (Public ones
  for anyone; Restricted ones like status below).
* ``GET /notifications?incident_id=…`` and ``GET /notifications/{id}``: who was reached on
  which channel, who acknowledged, who has not.
* ``GET /notifications/held?school=…``: family/public messages awaiting approval, with their
  text per language; ``POST /notifications/{id}/decision`` ``{"decision": "APPROVED" |
  "REJECTED", "headline"?, "body"?, "note"?}`` publishes the decision (202) or answers 400
  naming what is wrong. The approver is the caller the token names, never a typed field.
* ``GET /healthz``.

The status and approval routes need a bearer token (:mod:`services.notify.auth`): 401
without a known one, 403 unless it is an administrator's of the school concerned (the
read-only ``status_token`` reads status and Restricted CAP, never held messages or
decisions). Acknowledgement links, provider callbacks and Public CAP stay open: they carry
their own proof (link HMAC, Twilio signature) or are public by design. No exception leaves
a handler: an unexpected one is logged by type and route only, never with the request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web
from pydantic import SecretStr

from safehub.kernel.errors import BusError, ConfigError
from safehub.standards import twilio
from safehub.standards.cap import CAP_MEDIA_TYPE, Scope, parse
from services.notify.approvals import ApprovalError, Approvals, Decision
from services.notify.audiences import AudienceError
from services.notify.auth import ApiAuth, AuthError, Caller
from services.notify.cap_endpoint import ATOM_MEDIA_TYPE, FeedEntry, atom_feed
from services.notify.dispatcher import Dispatcher
from services.notify.store import Store

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: API answers name people and messages: never cached by a browser or proxy.
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _route(request: web.Request) -> str:
    """The route's template (``/ack/{token}``), never the path: paths carry link tokens."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class AckLinks:
    """Signs and checks acknowledgement tokens (HMAC over the delivery id)."""

    def __init__(self, secret: SecretStr, base_url: str = "") -> None:
        key = secret.get_secret_value()
        if not key:
            raise ConfigError("SAFEHUB_NOTIFY__ACK_SECRET must be set (it signs ack links)")
        self._key = key.encode()
        self.base_url = base_url

    def _mac(self, delivery_id: str) -> str:
        digest = hmac.new(self._key, delivery_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode().rstrip("=")

    def token(self, delivery_id: str) -> str:
        """The token of a delivery."""
        return f"{delivery_id}.{self._mac(delivery_id)}"

    def url(self, delivery_id: str) -> str:
        """The acknowledgement link of a delivery."""
        return f"{self.base_url.rstrip('/')}/ack/{self.token(delivery_id)}"

    def verify(self, token: str) -> str | None:
        """The delivery id of a genuine token, else None."""
        delivery_id, _, mac = token.rpartition(".")
        if not delivery_id or not hmac.compare_digest(
            mac.encode(), self._mac(delivery_id).encode()
        ):
            return None
        return delivery_id


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        content_type="text/html",
        charset="utf-8",
        text=(
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title></head><body><main>"
            f"<h1>{html.escape(title)}</h1>{body}</main></body></html>"
        ),
    )


class NotifyWeb:
    """The aiohttp application over a dispatcher and its store."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        approvals: Approvals,
        store: Store,
        links: AckLinks,
        auth: ApiAuth,
        twilio_token: SecretStr | None,
        cap_xsd: Path,
    ) -> None:
        self.dispatcher = dispatcher
        self.approvals = approvals
        self.store = store
        self.links = links
        self.auth = auth
        self._twilio_token = twilio_token.get_secret_value() if twilio_token else ""
        self._cap_xsd = cap_xsd

    @property
    def public_url(self) -> str:
        """Base URL recipients and providers use."""
        return self.links.base_url.rstrip("/")

    def app(self) -> web.Application:
        """The routes."""
        app = web.Application(client_max_size=256 * 1024, middlewares=[self._guard])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ack/{token}", self._ack_page)
        app.router.add_post("/ack/{token}", self._ack)
        app.router.add_post(twilio.STATUS_PATH, self._twilio(self._status_callback))
        app.router.add_post(twilio.INBOUND_PATH, self._twilio(self._inbound))
        app.router.add_post(twilio.VOICE_ACK_PATH, self._twilio(self._voice_ack))
        app.router.add_get("/cap/feed.atom", self._feed)
        app.router.add_get("/cap/alerts/{identifier}.xml", self._cap_alert)
        app.router.add_get("/notifications", self._notifications)
        app.router.add_get("/notifications/held", self._held)  # before the {id} route
        app.router.add_get("/notifications/{notification_id}", self._status)
        app.router.add_post("/notifications/{notification_id}/decision", self._decision)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refusals as JSON, API answers uncached, and no exception ever reaching aiohttp's
        logger: it would log the exception's repr, which for a decoding error is the body."""
        try:
            response = await handler(request)
        except AuthError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="safehub-notify"'}
            response = web.json_response(
                {"error": str(exc)},
                status=exc.status,
                headers=headers if exc.status == 401 else None,
            )
            log.warning("API request refused", route=_route(request), status=exc.status)
        except web.HTTPException:
            raise  # aiohttp's own answers (404, 405, 413) carry no request data
        except Exception as exc:
            log.error(
                "request failed", route=_route(request), error_type=type(exc).__name__
            )  # no exc_info: a traceback's locals and the exception's repr hold the body
            response = web.json_response(
                {"error": "internal error: the request was not processed; try again"},
                status=500,
            )
        if request.path.startswith("/notifications"):
            for name, value in API_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    def _caller(self, request: web.Request) -> Caller:
        return self.auth.authenticate(request.headers.get("Authorization"))

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # -- acknowledgement links ---------------------------------------------------------------

    async def _ack_page(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if self.links.verify(token) is None:
            return _page("Link not valid", "<p>This confirmation link is not valid.</p>", 404)
        action = html.escape(f"/ack/{token}", quote=True)
        return _page(
            "Confirm you received the alert",
            f'<form method=post action="{action}"><button type=submit>'
            "I received it / Lo recibí</button></form>",
        )

    async def _ack(self, request: web.Request) -> web.Response:
        delivery_id = self.links.verify(request.match_info["token"])
        if delivery_id is None:
            return _page("Link not valid", "<p>This confirmation link is not valid.</p>", 404)
        first = await asyncio.to_thread(self.dispatcher.acknowledge_delivery, delivery_id)
        if first is None:
            return _page("Unknown alert", "<p>This alert is not known here.</p>", 404)
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"acknowledged": True, "first": first})
        message = (
            "Thank you. Your confirmation is recorded."
            if first
            else ("Already confirmed. Thank you.")
        )
        return _page("Confirmed / Confirmado", f"<p>{message}</p>")

    # -- provider callbacks ------------------------------------------------------------------

    def _twilio(
        self, handler: Callable[[web.Request, dict[str, str]], Awaitable[web.Response]]
    ) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            # Raw bytes, parsed strictly here: aiohttp's request.post() would raise a
            # decoding error whose repr (in any log of it) is the body, phone numbers and all.
            raw = await request.read()
            try:
                params = twilio.parse_form(raw, request.headers.get("Content-Type"))
            except twilio.TwilioRequestError as exc:
                log.warning("malformed provider callback refused", route=_route(request))
                return web.Response(status=400, text=str(exc))
            url = self.public_url + request.path_qs
            signature = request.headers.get(twilio.SIGNATURE_HEADER)
            if not twilio.validate_signature(self._twilio_token, url, params, signature):
                log.warning("provider callback with a bad signature refused", path=request.path)
                return web.Response(status=403, text="invalid X-Twilio-Signature")
            try:
                return await handler(request, params)
            except twilio.TwilioRequestError as exc:
                return web.Response(status=400, text=str(exc))

        return checked

    async def _status_callback(self, _request: web.Request, params: dict[str, str]) -> web.Response:
        status = twilio.parse_status_callback(params)
        known = await asyncio.to_thread(
            self.dispatcher.provider_status,
            status.provider_message_id,
            status.status,
            status.error,
        )
        if not known:
            log.warning(
                "status callback for an unknown message", provider_id=status.provider_message_id
            )
            return web.Response(status=404, text="unknown message")
        return web.Response(status=204)

    async def _inbound(self, _request: web.Request, params: dict[str, str]) -> web.Response:
        reply = twilio.parse_inbound_sms(params)
        first = await asyncio.to_thread(
            self.dispatcher.acknowledge_reply, reply.from_number, reply.body
        )
        if first is None:
            text = None if not reply.acknowledges else "Nothing is waiting for your confirmation."
        else:
            text = "Confirmed. Thank you." if first else "Already confirmed. Thank you."
        return web.Response(
            content_type="application/xml", charset="utf-8", text=twilio.twiml_message(text)
        )

    async def _voice_ack(self, request: web.Request, params: dict[str, str]) -> web.Response:
        gather = twilio.parse_gather(params)
        delivery_id = request.query.get(twilio.VOICE_ACK_DELIVERY_PARAM, "")
        text = "No confirmation received."
        if gather.acknowledged and delivery_id:
            first = await asyncio.to_thread(
                self.dispatcher.acknowledge_delivery, delivery_id, "VOICE"
            )
            if first is not None:
                text = "Confirmed. Thank you."
        return web.Response(
            content_type="application/xml",
            charset="utf-8",
            text=twilio.twiml_reply(text, "en-US"),
        )

    # -- CAP ---------------------------------------------------------------------------------

    async def _feed(self, _request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(self.store.cap_recent, 200)
        entries = []
        for row in rows:
            if row["scope"] != Scope.PUBLIC.value:
                continue
            found = await asyncio.to_thread(self.store.cap, row["identifier"])
            if found is None:
                continue
            alert = parse(found[0].encode(), xsd_path=self._cap_xsd)
            entries.append(FeedEntry.for_alert(alert, cap_url=self._cap_url(alert.identifier)))
        body = atom_feed(
            entries,
            feed_url=f"{self.public_url}/cap/feed.atom",
            title="SafeHub school alerts",
            updated=max((e.sent for e in entries), default=datetime.now(UTC)),
        )
        return web.Response(body=body, content_type=ATOM_MEDIA_TYPE, charset="utf-8")

    def _cap_url(self, identifier: str) -> str:
        return f"{self.public_url}/cap/alerts/{identifier}.xml"

    async def _cap_alert(self, request: web.Request) -> web.Response:
        identifier = request.match_info["identifier"]
        found = await asyncio.to_thread(self.store.cap_document, identifier)
        if found is None:
            return web.Response(status=404, text="unknown CAP alert")
        xml, scope, school_id = found
        if scope != Scope.PUBLIC.value:
            self.auth.authorise(self._caller(request), school_id, decide=False)
        return web.Response(text=xml, content_type=CAP_MEDIA_TYPE, charset="utf-8")

    # -- status ------------------------------------------------------------------------------

    async def _notifications(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        self.auth.authorise(caller, None, decide=False)
        incident_id = request.query.get("incident_id")
        rows = await asyncio.to_thread(self.store.list_notifications, incident_id=incident_id)
        if not caller.status_reader:
            # An incident is one school's: naming another school's is refused, not hidden.
            if incident_id is not None:
                for n in rows:
                    self.auth.authorise(caller, n.school_id, decide=False)
            rows = [n for n in rows if n.school_id == caller.school_id]
        return web.json_response(
            [
                {
                    "notification_id": n.notification_id,
                    "incident_id": n.incident_id,
                    "school_id": n.school_id,
                    "srp_action": n.srp_action,
                    "exercise": n.exercise,
                    "created_at": n.created_at,
                }
                for n in rows
            ]
        )

    async def _status(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        self.auth.authorise(caller, None, decide=False)
        found = await asyncio.to_thread(
            self.dispatcher.status, request.match_info["notification_id"]
        )
        if found is None:
            return web.json_response({"error": "unknown notification"}, status=404)
        self.auth.authorise(caller, str(found["school_id"]), decide=False)
        return web.json_response(found)

    # -- approval of family and public messages -------------------------------------------

    async def _held(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        self.auth.authorise(caller, None, decide=True)
        school = request.query.get("school")
        if not school:
            return web.json_response({"error": "query parameter school is required"}, status=400)
        self.auth.authorise(caller, school, decide=True)
        try:
            found = await asyncio.to_thread(self.approvals.pending, school)
        except AudienceError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(found)

    async def _decision(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        self.auth.authorise(caller, None, decide=True)
        notification_id = request.match_info["notification_id"]
        try:
            data = json.loads(await request.read())
        except ValueError:  # UnicodeDecodeError included
            return web.json_response({"error": "the body must be a UTF-8 JSON object"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"error": "the body must be a UTF-8 JSON object"}, status=400)
        typed = data.get("decided_by")
        if typed is not None and typed != caller.id:
            raise AuthError(
                403,
                f"decided_by names someone else: the decision is taken as {caller.id}, the "
                "holder of this token; leave decided_by out",
            )
        try:
            school_id = await asyncio.to_thread(self.approvals.school_of, notification_id)
            self.auth.authorise(caller, school_id, decide=True)
            decision = Decision.of(notification_id, {**data, "decided_by": caller.id})
            event_id = await asyncio.to_thread(self.approvals.submit, decision)
        except (ApprovalError, AudienceError) as exc:
            log.warning("decision refused", notification_id=notification_id[:200], error=str(exc))
            return web.json_response({"error": str(exc)}, status=400)
        except BusError as exc:
            log.error("decision not published", notification_id=notification_id, error=str(exc))
            return web.json_response(
                {"error": "the decision could not be recorded; try again"}, status=503
            )
        return web.json_response(
            {
                "notification_id": notification_id,
                "decision": decision.decision,
                "decided_by": decision.decided_by,
                "event_id": event_id,
            },
            status=202,
        )
