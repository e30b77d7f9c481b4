"""The reviewer's view in a real browser (Debian's headless Chromium driven by Playwright).

The timeline runs as a real process on the test's broker and a SQLite store. The test plays
an incident at Lincoln High School onto the bus as the deployables would: every event with
its ``traceparent`` header, and the spans of each system (gateway, incidents, psap_cad,
notify) exported by OpenTelemetry SDKs through the kernel's ``KafkaSpanExporter`` to the
spans topic. Then a district reviewer opens the incident page: lanes and entries in order,
one entry's details and trace waterfall, the chain status, who was reached, the exports;
a reviewer of another district gets "not found". A screenshot is kept in tests/artifacts/.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Span, SpanKind
from playwright.sync_api import Browser, Page, expect, sync_playwright

from safehub.kernel import tracing
from safehub.kernel.bus import EventProducer, event_headers
from safehub.kernel.codec import Codec, Event
from safehub.kernel.envelope import new_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.span_export import KafkaSpanExporter
from safehub.kernel.topics import SPANS, TopicCatalog
from tests.support.processes import ROOT
from tests.support.timeline import LINCOLN, NORTH_TOKEN, SOUTH_TOKEN, TimelineProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
LANES = ["gateway", "incidents", "cad", "doors", "notifications", "people"]
#: The incident's entries in time order: (event type, lane).
EXPECTED = [
    ("PanicAlert", "gateway"),
    ("IncidentOpened", "incidents"),
    ("LockCommand", "doors"),
    ("CadDispatch", "cad"),
    ("NotificationRequested", "notifications"),
    ("DoorLockState", "doors"),
    ("DoorLockState", "doors"),
    ("DeliveryReceipt", "notifications"),
    ("DeliveryReceipt", "notifications"),
    ("DeliveryReceipt", "notifications"),
    ("CadStatusUpdate", "cad"),
    ("NotificationAcknowledged", "people"),
    ("SrpActionRequested", "people"),
    ("IncidentCleared", "incidents"),
]


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


@dataclass
class Systems:
    """One OpenTelemetry SDK per deployable, each exporting to the spans topic like a runtime."""

    kafka: KafkaSettings
    topic: str
    providers: dict[str, TracerProvider] = field(default_factory=dict)
    spans_per_trace: Counter[str] = field(default_factory=Counter)

    def span(
        self,
        service: str,
        name: str,
        kind: SpanKind,
        parent: Span | None,
        start: datetime,
        ms: float,
        **attributes: str,
    ) -> Span:
        """A finished span of ``service`` from ``start`` lasting ``ms``, child of ``parent``."""
        if service not in self.providers:
            provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
            exporter = KafkaSpanExporter(self.kafka, self.topic, client_id=f"test-{service}")
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            self.providers[service] = provider
        tracer = self.providers[service].get_tracer("safehub")
        context = trace.set_span_in_context(parent) if parent is not None else Context()
        span = tracer.start_span(
            name, context=context, kind=kind, start_time=_ns(start), attributes=attributes
        )
        span.end(end_time=_ns(start + timedelta(milliseconds=ms)))
        self.spans_per_trace[format(span.get_span_context().trace_id, "032x")] += 1
        return span

    def shutdown(self) -> None:
        """Flush every exporter's producer (idempotent)."""
        while self.providers:
            self.providers.popitem()[1].shutdown()


