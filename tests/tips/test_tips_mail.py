"""Inbound e-mail tips over real SMTP: smtplib → the tips listener (aiosmtpd) → a real Intake
on a real store and broker. A message to a tip line is a tip (EMAIL), a reply from the same
sender continues its thread, photos are stored cleaned, refusals name the field and never
echo the sender or the words, and the sender's address reaches no topic and no log line."""

from __future__ import annotations

import base64
import email.policy
import io
import logging
import os
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from safehub.devstack.pki import DevPki
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory
from safehub.kernel.http_server import server_ssl_context
from safehub.kernel.outbox import OutboxRelay
from safehub.kernel.settings import KafkaSettings, ListenSettings
from safehub.kernel.topics import TIPS, TopicCatalog
from services.tips.codes import PasscodeHasher
from services.tips.escalation import Escalator
from services.tips.intake import Intake
from services.tips.mail import MailIntake, html_to_text, own_words
from services.tips.sealing import IdentitySeal
from services.tips.settings import TipsSection
from services.tips.store import TipRow, TipStore
from tests.support.kafka import read_all
from tests.support.tips import CONTACTS, short_call_trees
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

LINCOLN = "sch-lincoln-hs"
RIVERSIDE = "sch-riverside-es"
LINCOLN_LINE = "tips-lincoln@tips.example"
RIVERSIDE_LINE = "tips-riverside@tips.example"
SENDER = CONTACTS["email"]
SENDER_NAME = CONTACTS["name"]
MAX_BYTES = 300_000


@dataclass
class MailTips:
    """A listener over a real Intake, and the store behind it."""

    listener: MailIntake
    store: TipStore
    seal: IdentitySeal
    port: int

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        client.ehlo("mx.example.org")
        return client

    def send(self, message: EmailMessage, *, sender: str = SENDER) -> None:
        with self.smtp() as client:
            refused = client.send_message(message, from_addr=sender)
        assert refused == {}

    def email_tips(self, school: str = LINCOLN) -> list[TipRow]:
        return [t for t in self.store.tips_of([school]) if t.channel == "EMAIL"]


@pytest.fixture
def mail(
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    producer: EventProducer,
    codec: Codec,
    tmp_path: Path,
) -> Iterator[MailTips]:
    section = TipsSection(
        database_url=f"sqlite:///{tmp_path / 'tips.db'}",
        directory_file=short_call_trees(tmp_path),
        seal_keys="t1:" + base64.b64encode(os.urandom(32)).decode(),
        contact_key="contact-key-for-tests",
        max_attachments=2,
    )
    store = TipStore(section.database_url)
    seal = IdentitySeal.from_setting(section.seal_keys.get_secret_value())
    directory = Directory.load(section.directory_file)
    relay = OutboxRelay(store.outbox, store.engine, producer, codec)
    escalator = Escalator(
        store=store,
        relay=relay,
        directory=directory,
        link=lambda tip_id: f"http://tips.invalid/api/tips/{tip_id}",
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
        attachment_url=lambda attachment_id: f"http://tips.invalid/api/attachments/{attachment_id}",
    )
    pki = DevPki(tmp_path / "pki")
    pair = pki.server()
    listener = MailIntake(
        intake,
        {LINCOLN_LINE: LINCOLN, RIVERSIDE_LINE.upper(): RIVERSIDE},
        max_bytes=MAX_BYTES,
        max_attachments=section.max_attachments,
        listen=ListenSettings(port=0, port_file=tmp_path / "tips-smtp.port"),
        tls_context=server_ssl_context(pair.cert, pair.key),
        store=store,
    )
    port = listener.start()
    assert int((tmp_path / "tips-smtp.port").read_text()) == port
    try:
        yield MailTips(listener, store, seal, port)
    finally:
        listener.close()
        producer.flush()
        store.close()


def _message(text: str, *, to: str = LINCOLN_LINE, subject: str = "", **headers: str) -> Any:
    message = EmailMessage()
    message["From"] = formataddr((SENDER_NAME, SENDER))
    message["To"] = to
    if subject:
        message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="mail.example.org")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(text)
    return message


def _events(kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tip_id: str) -> list[Any]:
    records = read_all(kafka, catalog.name(TIPS))
    return [e for e in (codec.decode(r.value()) for r in records) if e["tip_id"] == tip_id]


