"""The after-action HTML report: complete, in chain order, withheld fields marked, all escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from services.timeline.export_html import render_incident_html, render_value

HOSTILE = '<script>alert("x")</script>'
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'


class _Tags(HTMLParser):
    """Collects start tags and the text of the document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(document: str) -> _Tags:
    parser = _Tags()
    parser.feed(document)
    parser.close()
    return parser


def _entry(seq: int, lane: str, event_type: str, **extra: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "event_id": f"evt-{seq}",
        "event_type": event_type,
        "lane": lane,
        "occurred_at": f"2026-11-23T14:02:{10 + seq:02d}.000000Z",
        "recorded_at": f"2026-11-23T14:02:{10 + seq:02d}.004000Z",
        "source": "incidents",
        "actor": None,
        "summary": f"step {seq}",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": f"{seq:016x}",
        "exercise": False,
        "classification": ["INTERNAL"],
        "data": {},
        "withheld": [],
        "hash": f"{seq:064x}",
        "prev_hash": f"{seq - 1:064x}",
        **extra,
    }


def _export(*, ok: bool = True) -> dict[str, Any]:
    return {
        "format": "safehub.timeline.export.v1",
        "exported_at": "2026-11-24T08:00:00.000000Z",
        "exported_by": "rev-north-aar",
        "subject": {
            "id": f"inc-{HOSTILE}",
            "kind": "incident",
            "district": "dist-north-isd",
            "school": "sch-lincoln-hs",
            "building": "B",
            "room": HOSTILE_ATTR,
            "type": "ACTIVE_ASSAILANT",
            "status": "cleared",
            "summary": HOSTILE,
            "exercise": False,
            "opened_at": "2026-11-23T14:02:11.000000Z",
            "updated_at": "2026-11-23T14:02:20.000000Z",
            "entry_count": 4,
        },
        "chain": {
            "ok": ok,
            "checked": 4,
            "problem": None if ok else {"seq": 3, "kind": "altered", "detail": HOSTILE},
            "head_hash": "f" * 64,
        },
        "entries": [
            _entry(1, "gateway", "safehub.events.PanicAlert", actor=HOSTILE),
            _entry(2, "incidents", "safehub.events.IncidentOpened", summary=HOSTILE),
            _entry(
                3,
                "cad",
                "safehub.events.CadDispatch",
                data={"psap_id": "psap-north-county", "eido": {"withheld": "STUDENT_RECORD"}},
                withheld=["eido"],
                classification=["INTERNAL", "STUDENT_RECORD"],
            ),
            _entry(
                4,
                "people",
                "NotificationAcknowledged",
                data={HOSTILE: [HOSTILE_ATTR, 7, True, None]},
            ),
        ],
        "people": {
            "recipients": [
                {
                    "recipient_id": "stf-lincoln-000",
                    "name": HOSTILE,
                    "channels": [
                        {
                            "channel": "SMS",
                            "queued_at": "2026-11-23T14:02:14.000000Z",
                            "sent_at": "2026-11-23T14:02:14.200000Z",
                            "delivered_at": "2026-11-23T14:02:15.000000Z",
                            "failed_at": None,
                            "error": None,
                        }
                    ],
                    "acknowledged_at": "2026-11-23T14:02:19.000000Z",
                },
                {
                    "recipient_id": "stf-lincoln-002",
                    "channels": [
                        {
                            "channel": "EMAIL",
                            "queued_at": "2026-11-23T14:02:14.000000Z",
                            "sent_at": None,
                            "delivered_at": None,
                            "failed_at": "2026-11-23T14:02:16.000000Z",
                            "error": HOSTILE,
                        }
                    ],
                    "acknowledged_at": None,
                },
            ],
            "never_reached": ["stf-lincoln-002"],
        },
        "spans": [
            {
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "span_id": "0000000000000001",
                "parent_span_id": None,
                "name": HOSTILE,
                "service": "gateway",
                "kind": "SERVER",
                "start": "2026-11-23T14:02:11.000000Z",
                "end": "2026-11-23T14:02:11.014000Z",
                "duration_ms": 14.0,
                "status": "OK",
                "attributes": {},
            }
        ],
    }


def test_report_escapes_every_value_from_data() -> None:
    document = render_incident_html(_export(ok=False))

    parsed = _parse(document)
    tag_names = {tag for tag, _ in parsed.tags}
    assert "script" not in tag_names
    assert "img" not in tag_names
    assert not any(name.startswith("on") for _, attrs in parsed.tags for name in attrs), (
        "an attribute from data became an event handler"
    )
    assert "<script>" not in document
    text = "".join(parsed.text)
    # The hostile strings are still there, as text a reviewer can read.
    assert text.count(HOSTILE) >= 8
    assert HOSTILE_ATTR in text


def test_report_lists_every_entry_in_chain_order_with_lanes_and_hashes() -> None:
    export = _export()
    document = render_incident_html(export)

    rows = re.findall(r'<tr id="seq-(\d+)"', document)
    assert rows == ["1", "2", "3", "4"]
    for entry in export["entries"]:
        assert entry["hash"] in document
        assert entry["occurred_at"] in document
    for lane in ("gateway", "incidents", "cad", "people"):
        assert f">{lane}</span>" in document
    assert "Hash chain verified" in document
    assert "BROKEN" not in document


def test_report_names_the_first_bad_entry_when_the_chain_is_broken() -> None:
    document = render_incident_html(_export(ok=False))

    assert "Hash chain BROKEN at entry #3 (altered)" in document
    assert '<tr id="seq-3" class="broken">' in document
    assert "Hash chain verified" not in document


def test_withheld_fields_show_as_markers_not_data() -> None:
    document = render_incident_html(_export())

    assert '<span class="withheld">withheld: STUDENT_RECORD</span>' in document
    assert "withheld from this export: eido" in document
    # A stored event's envelope is folded away in its row, still in the report.
    folded = render_incident_html(
        {
            **_export(),
            "entries": [
                _entry(
                    1,
                    "doors",
                    "LockCommand",
                    data={"envelope": {"room": "B-214"}, "target": "LOCKED"},
                )
            ],
        }
    )
    assert "<details><summary>envelope</summary>" in folded
    assert "B-214" in folded
    assert render_value({"withheld": "HEALTH"}) == (
        '<span class="withheld">withheld: HEALTH</span>'
    )
    # A mapping that merely has a "withheld" key among others is data, not a marker.
    assert "withheld: " not in render_value({"withheld": "x", "other": 1})


def test_people_table_names_who_was_never_reached() -> None:
    document = render_incident_html(_export())

    assert "Never reached (1):</strong> stf-lincoln-002" in document
    assert "<td>acknowledged</td>" in document
    assert "<td>never reached</td>" in document
    assert "delivered 2026-11-23T14:02:15.000000Z" in document
    assert "2026-11-23T14:02:19.000000Z" in document


def test_people_given_separately_win_and_missing_sections_are_left_out() -> None:
    export = _export()
    del export["people"], export["spans"]
    alone = render_incident_html(export)
    assert "People notified" not in alone
    assert "Trace spans" not in alone

    people = {"recipients": [], "never_reached": ["grd-lincoln-000"]}
    with_people = render_incident_html(export, people)
    assert "People notified" in with_people
    assert "grd-lincoln-000" in with_people
