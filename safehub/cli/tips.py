"""``safehub tips …``: the tip line's public statistics and the averted-violence export.

Reads the tips store directly (``--database-url``, default ``SAFEHUB_TIPS__DATABASE_URL`` or
the tips service's default) with :mod:`services.tips.reports`, which never reads a tip's
words, its tipster or the students it names. School names and the state come from the
directory file (``--directory-file``, default ``SAFEHUB_TIPS__DIRECTORY_FILE``).

``report`` prints a table, or writes CSV, HTML or JSON (``--format``, ``--out``);
``export`` lists the averted-violence cases (``--json`` for the documented format). Exit
code 2 when the request is wrong or the store cannot be read, with what to do.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from safehub.kernel.errors import SafeHubError

if TYPE_CHECKING:
    from safehub.kernel.directory import Directory
    from services.tips.reports import Report
    from services.tips.settings import TipsSection
    from services.tips.store import TipStore

app = typer.Typer(
    help="The tip line's statistics and averted-violence export.", no_args_is_help=True
)
console = Console(width=None if Console().is_terminal else 160)
err_console = Console(stderr=True)

PeriodOpt = Annotated[str, typer.Option("--period", help="a month (2026-12) or a year (2026), UTC")]
ScopeOpt = Annotated[str, typer.Option("--scope", help="state, district:<id> or school:<id>")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL of the tips store (default: SAFEHUB_TIPS__DATABASE_URL, as the "
        "tips service reads it)",
    ),
]
DirectoryFile = Annotated[
    Path | None,
    typer.Option(
        "--directory-file",
        help="directory file for school names and the state (default: "
        "SAFEHUB_TIPS__DIRECTORY_FILE, as the tips service reads it)",
    ),
]
TablePrefix = Annotated[str, typer.Option("--table-prefix", hidden=True)]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="write to this file")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

FORMATS = ("table", "csv", "html", "json")


class TipsCliError(SafeHubError):
    """The tips store or the directory could not be read as asked."""


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _settings() -> TipsSection:
    """The tips service's section, read from the environment as the service reads it."""
    from safehub.kernel.settings import load_settings
    from services.tips.settings import TipsSettings

    return load_settings(TipsSettings).tips


