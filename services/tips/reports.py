"""The tips programme's statistics: the public report and the averted-violence export.

What a state's tip line publishes each month or year (as Safe2Tell and OK2SAY do), computed
from the tips table alone. Nothing personal is ever read: the queries select only the
columns below (never the text, notes, thread, contact, sealed identity, tip code, named
students or who was assigned), so no report can carry them.

**Population.** The tips whose ``created_at`` (epoch seconds, UTC) is inside the
:class:`Period` (a month ``2026-12`` or a year ``2026``, UTC calendar) and whose school is in
the :class:`Scope` (``state``: every tip; ``district:<id>``; ``school:<id>``).

**Measures** (:func:`build`):

- ``received``: every tip of the population; ``by_category``, ``by_channel`` and
  ``by_school`` count them all (every category and channel listed, zeros included).
- ``life_safety`` and ``life_safety_share`` (of ``received``; null when nothing came in).
- ``duplicates_folded``: tips MERGED into a primary (status MERGED or ``primary_tip_id``
  set); ``distinct = received - duplicates_folded``. A folded duplicate is never worked on
  its own, so every measure below is over the distinct tips.
- ``time_to_first_human`` (``first_human_at - created_at``), overall and for life-safety
  tips: ``count`` measured, ``p50``, ``p90``, ``max`` (seconds; percentiles interpolate
  linearly between ranks, so ``p50`` is the median) and ``waiting`` (no human yet).
- ``time_to_close`` (``closed_at - created_at``): the same, ``waiting`` = not closed.
- ``outcomes``: closed tips by disposition (every disposition listed).
- ``open_at_period_end``: tips not closed by the end of the period (or by ``now`` while the
  period is still running: ``as_of``).

**Averted-violence export** (:func:`averted_violence_export`, format
:data:`EXPORT_FORMAT`): one record per closed tip of the population in category WEAPON or
THREAT_OF_VIOLENCE closed as REFERRED_TO_LAW_ENFORCEMENT or REFERRED_TO_BTAM, for a research
database of averted school attacks. Fields, and nothing else:

- ``case_ref``: a stable pseudonym, the first 20 hex digits of SHA-256 over a fixed label and
  the tip id (tip ids are random, so it cannot be turned back without the store; the same tip
  always gets the same reference, so exports of overlapping periods can be reconciled);
- ``month``: ``YYYY-MM`` (UTC) the tip came in; no day, no time;
- ``state``: the directory's state code (null when not given);
- ``district_id``;
- ``school_level``: always null (the directory records no level yet);
- ``category``, ``channel``, ``life_safety``, ``imminent``;
- ``days_to_close``: ``(closed_at - created_at) / 86400`` rounded to 0.1;
- ``disposition``.

Records are ordered by month then ``case_ref``, never by arrival. There is no text, tip code,
tipster identity, school id, student id, analyst or exact timestamp.

:func:`report_response` and :func:`export_response` answer the HTTP API (``GET
/api/reports?period=&scope=&format=``, ``GET /api/reports/export?period=&scope=``) without
depending on a web framework: ``(status, content type, body)``, 400 naming the bad field.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from safehub.kernel.errors import SafeHubError
from safehub.kernel.store import wrap_errors
from services.tips.model import Category, Channel, Disposition, Status
from services.tips.store import StoreError, TipStore

EXPORT_FORMAT = "safehub.tips.averted-violence/1"
AVERTED_CATEGORIES = frozenset({Category.WEAPON, Category.THREAT_OF_VIOLENCE})
AVERTED_DISPOSITIONS = frozenset(
    {Disposition.REFERRED_TO_LAW_ENFORCEMENT, Disposition.REFERRED_TO_BTAM}
)
CSV_COLUMNS = ("period", "scope", "measure", "key", "label", "value", "unit")
FORMATS = ("json", "csv", "html")

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_CASE_REF_LABEL = b"safehub.tips.case-ref\x00"


class ReportError(SafeHubError):
    """A report was asked for wrongly (``field`` names the parameter, the message the fix)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# -- period and scope -------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A calendar month or year in UTC: tips with ``start <= created_at < end``."""

    label: str
    kind: str  # month | year
    start: float
    end: float

    @classmethod
    def parse(cls, text: str) -> Period:
        """``2026-12`` or ``2026``; ReportError naming ``period`` otherwise."""
        value = (text or "").strip()
        found = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", value)
        if found is None:
            raise ReportError(
                "period", f"period must be a month (2026-12) or a year (2026), not {value!r}"
            )
        year = int(found.group(1))
        if not 1970 <= year <= 9998:
            raise ReportError("period", f"period year must be between 1970 and 9998, not {year}")
        if found.group(2) is None:
            start = datetime(year, 1, 1, tzinfo=UTC)
            end = datetime(year + 1, 1, 1, tzinfo=UTC)
            return cls(f"{year:04d}", "year", start.timestamp(), end.timestamp())
        month = int(found.group(2))
        if not 1 <= month <= 12:
            raise ReportError(
                "period", f"period month must be 01 to 12 (as in 2026-12), not {found.group(2)}"
            )
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return cls(f"{year:04d}-{month:02d}", "month", start.timestamp(), end.timestamp())

    def to_json(self) -> dict[str, str]:
        """Label, kind and bounds (ISO 8601, UTC)."""
        return {
            "label": self.label,
            "kind": self.kind,
            "start": _iso(self.start),
            "end": _iso(self.end),
        }


