"""The SIS roster connector: each configured source synced on its own schedule.

One thread per source: sync (a CSV package at ``path``, or the REST provider; then the
custody feed if the source has one), wait ``interval_s``, again. A source's sync never
overlaps itself (one thread, sequential); different sources run side by side. A failed sync
(the provider down, a refused package) is logged by its reason and tried again at the next
interval; it never stops the connector. The same imports run once from the CLI
(``safehub roster import`` / ``sync``). See :mod:`.importer` for what becomes which event.
"""

from __future__ import annotations

import time

import structlog

from connectors.sis_roster.custody import is_custody_feed
from connectors.sis_roster.importer import NAME, Importer, Progress, SyncReport
from connectors.sis_roster.rest_client import OneRosterRestClient
from connectors.sis_roster.settings import RosterSource, SisRosterConfig, SisRosterSettings
from connectors.sis_roster.state import RosterState
from safehub.kernel.bus import EventProducer
from safehub.kernel.errors import SafeHubError
from safehub.kernel.runtime import Runtime, run
from safehub.kernel.topics import TopicCatalog

log = structlog.get_logger(__name__)


def sync_source(
    config: SisRosterConfig,
    source: RosterSource,
    producer: EventProducer,
    catalog: TopicCatalog,
    state: RosterState,
    *,
    on_progress: Progress | None = None,
) -> list[SyncReport]:
    """One sync of ``source``: its package or REST provider, then its custody feed."""
    importer = Importer(config, source, producer, catalog, state, on_progress=on_progress)
    reports: list[SyncReport] = []
    if source.kind == "rest":
        assert source.rest is not None  # the settings validator says so
        with OneRosterRestClient(source.rest) as client:
            reports.append(importer.sync_rest(client))
    elif source.path is not None:
        if is_custody_feed(source.path):
            reports.append(importer.import_custody(source.path))
        else:
            reports.append(importer.import_package(source.path))
    if source.custody_path is not None and source.custody_path.exists():
        reports.append(importer.import_custody(source.custody_path))
    return reports


def _schedule(
    runtime: Runtime[SisRosterSettings], source: RosterSource, state: RosterState
) -> None:
    config = runtime.settings.sis_roster
    while not runtime.stop.is_set():
        started = time.monotonic()
        try:
            for report in sync_source(config, source, runtime.producer, runtime.catalog, state):
                log.info(
                    "roster sync done",
                    source=source.name,
                    what=report.what,
                    rows=report.rows,
                    defects=report.defect_count,
                    people=report.people["published"],
                )
        except SafeHubError as exc:
            # The message names the endpoint, file or column at fault, never roster data.
            log.error("roster sync failed", source=source.name, reason=str(exc))
        elapsed = time.monotonic() - started
        runtime.stop.wait(max(0.0, source.interval_s - elapsed))


def setup(runtime: Runtime[SisRosterSettings]) -> None:
    """Open the state and start one schedule thread per source."""
    config = runtime.settings.sis_roster
    state = RosterState(config.state_url)
    runtime.on_close(state.close)
    for source in config.sources:
        runtime.spawn(
            lambda source=source: _schedule(runtime, source, state),  # type: ignore[misc]
            name=f"roster-{source.name}",
        )
    log.info("roster schedules started", sources=len(config.sources))


def main() -> None:
    """Run the connector until SIGTERM/SIGINT."""
    run(NAME, SisRosterSettings, setup)


__all__ = ["main", "setup", "sync_source"]
