"""``safehub timeline …``: the reviewer's command line over the timeline's HTTP API.

``verify`` does not take the server's word for it: it downloads the export (entries with
their chain fields) and recomputes the chain here with :mod:`safehub.kernel.chain`, naming
the first entry altered, removed or reordered; then it shows the server's own check too.
Exit code 1 when the chain is broken, 2 when the service answers an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from safehub.kernel import chain
from safehub.kernel.errors import SafeHubError

app = typer.Typer(help="Incident and case timelines (reviewers).", no_args_is_help=True)
console = Console(width=None if Console().is_terminal else 140)
err_console = Console(stderr=True)

Url = Annotated[
    str,
    typer.Option(envvar="SAFEHUB_TIMELINE_URL", help="base URL of the timeline service"),
]
Token = Annotated[
    str,
    typer.Option(envvar="SAFEHUB_TIMELINE_TOKEN", help="reviewer bearer token"),
]


class TimelineClientError(SafeHubError):
    """The timeline service answered an error or could not be reached."""


def _get(url: str, token: str, path: str, **params: Any) -> httpx.Response:
    query = {k: v for k, v in params.items() if v not in (None, "")}
    try:
        response = httpx.get(
            url.rstrip("/") + path,
            params=query,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        raise TimelineClientError(f"timeline service at {url} did not answer: {exc}") from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        raise TimelineClientError(f"{response.status_code}: {detail}")
    return response


def _json(url: str, token: str, path: str, **params: Any) -> Any:
    return _get(url, token, path, **params).json()


@app.command("list")
def list_subjects(  # noqa: PLR0917 - one parameter per filter (typer options)
    url: Url = "http://127.0.0.1:8470",
    token: Token = "",
    kind: Annotated[str | None, typer.Option(help="incident or case")] = None,
    district: Annotated[str | None, typer.Option()] = None,
    school: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option(help="open, cleared, closed, cancelled")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="incident or case type")] = None,
    since: Annotated[str | None, typer.Option("--from", help="opened at or after (ISO)")] = None,
    until: Annotated[str | None, typer.Option("--to", help="opened before (ISO)")] = None,
    exercise: Annotated[
        bool | None, typer.Option("--exercise/--real", help="drills or real")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """Incidents and cases, newest first."""
    answer = _json(
        url,
        token,
        "/api/v1/subjects",
        kind=kind,
        district=district,
        school=school,
        status=status,
        type=type_,
        **{"from": since, "to": until},
        exercise=None if exercise is None else str(exercise).lower(),
        limit=limit,
    )
    table = Table("id", "kind", "type", "status", "school", "opened", "entries", "drill")
    for item in answer["items"]:
        table.add_row(
            item["id"],
            item["kind"],
            item["type"] or "",
            item["status"],
            item["school"] or item["district"],
            item["opened_at"],
            str(item["entry_count"]),
            "yes" if item["exercise"] else "",
        )
    console.print(table)
    if answer.get("next_cursor"):
        console.print("(more: narrow the filters or raise --limit)")


@app.command()
def show(
    subject_id: Annotated[str, typer.Argument(help="incident or case id")],
    url: Url = "http://127.0.0.1:8470",
    token: Token = "",
) -> None:
    """One timeline, every entry in chain order."""
    table = Table("seq", "occurred", "lane", "event", "actor", "summary", "withheld")
    after = 0
    answer: dict[str, Any] = {}
    while True:
        answer = _json(url, token, f"/api/v1/subjects/{subject_id}/timeline", after_seq=after)
        for entry in answer["entries"]:
            table.add_row(
                str(entry["seq"]),
                entry["occurred_at"],
                entry["lane"],
                entry["event_type"],
                entry["actor"] or "",
                entry["summary"],
                ", ".join(entry["withheld"]),
            )
        if answer.get("next_after_seq") is None:
            break
        after = int(answer["next_after_seq"])
    subject = answer["subject"]
    console.print(
        f"[bold]{subject['id']}[/bold] {subject['kind']} {subject['type'] or ''} "
        f"({subject['status']}) at {subject['school'] or subject['district']}"
    )
    console.print(table)
    _print_chain("server check", answer["chain"])


@app.command()
def export(
    subject_id: Annotated[str, typer.Argument(help="incident or case id")],
    url: Url = "http://127.0.0.1:8470",
    token: Token = "",
    format_: Annotated[str, typer.Option("--format", help="json or html")] = "json",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file to write")] = None,
) -> None:
    """The after-action export (JSON for tools, HTML for people)."""
    if format_ not in ("json", "html"):
        raise typer.BadParameter("--format must be json or html")
    response = _get(url, token, f"/api/v1/subjects/{subject_id}/export", format=format_)
    target = output or Path(f"timeline-{subject_id}.{format_}")
    target.write_bytes(response.content)
    console.print(f"wrote {target} ({len(response.content)} bytes)")


@app.command()
def verify(
    subject_id: Annotated[str, typer.Argument(help="incident or case id")],
    url: Url = "http://127.0.0.1:8470",
    token: Token = "",
) -> None:
    """Recompute the hash chain here from the exported entries; exit 1 if it is broken."""
    exported = _json(url, token, f"/api/v1/subjects/{subject_id}/export", format="json")
    subject = exported["subject"]
    local = chain.verify(
        [{**entry, "payload": entry["data"]} for entry in exported["entries"]],
        expected_count=subject.get("entry_count"),
        expected_head=subject.get("head_hash"),
    )
    _print_chain("recomputed here", local.to_json())
    if local.payloads_unchecked:
        console.print(
            f"  {local.payloads_unchecked} payload(s) withheld from you: their content was "
            "checked by the server only"
        )
    server = _json(url, token, f"/api/v1/subjects/{subject_id}/verify")
    _print_chain("server check", server)
    if not local.ok or not server["ok"]:
        raise typer.Exit(1)


def _print_chain(label: str, status: dict[str, Any]) -> None:
    problem = status.get("problem") or {}
    if status["ok"]:
        console.print(
            f"chain OK ({label}): {status['checked']} entries, head {status['head_hash']}"
        )
    else:
        console.print(
            f"[red]chain BROKEN ({label})[/red]: entry {problem['seq']} {problem['kind']}: "
            f"{problem['detail']} ({status['checked']} entries good before it)"
        )
