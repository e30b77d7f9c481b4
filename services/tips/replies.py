"""Answers to tipsters on the channel they wrote from: a text to an SMS tipster, a mail to
an e-mail tipster (their code and passcode first, then each analyst's answer).

A tip that came in by SMS or e-mail has its reply address only inside the sealed identity;
when there is something to send, the tips service opens the blob, sends from the tip line
the tipster wrote to (Twilio's Messages API or the provider simulator; an SMTP relay), and
forgets the address again. It is never logged, nor in an error: a failed send is logged by
tip id and status only, and the message stays in the thread for the tipster's next visit.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import httpx
import structlog

from safehub.kernel.lifecycle import Closing
from services.tips.intake import Receipt
from services.tips.sealing import IdentitySeal, SealError
from services.tips.store import MessageRow, TipRow, TipStore

log = structlog.get_logger(__name__)

API_VERSION = "2010-04-01"
MAX_SMS_CHARS = 1600


class SmsReplies(Closing):
    """Texts analysts' thread messages to SMS tipsters."""

    def __init__(
        self,
        *,
        store: TipStore,
        seal: IdentitySeal,
        api_base_url: str,
        account_sid: str,
        auth_token: str,
        lines: dict[str, str],
        timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        self._seal = seal
        self._account_sid = account_sid
        #: school id → the tip line's number (the reverse of ``sms_schools``).
        self._from = {school: number for number, school in lines.items()}
        self._client = httpx.Client(
            base_url=api_base_url.rstrip("/"),
            auth=httpx.BasicAuth(account_sid, auth_token),
            timeout=timeout_s,
            headers={"Accept": "application/json"},
        )

    def __call__(self, tip: TipRow, message: MessageRow) -> bool:
        """Text an analyst's message to the tip's SMS tipster; whether the provider took it."""
        if tip.channel != "SMS" or message.author != "ANALYST":
            return False
        sender = self._from.get(tip.school_id)
        blob = self._store.sealed_identity(tip.tip_id)
        if sender is None or blob is None:
            log.warning("no tip line to answer an SMS tip from", tip_id=tip.tip_id)
            return False
        try:
            to = self._seal.open(blob, tip_id=tip.tip_id).get("reply_address")
        except SealError as exc:
            log.error("the tip's identity does not open", tip_id=tip.tip_id, error=str(exc))
            return False
        if not to:
            return False
        body = f"Safety team: {message.text}\n(Reply here; your tip code keeps you anonymous.)"
        try:
            answer = self._client.post(
                f"/{API_VERSION}/Accounts/{self._account_sid}/Messages.json",
                data={"To": str(to), "From": sender, "Body": body[:MAX_SMS_CHARS]},
            )
        except httpx.HTTPError as exc:
            log.warning(
                "answer to an SMS tipster not sent",
                tip_id=tip.tip_id,
                error_type=type(exc).__name__,
            )
            return False
        if answer.status_code >= 300:
            log.warning(
                "answer to an SMS tipster refused", tip_id=tip.tip_id, status=answer.status_code
            )
            return False
        log.info("answer texted to the SMS tipster", tip_id=tip.tip_id)
        return True

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class EmailReplies:
    """Mails e-mail tipsters their code and passcode, then analysts' answers."""

    def __init__(
        self,
        *,
        store: TipStore,
        seal: IdentitySeal,
        relay_host: str,
        relay_port: int,
        lines: dict[str, str],
        timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        self._seal = seal
        self._host = relay_host
        self._port = relay_port
        #: school id → the tip line's address (the reverse of ``email_schools``).
        self._from = {school: address for address, school in lines.items()}
        self._timeout_s = timeout_s

    def _send(self, tip_id: str, school_id: str, to: str, subject: str, text: str) -> bool:
        sender = self._from.get(school_id)
        if sender is None:
            log.warning("no tip line to answer an e-mail tip from", tip_id=tip_id)
            return False
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = sender, to, subject
        mail.set_content(text)
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout_s) as client:
                client.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning(
                "mail to an e-mail tipster not sent", tip_id=tip_id, error_type=type(exc).__name__
            )
            return False
        log.info("mail sent to the e-mail tipster", tip_id=tip_id)
        return True

    def receipt(self, receipt: Receipt, school_id: str, to: str) -> bool:
        """The new tip's code and passcode, to the address it came from."""
        text = (
            f"Your tip was received. Tip code: {receipt.code}  Passcode: {receipt.passcode}\n\n"
            "Reply to this address to add more, or use the code and passcode on the tip "
            "line's web page. We may ask you questions here. If someone is in danger now, "
            "call 911."
        )
        return self._send(receipt.tip_id, school_id, to, f"Tip {receipt.code} received", text)

    def __call__(self, tip: TipRow, message: MessageRow) -> bool:
        """Mail an analyst's message to the tip's e-mail tipster."""
        if tip.channel != "EMAIL" or message.author != "ANALYST":
            return False
        blob = self._store.sealed_identity(tip.tip_id)
        try:
            to = self._seal.open(blob, tip_id=tip.tip_id).get("reply_address") if blob else None
        except SealError as exc:
            log.error("the tip's identity does not open", tip_id=tip.tip_id, error=str(exc))
            return False
        if not to:
            return False
        text = f"The safety team wrote about tip {tip.code}:\n\n{message.text}\n\nReply here."
        return self._send(tip.tip_id, tip.school_id, str(to), f"About tip {tip.code}", text)


class Replies:
    """The one ``Intake.on_message`` hook: each tip's answer goes out on its own channel."""

    def __init__(self, *senders: SmsReplies | EmailReplies) -> None:
        self._senders = senders

    def __call__(self, tip: TipRow, message: MessageRow) -> bool:
        """Hand the message to the sender of the tip's channel (each ignores the others)."""
        return any(sender(tip, message) for sender in self._senders)
