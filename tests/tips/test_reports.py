"""The tips programme's statistics on a real store (SQLite and PostgreSQL): exact counts,
percentiles and CSV rows from tips with controlled times, the HTML page's charts, the
averted-violence export's documented fields, nothing personal anywhere, bad periods and
scopes refused naming the field, the framework-free HTTP answer, and ``safehub tips``."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import text
from typer.testing import CliRunner

from safehub.cli.tips import app as tips_cli
from safehub.kernel.directory import default_directory_file
from safehub.kernel.http_server import ServerThread
from safehub.kernel.settings import ListenSettings
from services.tips import reports
from services.tips.reports import Period, ReportError, Scope
from services.tips.store import TipRow, TipStore

LINCOLN = "sch-lincoln-hs"
WASHINGTON = "sch-washington-ms"
RIVERSIDE = "sch-riverside-es"
NORTH = "dist-north-isd"
SOUTH = "dist-south-isd"
DISTRICT_OF = {LINCOLN: NORTH, WASHINGTON: NORTH, RIVERSIDE: SOUTH}
NAMES = {
    LINCOLN: "Lincoln High School",
    WASHINGTON: "Washington Middle School",
    RIVERSIDE: "Riverside Elementary",
}

D0 = datetime(2025, 12, 1, tzinfo=UTC).timestamp()  # the period under test: 2025-12
END = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
NOW = datetime(2026, 1, 20, tzinfo=UTC).timestamp()
DAY = 86400.0


@dataclass(frozen=True)
class Spec:
    """One tip of the fixture: offsets from its creation in seconds."""

    key: str
    school: str
    channel: str
    category: str
    created: float
    life_safety: bool = False
    imminent: bool = False
    first_human: float | None = None
    closed: float | None = None
    disposition: str | None = None
    status: str = "NEW"
    primary: str | None = None


SPECS = [
    Spec("t1", LINCOLN, "APP", "WEAPON", D0 + 1 * DAY, True, True, 120, 2 * DAY,
         "REFERRED_TO_LAW_ENFORCEMENT", "CLOSED_RESOLVED"),
    Spec("t2", LINCOLN, "SMS", "THREAT_OF_VIOLENCE", D0 + 2 * DAY, True, False, 600, 5 * DAY,
         "REFERRED_TO_BTAM", "CLOSED_RESOLVED"),
    Spec("t3", LINCOLN, "WEB", "BULLYING", D0 + 3 * DAY, False, False, 3600, 1 * DAY,
         "HANDLED_BY_SCHOOL", "CLOSED_RESOLVED"),
    Spec("t4", WASHINGTON, "WEB", "BULLYING", D0 + 3 * DAY + 100, status="MERGED", primary="t3"),
    Spec("t5", WASHINGTON, "PHONE", "SELF_HARM", D0 + 10 * DAY, True, False, 60,
         status="ASSIGNED"),
    Spec("t6", WASHINGTON, "APP", "DRUGS", D0 + 20 * DAY),
    # closed after the period ended: counted open at period end
    Spec("t7", LINCOLN, "SMS", "WEAPON", D0 + 25 * DAY, True, False, 300, 10 * DAY,
         "UNFOUNDED", "CLOSED_UNFOUNDED"),
    Spec("s1", RIVERSIDE, "APP", "THREAT_OF_VIOLENCE", D0 + 5 * DAY, True, False, 240, 1.5 * DAY,
         "REFERRED_TO_LAW_ENFORCEMENT", "CLOSED_RESOLVED"),
    # one second before the period, and exactly at its end: outside December
    Spec("o1", LINCOLN, "WEB", "WEAPON", D0 - 1, False, False, 30, 3 * DAY,
         "REFERRED_TO_LAW_ENFORCEMENT", "CLOSED_RESOLVED"),
    Spec("o2", LINCOLN, "WEB", "WEAPON", END, False, False, 30, 3 * DAY,
         "REFERRED_TO_LAW_ENFORCEMENT", "CLOSED_RESOLVED"),
]  # fmt: skip


def _secret(key: str) -> str:
    return f"SECRETWORDS{key} Jordan Avery has a plan, room 214"


@dataclass
class Seeded:
    store: TipStore
    url: str
    prefix: str
    ids: dict[str, str]

    @property
    def forbidden(self) -> list[str]:
        """Strings no report or export may contain: words, codes, ids, students."""
        out = []
        for key, tip_id in self.ids.items():
            out += [_secret(key), "SECRETWORDS", "Jordan Avery", tip_id, f"TC{key.upper()}X"]
            out += [f"stu-{key}-001", f"argon2-{key}"]
        return out


@pytest.fixture
def seeded(database_url: str) -> Iterator[Seeded]:
    prefix = f"r{uuid.uuid4().hex[:8]}_"
    store = TipStore(database_url, table_prefix=prefix)
    ids = {spec.key: uuid.uuid4().hex for spec in SPECS}
    for spec in SPECS:
        row = TipRow(
            tip_id=ids[spec.key],
            code=f"TC{spec.key.upper()}X",
            passcode_hash=f"argon2-{spec.key}",
            school_id=spec.school,
            district_id=DISTRICT_OF[spec.school],
            channel=spec.channel,
            category=spec.category,
            language="en",
            life_safety=spec.life_safety,
            imminent=spec.imminent,
            anonymous=True,
            status="NEW",
            disposition=None,
            assigned_to=None,
            primary_tip_id=None,
            text=_secret(spec.key),
            subject_ids=[f"stu-{spec.key}-001"],
            created_at=spec.created,
            first_human_at=None,
            closed_at=None,
            assign_by=None,
            overdue_notified=False,
        )
        with store.transaction("seed a tip") as conn:
            assert store.insert_tip(
                conn, row, client_key=None, sealed=b"sealed", contact_key=None, outbox=[]
            )
        changes: dict[str, Any] = {}
        if spec.first_human is not None:
            changes.update(first_human_at=spec.created + spec.first_human, assigned_to="an-1")
        if spec.closed is not None:
            changes.update(closed_at=spec.created + spec.closed, disposition=spec.disposition)
        if spec.primary is not None:
            changes.update(primary_tip_id=ids[spec.primary])
        if spec.status != "NEW":
            changes["status"] = spec.status
        if changes:
            with store.transaction("work a tip") as conn:
                store.update_tip(conn, ids[spec.key], [], **changes)
    yield Seeded(store, database_url, prefix, ids)
    store.metadata.drop_all(store.engine)
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {prefix}alembic_version"))
    store.close()


def _report(seeded: Seeded, period: str = "2025-12", scope: str = "state") -> reports.Report:
    return reports.build(
        seeded.store, Period.parse(period), Scope.parse(scope), school_names=NAMES, now=NOW
    )


def _no_secrets(seeded: Seeded, rendered: str) -> None:
    for secret in seeded.forbidden:
        assert secret not in rendered


# -- the measures -----------------------------------------------------------------------


def test_state_month_counts_medians_and_outcomes(seeded: Seeded) -> None:
    report = _report(seeded)
    assert (report.received, report.duplicates_folded, report.distinct) == (8, 1, 7)
    assert report.life_safety == 5 and report.life_safety_share == 0.625
    assert report.by_category == {
        "WEAPON": 2,
        "THREAT_OF_VIOLENCE": 2,
        "SELF_HARM": 1,
        "BULLYING": 2,
        "DRUGS": 1,
        "ABUSE": 0,
        "OTHER": 0,
    }
    assert report.by_channel == {
        "APP": 3,
        "WEB": 2,
        "SMS": 2,
        "EMAIL": 0,
        "PHONE": 1,
        "OTHER": 0,
        "MONITORING": 0,
    }
    assert [(s.school_id, s.name, s.count) for s in report.by_school] == [
        (LINCOLN, "Lincoln High School", 4),
        (WASHINGTON, "Washington Middle School", 3),
        (RIVERSIDE, "Riverside Elementary", 1),
    ]
    # first human, distinct tips: 60 120 240 300 600 3600 measured, t6 waiting
    assert report.time_to_first_human == reports.Durations(6, 270.0, 2100.0, 3600.0, 1)
    # life-safety: 60 120 240 300 600
    assert report.time_to_first_human_life_safety == reports.Durations(5, 240.0, 480.0, 600.0, 0)
    # closed: 1 d, 1.5 d, 2 d, 5 d, 10 d; t5 and t6 not closed (the merged t4 is not counted)
    assert report.time_to_close == reports.Durations(
        5, 2 * DAY, 5 * DAY + 0.6 * 5 * DAY, 10 * DAY, 2
    )
    assert report.outcomes == {
        "UNFOUNDED": 1,
        "HANDLED_BY_SCHOOL": 1,
        "REFERRED_TO_BTAM": 1,
        "REFERRED_TO_LAW_ENFORCEMENT": 2,
        "REFERRED_TO_MENTAL_HEALTH": 0,
        "DUPLICATE": 0,
        "HOAX": 0,
    }
    assert report.open_at_period_end == 3  # t5, t6, and t7 closed in January
    assert report.notes == []


def test_scopes_and_year(seeded: Seeded) -> None:
    north = _report(seeded, scope=f"district:{NORTH}")
    assert (north.received, north.duplicates_folded, north.life_safety) == (7, 1, 4)
    assert north.life_safety_share == pytest.approx(4 / 7)
    assert {s.school_id for s in north.by_school} == {LINCOLN, WASHINGTON}
    assert north.outcomes["REFERRED_TO_LAW_ENFORCEMENT"] == 1

    washington = _report(seeded, scope=f"school:{WASHINGTON}")
    assert (washington.received, washington.duplicates_folded, washington.distinct) == (3, 1, 2)
    assert washington.time_to_first_human == reports.Durations(1, 60.0, 60.0, 60.0, 1)
    assert washington.time_to_close == reports.Durations(0, None, None, None, 2)
    assert washington.open_at_period_end == 2

    south = _report(seeded, scope=f"district:{SOUTH}")
    assert south.received == 1 and south.time_to_close.p50 == 1.5 * DAY

    year = _report(seeded, period="2025")
    assert year.received == 9  # o1 on 30 November is in; o2 at 2026-01-01T00:00 is not
    assert year.period.to_json() == {
        "label": "2025",
        "kind": "year",
        "start": "2025-01-01T00:00:00Z",
        "end": "2026-01-01T00:00:00Z",
    }

    empty = _report(seeded, period="2024-02")
    assert empty.received == 0 and empty.life_safety_share is None
    assert empty.time_to_first_human == reports.Durations(0, None, None, None, 0)


def test_running_period_counts_open_as_of_now(seeded: Seeded) -> None:
    # on 27 December t7 (closed 5 January) and everything since are still open
    now = D0 + 27 * DAY
    report = reports.build(
        seeded.store, Period.parse("2025-12"), Scope.parse("state"), school_names={}, now=now
    )
    assert report.as_of == now and report.open_at_period_end == 3
    assert report.notes == ["the period is not over: figures as of 2025-12-28T00:00:00Z"]
    assert report.by_school[0].name == LINCOLN  # no names given: the id


def test_json_and_csv(seeded: Seeded) -> None:
    report = _report(seeded)
    data = reports.to_json(report)
    assert json.loads(json.dumps(data)) == data
    assert data["scope"] == {"kind": "state", "id": None, "label": "state"}
    assert data["time_to_first_human"] == {
        "count": 6,
        "p50_s": 270.0,
        "p90_s": 2100.0,
        "max_s": 3600.0,
        "waiting": 1,
    }
    assert data["generated_at"] == "2026-01-20T00:00:00Z"
    _no_secrets(seeded, json.dumps(data))

    rendered = reports.to_csv(report)
    _no_secrets(seeded, rendered)
    rows = list(csv.reader(io.StringIO(rendered)))
    assert rows[0] == list(reports.CSV_COLUMNS)
    assert all(len(row) == 7 and row[:2] == ["2025-12", "state"] for row in rows[1:])
    by_measure = {(r[2], r[3]): (r[4], r[5], r[6]) for r in rows[1:]}
    assert len(by_measure) == len(rows) - 1  # one row per measure
    assert by_measure[("tips_received", "")] == ("", "8", "tips")
    assert by_measure[("life_safety_share", "")] == ("", "0.625", "fraction")
    assert by_measure[("by_category", "WEAPON")] == ("WEAPON", "2", "tips")
    assert by_measure[("by_channel", "EMAIL")] == ("EMAIL", "0", "tips")
    assert by_measure[("by_school", LINCOLN)] == ("Lincoln High School", "4", "tips")
    assert by_measure[("time_to_first_human", "p50")] == ("", "270", "seconds")
    assert by_measure[("time_to_first_human", "waiting")] == ("", "1", "tips")
    assert by_measure[("time_to_first_human_life_safety", "p90")] == ("", "480", "seconds")
    assert by_measure[("time_to_close", "p90")] == ("", "691200", "seconds")
    assert by_measure[("outcome", "REFERRED_TO_LAW_ENFORCEMENT")][1] == "2"
    assert by_measure[("open_at_period_end", "")] == ("", "3", "tips")

    empty = reports.to_csv(_report(seeded, period="2024-02"))
    assert "2024-02,state,time_to_close,p50,,,seconds" in empty.splitlines()


def test_html_page(seeded: Seeded) -> None:
    names = {**NAMES, WASHINGTON: "<script>alert(1)</script> & Co"}
    report = reports.build(
        seeded.store, Period.parse("2025-12"), Scope.parse("state"), school_names=names, now=NOW
    )
    page = reports.to_html(report)
    _no_secrets(seeded, page)
    assert page.startswith("<!DOCTYPE html>") and '<html lang="en">' in page
    assert 'name="viewport" content="width=device-width' in page
    for chart in ("chart-category", "chart-channel", "chart-outcome"):
        found = re.search(rf'<svg id="{chart}" role="img".*?</svg>', page, re.S)
        assert found is not None, chart
        assert found.group(0).count("<rect") >= 6
    category_chart = re.search(r'<svg id="chart-category".*?</svg>', page, re.S)
    assert category_chart is not None and "weapon: 2" in category_chart.group(0)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "4.5 min" in page  # the median to a first human, as people read it


# -- the averted-violence export ----------------------------------------------------------

EXPORT_FIELDS = {
    "case_ref",
    "month",
    "state",
    "district_id",
    "school_level",
    "category",
    "channel",
    "life_safety",
    "imminent",
    "days_to_close",
    "disposition",
}


def test_averted_violence_export(seeded: Seeded) -> None:
    records = reports.averted_violence_export(
        seeded.store, Period.parse("2025-12"), Scope.parse("state"), state="US-TX"
    )
    assert all(set(r) == EXPORT_FIELDS for r in records)
    by_ref = {r["case_ref"]: r for r in records}
    refs = {key: reports.case_ref(seeded.ids[key]) for key in ("t1", "t2", "s1")}
    assert set(by_ref) == set(refs.values())  # t7 (unfounded) and non-violence tips left out
    assert by_ref[refs["t1"]] == {
        "case_ref": refs["t1"],
        "month": "2025-12",
        "state": "US-TX",
        "district_id": NORTH,
        "school_level": None,
        "category": "WEAPON",
        "channel": "APP",
        "life_safety": True,
        "imminent": True,
        "days_to_close": 2.0,
        "disposition": "REFERRED_TO_LAW_ENFORCEMENT",
    }
    assert by_ref[refs["t2"]]["disposition"] == "REFERRED_TO_BTAM"
    assert by_ref[refs["s1"]]["days_to_close"] == 1.5
    assert [r["case_ref"] for r in records] == sorted(by_ref)  # not in arrival order
    assert all(re.fullmatch(r"[0-9a-f]{20}", ref) for ref in by_ref)

    document = reports.export_document(records, Period.parse("2025-12"), Scope.parse("state"))
    dumped = json.dumps(document)
    _no_secrets(seeded, dumped)
    for school in NAMES:
        assert school not in dumped
    # Month only: no date, no time, no epoch seconds (the case references are hex digests,
    # which may hold a run of digits by chance: taken out first).
    bare = dumped
    for ref in by_ref:
        bare = bare.replace(ref, "")
    assert not re.search(r"\d{4}-\d{2}-\d{2}|T\d{2}:\d{2}|\d{9,}", bare)

    again = reports.averted_violence_export(
        seeded.store, Period.parse("2025"), Scope.parse(f"district:{NORTH}")
    )
    assert [r["month"] for r in again] == ["2025-11", "2025-12", "2025-12"]
    assert {r["case_ref"] for r in again} >= {refs["t1"], refs["t2"]}  # stable pseudonyms
    assert all(r["state"] is None for r in again)


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "2026-13", "2026-00", "26-12", "2026-1", "2026/12", "december", "1969", "2026-12x"]
)
def test_bad_period_names_the_field(text: str) -> None:
    with pytest.raises(ReportError) as caught:
        Period.parse(text)
    assert caught.value.field == "period" and "period" in str(caught.value)


@pytest.mark.parametrize(
    "text", ["country", "district", "district:", "school:a b", "school:<x>", "region:x"]
)
def test_bad_scope_names_the_field(text: str) -> None:
    with pytest.raises(ReportError) as caught:
        Scope.parse(text)
    assert caught.value.field == "scope" and "scope" in str(caught.value)


def test_periods_and_scopes_parse() -> None:
    december = Period.parse("2026-12")
    assert (december.start, december.end) == (
        datetime(2026, 12, 1, tzinfo=UTC).timestamp(),
        datetime(2027, 1, 1, tzinfo=UTC).timestamp(),
    )
    assert Period.parse("2026-02").end == datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert Scope.parse(None) == Scope("state") and Scope.parse("state").label == "state"
    assert Scope.parse("school:sch-lincoln-hs") == Scope("school", "sch-lincoln-hs")


# -- the HTTP answer ----------------------------------------------------------------------


def test_report_response(seeded: Seeded) -> None:
    def ask(**query: str) -> tuple[int, str, bytes]:
        return reports.report_response(seeded.store, query, school_names=NAMES, now=NOW)

    status, kind, body = ask(period="2025-12", scope=f"district:{NORTH}")
    assert (status, kind) == (200, "application/json; charset=utf-8")
    assert json.loads(body)["received"] == 7
    status, kind, body = ask(period="2025-12", format="csv")
    assert (status, kind) == (200, "text/csv; charset=utf-8")
    assert body.decode().splitlines()[0] == ",".join(reports.CSV_COLUMNS)
    status, kind, body = ask(period="2025-12", format="html")
    assert status == 200 and kind.startswith("text/html") and b"<svg" in body
    for query, field in (
        ({}, "period"),
        ({"period": "2025-13"}, "period"),
        ({"period": "2025-12", "scope": "planet:earth"}, "scope"),
        ({"period": "2025-12", "format": "pdf"}, "format"),
    ):
        status, kind, body = ask(**query)
        assert status == 400 and kind.startswith("application/json"), query
        assert json.loads(body)["field"] == field and field in json.loads(body)["error"]

    status, _, body = reports.export_response(seeded.store, {"period": "2025-12"}, state="US-TX")
    document = json.loads(body)
    assert status == 200 and document["format"] == reports.EXPORT_FORMAT
    assert len(document["cases"]) == 3
    status, _, body = reports.export_response(seeded.store, {"period": "12/2025"})
    assert status == 400 and json.loads(body)["field"] == "period"


def test_report_response_served_by_aiohttp(seeded: Seeded) -> None:
    """Mounted as the tips service will mount it: a handler calling it with the query."""

    async def handle(request: web.Request) -> web.Response:
        status, kind, body = reports.report_response(
            seeded.store, request.query, school_names=NAMES, now=NOW
        )
        mime, _, charset = kind.partition("; charset=")
        return web.Response(status=status, body=body, content_type=mime, charset=charset or None)

    app = web.Application()
    app.router.add_get("/api/reports", handle)
    server = ServerThread(ListenSettings(host="127.0.0.1", port=0), name="reports-test")
    port = server.start(app)
    try:
        base = f"http://127.0.0.1:{port}/api/reports"
        answer = httpx.get(base, params={"period": "2025-12", "format": "csv"}, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert "2025-12,state,tips_received,,,8,tips" in answer.text.splitlines()
        refused = httpx.get(base, params={"period": "Dec"}, timeout=10)
        assert refused.status_code == 400 and refused.json()["field"] == "period"
    finally:
        server.close()


# -- the command line ---------------------------------------------------------------------


def _cli(seeded: Seeded, *args: str) -> Any:
    common = ["--database-url", seeded.url, "--table-prefix", seeded.prefix]
    common += ["--directory-file", str(default_directory_file())]
    return CliRunner().invoke(tips_cli, [*args, *common])


def test_cli_report_table_json_csv_html(seeded: Seeded, tmp_path: Path) -> None:
    table = _cli(seeded, "report", "--period", "2025-12", "--scope", f"district:{NORTH}")
    assert table.exit_code == 0, table.output
    out = table.stdout
    assert "Tips 2025-12, district:dist-north-isd: 7 received, 1 duplicates folded" in out
    assert "4 life-safety (57.1%)" in out and "3 open at period end" in out
    assert re.search(r"WEAPON\s*│\s*2", out) and re.search(r"PHONE\s*│\s*1", out)
    assert re.search(r"Lincoln High School\s*│\s*sch-lincoln-hs\s*│\s*4", out)
    assert "to first human (life-safety)" in out
    _no_secrets(seeded, out)

    as_json = _cli(seeded, "report", "--period", "2025-12", "--json")
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["received"] == 8 and data["time_to_close"]["p50_s"] == 2 * DAY
    assert data["by_school"][0]["name"] == "Lincoln High School"  # from the directory file

    as_csv = _cli(seeded, "report", "--period", "2025-12", "--format", "csv")
    assert as_csv.exit_code == 0 and "2025-12,state,tips_received,,,8,tips" in as_csv.stdout

    page = tmp_path / "report.html"
    written = _cli(seeded, "report", "--period", "2025", "--format", "html", "--out", str(page))
    assert written.exit_code == 0 and f"wrote {page}" in written.stdout
    assert '<svg id="chart-outcome"' in page.read_text(encoding="utf-8")


def test_cli_export(seeded: Seeded) -> None:
    table = _cli(seeded, "export", "--period", "2025-12")
    assert table.exit_code == 0, table.output
    assert reports.case_ref(seeded.ids["t1"]) in table.stdout
    assert "REFERRED_TO_BTAM" in table.stdout and "3 case(s), 2025-12, state" in table.stdout

    as_json = _cli(
        seeded, "export", "--period", "2025-12", "--scope", f"district:{SOUTH}", "--json"
    )
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["format"] == reports.EXPORT_FORMAT
    assert [c["case_ref"] for c in document["cases"]] == [reports.case_ref(seeded.ids["s1"])]
    assert document["cases"][0]["state"] == "US-TX"  # the directory's state
    _no_secrets(seeded, as_json.stdout)


def test_cli_refusals(seeded: Seeded, tmp_path: Path) -> None:
    bad_period = _cli(seeded, "report", "--period", "2025-13")
    assert bad_period.exit_code == 2 and "--period" in bad_period.stderr
    assert "2026-12" in bad_period.stderr  # says what a period looks like
    bad_scope = _cli(seeded, "export", "--period", "2025", "--scope", "district:dist-nowhere")
    assert bad_scope.exit_code == 2 and "--scope" in bad_scope.stderr
    assert NORTH in bad_scope.stderr  # names the districts there are
    bad_format = _cli(seeded, "report", "--period", "2025", "--format", "pdf")
    assert bad_format.exit_code == 2 and "--format" in bad_format.stderr

    missing = tmp_path / "absent.sqlite3"
    no_store = CliRunner().invoke(
        tips_cli, ["report", "--period", "2025", "--database-url", f"sqlite:///{missing}"]
    )
    assert no_store.exit_code == 2 and "SAFEHUB_TIPS__DATABASE_URL" in no_store.stderr
    assert not missing.exists()  # nothing created by looking
