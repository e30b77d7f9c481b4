"""The one command-line entry point: ``safehub …``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safehub.cli.directory import app as directory_app
from safehub.cli.roster import app as roster_app
from safehub.cli.timeline import app as timeline_app
from safehub.cli.tips import app as tips_app
from safehub.kernel.errors import SafeHubError
from safehub.kernel.logging import configure_logging
from safehub.kernel.settings import HubSettings, load_settings

app = typer.Typer(
    help="SafeHub: open interoperability hub for school safety.", no_args_is_help=True
)
schemas_app = typer.Typer(help="Event contracts (Avro schemas).", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics declared by the hub.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")
app.add_typer(topics_app, name="topics")
app.add_typer(timeline_app, name="timeline")
app.add_typer(roster_app, name="roster")
app.add_typer(directory_app, name="directory")
app.add_typer(tips_app, name="tips")

console = Console(width=None if Console().is_terminal else 120)
err_console = Console(stderr=True)


def _settings() -> HubSettings:
    settings = load_settings(HubSettings)
    configure_logging(settings.log)
    return settings


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@schemas_app.command("check")
def schemas_check(
    against: Annotated[str, typer.Option(help="git ref to check compatibility against")] = "main",
    schema_dir: Annotated[Path | None, typer.Option(help="schemas folder")] = None,
) -> None:
    """Verify every schema parses, follows the rules and is compatible with ``--against``."""
    from safehub.contracts.check import check_schemas
    from safehub.contracts.registry import SCHEMA_DIR

    problems = check_schemas(schema_dir or SCHEMA_DIR, against=against)
    if not problems:
        console.print(f"schemas OK (compatible with {against})")
        return
    for problem in problems:
        where = problem.schema + (f".{problem.field}" if problem.field else "")
        err_console.print(f"[red]✗[/red] {where}: {problem.reason}")
    raise typer.Exit(1)


@schemas_app.command("keep-history")
def schemas_keep_history(
    against: Annotated[str, typer.Option(help="git ref holding the previous versions")] = "main",
) -> None:
    """Copy the ``--against`` version of each changed event schema into schemas/history/."""
    from safehub.contracts.check import keep_history
    from safehub.contracts.registry import SCHEMA_DIR

    for path in keep_history(SCHEMA_DIR, against):
        console.print(f"kept {path.relative_to(SCHEMA_DIR.parent)}")


@topics_app.command("list")
def topics_list() -> None:
    """Show every declared topic: partitions, key and events."""
    from safehub.kernel.topics import TOPICS

    table = Table("topic", "partitions", "key", "events")
    for spec in TOPICS:
        events = ", ".join(e.rsplit(".", 1)[-1] for e in spec.events) or "(any, raw)"
        table.add_row(spec.name, str(spec.partitions), spec.key_by.value, events)
    console.print(table)


@topics_app.command("create")
def topics_create() -> None:
    """Create the declared topics on the configured broker (idempotent)."""
    from safehub.kernel.admin import ensure_topics
    from safehub.kernel.topics import TopicCatalog

    settings = _settings()
    created = ensure_topics(settings.kafka, TopicCatalog(settings.kafka.topic_prefix))
    console.print(f"created {len(created)} topics")


@app.command()
def broker(
    durable: Annotated[
        Path | None, typer.Option(help="keep data in this folder (tansu on S3 via rclone)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default: a free one)")] = None,
) -> None:
    """Run the embedded Kafka-protocol broker until interrupted."""
    from safehub.devstack.broker import EmbeddedBroker

    _settings()
    with EmbeddedBroker(durable_dir=durable, port=port) as running:
        console.print(f"broker ready at {running.bootstrap_servers}  (Ctrl-C to stop)")
        _wait_for_signal()


@app.command()
def up(
    durable: Annotated[Path | None, typer.Option(help="durable embedded broker folder")] = None,
    run_dir: Annotated[Path, typer.Option(help="certificates, logs and stores of this run")] = Path(
        "var/run"
    ),
) -> None:
    """Run the hub: embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set, then every service."""
    from safehub.devstack.hub import Hub

    settings = _settings()
    with Hub(settings, run_dir=run_dir.resolve(), durable_dir=durable) as hub:
        table = Table("endpoint", "address")
        table.add_row("Kafka", hub.bootstrap_servers)
        table.add_row("gateway (gRPC, mTLS)", hub.gateway_address)
        table.add_row("door states (HTTP)", hub.doorstate_url)
        table.add_row("CAD simulator (HTTPS)", hub.cad_simulator_url)
        table.add_row("notify (ack links, CAP feed, status)", hub.notify_url)
        table.add_row("mail server (SMTP → Maildir)", f"127.0.0.1:{hub.ports.smtp} → {hub.maildir}")
        table.add_row("SMS/voice provider simulator", hub.sms_simulator_url)
        table.add_row(
            "timeline (reviewer's view, API)", f"{hub.timeline_url}/?token=demo-token-north-aar"
        )
        table.add_row("timeline gRPC (mTLS)", f"127.0.0.1:{hub.ports.timeline_grpc}")
        table.add_row("dev CA / client certs", str(hub.pki.root))
        table.add_row("logs", str(hub.run_dir / "logs"))
        console.print(table)
        console.print("SafeHub is up (Ctrl-C to stop)")
        _wait_for_signal()


@app.command()
def demo(
    keep: bool = typer.Option(
        False, "--keep", help="keep the hub running afterwards for the reviewer's web view"
    ),
) -> None:
    """Play the demo scenario on embedded defaults and print what happened."""
    from safehub.devstack.demo import run_demo

    settings = _settings()
    run_demo(settings, console, keep=keep)


def main() -> None:
    """Console-script entry point; SafeHub errors print one clear line and exit 2."""
    try:
        app()
    except SafeHubError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from exc
