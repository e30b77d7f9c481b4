"""The tips deployable: anonymous tips in on every channel, escalated until a human confirms.

``setup(runtime)`` follows the live directory, opens the store (migrations run), seals with
the key ring (refusing to start without one), then starts: the outbox relay thread (the
events intake writes), the escalation ticker, the acknowledgements consumer (group
``tips-acks`` on the notifications topic, NotificationAcknowledged only), the mTLS gRPC
server (``safehub.tips.v1.TipService``, health and reflection) and the HTTP server (public
form and thread, SMS webhook, analysts' API). The tipster's identity exists in clear only
inside this process, for as long as a request takes; it is stored sealed and never leaves.
"""

from __future__ import annotations

import time

import structlog

from safehub.contracts.names import EventType
from safehub.gen.safehub.tips.v1 import tips_pb2
from safehub.kernel.bus import H_EVENT_TYPE, Headers, header
from safehub.kernel.errors import ConfigError
from safehub.kernel.grpc_server import GrpcServer
from safehub.kernel.http_server import ServerThread
from safehub.kernel.outbox import OutboxRelay
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.topics import NOTIFICATIONS
from safehub.kernel.views import follow_directory
from services.tips import rpc
from services.tips.analysts import AnalystsFile
from services.tips.codes import PasscodeHasher
from services.tips.desk import Desk
from services.tips.escalation import Escalator
from services.tips.intake import Intake
from services.tips.mail import MailIntake
from services.tips.replies import EmailReplies, Replies, SmsReplies
from services.tips.sealing import IdentitySeal
from services.tips.settings import TipsSettings
from services.tips.store import TipStore
from services.tips.web import TipsWeb

log = structlog.get_logger(__name__)

NAME = "tips"
SERVICE_NAME = tips_pb2.DESCRIPTOR.services_by_name["TipService"].full_name
ACKNOWLEDGED = str(EventType.NOTIFICATION_ACKNOWLEDGED)


def _acknowledgements(headers: Headers) -> bool:
    return header(headers, H_EVENT_TYPE) == ACKNOWLEDGED


def _senders(
    runtime: Runtime[TipsSettings], store: TipStore, seal: IdentitySeal
) -> list[SmsReplies | EmailReplies]:
    """Who answers tipsters on their own channel: texts through the SMS provider, mails
    through the relay (each only when configured)."""
    section = runtime.settings.tips
    senders: list[SmsReplies | EmailReplies] = []
    if section.twilio_api_base_url and section.twilio_auth_token.get_secret_value():
        texts = SmsReplies(
            store=store,
            seal=seal,
            api_base_url=section.twilio_api_base_url,
            account_sid=section.twilio_account_sid,
            auth_token=section.twilio_auth_token.get_secret_value(),
            lines=section.sms_schools,
        )
        runtime.on_close(texts.close)
        senders.append(texts)
    if section.smtp_relay_host:
        senders.append(
            EmailReplies(
                store=store,
                seal=seal,
                relay_host=section.smtp_relay_host,
                relay_port=section.smtp_relay_port,
                lines=section.email_schools,
            )
        )
    return senders


def setup(runtime: Runtime[TipsSettings]) -> None:
    """Everything the tips service runs, in the order that keeps accepted tips safe."""
    section = runtime.settings.tips
    if not section.seal_keys.get_secret_value():
        raise ConfigError(
            "SAFEHUB_TIPS__SEAL_KEYS is not set: give the identity key ring as "
            "'id:BASE64' (32 random bytes, e.g. `openssl rand -base64 32`)"
        )
    if not section.contact_key.get_secret_value():
        raise ConfigError("SAFEHUB_TIPS__CONTACT_KEY is not set: give a long random secret")
    seal = IdentitySeal.from_setting(section.seal_keys.get_secret_value())
    analysts = AnalystsFile.load(section.analysts_file)
    if not analysts.analysts:
        log.warning(
            "no analysts: the analysts' API refuses everyone; set SAFEHUB_TIPS__ANALYSTS_FILE"
        )
    directory = follow_directory(
        runtime.settings.kafka,
        runtime.catalog,
        runtime.codec,
        section.directory_file,
        name="tips-directory",
        ready_timeout=section.directory_ready_s,
    )
    runtime.on_close(directory.close)
    store = TipStore(section.database_url)
    runtime.on_close(store.close)
    relay = OutboxRelay(store.outbox, store.engine, runtime.producer, runtime.codec)
    http = ServerThread(section.http_listen, name="tips-http")
    http.bind()
    public_url = (section.public_url or f"http://{section.http_host}:{http.port}").rstrip("/")
    escalator = Escalator(
        store=store,
        relay=relay,
        directory=directory,
        link=lambda tip_id: f"{public_url}/api/tips/{tip_id}",
        close_within_h=section.close_within_h,
    )
    intake = Intake(
        store=store,
        seal=seal,
        hasher=PasscodeHasher(),
        directory=directory,
        relay=relay,
        escalator=escalator,
        section=section,
        contact_key=section.contact_key.get_secret_value().encode(),
        attachment_url=lambda attachment_id: f"{public_url}/api/attachments/{attachment_id}",
    )
    desk = Desk(store=store, relay=relay, directory=directory, escalator=escalator)
    senders = _senders(runtime, store, seal)
    if senders:
        intake.on_message = Replies(*senders)
    mails = next((x for x in senders if isinstance(x, EmailReplies)), None)
    started = time.monotonic()
    swept = relay.sweep()  # what a crash left unpublished goes out before anything new
    runtime.spawn(lambda: relay.run(runtime.stop, sweep_at_start=False), name="tips-outbox")
    runtime.spawn(lambda: escalator.run(runtime.stop, section.tick_s), name="tips-escalation")
    runtime.consumer(
        section.acks_group, [NOTIFICATIONS], escalator.handle, accept=_acknowledgements
    )
    web = TipsWeb(
        intake=intake,
        desk=desk,
        store=store,
        directory=directory,
        analysts=analysts,
        public_url=lambda: public_url,
        twilio_token=section.twilio_auth_token.get_secret_value(),
        sms_schools=section.sms_schools,
        max_request_bytes=section.max_request_bytes,
    )
    http.start(web.app())
    runtime.on_close(http.close)
    smtp_port = None
    if section.email_schools:
        mail = MailIntake(
            intake,
            section.email_schools,
            max_bytes=section.max_email_bytes,
            max_attachments=section.max_attachments,
            listen=section.smtp_listen,
            store=store,
        )
        if mails is not None:
            mail.on_receipt = mails.receipt
        smtp_port = mail.start()
        runtime.on_close(mail.close)
    # Routine tips wait their turn holding a worker thread; enough workers that a life-safety
    # tip always finds one free (the wait itself costs nothing).
    grpc = GrpcServer(
        "tips-grpc", section.grpc_listen, section.tls(), max_workers=section.grpc_workers
    )
    grpc.add(SERVICE_NAME, rpc.register, rpc.TipServicer(intake, store, directory))
    grpc_port = grpc.start()
    runtime.on_close(grpc.stop)
    log.info(
        "tips listening",
        http_port=http.port,
        grpc_port=grpc_port,
        smtp_port=smtp_port,
        public_url=public_url,
        republished=swept,
        ms=round((time.monotonic() - started) * 1000),
    )


def main() -> None:
    """Run the tips service until SIGTERM."""
    run(NAME, TipsSettings, setup)
