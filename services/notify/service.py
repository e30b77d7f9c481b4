"""The notify service: incidents' SRP actions and notification requests → messages with proof.

Two consumers:

* **incidents hook** (group ``notify-incidents``, 10 ms fetch wait): when an incident carries
  a new SRP action (or is cleared), it publishes a NotificationRequested to the school's
  staff, PA and signage (and responders for a real incident) with priority LIFE_SAFETY and
  acknowledgement required; no human step in between. Its id is derived from the incident
  version, so a redelivered incident event never notifies twice. ALL CLEAR goes to the
  audiences of the action it ends.
  For a real incident it also prepares the message to guardians and the public, held
  until an administrator approves it (:mod:`services.notify.approvals`).
* **requests** (group ``notify-requests``): every NotificationRequested, from the hook or
  any other producer, is fanned out by the :class:`~services.notify.dispatcher.Dispatcher`;
  receipts from elsewhere (PA/signage command results) update the store; a
  NotificationDecided releases (or rejects) a held message.

Every notification also becomes a CAP 1.2 document (stored, on the feed when Public, POSTed
to ``cap_endpoint_url`` when set): Restricted when staff, responders or endpoints are among
its recipients, else Public (the released family message is the public alert).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from safehub.contracts.names import EventType
from safehub.kernel.bus import H_EVENT_TYPE, H_SOURCE, ConsumedEvent, Headers, header
from safehub.kernel.envelope import caused_by, new_event
from safehub.kernel.errors import BusError, HandlerError
from safehub.kernel.http_server import ServerThread
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.topics import INCIDENTS, NOTIFICATIONS
from safehub.kernel.views import follow_directory, follow_people
from safehub.standards.cap import (
    CapAlert,
    CapError,
    CapInfo,
    Category,
    MsgType,
    Reference,
    Scope,
    Severity,
    Status,
    Urgency,
    build_alert,
)
from safehub.standards.twilio import STATUS_PATH, VOICE_ACK_PATH
from services.notify import templates
from services.notify.approvals import DECIDED, Approvals
from services.notify.audiences import AudienceError, Audiences, Target
from services.notify.auth import ApiAuth, OperatorsFile
from services.notify.cap import CapText, school_area, srp_alert
from services.notify.cap_endpoint import CapDeliveryError, post_cap
from services.notify.channels.announce import AnnouncementAdapter, AnnouncementContext
from services.notify.channels.base import ChannelAdapter
from services.notify.channels.email import SmtpEmailAdapter
from services.notify.channels.push import WebhookPushAdapter
from services.notify.channels.sms import TwilioSmsAdapter, TwilioVoiceAdapter
from services.notify.dispatcher import RECEIPT, REQUESTED, SOURCE, Dispatcher, Outbox, notify_id
from services.notify.settings import NotifySection, NotifySettings
from services.notify.store import NotificationRow, Store
from services.notify.web import AckLinks, NotifyWeb

log = structlog.get_logger(__name__)

NAME = "notify"
OPENED = EventType.INCIDENT_OPENED
CHANGED = EventType.INCIDENT_CHANGED
CLEARED = EventType.INCIDENT_CLEARED
HOOK_REQUESTER = "notify:incident-hook"
#: CAP ``audience`` of public (family) alerts.
PUBLIC_AUDIENCE = "Parents, guardians and the public"


class IncidentHook:
    """Turns a new SRP action on an incident into a NotificationRequested."""

    def __init__(
        self,
        runtime: Runtime[NotifySettings],
        store: Store,
        audiences: Audiences,
        approvals: Approvals,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._audiences = audiences
        self._approvals = approvals
        self._notify_responders = runtime.settings.notify.notify_responders

    def handle(self, consumed: ConsumedEvent) -> None:
        """Consumer handler for the incidents topic."""
        if consumed.event_type not in (OPENED, CHANGED, CLEARED):
            return  # lockdown progress and signal decisions: nothing to tell anyone
        event, envelope = consumed.event, consumed.envelope
        incident_id = str(event["incident_id"])
        version = int(event["version"])
        action = "ALL_CLEAR" if consumed.event_type == CLEARED else event.get("srp_action")
        school_id = envelope["tenant"].get("school")
        # An incident notify cannot place would pass unannounced: dead-letter it, loudly.
        if not school_id:
            raise HandlerError(
                f"incident {incident_id[:64]!r} has no school in its tenant: nobody to notify"
            )
        try:
            school = self._audiences.school(str(school_id))
        except AudienceError as exc:
            raise HandlerError(f"incident {incident_id[:64]!r}: {exc}") from exc
        if not action:
            return  # no SRP action in force yet: nothing to announce
        mark = self._store.incident_mark(incident_id)
        if mark is not None:
            last_action, last_version, _nid, last_audiences = mark
            if version <= last_version or action == last_action:
                return
        elif action == "ALL_CLEAR":
            return  # nothing was announced, so there is nothing to end
        exercise = bool(envelope.get("exercise"))
        if action == "ALL_CLEAR" and mark is not None:
            audiences = last_audiences
        else:
            audiences = [f"staff:{school_id}", f"pa:{school_id}", f"signage:{school_id}"]
            if not exercise and self._notify_responders:
                audiences.append(f"responders:{school_id}")
        headline = (
            f"{templates.ACTIONS[action]['en'][0]} - {school.name}"
            if action in (templates.ACTIONS)
            else f"SRP {action} - {school.name}"
        )
        body = str(event.get("summary") or event.get("message") or headline)
        notification_id = notify_id("incident", incident_id, str(version))
        request = new_event(
            EventType.NOTIFICATION_REQUESTED,
            source=SOURCE,
            **caused_by(envelope, incident_id=incident_id),
            event_id=notify_id("request", notification_id),
            payload={
                "notification_id": notification_id,
                "priority": "LIFE_SAFETY",
                "srp_action": action,
                "headline": headline,
                "body": body,
                "audiences": audiences,
                "recipients": [],
                "require_ack": True,
                "requested_by": HOOK_REQUESTER,
            },
        )
        self._runtime.producer.publish(request)
        # Families and the public: prepared now, sent once an administrator approves.
        family_id = None
        if not exercise:
            family_id = self._approvals.prepare(
                incident=consumed, incident_id=incident_id, version=version, action=action
            )
        self._store.mark_incident(incident_id, action, version, notification_id, audiences)
        log.info(
            "SRP action notified",
            incident_id=incident_id,
            version=version,
            srp_action=action,
            exercise=exercise,
            notification_id=notification_id,
            held_family_notification_id=family_id,
        )


class CapPublisher:
    """Every notification as a CAP 1.2 document: stored, on the feed, POSTed to an endpoint."""

    def __init__(
        self, config: NotifySection, store: Store, audiences: Audiences, stop: threading.Event
    ) -> None:
        self._config = config
        self._store = store
        self._audiences = audiences
        self._stop = stop
        self._wake = threading.Event()

    def alert(self, n: NotificationRow, targets: Sequence[Target]) -> CapAlert:
        """The CAP alert of a notification (Update with references after the first)."""
        restricted = any(t.kind in ("staff", "responder", "endpoint") for t in targets)
        scope = Scope.RESTRICTED if restricted else Scope.PUBLIC
        previous = self._store.cap_of_incident(n.incident_id, scope) if n.incident_id else []
        references = tuple(
            Reference(self._config.cap_sender, identifier, datetime.fromtimestamp(sent, UTC))
            for identifier, sent in previous
        )
        msg_type = MsgType.UPDATE if references else MsgType.ALERT
        school = self._audiences.school(n.school_id)
        area = school_area(school)
        sent = datetime.fromtimestamp(n.created_at, UTC)
        identifier = f"safehub-{n.notification_id}"
        if restricted:
            texts = [self._text(n, school.name, language) for language in ("en-US", "es-US")]
        else:
            texts = self._public_texts(n, school.name)
        if n.srp_action in templates.ACTIONS:
            return srp_alert(
                identifier=identifier,
                hub_id=self._config.cap_sender,
                sent=sent,
                action=str(n.srp_action),
                exercise=n.exercise,
                scope=scope,
                texts=texts,
                area=area,
                sender_name=school.name,
                msg_type=msg_type,
                references=references,
                incident_id=n.incident_id,
                audience=None if restricted else PUBLIC_AUDIENCE,
            )
        routine = n.priority == "ROUTINE"
        return CapAlert(
            identifier=identifier,
            sender=self._config.cap_sender,
            sent=sent,
            status=Status.EXERCISE if n.exercise else Status.ACTUAL,
            msg_type=msg_type,
            scope=scope,
            restriction="Recipients named by the school only." if restricted else None,
            references=references,
            incidents=(n.incident_id,) if n.incident_id else (),
            infos=(
                CapInfo(
                    event=n.headline[:80] or "School notification",
                    categories=(Category.SECURITY if n.srp_action else Category.OTHER,),
                    urgency=Urgency.EXPECTED if routine else Urgency.IMMEDIATE,
                    severity=Severity.MINOR if routine else Severity.SEVERE,
                    sender_name=school.name,
                    headline=n.headline,
                    description=n.body,
                    areas=(area,),
                ),
            ),
        )

    @staticmethod
    def _text(n: NotificationRow, school_name: str, language: str) -> CapText:
        rendered = templates.render(
            srp_action=n.srp_action,
            headline=n.headline,
            body=n.body,
            school_name=school_name,
            language=language,
            channel="CAP",
            exercise=n.exercise,
            ack_url=None,
            require_ack=False,
        )
        action = templates.ACTIONS.get(n.srp_action or "", {}).get(templates.primary(language))
        return CapText(
            language=language,
            headline=rendered.subject,
            description=n.body if language == "en-US" else rendered.text,
            instruction=action[1] if action else rendered.text,
        )

    @staticmethod
    def _public_texts(n: NotificationRow, school_name: str) -> list[CapText]:
        """Family/public words: per language as prepared, or the approver's text as written."""
        if not templates.family_as_prepared(n.srp_action, school_name, n.headline, n.body):
            return [CapText("en-US", n.headline, n.body, None)]
        return [
            CapText(language, text.headline, text.description, text.instruction)
            for language in ("en-US", "es-US")
            if (text := templates.family(str(n.srp_action), school_name, language)) is not None
        ]

    def publish(self, n: NotificationRow, targets: Sequence[Target]) -> None:
        """Build, store and queue for the endpoint (never fails the notification)."""
        try:
            alert = self.alert(n, targets)
            xml = build_alert(alert, xsd_path=self._config.cap_xsd)
        except CapError as exc:
            log.error("CAP document not built", notification_id=n.notification_id, error=str(exc))
            return
        info = alert.infos[0] if alert.infos else None
        self._store.put_cap(
            alert.identifier,
            notification_id=n.notification_id,
            school_id=n.school_id,
            msg_type=alert.msg_type.value,
            scope=alert.scope.value,
            headline=(info.headline or info.event) if info else n.headline,
            xml=xml.decode(),
            sent_at=n.created_at,
        )
        log.info(
            "CAP alert issued",
            notification_id=n.notification_id,
            identifier=alert.identifier,
            msg_type=alert.msg_type.value,
            scope=alert.scope.value,
        )
        self._wake.set()

    def post_loop(self) -> None:
        """POST stored alerts to the CAP endpoint until each is accepted (retries with backoff)."""
        url = self._config.cap_endpoint_url
        if url is None:
            return
        delay = self._config.retry_initial_s
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            failed = False
            for identifier, xml in self._store.cap_unposted():
                try:
                    post_cap(url, xml.encode(), token=self._config.cap_endpoint_token)
                except CapDeliveryError as exc:
                    log.warning(
                        "CAP endpoint did not take the alert",
                        identifier=identifier,
                        error=str(exc),
                        transient=exc.transient,
                    )
                    if exc.transient:
                        failed = True
                        break
                self._store.cap_posted(identifier)  # delivered, or refused for good (logged)
            delay = min(delay * 2, self._config.retry_cap_s) if failed else 5.0


