"""Analysts' answers to SMS tipsters: a text to the number the tip came from.

A tip that came in by SMS has its reply address only inside the sealed identity; when an
analyst writes in its thread, the tips service opens the blob, texts the answer from the tip
line the tipster wrote to (Twilio's Messages API, or the provider simulator), and forgets the
number again. The number is never logged, nor in an error: a failed send is logged by tip id
and HTTP status only, and the message stays in the thread for the tipster's next visit.
"""

from __future__ import annotations

import httpx
import structlog

from safehub.kernel.lifecycle import Closing
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
