"""``safehub demo``: the whole hub on embedded defaults through a realistic scenario.

Lincoln High School (Northville ISD), building B.

1. **Drill.** The principal's app calls a LOCKDOWN *exercise*: the doors of building B lock,
   every step is marked as an exercise, and nothing reaches 911. ALL CLEAR ends the drill.
2. **Real emergency.** A teacher presses a silent panic badge in room 214; seconds later a
   camera in the corridor flags a weapon. One incident: the 911 centre's CAD receives a
   NENA EIDO (ALRPANS, building B, room 214) and then an update. The principal calls
   LOCKDOWN: the door vendor's connector locks every door and confirms. CAD reports units
   en route and on scene. ALL CLEAR ends it.

Everything goes through the real parts: gRPC with mTLS into the gateway, Kafka, the
incidents and doorstate services, the psap_cad connector over HTTPS to the CAD simulator
and back. At the end the incident's events are printed in order with timestamps, and the
demo checks what must hold (one incident, drill never at CAD, doors confirmed) and fails
loudly if it does not.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.table import Table

from safehub.contracts.names import EventType
from safehub.devstack import demo_timeline
from safehub.devstack.demo_people import PeopleDemo
from safehub.devstack.demo_tips import TipsDemo
from safehub.devstack.hub import Hub
from safehub.gen.safehub.common.v1 import place_pb2, srp_pb2
from safehub.gen.safehub.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from safehub.kernel.codec import Codec, Event
from safehub.kernel.errors import SafeHubError
from safehub.kernel.reader import TopicReader
from safehub.kernel.settings import HubSettings
from safehub.kernel.topics import ALERTS, DISPATCH, DOOR_COMMANDS, DOORS, INCIDENTS, NOTIFICATIONS

SCHOOL = "sch-lincoln-hs"
WATCHED = (ALERTS, INCIDENTS, DISPATCH, DOOR_COMMANDS, DOORS, NOTIFICATIONS)


class Journal:
    """Reads the watched topics from the start, in a thread, for the final report."""

    def __init__(self, hub: Hub, codec: Codec) -> None:
        self.events: list[tuple[datetime, str, Event]] = []
        self._codec = codec
        self._stop = threading.Event()
        self._reader = TopicReader(
            hub.settings.kafka, hub.catalog, WATCHED, name="demo-journal", fetch_wait_ms=20
        )
        self._prefix = hub.catalog.prefix
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._reader.poll(0.1):
                event = self._codec.decode(message.value() or b"")
                topic = str(message.topic()).removeprefix(self._prefix)
                self.events.append((datetime.now(UTC), topic, event))

    def wait_for(self, what: str, match: Callable[[Event], bool], timeout: float = 30) -> Event:
        """The first event matching ``match`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, _, event in list(self.events):
                if match(event):
                    return event
            time.sleep(0.02)
        raise SafeHubError(f"demo: {what} did not happen within {timeout} s")

    def close(self) -> None:
        """Stop reading."""
        self._stop.set()
        self._thread.join()
        self._reader.close()


def _is(event_type: EventType, **fields: Any) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        if event["envelope"]["event_type"] != event_type:
            return False
        return all(event.get(k, event["envelope"].get(k)) == v for k, v in fields.items())

    return match


class Clients:
    """gRPC stubs of the school systems, each with its own client certificate."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._channels: list[grpc.Channel] = []

    def ingest(self, client_id: str) -> ingest_pb2_grpc.IngestServiceStub:
        channel = self._hub.pki.grpc_channel(self._hub.gateway_address, client_id)
        self._channels.append(channel)
        return ingest_pb2_grpc.IngestServiceStub(channel)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _cad_incidents(hub: Hub) -> list[dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(hub.pki.ca.cert))
    with urllib.request.urlopen(  # noqa: S310 - fixed https URL of our own simulator
        f"{hub.cad_simulator_url}/sim/incidents", context=context, timeout=5
    ) as response:
        data = json.load(response)
    return list(data["incidents"] if isinstance(data, dict) else data)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _place(building: str, room: str = "") -> place_pb2.Place:
    return place_pb2.Place(school_id=SCHOOL, building=building, room=room)


def _srp(
    stub: ingest_pb2_grpc.IngestServiceStub, action: srp_pb2.SrpAction.ValueType, *, exercise: bool
) -> str:
    response = stub.RequestSrpAction(
        ingest_pb2.RequestSrpActionRequest(
            client_event_id=str(uuid.uuid4()),
            action=action,
            place=_place("B"),
            requested_by="staff-principal-01",
            exercise=exercise,
        ),
        timeout=5,
    )
    return str(response.event_id)


def run_demo(settings: HubSettings, console: Console, *, keep: bool = False) -> None:
    """Run the scenario end to end, print the incident's record, verify what must hold.

    With ``keep`` the hub stays up afterwards (until Ctrl-C) for the reviewer's view.
    """
    settings.kafka.topic_prefix = settings.kafka.topic_prefix or f"demo{uuid.uuid4().hex[:6]}."
    started = time.monotonic()
    codec = Codec.from_contracts()
    run_dir = Path(tempfile.mkdtemp(prefix="safehub-demo-"))
    console.print(f"[bold]SafeHub demo[/bold] — starting the hub (run dir {run_dir})")
    with Hub(settings, run_dir=run_dir) as hub:
        console.print(
            f"hub up in {time.monotonic() - started:.1f} s: broker {hub.bootstrap_servers}, "
            f"gateway {hub.gateway_address} (mTLS), CAD simulator {hub.cad_simulator_url}"
        )
        console.print(
            f"notify {hub.notify_url}, mail server 127.0.0.1:{hub.ports.smtp} "
            f"(Maildir {hub.maildir}), SMS provider simulator {hub.sms_simulator_url}, "
            f"timeline {hub.timeline_url}"
        )
        tips = TipsDemo(hub, codec, console)
        tips.prepare()
        journal = Journal(hub, codec)
        clients = Clients(hub)
        people = PeopleDemo(hub, SCHOOL)
        try:
            incident_id, checks = _scenario(hub, journal, clients, people, console)
        finally:
            clients.close()
            journal.close()
        cad = _cad_incidents(hub)
        console.rule("3. Review: the incident's timeline")
        checks |= demo_timeline.review(hub, incident_id, console)
        console.rule("4. Tips: a life-safety tip by SMS, escalated until someone confirms")
        checks |= tips.run()
        _report(journal, incident_id, cad, checks, console)
        console.print(f"[green]demo finished in {time.monotonic() - started:.1f} s[/green]")
        if keep:
            console.print("hub kept running for the reviewer's view; Ctrl-C stops it")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass


def _scenario(
    hub: Hub, journal: Journal, clients: Clients, people: PeopleDemo, console: Console
) -> tuple[str, dict[str, bool]]:
    staff = clients.ingest("staff-app-lincoln")
    badges = clients.ingest("panic-badges-north")
    cameras = clients.ingest("vision-analytics-north")

    console.rule("1. Drill: LOCKDOWN exercise in building B")
    _srp(staff, srp_pb2.SRP_ACTION_LOCKDOWN, exercise=True)
    drill = journal.wait_for("drill incident", _is(EventType.INCIDENT_OPENED, exercise=True))
    progress = journal.wait_for(
        "drill doors locked",
        _is(EventType.LOCKDOWN_PROGRESS, incident_id=drill["incident_id"], complete=True),
    )
    console.print(f"drill: {len(progress['doors_confirmed'])} doors locked and confirmed")
    _srp(staff, srp_pb2.SRP_ACTION_ALL_CLEAR, exercise=True)
    journal.wait_for(
        "drill all clear", _is(EventType.INCIDENT_CLEARED, incident_id=drill["incident_id"])
    )
    console.print("drill: ALL CLEAR; nothing was sent to 911")

    console.rule("2. Real: silent panic in B-214, weapon on camera, LOCKDOWN")
    people.script_unreachable_phone()
    panic = badges.ReportPanic(
        ingest_pb2.ReportPanicRequest(
            client_event_id=str(uuid.uuid4()),
            place=_place("B", "214"),
            device_id="badge-0042",
            reporter_role=ingest_pb2.REPORTER_ROLE_TEACHER,
            panic_type=ingest_pb2.PANIC_TYPE_ACTIVE_ASSAILANT,
            silent=True,
            occurred_at=_now(),
        ),
        timeout=5,
    )
    pressed = time.monotonic()
    opened = journal.wait_for(
        "incident opened",
        lambda e: (
            _is(EventType.INCIDENT_OPENED, exercise=False)(e)
            and panic.event_id in e["correlated_event_ids"]
        ),
    )
    incident_id = str(opened["incident_id"])
    dispatch = journal.wait_for("EIDO at CAD", _is(EventType.CAD_DISPATCH, incident_id=incident_id))
    console.print(
        f"panic → EIDO at the CAD simulator ({dispatch['apco_incident_type']}) seen by the "
        f"demo after {(time.monotonic() - pressed) * 1000:.0f} ms"
    )
    cameras.ReportCameraAlert(
        ingest_pb2.ReportCameraAlertRequest(
            client_event_id=str(uuid.uuid4()),
            place=_place("B", "corridor-2"),
            camera_id="cam-B2-07",
            analytic=ingest_pb2.CAMERA_ANALYTIC_WEAPON,
            confidence=0.93,
            clip_url="https://vms.example/clips/8812",
            occurred_at=_now(),
        ),
        timeout=5,
    )
    journal.wait_for("weapon correlated", _is(EventType.INCIDENT_CHANGED, incident_id=incident_id))
    _srp(staff, srp_pb2.SRP_ACTION_LOCKDOWN, exercise=False)
    progress = journal.wait_for(
        "doors locked", _is(EventType.LOCKDOWN_PROGRESS, incident_id=incident_id, complete=True)
    )
    console.print(f"lockdown: {len(progress['doors_confirmed'])} doors locked and confirmed")
    status = people.notification(incident_id, "LOCKDOWN")
    acknowledged = people.acknowledge_some()
    status = people.wait_acknowledged(status, acknowledged)
    checks = people.report(status, console)
    checks |= people.release_family_message("LOCKDOWN", console)
    journal.wait_for(
        "units on scene",
        _is(EventType.CAD_STATUS_UPDATE, incident_id=incident_id, status="ResourcesOnscene"),
    )
    console.print("CAD: units en route, then on scene")
    _srp(staff, srp_pb2.SRP_ACTION_ALL_CLEAR, exercise=False)
    journal.wait_for("all clear", _is(EventType.INCIDENT_CLEARED, incident_id=incident_id))
    journal.wait_for(
        "CAD told of the all clear",
        lambda e: (
            _is(EventType.CAD_DISPATCH, incident_id=incident_id)(e) and e["status"] == "Closed"
        ),
    )
    console.print("ALL CLEAR: incident closed at CAD")
    people.notification(incident_id, "ALL_CLEAR")
    console.print("ALL CLEAR: every staff member of the school told")
    return incident_id, checks


def _belongs(event: Event, incident_id: str, signal_ids: set[str], commands: set[str]) -> bool:
    envelope = event["envelope"]
    if envelope["event_type"] in (EventType.DELIVERY_RECEIPT, EventType.NOTIFICATION_ACKNOWLEDGED):
        return False  # one per recipient and step: summarised in the people table instead
    if envelope.get("incident_id") == incident_id or envelope["event_id"] in signal_ids:
        return True
    return (
        event.get("command_id") in commands and envelope["event_type"] == EventType.DOOR_LOCK_STATE
    )


def _report(
    journal: Journal,
    incident_id: str,
    cad: list[dict[str, Any]],
    more_checks: dict[str, bool],
    console: Console,
) -> None:
    events = journal.events
    signal_ids = {
        i
        for _, _, e in events
        if e["envelope"].get("incident_id") == incident_id
        for i in e.get("correlated_event_ids") or ()
    } | {
        str(e["envelope"]["causation_id"])
        for _, _, e in events
        if e["envelope"].get("incident_id") == incident_id and e["envelope"].get("causation_id")
    }
    commands = {
        str(e["command_id"])
        for _, _, e in events
        if e["envelope"]["event_type"] == EventType.LOCK_COMMAND
        and e["envelope"].get("incident_id") == incident_id
    }
    mine = sorted(
        ((e["envelope"]["recorded_at"], topic, e) for _, topic, e in events
         if _belongs(e, incident_id, signal_ids, commands)),
        key=lambda row: row[0],
    )  # fmt: skip
    table = Table(title=f"incident {incident_id}", show_lines=False)
    for column in ("recorded (UTC)", "topic", "event", "where", "detail"):
        table.add_column(column)
    for recorded, topic, event in mine:
        envelope = event["envelope"]
        where = "/".join(x for x in (envelope["building"], envelope["room"]) if x)
        table.add_row(
            recorded.strftime("%H:%M:%S.%f")[:-3],
            topic.removeprefix("safehub.").removesuffix(".v1"),
            envelope["event_type"].rsplit(".", 1)[-1],
            where,
            _detail(event),
        )
    console.print(table)
    drills_at_cad = [c for c in cad if "EXERCISE" in json.dumps(c).upper()]
    checks = {
        "exactly one CAD incident for the real emergency": len(cad) == 1,
        "no drill ever reached CAD": not drills_at_cad,
        "panic and weapon folded into one incident": sum(
            1 for _, _, e in mine if e["envelope"]["event_type"] == EventType.INCIDENT_OPENED
        )
        == 1,
        "every door of building B confirmed locked": any(
            e["envelope"]["event_type"] == EventType.LOCKDOWN_PROGRESS and e["complete"]
            for _, _, e in mine
        ),
        **more_checks,
    }
    for name, ok in checks.items():
        console.print(("[green]✓[/green] " if ok else "[red]✗[/red] ") + name)
    if not all(checks.values()):
        raise SafeHubError("demo: a check failed (see above)")


def _detail(event: Event) -> str:
    match event["envelope"]["event_type"]:
        case EventType.PANIC_ALERT:
            return f"{event['panic_type']} silent={event['silent']} device {event['device_id']}"
        case EventType.CAMERA_ALERT:
            return f"{event['analytic']} {event['confidence']:.0%} {event['camera_id']}"
        case EventType.SRP_ACTION_REQUESTED:
            return f"{event['action']} by {event['requested_by']}"
        case EventType.INCIDENT_OPENED | EventType.INCIDENT_CHANGED:
            reason = event.get("change_reason") or event["summary"]
            return f"v{event['version']} {event['state']} {event['incident_type']}: {reason}"[:110]
        case EventType.INCIDENT_CLEARED:
            return f"v{event['version']} {event['outcome']}"
        case EventType.CAD_DISPATCH:
            return (
                f"EIDO v{event['incident_version']} {event['apco_incident_type']} {event['status']}"
            )
        case EventType.CAD_STATUS_UPDATE:
            units = ", ".join(u["unit_id"] for u in event["units"])
            return f"{event['status']} {units}".strip()
        case EventType.LOCK_COMMAND:
            return f"{event['scope']} → {event['target']}"
        case EventType.DOOR_LOCK_STATE:
            return f"{event['door_id']} {event['state']}"
        case EventType.NOTIFICATION_REQUESTED:
            return f"{event['srp_action']} to {', '.join(event['audiences'])}"[:110]
        case EventType.NOTIFICATION_DECIDED:
            return f"family/public message {event['decision']} by {event['decided_by']}"
        case EventType.LOCKDOWN_PROGRESS:
            return f"{len(event['doors_confirmed'])}/{len(event['doors_expected'])} confirmed" + (
                ", deadline passed" if event["deadline_passed"] else ""
            )
    return ""