def _adapters(
    runtime: Runtime[NotifySettings], public_url: str, dispatcher_context: AnnouncementContextFn
) -> dict[str, ChannelAdapter]:
    config = runtime.settings.notify
    adapters: dict[str, ChannelAdapter] = {
        "EMAIL": SmtpEmailAdapter(
            host=config.smtp_host,
            port=config.smtp_port,
            sender=config.smtp_from,
            starttls=config.smtp_starttls,
            implicit_tls=config.smtp_ssl,
            ca_bundle=config.smtp_ca_bundle,
            username=config.smtp_username,
            password=config.smtp_password,
            timeout_s=config.smtp_timeout_s,
            max_connections=config.workers.get("EMAIL", 4),
        ),
    }
    if config.sms_enabled:
        adapters["SMS"] = TwilioSmsAdapter(
            config.twilio, status_callback_url=public_url + STATUS_PATH
        )
        adapters["VOICE"] = TwilioVoiceAdapter(
            config.twilio,
            status_callback_url=public_url + STATUS_PATH,
            ack_action_url=public_url + VOICE_ACK_PATH,
        )
    if config.push_url:
        adapters["PUSH"] = WebhookPushAdapter(config.push_url, token=config.push_token)
    for channel in ("PUBLIC_ADDRESS", "DIGITAL_SIGNAGE"):
        adapters[channel] = AnnouncementAdapter(
            channel, runtime.producer.publish, dispatcher_context
        )
    return adapters


