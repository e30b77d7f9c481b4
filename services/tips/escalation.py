"""Escalation until a human confirms: a life-safety tip calls its school's call chain.

At intake the chain is frozen (:meth:`Directory.call_chain`: the school's tree, the
district's, the state centre's, each step with who is on duty then) and call 0 goes out: a
NotificationRequested (LIFE_SAFETY, acknowledgement required) to the first step that has
someone on duty. When nobody acknowledges within that step's ``ack_within_seconds`` the
next call goes to the next step; after the last step the last is called again, once per
its interval, until someone answers (and ESCALATION_EXHAUSTED says the chain ran out). The
first NotificationAcknowledged of any call ends it: the tip is ASSIGNED to whoever answered.

Restart-safe by construction: each call is a conditional update of the stored step (``WHERE
step = the step read``) with its events in the same transaction, and notification ids are
``tip-<tip id>-<call>``, so a worker killed mid-escalation resumes where the store says,
never skips a call and never repeats one (notify drops a redelivered request by its id).

A tip not assigned within its category's deadline (``assign_within_h``) is OVERDUE: the
district's steps are told once (URGENT, by e-mail and text), whatever the tip's flag.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.engine import Connection

from safehub.contracts.names import EventType
from safehub.kernel.bus import ConsumedEvent
from safehub.kernel.codec import Event
from safehub.kernel.directory import CallTreeScope, Directory, DirectorySource, UnknownPlaceError
from safehub.kernel.errors import HandlerError, SafeHubError
from safehub.kernel.outbox import OutboxRelay
from services.tips import events
from services.tips.model import Status
from services.tips.store import EscalationRow, StoreError, TipRow, TipStore

log = structlog.get_logger(__name__)

ACKNOWLEDGED = str(EventType.NOTIFICATION_ACKNOWLEDGED)
#: Seconds between calls when a step says nothing (never 0: that would call in a loop).
DEFAULT_ACK_WITHIN_S = 60
#: The deadline of an escalation with nobody to call (it is never due).
NEVER_S = 10 * 365 * 86400.0


def frozen_chain(directory: Directory, school_id: str, at: float) -> list[dict[str, Any]]:
    """The steps with someone on duty at ``at``, as stored with the escalation."""
    moment = datetime.fromtimestamp(at, UTC)
    return [
        {
            "tree_id": step.tree_id,
            "scope": step.scope.value,
            "name": step.name,
            "ack_within_seconds": step.ack_within_seconds or DEFAULT_ACK_WITHIN_S,
            "person_ids": list(step.person_ids),
        }
        for step in directory.call_chain(school_id, moment)
        if step.person_ids
    ]


def step_of_call(chain: Sequence[Mapping[str, Any]], call: int) -> Mapping[str, Any]:
    """The step a call goes to: one per call, then the last one again."""
    return chain[min(call, len(chain) - 1)]


class Escalator:
    """Calls, follows and ends escalations (one ticking thread; acks from the consumer)."""

    def __init__(
        self,
        *,
        store: TipStore,
        relay: OutboxRelay,
        directory: DirectorySource,
        link: Callable[[str], str],
        close_within_h: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._relay = relay
        self._directory = directory
        self._link = link
        self._close_within_s = {c: h * 3600.0 for c, h in (close_within_h or {}).items()}
        self._clock = clock
        self.calls = 0

    # -- calls --------------------------------------------------------------------------

    def _words(self, tip: TipRow, school_name: str, call: int) -> tuple[str, str]:
        kind = "Life-safety tip" if tip.life_safety else "New tip"
        urgent = " (it names a time that is close)" if tip.imminent else ""
        headline = f"{kind} - {school_name}"
        body = (
            f"{kind} ({tip.category.replace('_', ' ').lower()}) for {school_name}{urgent}. "
            f"Acknowledge this message, then open it: {self._link(tip.tip_id)}"
        )
        if call:
            body = f"Nobody has confirmed yet (call {call + 1}). " + body
        return headline, body

    def first_call(
        self,
        conn: Connection,
        tip: TipRow,
        tenant: Mapping[str, str | None],
        directory: Directory,
        now: float,
    ) -> list[Event]:
        """In the intake transaction: start a life-safety tip's escalation (call 0), or tell
        the school's inbox of any other tip. The events to publish after the commit."""
        school = directory.school(tip.school_id)
        chain = frozen_chain(directory, tip.school_id, now)
        if not tip.life_safety:
            inbox = [s for s in chain if s["scope"] == CallTreeScope.SCHOOL.value][:1]
            if not inbox:
                log.warning(
                    "no school call tree: the tip waits in the analysts' queue",
                    tip_id=tip.tip_id,
                    school_id=tip.school_id,
                )
                return []
            headline, body = self._words(tip, school.name, 0)
            return [
                events.call_request(
                    tip_id=tip.tip_id,
                    tenant=tenant,
                    nid=events.notification_id(tip.tip_id, 0),
                    person_ids=inbox[0]["person_ids"],
                    headline=headline,
                    body=body,
                    priority="ROUTINE",
                )
            ]
        if not chain:
            log.error(
                "life-safety tip and nobody on any call tree: analysts must call",
                tip_id=tip.tip_id,
                school_id=tip.school_id,
            )
            self._store.start_escalation(
                conn,
                EscalationRow(tip.tip_id, [], 0, "", now + NEVER_S, None, None, True),
            )
            out = [self._update(tip, tenant, "ESCALATION_EXHAUSTED", call=0)]
            if tip.imminent:
                out += self.to_psap(tip, tenant, why="nobody is on duty on any call tree")
            return out
        step = step_of_call(chain, 0)
        nid = events.notification_id(tip.tip_id, 0)
        self._store.start_escalation(
            conn,
            EscalationRow(
                tip.tip_id,
                chain,
                0,
                nid,
                now + float(step["ack_within_seconds"]),
                None,
                None,
                len(chain) == 1,
            ),
        )
        self.calls += 1
        return self._call_events(tip, tenant, school.name, chain, 0)

    def _call_events(
        self,
        tip: TipRow,
        tenant: Mapping[str, str | None],
        school_name: str,
        chain: Sequence[Mapping[str, Any]],
        call: int,
    ) -> list[Event]:
        step = step_of_call(chain, call)
        headline, body = self._words(tip, school_name, call)
        out = [
            events.call_request(
                tip_id=tip.tip_id,
                tenant=tenant,
                nid=events.notification_id(tip.tip_id, call),
                person_ids=step["person_ids"],
                headline=headline,
                body=body,
                priority="LIFE_SAFETY",
            ),
            self._update(
                tip,
                tenant,
                "ESCALATION_CALLED",
                call=call,
                people=step["person_ids"],
            ),
        ]
        if call == len(chain) - 1 and call > 0:
            out.append(self._update(tip, tenant, "ESCALATION_EXHAUSTED", call=call))
        if call == len(chain) and tip.imminent:
            # The whole chain, the state centre too, was called and nobody confirmed: an
            # imminent threat goes to 911 (the chain keeps being called as well).
            out += self.to_psap(tip, tenant, why="nobody in the call chain confirmed", call=call)
        return out

    def to_psap(
        self,
        tip: TipRow,
        tenant: Mapping[str, str | None],
        *,
        why: str,
        call: int = 0,
        by: str = "tips:escalation",
        note: str | None = None,
    ) -> list[Event]:
        """The ThreatReported of a tip (its id is the tip's: sent once, whoever sends it) and
        the TipUpdated that records it."""
        what = tip.category.replace("_", " ").lower()
        report = events.threat_reported(
            tip_id=tip.tip_id,
            tenant=tenant,
            category=tip.category,
            imminent=tip.imminent,
            summary=(
                f"{'Imminent ' if tip.imminent else ''}{what} threat reported by an anonymous "
                f"{'monitoring alert' if tip.channel == 'MONITORING' else 'tip'}: {why}"
            ),
            tip_link=self._link(tip.tip_id),
            by_monitoring=tip.channel == "MONITORING",
            reported_at=tip.created_at,
        )
        return [
            report,
            self._update(
                tip, tenant, "SENT_TO_PSAP", call=call, by=by, note=note, status=tip.status
            ),
        ]

    def _update(
        self,
        tip: TipRow,
        tenant: Mapping[str, str | None],
        activity: str,
        *,
        call: int,
        people: Sequence[str] = (),
        by: str = "tips:escalation",
        note: str | None = None,
        status: str = Status.ESCALATED.value,
        assigned_to: str | None = None,
        key: object | None = None,
    ) -> Event:
        return events.updated(
            tip_id=tip.tip_id,
            tenant=tenant,
            status=status,
            activity=activity,
            updated_by=by,
            key=call if key is None else key,
            note=note,
            escalation_level=call,
            notified=people,
            assigned_to=assigned_to,
            life_safety=tip.life_safety,
        )

    # -- the ticking thread -------------------------------------------------------------

    def tick(self, now: float | None = None) -> int:
        """Make every call that is due (and tell the district of overdue tips); how many."""
        now = self._clock() if now is None else now
        made = 0
        for row in self._store.due_escalations(now):
            if row.chain:
                made += self._next_call(row, now)
        for tip in self._store.overdue(now):
            self._overdue(tip, closing=False)
        for tip in self._store.not_closed_in_time(now, self._close_within_s):
            self._overdue(tip, closing=True)
        return made

    def _next_call(self, row: EscalationRow, now: float) -> int:
        tip = self._store.tip(row.tip_id)
        if tip is None:
            return 0
        call = row.step + 1
        step = step_of_call(row.chain, call)
        directory = self._directory.current()
        try:
            tenant = directory.tenant(tip.school_id)
            school_name = directory.school(tip.school_id).name
        except UnknownPlaceError:  # the school left the directory mid-escalation: keep calling
            tenant = {
                "state": directory.state,
                "district": tip.district_id,
                "school": tip.school_id,
            }
            school_name = tip.school_id
        out = self._call_events(tip, tenant, school_name, row.chain, call)
        with self._store.transaction("cannot record an escalation call") as conn:
            moved = self._store.advance(
                conn,
                tip.tip_id,
                from_step=row.step,
                to_step=call,
                notification_id=events.notification_id(tip.tip_id, call),
                deadline_at=now + float(step["ack_within_seconds"]),
                exhausted=call >= len(row.chain) - 1,
            )
            if not moved:
                return 0  # acknowledged meanwhile, or another worker made this call
            self._store.outbox.add(conn, [self._relay.item(e) for e in out])
        self._relay.publish(out)
        self.calls += 1
        log.warning(
            "tip escalation: nobody confirmed, calling the next step",
            tip_id=tip.tip_id,
            call=call,
            step=step["name"],
            scope=step["scope"],
        )
        return 1

    def _overdue(self, tip: TipRow, *, closing: bool) -> None:
        """Tell the district once that a tip was not assigned (or not closed) in time."""
        deadline = "closed" if closing else "assigned"
        directory = self._directory.current()
        try:
            tenant = directory.tenant(tip.school_id)
            chain = frozen_chain(directory, tip.school_id, self._clock())
            school_name = directory.school(tip.school_id).name
        except UnknownPlaceError:
            return
        district = [s for s in chain if s["scope"] == CallTreeScope.DISTRICT.value][:1]
        people = district[0]["person_ids"] if district else []
        out = [
            self._update(
                tip,
                tenant,
                "OVERDUE",
                call=0,
                people=people,
                by="tips:deadlines",
                status=tip.status,
                key=deadline,
            )
        ]
        if people:
            out.append(
                events.call_request(
                    tip_id=tip.tip_id,
                    tenant=tenant,
                    nid=f"{events.NOTIFICATION_PREFIX}{tip.tip_id}-overdue-{deadline}",
                    person_ids=people,
                    headline=f"Tip not {deadline} in time - {school_name}",
                    body=f"A {tip.category.replace('_', ' ').lower()} tip for {school_name} "
                    f"has not been {deadline} within its deadline. Open it: "
                    f"{self._link(tip.tip_id)}",
                    priority="URGENT",
                )
            )
        with self._store.transaction("cannot mark a tip overdue") as conn:
            flag = "close_overdue_notified" if closing else "overdue_notified"
            self._store.update_tip(
                conn, tip.tip_id, [self._relay.item(e) for e in out], **{flag: True}
            )
        self._relay.publish(out)
        log.warning("tip overdue", tip_id=tip.tip_id, category=tip.category, not_yet=deadline)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Tick until ``stop`` (a store that fails is retried next tick)."""
        while not stop.wait(interval_s):
            try:
                self.tick()
            except (StoreError, SafeHubError) as exc:
                log.error("escalation tick failed; retrying", error=str(exc))

    # -- acknowledgements ---------------------------------------------------------------

    def handle(self, consumed: ConsumedEvent) -> None:
        """Consumer handler of the notifications topic: an acknowledgement ends a call chain."""
        if consumed.event_type != ACKNOWLEDGED:
            return
        parsed = events.tip_of_notification(str(consumed.event.get("notification_id") or ""))
        if parsed is None:
            return
        tip_id, call = parsed
        person = str(consumed.event["recipient_id"])
        self.acknowledged(tip_id, call, person, self._clock())

    def acknowledged(self, tip_id: str, call: int, person_id: str, at: float) -> bool:
        """Record who confirmed; False if someone did already. HandlerError (dead-lettered)
        for an unknown tip or call, or an answer from someone the chain did not call."""
        tip = self._store.tip(tip_id)
        escalation = self._store.escalation(tip_id)
        if tip is None or escalation is None:
            # Not ours to decide on: whoever sent it must look (the dead letter says why).
            raise HandlerError(
                f"acknowledgement of call {call} of tip {tip_id}: no such escalation"
            )
        called = {p for step in escalation.chain[: call + 1] for p in step["person_ids"]}
        if person_id not in called:
            raise HandlerError(
                f"acknowledgement of call {call} of tip {tip_id} by {person_id}, who was not "
                "called: not recorded"
            )
        directory = self._directory.current()
        try:
            tenant = directory.tenant(tip.school_id)
        except UnknownPlaceError:
            tenant = {
                "state": directory.state,
                "district": tip.district_id,
                "school": tip.school_id,
            }
        keep = tip.status not in (Status.ESCALATED.value, Status.NEW.value, Status.TRIAGED.value)
        status = tip.status if keep else Status.ASSIGNED.value
        event = self._update(
            tip,
            tenant,
            "ESCALATION_ACKNOWLEDGED",
            call=call,
            people=(person_id,),
            by=person_id,
            status=status,
            assigned_to=tip.assigned_to or person_id,
        )
        with self._store.transaction("cannot record an acknowledgement") as conn:
            if not self._store.acknowledge(conn, tip_id, person_id, at):
                return False
            values: dict[str, Any] = {"status": status, "updated_at": at}
            if tip.assigned_to is None:
                values["assigned_to"] = person_id
            if tip.first_human_at is None:
                values["first_human_at"] = at
            self._store.update_tip(conn, tip_id, [self._relay.item(event)], **values)
        self._relay.publish([event])
        log.info(
            "tip escalation confirmed",
            tip_id=tip_id,
            call=call,
            person_id=person_id,
            seconds=round(at - tip.created_at, 3),
        )
        return True