@dataclass(frozen=True)
class Scope:
    """Whose tips: the whole state, one district or one school."""

    kind: str  # state | district | school
    id: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> Scope:
        """``state``, ``district:<id>`` or ``school:<id>`` (empty: state); ReportError naming
        ``scope`` otherwise."""
        value = (text or "state").strip()
        if value == "state":
            return cls("state")
        kind, sep, ident = value.partition(":")
        if not sep or kind not in ("district", "school"):
            raise ReportError(
                "scope", f"scope must be state, district:<id> or school:<id>, not {value!r}"
            )
        if not _ID.fullmatch(ident):
            raise ReportError(
                "scope",
                f"scope {kind} id must be letters, digits, '.', '_' or '-' (at most 200), "
                f"not {ident!r}",
            )
        return cls(kind, ident)

    @property
    def label(self) -> str:
        """``state``, ``district:<id>`` or ``school:<id>``."""
        return self.kind if self.id is None else f"{self.kind}:{self.id}"

    def to_json(self) -> dict[str, str | None]:
        """Kind, id and label."""
        return {"kind": self.kind, "id": self.id, "label": self.label}


# -- the report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Durations:
    """How long something took (seconds), over the tips where it happened."""

    count: int
    p50: float | None
    p90: float | None
    max: float | None
    waiting: int

    @classmethod
    def of(cls, values: Iterable[float], waiting: int) -> Durations:
        """Count, median, 90th percentile and maximum of ``values``."""
        ordered = sorted(max(0.0, v) for v in values)
        if not ordered:
            return cls(0, None, None, None, waiting)
        return cls(
            len(ordered),
            _percentile(ordered, 0.5),
            _percentile(ordered, 0.9),
            ordered[-1],
            waiting,
        )

    def to_json(self) -> dict[str, Any]:
        """The fields (seconds; null when nothing was measured)."""
        return {
            "count": self.count,
            "p50_s": self.p50,
            "p90_s": self.p90,
            "max_s": self.max,
            "waiting": self.waiting,
        }


@dataclass(frozen=True)
class SchoolCount:
    """Tips received by one school."""

    school_id: str
    name: str
    count: int


