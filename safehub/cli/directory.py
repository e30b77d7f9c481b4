"""``safehub directory …``: the seed import and the directory service's read API.

``seed`` publishes one ``PersonChanged`` per person of a seed file (version 1, roster source
``seed``, stable event ids) that the people topic does not hold yet, so re-seeding changes
nothing. ``people`` lists a school's people through the directory service (ids, kinds, names,
roles, versions: the API serves no contact details). ``entries`` lists the newest version of
the live directory's places and systems of one kind (of one district), ``versions`` every
version of one entry (the API serves no reviewer's token hash). Exit code 2 on an error.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from safehub.kernel.errors import SafeHubError

app = typer.Typer(
    help="The live directory: its seed import, its people and its entries.", no_args_is_help=True
)
console = Console(width=None if Console().is_terminal else 140)

Url = Annotated[
    str,
    typer.Option(envvar="SAFEHUB_DIRECTORY_URL", help="base URL of the directory service"),
]
Token = Annotated[
    str,
    typer.Option(envvar="SAFEHUB_DIRECTORY_TOKEN", help="bearer token of its read API"),
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
#: The entry kinds of the live directory (``safehub.kernel.live_directory.FIELDS``).
KINDS = "DISTRICT, SCHOOL, CLIENT, REVIEWER or CALL_TREE"
#: What to do about an answer, by status.
_HINTS = {
    401: "pass the read API's token with --token or SAFEHUB_DIRECTORY_TOKEN",
    404: "list what the directory holds with `safehub directory entries --kind KIND`",
}


class DirectoryClientError(SafeHubError):
    """The directory service answered an error or could not be reached."""


@app.command()
def seed(
    file: Annotated[
        Path | None, typer.Argument(help="seed file (default: SAFEHUB_DIRECTORY_FILE or the demo)")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Import a seed file into the live directory: its places, systems and call trees into the
    directory topic and its people into the people topic (idempotent)."""
    from safehub.kernel.bus import EventProducer
    from safehub.kernel.codec import Codec
    from safehub.kernel.directory import default_directory_file
    from safehub.kernel.live_directory import publish_directory_seed
    from safehub.kernel.live_people import publish_seed
    from safehub.kernel.logging import configure_logging
    from safehub.kernel.settings import HubSettings, load_settings
    from safehub.kernel.topics import TopicCatalog

    settings = load_settings(HubSettings)
    configure_logging(settings.log)
    codec = Codec.from_contracts()
    catalog = TopicCatalog(settings.kafka.topic_prefix)
    path = file or default_directory_file()
    with EventProducer(settings.kafka, codec, catalog, client_id="directory-seed") as producer:
        places = publish_directory_seed(
            producer, path, kafka=settings.kafka, catalog=catalog, codec=codec
        )
        report = publish_seed(producer, path, kafka=settings.kafka, catalog=catalog, codec=codec)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "file": str(path),
                    "people": report.people,
                    "published": report.published,
                    "already": report.already,
                    "directory": {
                        "entries": places.entries,
                        "published": places.published,
                        "already": places.already,
                    },
                }
            )
        )
    else:
        console.print(
            f"{places.entries} directory entries in {path}: {places.published} published, "
            f"{places.already} already on the topic"
        )
        console.print(
            f"{report.people} people in {path}: {report.published} published, "
            f"{report.already} already on the topic"
        )


