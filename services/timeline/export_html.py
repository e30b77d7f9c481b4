"""The after-action report: one incident's timeline as a single self-contained HTML file.

Input is the timeline export (``GET /api/v1/subjects/{id}/export?format=json``: subject,
chain, entries, optionally people and spans). Everything that came from data is escaped;
the file has no scripts and loads nothing, so it can be archived and opened anywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

LANES = ("gateway", "incidents", "cad", "doors", "notifications", "people")
LANE_COLORS = {
    "gateway": "#2f6fdf",
    "incidents": "#c2410c",
    "cad": "#b91c1c",
    "doors": "#6d28d9",
    "notifications": "#0f766e",
    "people": "#a16207",
}

_STYLE = """
body{font:14px/1.45 system-ui,"Segoe UI","Noto Sans","DejaVu Sans",sans-serif;color:#1b2330;
margin:24px auto;max-width:1400px;padding:0 24px}
h1{font-size:1.5rem;margin:0 0 4px}h2{font-size:1.1rem;margin:28px 0 8px;border-bottom:2px solid
#dde2ea;padding-bottom:4px}table{border-collapse:collapse;width:100%}th,td{text-align:left;
vertical-align:top;padding:5px 8px;border-bottom:1px solid #dde2ea}thead th{background:#f4f6f9;
font-size:.78rem;text-transform:uppercase;letter-spacing:.04em;color:#566173}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.85em}
.muted{color:#566173}.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 18px}
.facts dt{color:#566173}.facts dd{margin:0}.ok{background:#e7f6ec;color:#166534;border:1px solid
#b6e0c2;padding:8px 12px;border-radius:6px}.bad{background:#fdecea;color:#b42318;border:2px solid
#b42318;padding:8px 12px;border-radius:6px}.lane{display:inline-block;color:#fff;border-radius:4px;
padding:0 6px;font-size:.75rem;font-weight:700;text-transform:uppercase}
.withheld{font-family:ui-monospace,monospace;font-size:.8em;font-weight:700;color:#5b21b6;
background:#f5ecff;border:1px dashed #8b5cf6;border-radius:4px;padding:0 4px}
ul.data{list-style:none;margin:0;padding:0 0 0 10px;font-size:.85em}ul.data>li>b{font-weight:600;
color:#566173}.hash{font-size:.72em;word-break:break-all;color:#334055}tr.broken{background:#fdecea}
.badge{border-radius:999px;padding:1px 8px;font-size:.78rem;font-weight:600;border:1px solid}
.real{color:#b42318;background:#fdecea}.drill{color:#8a4b00;background:#fff4e0}
@media print{body{margin:0;max-width:none}tr{break-inside:avoid}}
"""


def _e(value: object) -> str:
    """Escaped text; None shows as an em dash."""
    return "—" if value is None or value == "" else escape(str(value), quote=True)


def _withheld(value: object) -> str | None:
    if isinstance(value, Mapping) and set(value) == {"withheld"}:
        return str(value["withheld"])
    return None


def render_value(value: object) -> str:
    """A JSON value as escaped HTML; withheld fields show as ``withheld: CLASS`` markers."""
    data_class = _withheld(value)
    if data_class is not None:
        return f'<span class="withheld">withheld: {_e(data_class)}</span>'
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">{}</span>'
        items = "".join(f"<li><b>{_e(k)}</b>: {render_value(v)}</li>" for k, v in value.items())
        return f'<ul class="data">{items}</ul>'
    if isinstance(value, list):
        if not value:
            return '<span class="muted">[]</span>'
        items = "".join(f"<li>{render_value(v)}</li>" for v in value)
        return f'<ul class="data">{items}</ul>'
    if value is None:
        return '<span class="muted">null</span>'
    if isinstance(value, bool | int | float):
        return f"<code>{_e(json.dumps(value))}</code>"
    return _e(value)


def _table(headers: Sequence[str], rows: Iterable[str], attrs: str = "") -> str:
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _facts(subject: Mapping[str, Any], export: Mapping[str, Any]) -> str:
    place = ", ".join(
        part
        for part in (
            f"building {subject['building']}" if subject.get("building") else "",
            f"room {subject['room']}" if subject.get("room") else "",
        )
        if part
    )
    pairs = [
        (
            "Incident" if subject.get("kind") != "case" else "Case",
            f"<code>{_e(subject.get('id'))}</code>",
        ),
        ("Type", _e(subject.get("type"))),
        ("Drill or real", "Drill" if subject.get("exercise") else "Real"),
        ("Status", _e(subject.get("status"))),
        ("District", _e(subject.get("district"))),
        ("School", _e(subject.get("school"))),
        ("Place", _e(place)),
        ("Incident state", _e(subject.get("incident_state"))),
        ("SRP action", _e(subject.get("srp_action"))),
        ("CAD status", _e(subject.get("cad_status"))),
        ("Opened (UTC)", _e(subject.get("opened_at"))),
        ("Last update (UTC)", _e(subject.get("updated_at"))),
        ("Entries", _e(subject.get("entry_count"))),
        ("Exported (UTC)", _e(export.get("exported_at"))),
        ("Exported by", _e(export.get("exported_by"))),
    ]
    body = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="facts">{body}</dl>'


def _chain(chain: Mapping[str, Any]) -> str:
    checked = _e(chain.get("checked"))
    head = _e(chain.get("head_hash"))
    if chain.get("ok"):
        return (
            f'<p class="ok" id="chain-status"><strong>Hash chain verified.</strong> {checked} '
            f"entries checked; none altered, removed or reordered. Head hash "
            f"<code>{head}</code>.</p>"
        )
    problem = chain.get("problem") or {}
    return (
        f'<p class="bad" id="chain-status"><strong>Hash chain BROKEN at entry '
        f"#{_e(problem.get('seq'))} ({_e(problem.get('kind'))}).</strong> "
        f"{_e(problem.get('detail'))} {checked} entries checked.</p>"
    )


def _lane(lane: object) -> str:
    color = LANE_COLORS.get(str(lane), "#566173")
    return f'<span class="lane" style="background:{color}">{_e(lane)}</span>'


def _data(data: object) -> str:
    """The event's fields, its envelope folded (ids and times the row already shows)."""
    if not isinstance(data, Mapping) or "envelope" not in data:
        return render_value(data)
    fields = {k: v for k, v in data.items() if k != "envelope"}
    envelope = render_value(data["envelope"])
    return f"{render_value(fields)}<details><summary>envelope</summary>{envelope}</details>"


def _entries(entries: Sequence[Mapping[str, Any]], broken_seq: object) -> str:
    rows = []
    for entry in entries:
        broken = ' class="broken"' if entry.get("seq") == broken_seq else ""
        withheld = entry.get("withheld") or []
        paths = _e(", ".join(map(str, withheld)))
        note = f'<div class="muted">withheld from this export: {paths}</div>' if withheld else ""
        event_type = str(entry.get("event_type") or "").rsplit(".", 1)[-1]
        rows.append(
            f'<tr id="seq-{_e(entry.get("seq"))}"{broken}>'
            f'<td class="mono">{_e(entry.get("seq"))}</td>'
            f'<td class="mono">{_e(entry.get("occurred_at"))}'
            f'<div class="muted">recorded {_e(entry.get("recorded_at"))}</div></td>'
            f"<td>{_lane(entry.get('lane'))}</td>"
            f"<td><strong>{_e(event_type)}</strong><div>{_e(entry.get('summary'))}</div>"
            f"{note}</td>"
            f'<td class="mono">{_e(entry.get("actor"))}</td>'
            f'<td class="mono">{_e(entry.get("source"))}</td>'
            f"<td>{_data(entry.get('data'))}</td>"
            f'<td class="mono">{_e(entry.get("trace_id"))}</td>'
            f'<td><code class="hash">{_e(entry.get("hash"))}</code>'
            f'<div class="muted">prev <code class="hash">{_e(entry.get("prev_hash"))}</code>'
            "</div></td></tr>"
        )
    headers = ("#", "Occurred (UTC)", "Lane", "Event", "Actor", "System", "Data", "Trace", "Hash")
    return _table(headers, rows, ' id="entries"')


def _outcome(recipient: Mapping[str, Any], never: Sequence[str]) -> str:
    channels: Sequence[Mapping[str, Any]] = recipient.get("channels") or []
    if recipient.get("recipient_id") in never:
        return "never reached"
    if recipient.get("acknowledged_at"):
        return "acknowledged"
    if any(c.get("delivered_at") for c in channels):
        return "delivered, not acknowledged"
    return "sent, not confirmed"


def _people(people: Mapping[str, Any]) -> str:
    recipients: Sequence[Mapping[str, Any]] = people.get("recipients") or []
    never = [str(r) for r in people.get("never_reached") or []]
    if not recipients and not never:
        return '<p class="muted">Nobody was notified.</p>'
    rows = []
    for recipient in recipients:
        channels = "".join(
            f"<li><b>{_e(c.get('channel'))}</b>: "
            + "; ".join(
                f"{label} {_e(c.get(key))}"
                for label, key in (
                    ("queued", "queued_at"),
                    ("sent", "sent_at"),
                    ("delivered", "delivered_at"),
                    ("failed", "failed_at"),
                )
                if c.get(key)
            )
            + (f" — {_e(c.get('error'))}" if c.get("error") else "")
            + "</li>"
            for c in recipient.get("channels") or []
        )
        name = f"<div>{_e(recipient['name'])}</div>" if recipient.get("name") else ""
        rows.append(
            f"<tr><td><code>{_e(recipient.get('recipient_id'))}</code>{name}</td>"
            f'<td><ul class="data">{channels}</ul></td>'
            f'<td class="mono">{_e(recipient.get("acknowledged_at"))}</td>'
            f"<td>{_e(_outcome(recipient, never))}</td></tr>"
        )
    listed = (
        f'<p class="bad" id="never-reached"><strong>Never reached ({len(never)}):</strong> '
        f"{_e(', '.join(never))}</p>"
        if never
        else '<p class="ok">Every recipient was reached.</p>'
    )
    table = _table(("Recipient", "Channels (UTC)", "Acknowledged (UTC)", "Outcome"), rows)
    return listed + table


def _spans(spans: Sequence[Mapping[str, Any]]) -> str:
    if not spans:
        return '<p class="muted">No spans were recorded for this incident.</p>'
    ordered = sorted(spans, key=lambda s: (str(s.get("trace_id")), str(s.get("start"))))
    rows = (
        f'<tr><td class="mono">{_e(s.get("trace_id"))}</td><td>{_e(s.get("name"))}</td>'
        f"<td>{_e(s.get('service'))}</td><td>{_e(s.get('kind'))}</td>"
        f'<td class="mono">{_e(s.get("start"))}</td>'
        f'<td class="mono">{_e(s.get("duration_ms"))} ms</td><td>{_e(s.get("status"))}</td></tr>'
        for s in ordered
    )
    headers = ("Trace", "Span", "Service", "Kind", "Start (UTC)", "Duration", "Status")
    return _table(headers, rows)


def render_incident_html(
    timeline: Mapping[str, Any], people: Mapping[str, Any] | None = None
) -> str:
    """The after-action report of one subject (an export or a timeline answer) as HTML.

    ``people`` (``GET …/people``) defaults to the export's own ``people``.
    """
    subject: Mapping[str, Any] = timeline.get("subject") or {}
    chain: Mapping[str, Any] = timeline.get("chain") or {}
    entries: Sequence[Mapping[str, Any]] = timeline.get("entries") or []
    people = people if people is not None else timeline.get("people")
    spans: Sequence[Mapping[str, Any]] = timeline.get("spans") or []
    broken_seq = None if chain.get("ok") else (chain.get("problem") or {}).get("seq")
    lanes = Counter(str(e.get("lane")) for e in entries)
    lane_counts = ", ".join(
        f"{lane} {lanes[lane]}"
        for lane in (*LANES, *sorted(set(lanes) - set(LANES)))
        if lanes[lane]
    )
    kind, badge = ("Drill", "drill") if subject.get("exercise") else ("Real emergency", "real")
    what = subject.get("type") or subject.get("kind") or ""
    title = f"After-action report: {what} {subject.get('id') or ''}"
    sections = [
        f"<h1>{_e(title)}</h1>",
        f'<p><span class="badge {badge}">{_e(kind)}</span> {_e(subject.get("summary") or "")}</p>',
        _facts(subject, timeline),
        _chain(chain),
        f"<h2>Timeline ({len(entries)} entries, in chain order)</h2>",
        f'<p class="muted">All times UTC (ISO-8601). Entries per lane: {_e(lane_counts)}.</p>',
        _entries(entries, broken_seq),
    ]
    if people is not None:
        sections += ["<h2>People notified</h2>", _people(people)]
    if "spans" in timeline:
        sections += [f"<h2>Trace spans ({len(spans)})</h2>", _spans(spans)]
    sections.append(
        f'<p class="muted">{_e(timeline.get("format") or "safehub.timeline")} · generated by '
        "SafeHub timeline. Withheld fields were not released to the exporting reviewer.</p>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        + "".join(sections)
        + "</body></html>"
    )
