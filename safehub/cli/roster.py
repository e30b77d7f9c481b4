"""``safehub roster …``: import a OneRoster package or custody feed, or sync a REST source.

Both commands publish through the kernel producer to the configured broker (settings from
the environment, ``SAFEHUB_SIS_ROSTER__*`` for the sources and the state database) and print
the sync report: added / changed / removed / unchanged / rejected per entity, people
published, and the defects by file, line and column (never a value); ``--json`` prints the
same as JSON. Exit codes: 0 done (defects included), 2 package or feed refused (its manifest
or header is wrong: the message names them), 3 anything else that stopped the import
(settings, broker, provider), 4 the source is busy: another run of it (the connector's
scheduled sync, another import) holds its lease — the message names the holder, since when,
and when to try again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from safehub.kernel.errors import SafeHubError
from safehub.kernel.logging import configure_logging

if TYPE_CHECKING:
    from connectors.sis_roster.settings import RosterSource

app = typer.Typer(help="Rosters from the SIS (OneRoster CSV and REST).", no_args_is_help=True)
console = Console(width=None if Console().is_terminal else 160)
err_console = Console(stderr=True)

EXIT_REFUSED = 2
EXIT_FAILED = 3
EXIT_BUSY = 4
#: Defects shown in the human report (all are in ``--json`` up to the report's cap).
SHOWN_DEFECTS = 50


def _print_report(data: dict[str, object], as_json: bool) -> None:
    if as_json:
        console.print(
            json.dumps(data, sort_keys=True), markup=False, highlight=False, soft_wrap=True
        )
        return
    title = f"{data['source']}: {data['what']}"
    if data.get("already_applied"):
        title += " (already applied: nothing new)"
    elif data.get("resumed"):
        title += " (resumed)"
    table = Table("entity", "added", "changed", "removed", "unchanged", "rejected", title=title)
    entities = data["entities"]
    assert isinstance(entities, dict)
    for entity, counts in entities.items():
        table.add_row(
            entity,
            *(str(counts[k]) for k in ("added", "changed", "removed", "unchanged", "rejected")),
        )
    console.print(table)
    people = data["people"]
    assert isinstance(people, dict)
    console.print(
        f"rows {data['rows']} · people published {people['published']} "
        f"(deleted {people['deleted']}) · defects {data['defect_count']} "
        f"(dead-lettered {data['dead_lettered']}) · {data['seconds']} s"
    )
    defects = data["defects"]
    assert isinstance(defects, list)
    if defects:
        shown = Table("file", "line", "column", "severity", "reason", title="defects")
        for d in defects[:SHOWN_DEFECTS]:
            shown.add_row(
                d["file"], str(d["line"] or ""), d["column"] or "", d["severity"], d["reason"]
            )
        console.print(shown)
        if len(defects) > SHOWN_DEFECTS:
            console.print(f"… and {len(defects) - SHOWN_DEFECTS} more (--json lists them)")


def _source(
    sources: list[RosterSource], source_name: str | None, district: str | None, path: Path | None
) -> RosterSource:
    """The source to run: as configured (sync), or a configured one pointed at ``path``, or a
    new one for ``path`` (import)."""
    from connectors.sis_roster.settings import RosterSource

    configured = {s.name: s for s in sources}
    if path is None:  # sync: the source as configured
        if source_name not in configured:
            raise SafeHubError(f"no source {source_name!r} in SAFEHUB_SIS_ROSTER__SOURCES")
        return configured[source_name]
    if source_name in configured:
        base = configured[source_name]
        return base.model_copy(
            update={
                "kind": "csv",
                "path": path,
                "custody_path": None,  # only what was named is imported
                "district": district or base.district,
            }
        )
    if not district:
        raise SafeHubError("--district is required for a source not in the settings")
    return RosterSource(name=source_name or "cli", district=district, path=path)


def _run(
    source_name: str | None,
    district: str | None,
    path: Path | None,
    as_json: bool,
    *,
    full: bool = False,
) -> None:
    from connectors.sis_roster.lease import holder_name
    from connectors.sis_roster.service import sync_source
    from connectors.sis_roster.settings import SisRosterSettings
    from connectors.sis_roster.state import RosterState, SourceBusyError
    from safehub.kernel.bus import EventProducer
    from safehub.kernel.codec import Codec
    from safehub.kernel.settings import load_settings
    from safehub.kernel.topics import TopicCatalog
    from safehub.standards.oneroster import OneRosterPackageError

    try:
        settings = load_settings(SisRosterSettings)
        configure_logging(settings.log)
        config = settings.sis_roster
        source = _source(config.sources, source_name, district, path)
    except SafeHubError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] invalid source: {type(exc).__name__}")
        raise typer.Exit(EXIT_FAILED) from None
    catalog = TopicCatalog(settings.kafka.topic_prefix)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    task = progress.add_task(f"{source.name}", total=None)

    def advance(rows: int, total: int | None) -> None:
        if rows % 100 == 0 or total == rows:
            progress.update(task, completed=rows, total=total)

    try:
        with (
            progress,
            EventProducer(
                settings.kafka, Codec.from_contracts(), catalog, client_id="safehub-roster"
            ) as producer,
            RosterState(config.state_url) as state,
        ):
            command = "safehub roster " + ("sync" if path is None else "import")
            reports = sync_source(
                config,
                source,
                producer,
                catalog,
                state,
                holder=holder_name(command),
                on_progress=advance,
                full=full,
            )
    except SourceBusyError as exc:
        err_console.print(f"[red]busy:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BUSY) from None
    except OneRosterPackageError as exc:
        err_console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(EXIT_REFUSED) from None
    except SafeHubError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    for report in reports:
        _print_report(report.to_json(), as_json)


@app.command("import")
def roster_import(
    path: Annotated[
        Path, typer.Argument(help="OneRoster CSV package (zip or folder) or custody feed CSV")
    ],
    source: Annotated[str | None, typer.Option(help="source name (settings, or a new one)")] = None,
    district: Annotated[
        str | None, typer.Option(help="district id (for a source not in the settings)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Import a package (bulk or delta per its manifest) or a custody feed, then report."""
    _run(source, district, path, as_json)


@app.command("sync")
def roster_sync(
    source: Annotated[str, typer.Option(help="a source of SAFEHUB_SIS_ROSTER__SOURCES")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full", help="REST: a full listing, removing what the provider no longer lists"
        ),
    ] = False,
) -> None:
    """Sync one configured source now (REST: changes since the last sync, or ``--full``)."""
    _run(source, None, None, as_json, full=full)
