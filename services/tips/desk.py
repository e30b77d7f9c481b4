"""What analysts do to a tip: move it, assign it, change its flag, split it, close it.

Each change is checked against the lifecycle (:mod:`services.tips.model`), written with its
TipUpdated in one transaction, and recorded with who made it. The life-safety flag changes
only with a reason (kept in the event's note, STUDENT_RECORD like every note); a duplicate
split from its primary goes back to TRIAGED as a tip of its own; closing needs a disposition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from safehub.kernel.codec import Event
from safehub.kernel.directory import DirectorySource
from safehub.kernel.outbox import OutboxRelay
from services.tips import events
from services.tips.analysts import Analyst
from services.tips.escalation import Escalator
from services.tips.intake import Intake, IntakeError, Receipt, TipRequest, parse_category
from services.tips.model import Channel, Status, TransitionError, check_move, closing
from services.tips.screening import TextRejectedError, clean_text
from services.tips.store import TipRow, TipStore

log = structlog.get_logger(__name__)

MAX_NOTE_CHARS = 2000


class Desk:
    """Analysts' changes to tips."""

    def __init__(
        self,
        *,
        store: TipStore,
        relay: OutboxRelay,
        directory: DirectorySource,
        escalator: Escalator,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._relay = relay
        self._directory = directory
        self._escalator = escalator
        self._clock = clock

    def tip_for(self, analyst: Analyst, tip_id: str) -> TipRow:
        """The tip if this analyst works its district (not_found otherwise: no oracle)."""
        tip = self._store.tip(tip_id)
        if tip is None or not analyst.may_see(tip.district_id):
            raise IntakeError("not_found", "no such tip", field="tip_id")
        return tip

    def photo(self, analyst: Analyst, attachment_id: str) -> tuple[str, bytes]:
        """``(mime, cleaned bytes)`` of a tip's photo the analyst may see (not_found else)."""
        found = self._store.attachment(attachment_id)
        if found is None:
            raise IntakeError("not_found", "no such photo", field="attachment_id")
        tip_id, mime, data = found
        self.tip_for(analyst, tip_id)
        return mime, data

    def phone_tip(
        self,
        intake: Intake,
        analyst: Analyst,
        *,
        school_id: str,
        category: str,
        text: str,
        client_tip_id: str | None = None,
    ) -> Receipt:
        """A tip by phone typed by the analyst, for a school of the districts they work."""
        directory = self._directory.current()
        if directory.has_school(school_id) and not analyst.may_see(
            directory.district_of(school_id).id
        ):
            raise IntakeError("not_found", "unknown school", field="school_id")
        return intake.submit(
            TipRequest(
                channel=Channel.PHONE,
                school_id=school_id,
                category=parse_category(category or "OTHER"),
                text=text,
                anonymous=True,
                client_key=f"phone:{analyst.id}:{client_tip_id}" if client_tip_id else None,
                entered_by=analyst.id,
            )
        )

    def _note(self, text: str | None, *, required: bool) -> str | None:
        try:
            note = clean_text(text or "", field="note", max_chars=MAX_NOTE_CHARS, required=required)
        except TextRejectedError as exc:
            raise IntakeError.invalid(exc.field, exc.reason) from None
        return note or None

    def _write(self, tip: TipRow, event: Event, **values: Any) -> None:
        now = self._clock()
        values["updated_at"] = now
        if tip.first_human_at is None:
            values["first_human_at"] = now
        analyst = str(event["updated_by"])
        out = [event]
        with self._store.transaction("cannot record the change") as conn:
            # An analyst working the tip is the human the escalation was looking for.
            if self._store.acknowledge(conn, tip.tip_id, analyst, now):
                out.append(
                    events.updated(
                        tip_id=tip.tip_id,
                        tenant=event["envelope"]["tenant"],
                        status=str(event["status"]),
                        activity="ESCALATION_ACKNOWLEDGED",
                        updated_by=analyst,
                        key="analyst",
                        notified=(analyst,),
                        assigned_to=event.get("assigned_to"),
                        life_safety=tip.life_safety,
                    )
                )
            self._store.update_tip(conn, tip.tip_id, [self._relay.item(e) for e in out], **values)
        self._relay.publish(out)
        log.info(
            "tip changed",
            tip_id=tip.tip_id,
            activity=event["activity"],
            status=event["status"],
            by=analyst,
        )

    def _event(self, tip: TipRow, analyst: Analyst, **fields: Any) -> Event:
        tenant = self._directory.current().tenant(tip.school_id)
        key = fields.pop("key", None) or f"{analyst.id}:{self._clock():.6f}"
        return events.updated(
            tip_id=tip.tip_id, tenant=tenant, updated_by=analyst.id, key=key, **fields
        )

    def move(
        self,
        analyst: Analyst,
        tip_id: str,
        status: str,
        *,
        assigned_to: str | None,
        note: str | None,
    ) -> TipRow:
        """Move a tip along its lifecycle (and assign it)."""
        tip = self.tip_for(analyst, tip_id)
        try:
            target = check_move(tip.status, status)
        except TransitionError as exc:
            raise IntakeError.invalid(exc.field, str(exc)) from None
        assignee = assigned_to or tip.assigned_to
        if target == Status.ASSIGNED and not assignee:
            assignee = analyst.id
        event = self._event(
            tip,
            analyst,
            status=target.value,
            activity="STATUS",
            note=self._note(note, required=False),
            assigned_to=assignee,
            life_safety=tip.life_safety,
        )
        self._write(tip, event, status=target.value, assigned_to=assignee)
        return self.tip_for(analyst, tip_id)

    def set_life_safety(self, analyst: Analyst, tip_id: str, value: bool, reason: str) -> TipRow:
        """Change the life-safety flag, with the reason recorded."""
        tip = self.tip_for(analyst, tip_id)
        note = self._note(reason, required=True)
        event = self._event(
            tip,
            analyst,
            status=tip.status,
            activity="LIFE_SAFETY_CHANGED",
            note=note,
            assigned_to=tip.assigned_to,
            life_safety=value,
        )
        self._write(tip, event, life_safety=value)
        return self.tip_for(analyst, tip_id)

    def split(self, analyst: Analyst, tip_id: str, reason: str | None) -> TipRow:
        """Take a folded tip out of its primary: a tip of its own again."""
        tip = self.tip_for(analyst, tip_id)
        if tip.primary_tip_id is None:
            raise IntakeError.invalid("tip_id", "the tip is not folded into another")
        event = self._event(
            tip,
            analyst,
            status=Status.TRIAGED.value,
            activity="SPLIT",
            note=self._note(reason, required=False),
            life_safety=tip.life_safety,
        )
        self._write(tip, event, status=Status.TRIAGED.value, primary_tip_id=None)
        return self.tip_for(analyst, tip_id)

    def to_psap(self, analyst: Analyst, tip_id: str, reason: str) -> TipRow:
        """Send a tip to 911 now (a ThreatReported; once per tip), with the reason recorded
        in the tip's own record, never in what goes to the PSAP."""
        tip = self.tip_for(analyst, tip_id)
        note = self._note(reason, required=True)
        tenant = self._directory.current().tenant(tip.school_id)
        out = self._escalator.to_psap(
            tip,
            tenant,
            why="a tip-line analyst judged it an emergency",
            by=analyst.id,
            note=note,
        )
        with self._store.transaction("cannot record the 911 report") as conn:
            self._store.update_tip(
                conn, tip.tip_id, [self._relay.item(e) for e in out], updated_at=self._clock()
            )
        self._relay.publish(out)
        log.warning("tip sent to 911", tip_id=tip.tip_id, by=analyst.id)
        return self.tip_for(analyst, tip_id)

    def close(self, analyst: Analyst, tip_id: str, disposition: str, note: str | None) -> TipRow:
        """Close a tip with its disposition (its folded duplicates close as DUPLICATE)."""
        tip = self.tip_for(analyst, tip_id)
        try:
            status, chosen = closing(tip.status, disposition)
        except TransitionError as exc:
            raise IntakeError.invalid(exc.field, str(exc)) from None
        event = self._event(
            tip,
            analyst,
            status=status.value,
            activity="DISPOSITION",
            disposition=chosen.value,
            note=self._note(note, required=False),
            assigned_to=tip.assigned_to,
            life_safety=tip.life_safety,
        )
        self._write(
            tip, event, status=status.value, disposition=chosen.value, closed_at=self._clock()
        )
        return self.tip_for(analyst, tip_id)
