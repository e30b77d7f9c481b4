"""The SIS roster connector: each configured source synced on its own schedule.

One thread per source: sync (a CSV package at ``path``, or the REST provider — a full sync
every ``full_sync_interval_s``, deltas in between —; then the custody feed if the source has
one), wait ``interval_s``, again. A source's sync never overlaps itself (one thread,
sequential), nor an import of it from the CLI (``safehub roster import`` / ``sync``): every
run holds the source's lease (:mod:`.lease`) and a scheduled sync that finds the source
taken skips this interval, logging who holds it. Different sources run side by side. A
failed sync (the provider down, a refused package) is logged by its reason and tried again at
the next interval; it never stops the connector. See :mod:`.importer` for what becomes which
event.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import structlog

from connectors.sis_roster.custody import is_custody_feed
from connectors.sis_roster.importer import NAME, Importer, Progress, SyncReport
from connectors.sis_roster.lease import SourceLease, holder_name
from connectors.sis_roster.rest_client import OneRosterRestClient
from connectors.sis_roster.settings import RosterSource, SisRosterConfig, SisRosterSettings
from connectors.sis_roster.state import RosterState, SourceBusyError
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
    holder: str,
    on_progress: Progress | None = None,
    full: bool = False,
) -> list[SyncReport]:
    """One sync of ``source`` holding its lease: its package or REST provider (``full``: a
    full listing, removing what it no longer lists), then its custody feed.

    :class:`~connectors.sis_roster.state.SourceBusyError` (nothing done) if another run
    holds the source.
    """
    with SourceLease(state, source.name, holder, config.lease_ttl_s) as lease:
        importer = Importer(
            config, source, producer, catalog, state, on_progress=on_progress, lease=lease
        )
        reports: list[SyncReport] = []
        if source.kind == "rest":
            assert source.rest is not None  # the settings validator says so
            with OneRosterRestClient(source.rest) as client:
                reports.append(importer.sync_rest(client, full=full))
        elif source.path is not None:
            if is_custody_feed(source.path):
                reports.append(importer.import_custody(source.path))
            else:
                reports.append(importer.import_package(source.path))
        if source.custody_path is not None and source.custody_path.exists():
            reports.append(importer.import_custody(source.custody_path))
        return reports


def full_sync_due(source: RosterSource, state: RosterState, *, now: datetime | None = None) -> bool:
    """Whether the scheduled REST sync of ``source`` should be a full one at ``now`` (default:
    the current time): ``full_sync_interval_s`` after the last full one finished, or if none
    is on record (a new source's first sync is a full one anyway; a source synced before full
    syncs were recorded gets one)."""
    interval = source.full_sync_interval_s
    if source.kind != "rest" or interval is None:
        return False
    last = state.last_full_sync(source.name)
    if last is None:
        return True
    return ((now or datetime.now(UTC)) - last).total_seconds() >= interval


def scheduled_sync(
    config: SisRosterConfig,
    source: RosterSource,
    producer: EventProducer,
    catalog: TopicCatalog,
    state: RosterState,
) -> list[SyncReport] | None:
    """One scheduled sync of ``source``; None (logged, nothing done) if another run, such as
    a ``safehub roster import``, holds the source: the next interval tries again."""
    try:
        return sync_source(
            config,
            source,
            producer,
            catalog,
            state,
            holder=holder_name("scheduled sync of sis_roster"),
            full=full_sync_due(source, state),
        )
    except SourceBusyError as busy:
        log.warning(
            "roster sync skipped: source busy",
            source=source.name,
            holder=busy.lease.holder,
            since=busy.lease.since.isoformat(),
            lease_expires_at=busy.lease.expires_at.isoformat(),
            next_try_in_s=source.interval_s,
        )
        return None


def _schedule(
    runtime: Runtime[SisRosterSettings], source: RosterSource, state: RosterState
) -> None:
    config = runtime.settings.sis_roster
    while not runtime.stop.is_set():
        started = time.monotonic()
        try:
            reports = scheduled_sync(config, source, runtime.producer, runtime.catalog, state)
            for report in reports or []:
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


__all__ = ["full_sync_due", "main", "scheduled_sync", "setup", "sync_source"]
