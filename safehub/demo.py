"""``safehub demo``: the hub on embedded defaults through a realistic scenario.

Scenario (grows with every capability): Lincoln High School, building B. Door controllers
report their states; a teacher presses a silent panic button in room 214; a camera in the
same corridor flags a weapon; the principal calls a LOCKDOWN. Everything is published
through the kernel's bus and read back by an audit tail that prints the events in order,
with their trace ids. A corrupt message from a misbehaving vendor lands on the dead-letter
topic with its reason while the tail keeps going.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Any

from opentelemetry import trace
from rich.console import Console
from rich.table import Table

from safehub.hub import Hub
from safehub.kernel import tracing
from safehub.kernel.bus import ConsumedEvent, EventConsumer, EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.envelope import new_event
from safehub.kernel.errors import SafeHubError
from safehub.kernel.settings import HubSettings
from safehub.kernel.topics import TOPICS, TopicCatalog

SCHOOL: dict[str, str | None] = {
    "state": "US-TX",
    "district": "dist-north-isd",
    "school": "sch-lincoln-hs",
}


def _scenario(source: str) -> list[dict[str, Any]]:
    """The events of the scenario, in the order they happen."""
    doors = [
        new_event(
            "DoorLockState",
            source="acme-access",
            building="B",
            tenant=SCHOOL,
            payload={"door_id": door, "state": "UNLOCKED", "exterior": exterior},
        )
        for door, exterior in (("B-east-entry", True), ("B-214", False))
    ]
    panic = new_event(
        "PanicAlert",
        source="centegix-like-badges",
        building="B",
        room="214",
        tenant=SCHOOL,
        payload={
            "device_id": "badge-0042",
            "device_kind": "WEARABLE",
            "reporter_role": "TEACHER",
            "panic_type": "ACTIVE_ASSAILANT",
            "silent": True,
        },
    )
    camera = new_event(
        "CameraAlert",
        source="vision-analytics",
        building="B",
        room="corridor-2",
        tenant=SCHOOL,
        payload={
            "camera_id": "cam-B2-07",
            "vendor_alert_id": "va-77120",
            "analytic": "WEAPON",
            "confidence": 0.93,
            "clip_url": "https://vms.example/clips/8812",
        },
    )
    lockdown = new_event(
        "SrpActionRequested",
        source=source,
        building="B",
        tenant=SCHOOL,
        payload={
            "request_id": "req-1",
            "action": "LOCKDOWN",
            "requested_by": "staff-principal-01",
            "requested_by_role": "ADMINISTRATOR",
        },
    )
    return [*doors, panic, camera, lockdown]


def _fill_defaults(event: dict[str, Any], codec: Codec) -> dict[str, Any]:
    """Fill fields this scenario leaves out with their schema defaults."""
    from safehub.contracts.registry import load_schemas

    schema = load_schemas()[event["envelope"]["event_type"]]
    for field in schema["fields"]:
        if field["name"] not in event and "default" in field:
            event[field["name"]] = field["default"]
    return event


def run_demo(settings: HubSettings, console: Console) -> None:
    """Run the scenario end to end and print the audit tail."""
    settings.kafka.topic_prefix = settings.kafka.topic_prefix or f"demo{uuid.uuid4().hex[:6]}."
    settings.kafka.fetch_wait_max_ms = 10
    tracing.setup_tracing("safehub-demo")
    codec = Codec.from_contracts()
    seen: list[tuple[datetime, ConsumedEvent, str]] = []
    started = time.monotonic()
    with Hub(settings) as hub:
        console.print(
            f"[bold]SafeHub demo[/bold]: broker {hub.bootstrap_servers}, {len(TOPICS)} topics"
        )
        catalog: TopicCatalog = hub.catalog
        with EventProducer(settings.kafka, codec, catalog, client_id="demo") as producer:
            tail = EventConsumer(
                settings.kafka,
                codec,
                catalog,
                group_id=f"{catalog.prefix}audit-tail",
                topics=[s.name for s in TOPICS if s.events],
                handler=lambda c: seen.append(
                    (
                        datetime.now().astimezone(),
                        c,
                        format(trace.get_current_span().get_span_context().trace_id, "032x"),
                    ),
                ),
                dead_letter=producer,
            )
            tail.wait_for_assignment()
            stop = threading.Event()
            worker = threading.Thread(target=tail.run, args=(stop,), daemon=True)
            worker.start()
            events = [_fill_defaults(e, codec) for e in _scenario("staff-app")]
            with tracing.tracer().start_as_current_span("demo scenario"):
                for event in events[:3]:
                    producer.publish(event)
                # A vendor sends garbage: it must not stop anything.
                producer.publish_raw(
                    catalog.topic_for("safehub.events.PanicAlert"),
                    b"sch-lincoln-hs",
                    b"<alarm>not our wire format</alarm>",
                    [],
                )
                for event in events[3:]:
                    producer.publish(event)
            deadline = time.monotonic() + 30
            while len(seen) < len(events) or tail.stats.dead_lettered < 1:
                if time.monotonic() > deadline:
                    raise SafeHubError("demo: events did not come back within 30 s")
                time.sleep(0.02)
            stop.set()
            worker.join()
            tail.close()

    table = Table("received", "topic", "event", "where", "trace")
    for at, consumed, trace_id in seen:
        env = consumed.envelope
        where = "/".join(x for x in (env["tenant"]["school"], env["building"], env["room"]) if x)
        table.add_row(
            at.strftime("%H:%M:%S.%f")[:-3],
            consumed.topic.removeprefix(catalog.prefix),
            consumed.event_type.rsplit(".", 1)[-1],
            where,
            trace_id[:12],
        )
    console.print(table)
    console.print(
        f"dead-lettered: {tail.stats.dead_lettered} (corrupt vendor message, "
        f"kept with its reason on {catalog.dead_letter.removeprefix(catalog.prefix)})"
    )
    console.print(f"[green]demo finished in {time.monotonic() - started:.1f} s[/green]")
