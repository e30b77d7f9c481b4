"""``safehub directory …``: the seed import and the directory service's read API.

``seed`` publishes one ``PersonChanged`` per person of a seed file (version 1, roster source
``seed``, stable event ids) that the people topic does not hold yet, so re-seeding changes
nothing. ``people`` lists a school's people through the directory service (ids, kinds, names,
roles, versions: the API serves no contact details). Exit code 2 on an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from safehub.kernel.errors import SafeHubError

app = typer.Typer(help="The live directory's people.", no_args_is_help=True)
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
        raise DirectoryClientError(f"directory service at {url} did not answer: {exc}") from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        raise DirectoryClientError(f"{response.status_code}: {detail}")
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