def _get(url: str, token: str, path: str, **params: Any) -> Any:
    query = {k: v for k, v in params.items() if v not in (None, "")}
    try:
        response = httpx.get(
            url.rstrip("/") + path,
            params=query,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise DirectoryClientError(
            f"directory service at {url} did not answer: {exc} (is it running? pass its URL "
            "with --url or SAFEHUB_DIRECTORY_URL)"
        ) from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        hint = _HINTS.get(response.status_code)
        raise DirectoryClientError(
            f"{response.status_code}: {detail}" + (f" ({hint})" if hint else "")
        )
    return response.json()


@app.command()
def people(
    school: Annotated[str, typer.Option(help="school id")],
    kind: Annotated[str | None, typer.Option(help="STAFF, STUDENT, GUARDIAN or RESPONDER")] = None,
    url: Url = "http://127.0.0.1:8490",
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """A school's people as the directory holds them now."""
    answer = _get(url, token, f"/api/v1/schools/{school}/people", kind=kind)
    found: list[dict[str, Any]] = answer["people"]
    if as_json:
        console.print_json(json.dumps(found))
        return
    table = Table(title=f"{school}: {len(found)} people")
    # Ids are never cut: the column is as wide as the longest one.
    table.add_column("id", no_wrap=True, min_width=max((len(p["id"]) for p in found), default=2))
    for column in ("kind", "name", "role", "version", "source"):
        table.add_column(column)
    for person in found:
        table.add_row(
            person["id"],
            person["kind"],
            person["name"] or "",
            person["role"] or "",
            str(person["version"]),
            person["roster_source"],
        )
    console.print(table)


def _count(n: int, noun: str, nouns: str) -> str:
    return f"{n} {noun if n == 1 else nouns}"


def _when(recorded_at: str) -> str:
    """A recorded time to the second, in UTC."""
    at = datetime.fromisoformat(recorded_at)
    at = at.astimezone(UTC) if at.tzinfo is not None else at
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def _what(kind: str, entry: dict[str, Any] | None) -> str:
    """One line of what an entry is (empty for a deletion)."""
    if entry is None:
        return ""
    if kind == "CLIENT":
        schools = ", ".join(entry.get("school_ids") or ()) or "every school"
        return f"{', '.join(entry.get('scopes') or ())} for {schools}"
    if kind == "CALL_TREE":
        steps = _count(len(entry.get("steps") or ()), "step", "steps")
        return f"{entry.get('scope')} {entry.get('scope_id')}: {steps}"
    if kind == "REVIEWER":
        clearances = ", ".join(entry.get("clearances") or ()) or "no clearances"
        return f"{entry.get('name')} ({clearances})"
    return str(entry.get("name") or "")


def _id_column(table: Table, name: str, ids: list[str]) -> None:
    # Ids are never cut: the column is as wide as the longest one.
    table.add_column(name, no_wrap=True, min_width=max((len(i) for i in ids), default=len(name)))


@app.command()
def entries(  # noqa: PLR0917 - one parameter per option (typer options)
    kind: Annotated[str, typer.Option(help=KINDS)],
    district: Annotated[str | None, typer.Option(help="district id")] = None,
    include_deleted: Annotated[
        bool, typer.Option("--include-deleted", help="list deleted entries too")
    ] = False,
    url: Url = "http://127.0.0.1:8490",
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """The live directory's entries of one kind (of one district) at their newest version."""
    answer = _get(
        url,
        token,
        "/api/v1/directory/entries",
        kind=kind,
        district=district,
        include_deleted="true" if include_deleted else None,
    )
    found: list[dict[str, Any]] = answer["entries"]
    if as_json:
        console.print_json(json.dumps(found))
        return
    where = f" of {district}" if district else ""
    count = _count(len(found), "entry", "entries")
    table = Table(title=f"{answer['kind'] or 'every kind'}{where}: {count}")
    _id_column(table, "id", [e["id"] for e in found])
    _id_column(table, "district", [e["district_id"] or "" for e in found])
    for column in ("version", "change", "changed by", "recorded", "what"):
        table.add_column(column, no_wrap=column != "what")
    for entry in found:
        table.add_row(
            entry["id"],
            entry["district_id"] or "(state-wide)",
            str(entry["version"]),
            entry["change"],
            entry["changed_by"],
            _when(entry["recorded_at"]),
            _what(entry["kind"], entry["entry"]),
        )
    console.print(table)


@app.command()
def versions(
    kind: Annotated[str, typer.Argument(help=KINDS)],
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="the entry's id")],
    url: Url = "http://127.0.0.1:8490",
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Every version of one entry of the live directory: who changed it, when, and to what."""
    answer = _get(url, token, f"/api/v1/directory/entries/{kind}/{entry_id}/versions")
    found: list[dict[str, Any]] = answer["versions"]
    if as_json:
        console.print_json(json.dumps(found))
        return
    count = _count(len(found), "version", "versions")
    table = Table(title=f"{answer['kind']} {answer['id']}: {count}")
    for column in ("version", "change", "changed by", "recorded", "district", "what"):
        table.add_column(column, no_wrap=column != "what")
    for version in found:
        table.add_row(
            str(version["version"]),
            version["change"],
            version["changed_by"],
            _when(version["recorded_at"]),
            version["district_id"] or "(state-wide)",
            _what(answer["kind"], version["entry"]),
        )
    console.print(table)