@dataclass(frozen=True)
class Report:
    """The statistics of one period and scope (see the module docstring for each measure)."""

    period: Period
    scope: Scope
    generated_at: float
    as_of: float
    received: int
    duplicates_folded: int
    distinct: int
    life_safety: int
    life_safety_share: float | None
    by_category: dict[str, int]
    by_channel: dict[str, int]
    by_school: list[SchoolCount]
    time_to_first_human: Durations
    time_to_first_human_life_safety: Durations
    time_to_close: Durations
    outcomes: dict[str, int]
    open_at_period_end: int
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Tip:
    tip_id: str
    school_id: str
    district_id: str
    channel: str
    category: str
    life_safety: bool
    imminent: bool
    status: str
    disposition: str | None
    primary_tip_id: str | None
    created_at: float
    first_human_at: float | None
    closed_at: float | None

    @property
    def duplicate(self) -> bool:
        return self.status == Status.MERGED.value or self.primary_tip_id is not None


def _rows(store: TipStore, period: Period, scope: Scope) -> list[_Tip]:
    """The population, with only the columns a report may use."""
    t = store.tips.c
    query = select(*(getattr(t, name) for name in _Tip.__dataclass_fields__)).where(
        t.created_at >= period.start, t.created_at < period.end
    )
    if scope.kind == "district":
        query = query.where(t.district_id == scope.id)
    elif scope.kind == "school":
        query = query.where(t.school_id == scope.id)
    with wrap_errors(StoreError, "cannot read tips for a report"), store.engine.connect() as c:
        found = c.execute(query.order_by(t.created_at, t.tip_id)).all()
    return [
        _Tip(
            **{**row._mapping, "life_safety": bool(row.life_safety), "imminent": bool(row.imminent)}
        )
        for row in found
    ]