class AnnouncementContextFn:
    """Late-bound notification lookup for the announcement adapters."""

    dispatcher: Dispatcher | None = None

    def __call__(self, notification_id: str) -> AnnouncementContext:
        assert self.dispatcher is not None, "dispatcher not wired"
        n = self.dispatcher.context(notification_id)
        return AnnouncementContext(
            tenant=n.tenant,
            building=n.building,
            incident_id=n.incident_id,
            causation_id=n.request_event_id,
            srp_action=n.srp_action,
        )


def setup(runtime: Runtime[NotifySettings]) -> None:
    """Store, web endpoint, channels, dispatcher, then the two consumers."""
    config = runtime.settings.notify
    # One INFO line per provider request would be thousands per lockdown; receipts say it all.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in AIOHTTP_LOGGERS:
        logging.getLogger(name).addFilter(_without_exception)
    # The live directory (schools, buildings) and the live people (who is reached, who may
    # approve): every resolution and every API call reads them as they are then, so a guardian
    # a roster adds gets the next message and a school added at run time can be addressed,
    # without a restart.
    directory = follow_directory(
        runtime.settings.kafka,
        runtime.catalog,
        runtime.codec,
        config.directory_file,
        name="notify-directory",
        ready_timeout=config.directory_ready_s,
    )
    runtime.on_close(directory.close)
    people = follow_people(
        runtime.settings.kafka,
        runtime.catalog,
        runtime.codec,
        config.directory_file,
        name="notify-people",
        ready_timeout=config.directory_ready_s,
    )
    runtime.on_close(people.close)
    audiences = Audiences(directory, people)
    operators = OperatorsFile.load(config.operators_file) if config.operators_file else None
    auth = ApiAuth(people, operators.operators if operators else [], config.status_token)
    if not auth.configured:
        log.warning(
            "no API credentials: status, held messages and decisions refuse everyone; set "
            "SAFEHUB_NOTIFY__OPERATORS_FILE (administrators' token digests) to release "
            "family messages"
        )
    store = Store(config.database_url)
    runtime.on_close(store.close)
    links = AckLinks(config.ack_secret)
    server = ServerThread(config.listen, name="notify-web")
    server.bind()  # the public URL (in messages and callbacks) needs the port first
    public_url = (config.public_url or f"http://{config.listen_host}:{server.port}").rstrip("/")
    links.base_url = public_url
    context = AnnouncementContextFn()
    adapters = _adapters(runtime, public_url, context)
    for adapter in adapters.values():
        runtime.on_close(adapter.close)
    outbox = Outbox(store, runtime.producer, runtime.codec, runtime.stop)
    cap = CapPublisher(config, store, audiences, runtime.stop)
    dispatcher = Dispatcher(
        config=config,
        store=store,
        audiences=audiences,
        adapters=adapters,
        outbox=outbox,
        ack_url=links.url,
        stop=runtime.stop,
        on_notification=cap.publish,
    )
    context.dispatcher = dispatcher
    approvals = Approvals(
        store=store, audiences=audiences, outbox=outbox, publish=runtime.producer.publish
    )
    web = NotifyWeb(
        dispatcher=dispatcher,
        approvals=approvals,
        store=store,
        links=links,
        auth=auth,
        twilio_token=config.twilio.auth_token if config.sms_enabled else None,
        cap_xsd=config.cap_xsd,
    )
    server.start(web.app())
    runtime.on_close(server.close)
    log.info("notify listening", port=server.port, channels=sorted(adapters), public_url=public_url)
    started = time.monotonic()
    try:
        dispatcher.recover()
    except BusError as exc:
        log.warning("outbox leftovers not re-published yet", error=str(exc))
    for name, target in dispatcher.threads():
        runtime.spawn(target, name=name)
    runtime.spawn(cap.post_loop, name="notify-cap-post")
    log.info("dispatcher started", ms=round((time.monotonic() - started) * 1000))

    def requests(consumed: ConsumedEvent) -> None:
        if consumed.event_type == DECIDED:
            approvals.handle(consumed)
        else:
            dispatcher.handle(consumed)

    runtime.consumer(
        "notify-requests",
        [NOTIFICATIONS],
        requests,
        fetch_wait_max_ms=config.requests_fetch_wait_ms,
        # The topic also carries our own receipts (several per recipient): pass them over.
        accept=_for_dispatcher,
    )
    hook = IncidentHook(runtime, store, audiences, approvals)
    runtime.consumer(
        "notify-incidents",
        [INCIDENTS],
        hook.handle,
        fetch_wait_max_ms=config.incidents_fetch_wait_ms,
    )


#: aiohttp's loggers; what they log about a failed request must not carry the request.
AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal")


def _without_exception(record: logging.LogRecord) -> bool:
    """Keep the line, drop the exception: its repr (a UnicodeDecodeError's holds the whole
    input) and a traceback's locals can carry a request body. The type is kept."""
    if record.exc_info and record.exc_info[0] is not None:
        record.msg = f"{record.getMessage()} ({record.exc_info[0].__name__})"
        record.args = None
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None
    return True


def _for_dispatcher(headers: Headers) -> bool:
    """Requests, decisions, and receipts of other systems (the gateway's announcements)."""
    event_type = header(headers, H_EVENT_TYPE)
    if event_type in (REQUESTED, DECIDED):
        return True
    return event_type == RECEIPT and header(headers, H_SOURCE) != SOURCE


def main() -> None:
    """Run the notify service until SIGTERM."""
    run(NAME, NotifySettings, setup)