def _photo_with_gps() -> tuple[bytes, bytes]:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0xA431] = "SERIAL-77A9X"  # BodySerialNumber
    exif[0x8825] = {1: "N", 2: (32.0, 46.0, 52.3), 3: "W", 4: (96.0, 48.0, 4.1)}
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue(), b"SERIAL-77A9X"


def test_a_mailed_tip_is_an_anonymous_email_tip_and_the_sender_is_only_sealed(
    mail: MailTips,
    kafka: KafkaSettings,
    catalog: TopicCatalog,
    codec: Codec,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # aiosmtpd's own logger, at its most verbose
    message = _message(
        "He said he will bring a knife to the game tomorrow.\n\n-- \n"
        f"{SENDER_NAME}\n{CONTACTS['phone']}",
        subject="Threat at Lincoln",
    )
    mail.send(message)
    [tip] = wait_until(mail.email_tips, what="the e-mail tip")
    assert tip.category == "OTHER" and tip.anonymous
    assert tip.life_safety and tip.imminent  # screening read the words
    assert tip.text.startswith("Threat at Lincoln\n\nHe said he will bring a knife")
    assert SENDER_NAME not in tip.text and CONTACTS["phone"] not in tip.text  # signature cut
    blob = mail.store.sealed_identity(tip.tip_id)
    assert blob is not None
    identity = mail.seal.open(blob, tip_id=tip.tip_id)
    assert identity["reply_address"] == SENDER and identity["contact"] == {}
    assert identity["network"] == {"helo": "mx.example.org", "peer": "127.0.0.1"}
    # The sending server retrying the same message (same Message-ID) makes no second tip.
    mail.send(message)
    assert len(mail.email_tips()) == 1
    submitted = wait_until(
        lambda: [e for e in _events(kafka, catalog, codec, tip.tip_id) if "channel" in e],
        what="TipSubmitted",
    )
    assert submitted[0]["channel"] == "EMAIL" and submitted[0]["tipster_contact_sealed"] is None
    needles = [SENDER.encode(), SENDER_NAME.encode(), CONTACTS["phone"].encode()]
    for topic in {catalog.name(base) for base in catalog.specs} | {catalog.dead_letter}:
        for record in read_all(kafka, topic):
            seen = (record.value() or b"") + b"".join(
                k.encode() + (v or b"") for k, v in (record.headers() or [])
            )
            for needle in needles:
                assert needle not in seen, f"{needle!r} found on {topic}"
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    logged += capfd.readouterr().out  # the service's own (structlog) lines
    assert "email tip taken" in logged and tip.tip_id in logged
    for needle in needles:
        assert needle.decode() not in logged


def test_a_photo_is_stored_cleaned_and_a_reply_continues_the_thread(
    mail: MailTips, kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec
) -> None:
    photo, serial = _photo_with_gps()
    assert serial in photo and Image.open(io.BytesIO(photo)).getexif().get_ifd(0x8825)
    message = _message("The note in the locker room, photo attached.", subject="note")
    message.add_attachment(photo, maintype="image", subtype="jpeg", filename="IMG_0001.jpg")
    message.add_attachment(b"%PDF-1.4 not a photo", maintype="application", subtype="pdf")
    mail.send(message)
    [tip] = wait_until(mail.email_tips, what="the e-mail tip")
    [attachment_id] = mail.store.attachment_ids(tip.tip_id)
    stored = mail.store.attachment(attachment_id)
    assert stored is not None
    _, mime, data = stored
    assert mime == "image/jpeg" and serial not in data
    assert not Image.open(io.BytesIO(data)).getexif()

    reply = _message(
        "It also says 'you will all see on Friday'.\n\n"
        f"On Fri, 4 Dec 2026 at 19:00, {SENDER_NAME} <{SENDER}> wrote:\n"
        "> The note in the locker room, photo attached.",
        subject="Re: note",
    )
    mail.send(reply)
    thread = wait_until(lambda: mail.store.thread(tip.tip_id), what="the thread message")
    assert [(m.author, m.channel, m.text) for m in thread] == [
        ("TIPSTER", "EMAIL", "It also says 'you will all see on Friday'.")
    ]
    assert len(mail.email_tips()) == 1
    wait_until(
        lambda: [
            e
            for e in _events(kafka, catalog, codec, tip.tip_id)
            if e.get("activity") == "THREAD_MESSAGE"
        ],
        what="the THREAD_MESSAGE event",
    )
    # The same sender writing to another school's line is a new tip there.
    mail.send(_message("Someone is selling vapes by the gym.", to=RIVERSIDE_LINE.lower()))
    [other] = wait_until(lambda: mail.email_tips(RIVERSIDE), what="the Riverside tip")
    assert other.text == "Someone is selling vapes by the gym."


def test_an_html_only_message_is_taken_as_its_words() -> None:
    html = (
        "<html><head><title>x</title><style>p {color: red}</style></head><body>"
        "<p>Kids are fighting&nbsp;behind the <b>portables</b>.</p><script>alert(1)</script>"
        "<div>Every day at 3pm.</div></body></html>"
    )
    assert html_to_text(html) == "Kids are fighting behind the portables.\n\nEvery day at 3pm."
    assert "<script>" in html_to_text("<p>&lt;script&gt;</p>")  # what was typed stays


def test_signatures_and_quotes_go_but_a_forwarded_or_quoted_threat_stays() -> None:
    forwarded = (
        "Look what he sent my son\n\n-- \nJordan\n555 0199\n\n"
        "---------- Forwarded message ---------\nFrom: someone\n\nI will shoot you all"
    )
    assert own_words(forwarded, reply=False) == (
        "Look what he sent my son\n\n"
        "---------- Forwarded message ---------\nFrom: someone\n\nI will shoot you all"
    )
    wall = "On the stall door somebody wrote:\n> nobody leaves alive on friday"
    assert own_words(wall, reply=False) == wall
    reply = "More: it was the same handwriting.\n\nOn Fri, Jordan <j@x.org> wrote:\n> earlier"
    assert own_words(reply, reply=True) == "More: it was the same handwriting.\n"
    outlook = "Also room 12.\n-----Original Message-----\nFrom: Jordan\nearlier words"
    assert own_words(outlook, reply=True) == "Also room 12."


def test_an_html_only_message_is_accepted(mail: MailTips) -> None:
    message = _message("")
    message.set_content(
        "<html><head><style>p {color: red}</style></head><body>"
        "<p>Kids are fighting behind the portables.</p><script>alert(1)</script></body></html>",
        subtype="html",
    )
    mail.send(message)
    [tip] = wait_until(mail.email_tips, what="the e-mail tip")
    assert tip.text == "Kids are fighting behind the portables."


def test_refusals_name_the_reason_and_never_echo_the_sender_or_the_words(
    mail: MailTips,
) -> None:
    # Not a tip line: refused at RCPT (the listener relays nothing).
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        mail.send(_message("hello", to="principal@lincoln.example"))
    [(code, reply)] = refused.value.recipients.values()
    assert code == 550 and b"not a tip line" in reply
    # Markup in the words: refused at DATA naming the field.
    with pytest.raises(smtplib.SMTPDataError) as markup:
        mail.send(_message("look <script>steal()</script> here"))
    assert markup.value.smtp_code == 550
    assert b"text:" in markup.value.smtp_error and b"markup" in markup.value.smtp_error
    assert (
        b"steal" not in markup.value.smtp_error and SENDER.encode() not in markup.value.smtp_error
    )
    # Nothing to say at all.
    with pytest.raises(smtplib.SMTPDataError) as empty:
        mail.send(_message("   "))
    assert empty.value.smtp_code == 550 and b"text:" in empty.value.smtp_error
    # Too big: refused at MAIL by the declared SIZE, and at DATA when none is declared.
    big = _message("\n".join(["bullying in the cafeteria " * 30] * 500))
    with pytest.raises(smtplib.SMTPSenderRefused) as declared:
        mail.send(big)
    assert declared.value.smtp_code == 552
    with mail.smtp() as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(LINCOLN_LINE)[0] == 250
        code, reply = client.data(big.as_bytes(policy=email.policy.SMTP))
    assert code == 552
    # One school per message: a second school's line waits for its own delivery.
    with mail.smtp() as client:
        client.mail(SENDER)
        assert client.rcpt(LINCOLN_LINE)[0] == 250
        assert client.rcpt(RIVERSIDE_LINE)[0] == 452
    assert mail.email_tips() == [] and mail.email_tips(RIVERSIDE) == []


def test_starttls_is_offered_when_the_listener_has_a_certificate(
    mail: MailTips, tmp_path: Path
) -> None:
    context = ssl.create_default_context(cafile=str(DevPki(tmp_path / "pki").ca.cert))
    with mail.smtp() as client:
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("mx.example.org")
        assert client.send_message(_message("Someone wrote a slur on the bus."), SENDER) == {}
    [tip] = wait_until(mail.email_tips, what="the e-mail tip")
    assert tip.text == "Someone wrote a slur on the bus."