def build(
    store: TipStore,
    period: Period,
    scope: Scope,
    *,
    school_names: Mapping[str, str],
    now: float,
) -> Report:
    """The report of ``period`` and ``scope`` as the store holds it at ``now``."""
    tips = _rows(store, period, scope)
    as_of = min(period.end, now)
    distinct = [tip for tip in tips if not tip.duplicate]
    life_safety = sum(1 for tip in tips if tip.life_safety)
    categories = Counter(tip.category for tip in tips)
    channels = Counter(tip.channel for tip in tips)
    schools = Counter(tip.school_id for tip in tips)
    closed = [tip for tip in distinct if tip.closed_at is not None]
    notes: list[str] = []
    if now < period.end:
        notes.append(f"the period is not over: figures as of {_iso(now)}")
    return Report(
        period=period,
        scope=scope,
        generated_at=now,
        as_of=as_of,
        received=len(tips),
        duplicates_folded=len(tips) - len(distinct),
        distinct=len(distinct),
        life_safety=life_safety,
        life_safety_share=(life_safety / len(tips)) if tips else None,
        by_category=_every([c.value for c in Category], categories),
        by_channel=_every([c.value for c in Channel], channels),
        by_school=[
            SchoolCount(school_id, school_names.get(school_id, school_id), count)
            for school_id, count in sorted(schools.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        time_to_first_human=_first_human(distinct),
        time_to_first_human_life_safety=_first_human([t for t in distinct if t.life_safety]),
        time_to_close=Durations.of(
            (t.closed_at - t.created_at for t in closed if t.closed_at is not None),
            waiting=len(distinct) - len(closed),
        ),
        outcomes=_every(
            [d.value for d in Disposition], Counter(t.disposition or "" for t in closed)
        ),
        open_at_period_end=sum(1 for t in distinct if t.closed_at is None or t.closed_at > as_of),
        notes=notes,
    )


def _first_human(tips: Sequence[_Tip]) -> Durations:
    return Durations.of(
        (t.first_human_at - t.created_at for t in tips if t.first_human_at is not None),
        waiting=sum(1 for t in tips if t.first_human_at is None),
    )


def _every(names: Sequence[str], counts: Mapping[str, int]) -> dict[str, int]:
    """Every known name (zeros included), then any the store holds that we do not know."""
    out = {name: counts.get(name, 0) for name in names}
    for name in sorted(set(counts) - set(names)):
        if name:
            out[name] = counts[name]
    return out


def _percentile(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- renderings -------------------------------------------------------------------------


def to_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON data (times ISO 8601 UTC, durations in seconds)."""
    return {
        "period": report.period.to_json(),
        "scope": report.scope.to_json(),
        "generated_at": _iso(report.generated_at),
        "as_of": _iso(report.as_of),
        "received": report.received,
        "duplicates_folded": report.duplicates_folded,
        "distinct": report.distinct,
        "life_safety": report.life_safety,
        "life_safety_share": report.life_safety_share,
        "by_category": dict(report.by_category),
        "by_channel": dict(report.by_channel),
        "by_school": [
            {"school_id": s.school_id, "name": s.name, "count": s.count} for s in report.by_school
        ],
        "time_to_first_human": report.time_to_first_human.to_json(),
        "time_to_first_human_life_safety": report.time_to_first_human_life_safety.to_json(),
        "time_to_close": report.time_to_close.to_json(),
        "outcomes": dict(report.outcomes),
        "open_at_period_end": report.open_at_period_end,
        "notes": list(report.notes),
    }


def measures(report: Report) -> list[tuple[str, str, str, float | int | None, str]]:
    """The report as ``(measure, key, label, value, unit)`` rows (the CSV's, in order)."""
    rows: list[tuple[str, str, str, float | int | None, str]] = [
        ("tips_received", "", "", report.received, "tips"),
        ("duplicates_folded", "", "", report.duplicates_folded, "tips"),
        ("distinct_tips", "", "", report.distinct, "tips"),
        ("life_safety_tips", "", "", report.life_safety, "tips"),
        ("life_safety_share", "", "", report.life_safety_share, "fraction"),
    ]
    rows += [("by_category", k, k, v, "tips") for k, v in report.by_category.items()]
    rows += [("by_channel", k, k, v, "tips") for k, v in report.by_channel.items()]
    rows += [("by_school", s.school_id, s.name, s.count, "tips") for s in report.by_school]
    for name, durations in (
        ("time_to_first_human", report.time_to_first_human),
        ("time_to_first_human_life_safety", report.time_to_first_human_life_safety),
        ("time_to_close", report.time_to_close),
    ):
        rows += [
            (name, "count", "", durations.count, "tips"),
            (name, "p50", "", durations.p50, "seconds"),
            (name, "p90", "", durations.p90, "seconds"),
            (name, "max", "", durations.max, "seconds"),
            (name, "waiting", "", durations.waiting, "tips"),
        ]
    rows += [("outcome", k, k, v, "tips") for k, v in report.outcomes.items()]
    rows.append(("open_at_period_end", "", "", report.open_at_period_end, "tips"))
    return rows


def to_csv(report: Report) -> str:
    """One row per measure; columns :data:`CSV_COLUMNS`:

    ``period`` (``2026-12``), ``scope`` (``state``, ``district:<id>``…), ``measure`` (e.g.
    ``by_category``, ``time_to_close``), ``key`` (the category, channel, school id,
    disposition, or ``count``/``p50``/``p90``/``max``/``waiting``; empty for a single
    figure), ``label`` (the school's name, else the key), ``value`` (empty when nothing was
    measured; seconds to 0.001), ``unit`` (``tips``, ``fraction`` or ``seconds``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for measure, key, label, value, unit in measures(report):
        writer.writerow(
            [
                report.period.label,
                report.scope.label,
                measure,
                _cell(key),
                _cell(label),
                _number(value),
                unit,
            ]
        )
    return out.getvalue()


def _cell(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _number(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def to_html(report: Report) -> str:
    """A self-contained page (inline CSS and SVG, no JavaScript, every text escaped)."""
    e = html.escape
    title = f"Tips report {report.period.label}, {report.scope.label}"
    summary = [
        ("Tips received", str(report.received)),
        ("Duplicates folded", str(report.duplicates_folded)),
        ("Distinct tips", str(report.distinct)),
        ("Life-safety tips", f"{report.life_safety} ({_share(report.life_safety_share)})"),
        ("Open at period end", str(report.open_at_period_end)),
    ]
    timing_rows = "".join(
        f"<tr><th scope='row'>{e(label)}</th><td>{d.count}</td><td>{e(duration_text(d.p50))}</td>"
        f"<td>{e(duration_text(d.p90))}</td><td>{e(duration_text(d.max))}</td><td>{d.waiting}</td></tr>"
        for label, d in (
            ("First human", report.time_to_first_human),
            ("First human, life-safety", report.time_to_first_human_life_safety),
            ("Closed", report.time_to_close),
        )
    )
    school_rows = (
        "".join(
            f"<tr><th scope='row'>{e(s.name)}</th><td>{s.count}</td></tr>" for s in report.by_school
        )
        or "<tr><td colspan='2'>No tips.</td></tr>"
    )
    notes = "".join(f"<p class='note'>{e(n)}</p>" for n in report.notes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; padding: 1rem; max-width: 52rem;
  line-height: 1.4; color: #111; background: #fff; }}
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.1rem; margin-top: 1.6rem; }}
table {{ border-collapse: collapse; width: 100%; margin: .5rem 0; }}
th, td {{ text-align: left; padding: .3rem .4rem; border-bottom: 1px solid #ccc; }}
td {{ font-variant-numeric: tabular-nums; white-space: nowrap; }}
.wide {{ overflow-x: auto; }}
svg {{ width: 100%; height: auto; max-width: 30rem; display: block; }}
.note {{ color: #444; font-style: italic; }}
</style>
</head>
<body>
<main>
<h1>{e(title)}</h1>
<p>Tips that came in from {e(_day(report.period.start))} to {e(_day(report.period.end))}
(UTC, end excluded); generated {e(_iso(report.generated_at))}. Counts only: no tip's words,
tipster or student is in this report.</p>
{notes}
<h2>Summary</h2>
<table><tbody>
{"".join(f"<tr><th scope='row'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary)}
</tbody></table>
<h2>By category</h2>
{_bar_chart("chart-category", "Tips by category", report.by_category)}
<h2>By channel</h2>
{_bar_chart("chart-channel", "Tips by channel", report.by_channel)}
<h2>Response times</h2>
<p>Distinct tips (duplicates folded). Waiting: no human yet, or not closed yet.</p>
<div class="wide"><table>
<thead><tr><th scope="col">Time to</th><th scope="col">Tips</th><th scope="col">Median</th>
<th scope="col"><abbr title="90th percentile">P90</abbr></th><th scope="col">Longest</th>
<th scope="col">Waiting</th></tr></thead>
<tbody>{timing_rows}</tbody></table></div>
<h2>Outcomes</h2>
{_bar_chart("chart-outcome", "Closed tips by outcome", report.outcomes)}
<h2>By school</h2>
<table><thead><tr><th scope="col">School</th><th scope="col">Tips</th></tr></thead>
<tbody>{school_rows}</tbody></table>
</main>
</body>
</html>
"""


def _bar_chart(ident: str, title: str, counts: Mapping[str, int]) -> str:
    """A horizontal bar chart as inline SVG (scales to the page's width)."""
    e = html.escape
    row_h, label_w, bar_w, width = 24, 200, 160, 400
    height = row_h * max(1, len(counts)) + 8
    top = max(counts.values(), default=0) or 1
    bars = []
    for i, (name, count) in enumerate(counts.items()):
        y = 4 + i * row_h
        length = round(bar_w * count / top, 1)
        label = name.replace("_", " ").lower()
        bars.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{e(label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{length}" height="{row_h - 8}" '
            f'fill="#2b5c8a"><title>{e(label)}: {count}</title></rect>'
            f'<text x="{label_w + length + 6}" y="{y + 17}">{count}</text>'
        )
    return (
        f'<svg id="{ident}" role="img" aria-labelledby="{ident}-title" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
        f'font-size="13" font-family="system-ui, sans-serif">'
        f'<title id="{ident}-title">{e(title)}</title>{"".join(bars)}</svg>'
    )


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def duration_text(seconds: float | None) -> str:
    """A duration as people read it: ``45 s``, ``12.5 min``, ``3.2 h``, ``4.1 d``; ``—``
    when nothing was measured."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


# -- the averted-violence export ---------------------------------------------------------


def case_ref(tip_id: str) -> str:
    """The stable pseudonymous reference of a tip in the export."""
    return hashlib.sha256(_CASE_REF_LABEL + tip_id.encode("utf-8")).hexdigest()[:20]


def averted_violence_export(
    store: TipStore, period: Period, scope: Scope, *, state: str | None = None
) -> list[dict[str, Any]]:
    """The closed weapon and threat tips referred to law enforcement or a behavioural
    threat-assessment team, in the format the module docstring documents."""
    records = []
    for tip in _rows(store, period, scope):
        if (
            tip.closed_at is None
            or tip.category not in AVERTED_CATEGORIES
            or tip.disposition not in AVERTED_DISPOSITIONS
        ):
            continue
        records.append(
            {
                "case_ref": case_ref(tip.tip_id),
                "month": datetime.fromtimestamp(tip.created_at, UTC).strftime("%Y-%m"),
                "state": state,
                "district_id": tip.district_id,
                "school_level": None,
                "category": tip.category,
                "channel": tip.channel,
                "life_safety": tip.life_safety,
                "imminent": tip.imminent,
                "days_to_close": round(max(0.0, tip.closed_at - tip.created_at) / 86400, 1),
                "disposition": tip.disposition,
            }
        )
    records.sort(key=lambda r: (r["month"], r["case_ref"]))
    return records


def export_document(
    records: Sequence[Mapping[str, Any]], period: Period, scope: Scope
) -> dict[str, Any]:
    """The export as one JSON document (format, period, scope, cases)."""
    return {
        "format": EXPORT_FORMAT,
        "period": period.label,
        "scope": scope.label,
        "cases": [dict(r) for r in records],
    }


# -- the HTTP API, framework-free ---------------------------------------------------------

_JSON = "application/json; charset=utf-8"


def _error(exc: ReportError) -> tuple[int, str, bytes]:
    body = {"error": str(exc), "field": exc.field}
    return 400, _JSON, json.dumps(body).encode("utf-8")


def _query(query: Mapping[str, str]) -> tuple[Period, Scope]:
    if not query.get("period"):
        raise ReportError("period", "period is required: a month (2026-12) or a year (2026)")
    return Period.parse(query["period"]), Scope.parse(query.get("scope"))


def report_response(
    store: TipStore, query: Mapping[str, str], *, school_names: Mapping[str, str], now: float
) -> tuple[int, str, bytes]:
    """``GET /api/reports?period=&scope=&format=json|csv|html``: (status, content type,
    body); 400 with ``{"error", "field"}`` naming the bad query field. The caller decides
    who may see which scope."""
    try:
        period, scope = _query(query)
        wanted = query.get("format") or "json"
        if wanted not in FORMATS:
            raise ReportError("format", f"format must be one of {', '.join(FORMATS)}")
    except ReportError as exc:
        return _error(exc)
    report = build(store, period, scope, school_names=school_names, now=now)
    if wanted == "csv":
        return 200, "text/csv; charset=utf-8", to_csv(report).encode("utf-8")
    if wanted == "html":
        return 200, "text/html; charset=utf-8", to_html(report).encode("utf-8")
    return 200, _JSON, json.dumps(to_json(report)).encode("utf-8")


def export_response(
    store: TipStore, query: Mapping[str, str], *, state: str | None = None
) -> tuple[int, str, bytes]:
    """``GET /api/reports/export?period=&scope=``: the averted-violence export as
    :func:`export_document` JSON; 400 naming the bad query field."""
    try:
        period, scope = _query(query)
    except ReportError as exc:
        return _error(exc)
    records = averted_violence_export(store, period, scope, state=state)
    body = json.dumps(export_document(records, period, scope)).encode("utf-8")
    return 200, _JSON, body