class Incident:
    """A lockdown at Lincoln HS, building B, published event by event with its spans."""

    def __init__(
        self, producer: EventProducer, codec: Codec, catalog: TopicCatalog, systems: Systems
    ) -> None:
        self.producer = producer
        self.codec = codec
        self.catalog = catalog
        self.systems = systems
        self.t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
        self.id = f"inc-lincoln-{self.t0:%H%M%S}"
        self.panic_id = ""
        self.published: list[str] = []  # event types in publishing order
        self.traces: dict[str, str] = {}  # event type → trace id of its first event
        self.topics: dict[int, str] = {}  # send span id → topic

    def at(self, seconds: float) -> datetime:
        return self.t0 + timedelta(seconds=seconds)

    def publish(
        self,
        service: str,
        kind: str,
        seconds: float,
        payload: dict[str, Any],
        parent: Span | None,
        **envelope: Any,
    ) -> Span:
        """Send one event the way the bus does: a PRODUCER span, its context in the headers."""
        event: Event = new_event(
            kind,
            source=service,
            tenant=LINCOLN,
            building="B",
            room="214",
            occurred_at=self.at(seconds),
            payload=payload,
            **envelope,
        )
        topic = self.catalog.topic_for(str(event["envelope"]["event_type"]))
        send = self.systems.span(
            service,
            f"send {topic}",
            SpanKind.PRODUCER,
            parent,
            self.at(seconds),
            1.8,
            **{"messaging.message.id": str(event["envelope"]["event_id"])},
        )
        headers = tracing.inject(event_headers(event), trace.set_span_in_context(send))
        self.producer.publish_raw(
            topic, self.catalog.key_for(event), self.codec.encode(event), headers
        )
        self.topics[send.get_span_context().span_id] = topic
        self.published.append(kind)
        self.traces.setdefault(kind, format(send.get_span_context().trace_id, "032x"))
        if kind == "PanicAlert":
            self.panic_id = str(event["envelope"]["event_id"])
        return send

    def consume(self, service: str, send: Span, seconds: float, ms: float) -> Span:
        """The consumer's span of handling the message ``send`` produced."""
        topic = self.topics[send.get_span_context().span_id]
        return self.systems.span(
            service, f"process {topic}", SpanKind.CONSUMER, send, self.at(seconds), ms
        )

    def play(self) -> None:
        s = self.systems
        incident = {"incident_id": self.id}
        # 1. A teacher's wearable: the gateway's RPC publishes the PanicAlert.
        rpc = s.span(
            "gateway",
            "safehub.ingest.v1.IngestService/ReportPanic",
            SpanKind.SERVER,
            None,
            self.at(0),
            9.5,
        )
        alert = self.publish(
            "gateway",
            "PanicAlert",
            0.004,
            {
                "device_id": "badge-b214",
                "device_kind": "WEARABLE",
                "panic_type": "ACTIVE_ASSAILANT",
                "silent": True,
                "reporter_role": "TEACHER",
                "activated_by": "stf-lincoln-011",
                "floor": "2",
                "latitude": None,
                "longitude": None,
                "location_text": None,
            },
            rpc,
        )
        # 2. incidents opens the incident, orders the lockdown.
        folded = self.consume("incidents", alert, 0.011, 6.0)
        opened = self.publish(
            "incidents",
            "IncidentOpened",
            0.013,
            {
                **incident,
                "version": 1,
                "incident_type": "ACTIVE_ASSAILANT",
                "state": "CONFIRMED",
                "srp_action": "LOCKDOWN",
                "evacuate_location": None,
                "shelter_hazard": None,
                "shelter_strategy": None,
                "correlated_event_ids": [self.panic_id],
                "dispatchable": True,
                "summary": "Active assailant reported, building B room 214",
            },
            folded,
            incident_id=self.id,
            causation_id=self.panic_id,
        )
        lock = self.publish(
            "incidents",
            "LockCommand",
            0.015,
            {
                "command_id": f"lock-{self.id}",
                "scope": "ALL",
                "door_ids": [],
                "target": "LOCKED",
                "srp_action": "LOCKDOWN",
                "reason": "LOCKDOWN for incident",
                "requested_by": "incidents",
            },
            folded,
            incident_id=self.id,
        )
        # 3. psap_cad sends the EIDO to CAD; notify fans out the alert.
        cad = self.consume("psap_cad", opened, 0.021, 32.0)
        s.span("psap_cad", "POST /eido", SpanKind.CLIENT, cad, self.at(0.023), 26.0)
        self.publish(
            "psap_cad",
            "CadDispatch",
            0.050,
            {
                **incident,
                "incident_version": 1,
                "psap_id": "psap-north-county",
                "apco_incident_type": "ACTSHOOT",
                "status": "Active",
                "cancel": False,
                "eido_id": f"eido-{self.id}",
                "eido": '{"notes": "student in room 214 uses a wheelchair"}',
            },
            cad,
            incident_id=self.id,
            classification=("INTERNAL", "STUDENT_RECORD", "HEALTH"),
        )
        fanout = self.consume("notify", opened, 0.024, 40.0)
        self.publish(
            "notify",
            "NotificationRequested",
            0.062,
            {
                "notification_id": f"n-{self.id}",
                "priority": "LIFE_SAFETY",
                "srp_action": "LOCKDOWN",
                "headline": "LOCKDOWN: Lincoln High School",
                "body": "Locks, lights, out of sight.",
                "audiences": ["staff"],
                "recipients": [
                    {"recipient_id": "stf-lincoln-000", "channels": ["SMS", "PUSH"]},
                    {"recipient_id": "stf-lincoln-001", "channels": ["PUSH"]},
                    {"recipient_id": "stf-lincoln-002", "channels": ["EMAIL"]},
                ],
                "require_ack": True,
                "requested_by": "incidents",
            },
            fanout,
            incident_id=self.id,
        )
        # 4. The door vendor confirms locks through the gateway.
        forward = self.consume("gateway", lock, 0.019, 330.0)
        for i, door in enumerate(("B-east-entry", "B-west-entry")):
            self.publish(
                "gateway",
                "DoorLockState",
                0.35 + i * 0.04,
                {
                    "door_id": door,
                    "door_name": None,
                    "state": "LOCKED",
                    "exterior": True,
                    "command_id": f"lock-{self.id}",
                },
                forward,
                incident_id=self.id,
            )
        # 5. Delivery receipts (provider callbacks), CAD status, an acknowledgement.
        receipts = [
            ("stf-lincoln-000", "SMS", "DELIVERED", None),
            ("stf-lincoln-001", "PUSH", "DELIVERED", None),
            ("stf-lincoln-002", "EMAIL", "FAILED", "mailbox unavailable"),
        ]
        for i, (person, channel, status, error) in enumerate(receipts):
            callback = s.span(
                "notify",
                f"POST /providers/{channel.lower()}/status",
                SpanKind.SERVER,
                None,
                self.at(2.4 + i * 0.3),
                4.0,
            )
            self.publish(
                "notify",
                "DeliveryReceipt",
                2.401 + i * 0.3,
                {
                    "notification_id": f"n-{self.id}",
                    "recipient_id": person,
                    "channel": channel,
                    "status": status,
                    "attempt": 1,
                    "provider_message_id": None,
                    "error": error,
                },
                callback,
                incident_id=self.id,
            )
        status = s.span("psap_cad", "POST /cad/status", SpanKind.SERVER, None, self.at(14), 5.0)
        self.publish(
            "psap_cad",
            "CadStatusUpdate",
            14.002,
            {
                **incident,
                "cad_incident_id": "cad-2026-0042",
                "psap_id": "psap-north-county",
                "status": "ResourcesEnroute",
                "units": [
                    {"unit_id": "P-12", "status": "Enroute", "agency": "Northville PD"},
                    {"unit_id": "M-3", "status": "Enroute", "agency": None},
                ],
                "disposition_code": None,
                "eido": None,
            },
            status,
            incident_id=self.id,
        )
        ack = s.span("notify", "GET /ack/{token}", SpanKind.SERVER, None, self.at(21), 3.0)
        self.publish(
            "notify",
            "NotificationAcknowledged",
            21.001,
            {
                "notification_id": f"n-{self.id}",
                "recipient_id": "stf-lincoln-000",
                "channel": "SMS",
                "response": "SAFE",
                "message": None,
            },
            ack,
            incident_id=self.id,
        )
        # 6. The principal gives the ALL CLEAR; incidents clears the incident.
        srp = s.span(
            "gateway",
            "safehub.ingest.v1.IngestService/RequestSrpAction",
            SpanKind.SERVER,
            None,
            self.at(598),
            7.0,
        )
        request = self.publish(
            "gateway",
            "SrpActionRequested",
            598.001,
            {
                "request_id": f"srp-{self.id}",
                "action": "ALL_CLEAR",
                "evacuate_location": None,
                "shelter_hazard": None,
                "shelter_strategy": None,
                "requested_by": "stf-lincoln-000",
                "requested_by_role": "ADMINISTRATOR",
                "message": None,
            },
            srp,
            incident_id=self.id,
        )
        self.publish(
            "incidents",
            "IncidentCleared",
            598.012,
            {
                **incident,
                "version": 2,
                "outcome": "RESOLVED",
                "message": "ALL CLEAR",
                "cleared_by": "stf-lincoln-000",
            },
            self.consume("incidents", request, 598.008, 5.0),
            incident_id=self.id,
        )


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def incident(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> Iterator[tuple[TimelineProcess, Incident, dict[str, Any]]]:
    """The timeline process holding one played incident, its spans stored."""
    timeline = TimelineProcess(
        kafka, catalog.prefix, tmp_path, f"sqlite:///{tmp_path / 'timeline.sqlite3'}"
    ).start()
    systems = Systems(kafka, catalog.name(SPANS))
    try:
        with EventProducer(kafka, codec, catalog, client_id="test-incident") as producer:
            played = Incident(producer, codec, catalog, systems)
            played.play()
        systems.shutdown()
        answer = timeline.wait_entries(played.id, len(EXPECTED))
        panic_trace = played.traces["PanicAlert"]
        expected_spans = systems.spans_per_trace[panic_trace]
        with timeline.client() as client:

            def trace_complete() -> bool:
                spans = client.get(f"/api/v1/traces/{panic_trace}").json().get("spans", [])
                return len(spans) == expected_spans

            wait_until(trace_complete, timeout=60, what="the panic's trace stored")
        yield timeline, played, answer
    finally:
        systems.shutdown()
        timeline.stop()


def _open(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """``url`` in a fresh browser context (its own sessionStorage), on a laptop-sized screen."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    return page, errors


def test_reviewer_sees_the_incident_in_lanes_its_trace_and_the_chain(
    browser: Browser, incident: tuple[TimelineProcess, Incident, dict[str, Any]]
) -> None:
    timeline, played, answer = incident
    page, errors = _open(browser, f"{timeline.url}/incidents/{played.id}?token={NORTH_TOKEN}")
    expect(page.get_by_test_id("load-progress")).to_have_attribute("data-done", "true")
    assert "token" not in page.url, "the token stays in the tab, not in the address"

    # Subject facts and the chain status.
    expect(page.get_by_test_id("subject-id")).to_have_text(played.id)
    chain = page.get_by_test_id("chain-status")
    expect(chain).to_have_attribute("data-ok", "true")
    expect(chain).to_contain_text("Hash chain verified")
    expect(chain).to_contain_text(f"{len(EXPECTED)} entries checked")

    # Six lanes, every entry in time order, each drawn in its own lane's column.
    headers = page.get_by_test_id("lane-header")
    assert [headers.nth(i).get_attribute("data-lane") for i in range(headers.count())] == LANES
    rows = page.get_by_test_id("timeline-entry")
    expect(rows).to_have_count(len(EXPECTED))
    seen = [
        (rows.nth(i).get_attribute("data-event-type"), rows.nth(i).get_attribute("data-lane"))
        for i in range(len(EXPECTED))
    ]
    assert seen == EXPECTED
    lane_x = {}
    for i in range(headers.count()):
        box = headers.nth(i).bounding_box()
        assert box is not None
        lane_x[headers.nth(i).get_attribute("data-lane")] = (box["x"], box["x"] + box["width"])
    tops = []
    for i in range(len(EXPECTED)):
        dot = rows.nth(i).locator(".dot").bounding_box()
        assert dot is not None
        low, high = lane_x[EXPECTED[i][1]]
        assert low <= dot["x"] + dot["width"] / 2 <= high, f"entry {i} is outside its lane"
        tops.append(dot["y"])
    assert tops == sorted(tops) and len(set(tops)) == len(tops)

    # One entry's details: CAD dispatch, its classified EIDO withheld from this reviewer.
    entry = next(e for e in answer["entries"] if e["event_type"].endswith("CadDispatch"))
    rows.filter(has_text="CadDispatch").click()
    details = page.get_by_test_id("entry-details")
    expect(details.get_by_test_id("entry-type")).to_have_text("CadDispatch")
    expect(details.get_by_test_id("entry-source")).to_have_text("psap_cad")
    expect(details.get_by_test_id("withheld").first).to_have_text("withheld: STUDENT_RECORD")
    expect(details.get_by_test_id("entry-data")).to_contain_text("psap-north-county")
    expect(details.get_by_test_id("entry-data")).not_to_contain_text("wheelchair")
    expect(details.get_by_test_id("entry-hash")).to_have_text(entry["hash"])
    expect(details.get_by_test_id("entry-prev-hash")).to_have_text(entry["prev_hash"])

    # Its trace: gateway → incidents → psap_cad, nested by parent, its own span marked.
    spans = page.get_by_test_id("trace-span")
    expect(spans.first).to_be_visible()
    with timeline.client(NORTH_TOKEN) as client:
        stored = client.get(f"/api/v1/traces/{entry['trace_id']}").json()["spans"]
    expect(spans).to_have_count(len(stored))
    services = {spans.nth(i).get_attribute("data-service") for i in range(spans.count())}
    assert {"gateway", "incidents", "psap_cad"} <= services
    expect(spans.first).to_have_attribute(
        "data-name", "safehub.ingest.v1.IngestService/ReportPanic"
    )
    mine = page.locator(f"[data-testid=trace-span][data-span-id='{entry['span_id']}']")
    expect(mine).to_have_class(re.compile(r"\bmine\b"))
    root_bar = spans.first.locator(".wf-bar").bounding_box()
    eido_bar = page.locator("[data-testid=trace-span][data-name='POST /eido'] .wf-bar")
    post = eido_bar.bounding_box()
    assert root_bar is not None and post is not None
    assert post["x"] > root_bar["x"] + root_bar["width"], "the CAD POST starts after the RPC"
    assert post["width"] > root_bar["width"], "26 ms is drawn longer than 9.5 ms"

    # Who was reached.
    people = page.get_by_test_id("people-panel")
    expect(people.locator("[data-recipient='stf-lincoln-000']")).to_contain_text("Acknowledged")
    expect(people.locator("[data-recipient='stf-lincoln-002']")).to_contain_text("Never reached")
    expect(people.get_by_test_id("never-reached")).to_contain_text("stf-lincoln-002")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "timeline-incident.png"), full_page=True)

    # Keyboard: the list moves with the arrow keys and opens what it lands on.
    page.get_by_test_id("timeline-entries").focus()
    page.keyboard.press("End")
    expect(details.get_by_test_id("entry-type")).to_have_text("IncidentCleared")
    page.keyboard.press("Home")
    expect(details.get_by_test_id("entry-type")).to_have_text("PanicAlert")
    page.keyboard.press("ArrowDown")
    expect(details.get_by_test_id("entry-type")).to_have_text("IncidentOpened")

    # Exports: JSON for tools, the HTML after-action report.
    with page.expect_download() as download:
        page.get_by_test_id("export-json").click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["subject"]["id"] == played.id
    assert [e["seq"] for e in exported["entries"]] == list(range(1, len(EXPECTED) + 1))
    assert sorted(e["event_type"].rsplit(".", 1)[-1] for e in exported["entries"]) == sorted(
        played.published
    )
    with page.expect_download() as download:
        page.get_by_test_id("export-html").click()
    report = Path(download.value.path()).read_text()
    assert "Hash chain verified" in report
    assert "withheld: STUDENT_RECORD" in report
    assert "wheelchair" not in report
    assert errors == []


def test_other_district_and_no_token_get_clear_refusals(
    browser: Browser, incident: tuple[TimelineProcess, Incident, dict[str, Any]]
) -> None:
    timeline, played, _ = incident

    south, _ = _open(browser, f"{timeline.url}/incidents/{played.id}?token={SOUTH_TOKEN}")
    error = south.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Incident not found")
    expect(south.get_by_test_id("subject")).to_be_hidden()
    expect(south.get_by_test_id("timeline-entry")).to_have_count(0)

    nobody, _ = _open(browser, f"{timeline.url}/incidents/{played.id}")
    expect(nobody.get_by_test_id("error")).to_contain_text("Sign-in required")

    # The list: the north reviewer finds the incident and opens it; the south one does not.
    listing, _ = _open(browser, f"{timeline.url}/?token={NORTH_TOKEN}")
    row = listing.locator(f"[data-testid=subject-row][data-id='{played.id}']")
    expect(row).to_contain_text("Active assailant")
    expect(row).to_contain_text("Real")
    listing.get_by_label("Drill or real").select_option("true")
    listing.get_by_role("button", name="Apply").click()
    expect(listing.get_by_test_id("list-status")).to_contain_text("No incidents match")
    assert "exercise=true" in listing.url, "filters are kept in the address"
    listing.get_by_label("Drill or real").select_option("false")
    listing.get_by_label("School").fill("sch-lincoln-hs")
    listing.get_by_role("button", name="Apply").click()
    expect(row).to_be_visible()
    listing.get_by_label("District").fill("dist-south-isd")
    listing.get_by_role("button", name="Apply").click()
    expect(listing.get_by_test_id("error")).to_contain_text("Not permitted")
    listing.get_by_label("District").fill("")
    listing.get_by_role("button", name="Apply").click()
    row.get_by_role("link").click()
    expect(listing.get_by_test_id("subject-id")).to_have_text(played.id)

    south_list, _ = _open(browser, f"{timeline.url}/?token={SOUTH_TOKEN}")
    expect(south_list.get_by_test_id("list-status")).to_contain_text("No incidents")


@pytest.fixture
def big_incident(
    kafka: KafkaSettings, catalog: TopicCatalog, codec: Codec, tmp_path: Path
) -> Iterator[tuple[TimelineProcess, str, int]]:
    """The timeline holding one incident of 10,000 entries (door reports during a lockdown)."""
    timeline = TimelineProcess(
        kafka, catalog.prefix, tmp_path, f"sqlite:///{tmp_path / 'timeline.sqlite3'}"
    ).start()
    start = datetime.now(UTC) - timedelta(hours=2)
    incident_id = f"inc-big-{start:%H%M%S}"
    total = 10_000
    try:
        with EventProducer(kafka, codec, catalog, client_id="test-big") as producer:
            opened = {
                "incident_id": incident_id,
                "version": 1,
                "incident_type": "INTRUDER",
                "state": "CONFIRMED",
                "srp_action": "LOCKDOWN",
                "evacuate_location": None,
                "shelter_hazard": None,
                "shelter_strategy": None,
                "correlated_event_ids": [],
                "dispatchable": True,
                "summary": "Intruder in building A",
            }
            events = [
                new_event(
                    "IncidentOpened",
                    source="incidents",
                    tenant=LINCOLN,
                    incident_id=incident_id,
                    occurred_at=start,
                    payload=opened,
                )
            ]
            events += [
                new_event(
                    "DoorLockState",
                    source="gateway",
                    tenant=LINCOLN,
                    building="A",
                    incident_id=incident_id,
                    occurred_at=start + timedelta(milliseconds=250 * i),
                    payload={
                        "door_id": f"A-door-{i % 40:02d}",
                        "door_name": None,
                        "state": "LOCKED" if i % 7 else "HELD_OPEN",
                        "exterior": i % 2 == 0,
                        "command_id": None,
                    },
                )
                for i in range(1, total)
            ]
            for future in [producer.publish_nowait(event) for event in events]:
                future.result(timeout=60)
        timeline.wait_entries(incident_id, 1)
        with timeline.client() as client:

            def all_stored() -> bool:
                answer = client.get(f"/api/v1/subjects/{incident_id}/verify").json()
                return int(answer.get("checked", 0)) == total

            wait_until(all_stored, timeout=120, what=f"{total} entries stored")
        yield timeline, incident_id, total
    finally:
        timeline.stop()


def test_ten_thousand_entries_load_in_pages_and_only_visible_rows_exist(
    browser: Browser, big_incident: tuple[TimelineProcess, str, int]
) -> None:
    timeline, incident_id, total = big_incident
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    pages: list[str] = []
    page.on(
        "request",
        lambda request: pages.append(request.url) if "/timeline?" in request.url else None,
    )
    page.goto(f"{timeline.url}/incidents/{incident_id}?token={NORTH_TOKEN}")
    expect(page.get_by_test_id("load-progress")).to_have_attribute(
        "data-done", "true", timeout=60_000
    )
    expect(page.get_by_test_id("load-progress")).to_have_text(f"{total:,} entries")
    assert len(pages) == 5, "pages of 2,000 entries, following next_after_seq"
    assert all("limit=2000" in url for url in pages)

    # Virtualised: a screenful of rows exists, not 10,000, wherever the reviewer is.
    rows = page.get_by_test_id("timeline-entry")
    assert 10 <= rows.count() <= 60
    page.get_by_test_id("timeline-entries").focus()
    page.keyboard.press("End")
    details = page.get_by_test_id("entry-details")
    expect(details.get_by_test_id("entry-type")).to_have_text("DoorLockState")
    last = page.locator(f"[data-testid=timeline-entry][data-pos='{total - 1}']")
    expect(last).to_be_visible()
    assert rows.count() <= 60
    page.keyboard.press("Home")
    expect(details.get_by_test_id("entry-type")).to_have_text("IncidentOpened")
    expect(page.get_by_test_id("chain-status")).to_contain_text(f"{total:,} entries checked")