def _open_store(database_url: str | None, table_prefix: str) -> TipStore:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from services.tips.store import TipStore

    url = database_url or _settings().database_url
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise TipsCliError(
            f"--database-url {url!r} is not a SQLAlchemy URL (sqlite:///PATH or "
            "postgresql+psycopg://…)"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise TipsCliError(
                f"no tips store at {path or url}: pass --database-url or set "
                "SAFEHUB_TIPS__DATABASE_URL to the tips service's store"
            )
    return TipStore(url, table_prefix=table_prefix)


def _directory(directory_file: Path | None) -> Directory | None:
    from safehub.kernel.directory import Directory

    path = directory_file or _settings().directory_file
    try:
        return Directory.load(path)
    except SafeHubError as exc:
        if directory_file is not None:
            raise TipsCliError(f"{exc}; pass a valid --directory-file") from exc
        err_console.print(
            f"[yellow]note:[/yellow] no directory ({exc}): schools shown by id, state unknown",
            highlight=False,
        )
        return None


def _check_scope(scope_text: str, directory: Directory | None) -> None:
    """Refuse a district or school the directory does not list (a typo shows zeros)."""
    from services.tips.reports import ReportError, Scope

    scope = Scope.parse(scope_text)
    if directory is None or scope.id is None:
        return
    if scope.kind == "district":
        known = [d.id for d in directory.districts]
    else:
        known = [s.id for d in directory.districts for s in d.schools]
    if scope.id not in known:
        raise ReportError(
            "scope", f"the directory has no {scope.kind} {scope.id!r}; known: {', '.join(known)}"
        )


def _school_names(directory: Directory | None) -> dict[str, str]:
    if directory is None:
        return {}
    return {s.id: s.name for d in directory.districts for s in d.schools}


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TipsCliError(f"cannot write {out}: {exc.strerror}; choose another --out") from exc
    console.print(f"wrote {out} ({len(text.encode('utf-8'))} bytes)")


@app.command()
def report(  # noqa: PLR0917 - one parameter per option (typer options)
    period: PeriodOpt,
    scope: ScopeOpt = "state",
    format_: Annotated[str, typer.Option("--format", help="table, csv, html or json")] = "table",
    as_json: AsJson = False,
    out: Out = None,
    database_url: DatabaseUrl = None,
    directory_file: DirectoryFile = None,
    table_prefix: TablePrefix = "tips_",
) -> None:
    """Tip volumes, response times and outcomes of a month or a year (no personal data)."""
    from services.tips import reports

    wanted = "json" if as_json else format_
    try:
        if wanted not in FORMATS:
            raise reports.ReportError("format", f"--format must be one of {', '.join(FORMATS)}")
        parsed_period = reports.Period.parse(period)
        parsed_scope = reports.Scope.parse(scope)
        directory = _directory(directory_file)
        _check_scope(scope, directory)
        with _open_store(database_url, table_prefix) as store:
            built = reports.build(
                store,
                parsed_period,
                parsed_scope,
                school_names=_school_names(directory),
                now=time.time(),
            )
    except reports.ReportError as exc:
        raise _fail(f"--{exc.field}: {exc}") from exc
    except SafeHubError as exc:
        raise _fail(str(exc)) from exc
    try:
        if wanted == "json":
            _write(json.dumps(reports.to_json(built), indent=2) + "\n", out)
        elif wanted == "csv":
            _write(reports.to_csv(built), out)
        elif wanted == "html":
            _write(reports.to_html(built), out)
        elif out is not None:
            _write(reports.to_csv(built), out)
        else:
            _print_report(built)
    except SafeHubError as exc:
        raise _fail(str(exc)) from exc


def _print_report(built: Report) -> None:
    from services.tips.reports import duration_text

    share = built.life_safety_share
    console.print(
        f"[bold]Tips {built.period.label}[/bold], {built.scope.label}: {built.received} "
        f"received, {built.duplicates_folded} duplicates folded, {built.distinct} distinct, "
        f"{built.life_safety} life-safety ({'—' if share is None else f'{share * 100:.1f}%'}), "
        f"{built.open_at_period_end} open at period end",
        highlight=False,
    )
    for note in built.notes:
        console.print(f"({note})", highlight=False)
    for title, counts in (
        ("category", built.by_category),
        ("channel", built.by_channel),
        ("outcome", built.outcomes),
    ):
        table = Table(title)
        table.add_column("tips", justify="right")
        for name, count in counts.items():
            table.add_row(name, str(count))
        console.print(table)
    timing = Table("time")
    for column in ("tips", "median", "p90", "longest", "waiting"):
        timing.add_column(column, justify="right")
    for label, durations in (
        ("to first human", built.time_to_first_human),
        ("to first human (life-safety)", built.time_to_first_human_life_safety),
        ("to close", built.time_to_close),
    ):
        timing.add_row(
            label,
            str(durations.count),
            duration_text(durations.p50),
            duration_text(durations.p90),
            duration_text(durations.max),
            str(durations.waiting),
        )
    console.print(timing)
    schools = Table("school", "id")
    schools.add_column("tips", justify="right")
    for school in built.by_school:
        schools.add_row(school.name, school.school_id, str(school.count))
    console.print(schools)


@app.command()
def export(  # noqa: PLR0917 - one parameter per option (typer options)
    period: PeriodOpt,
    scope: ScopeOpt = "state",
    as_json: AsJson = False,
    out: Out = None,
    database_url: DatabaseUrl = None,
    directory_file: DirectoryFile = None,
    table_prefix: TablePrefix = "tips_",
) -> None:
    """Averted-violence cases: closed weapon and threat tips referred onwards (no text)."""
    from services.tips import reports

    try:
        parsed_period = reports.Period.parse(period)
        parsed_scope = reports.Scope.parse(scope)
        directory = _directory(directory_file)
        _check_scope(scope, directory)
        with _open_store(database_url, table_prefix) as store:
            records = reports.averted_violence_export(
                store,
                parsed_period,
                parsed_scope,
                state=directory.state if directory is not None else None,
            )
    except reports.ReportError as exc:
        raise _fail(f"--{exc.field}: {exc}") from exc
    except SafeHubError as exc:
        raise _fail(str(exc)) from exc
    document = reports.export_document(records, parsed_period, parsed_scope)
    try:
        if as_json or out is not None:
            _write(json.dumps(document, indent=2) + "\n", out)
        else:
            _print_export(document)
    except SafeHubError as exc:
        raise _fail(str(exc)) from exc


def _print_export(document: dict[str, Any]) -> None:
    table = Table(
        "case", "month", "district", "category", "channel", "life-safety", "imminent",
    )  # fmt: skip
    table.columns[0].no_wrap = True
    table.add_column("days", justify="right")
    table.add_column("disposition", no_wrap=True)
    for case in document["cases"]:
        table.add_row(
            case["case_ref"],
            case["month"],
            case["district_id"],
            case["category"],
            case["channel"],
            "yes" if case["life_safety"] else "",
            "yes" if case["imminent"] else "",
            f"{case['days_to_close']:.1f}",
            case["disposition"],
        )
    console.print(table)
    console.print(
        f"{len(document['cases'])} case(s), {document['period']}, {document['scope']} "
        f"(format {document['format']}; --json for the records)",
        highlight=False,
    )
