"""One run per roster source: a second run of a source is refused naming who holds it and
until when; an expired lease, or one whose process died on this host, is taken over; a
finished (or failed) run gives the source up; a run that lost its lease writes nothing more;
the CLI says the source is busy with exit code 4. On SQLite and PostgreSQL, with the state
store's real statements; expiry by an injected ``now``, never by waiting it out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.sis_roster.importer import SyncReport
from connectors.sis_roster.lease import SourceLease, holder_name
from connectors.sis_roster.service import scheduled_sync, sync_source
from connectors.sis_roster.settings import RosterSource, SisRosterConfig
from connectors.sis_roster.state import (
    Applied,
    LeaseLostError,
    RosterState,
    SourceBusyError,
)
from safehub.kernel.bus import EventProducer
from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.roster.roster_support import FULL, cli_env, json_report, roster, run_cli
from tests.support.waiting import wait_until

MINUTE = timedelta(minutes=1)


def stamp(value: datetime) -> str:
    """A time as the busy message writes it."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dead_pid() -> int:
    """The id of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


class Hub:
    """Runs of one CSV source (a name of its own: a PostgreSQL database outlives the test)."""

    def __init__(self, kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, url: str) -> None:
        self.kafka, self.codec, self.catalog = kafka, codec, catalog
        self.config = SisRosterConfig(state_url=url, checkpoint_rows=3, lease_ttl_s=60)
        self.name = f"sis-{uuid.uuid4().hex[:8]}"
        self.source = RosterSource(name=self.name, district="dist-1", path=FULL)
        self.producer = EventProducer(kafka, codec, catalog, client_id="roster-lease-test")
        self.state = RosterState(url)

    def sync(self, holder: str, *, source: RosterSource | None = None, **kw: Any) -> SyncReport:
        (report,) = sync_source(
            self.config,
            source or self.source,
            self.producer,
            self.catalog,
            self.state,
            holder=holder,
            **kw,
        )
        return report

    def roster(self) -> list[Any]:
        return roster(self.kafka, self.codec, self.catalog)

    def close(self) -> None:
        self.producer.close()
        self.state.close()


@pytest.fixture
def hub(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, database_url: str
) -> Iterator[Hub]:
    made = Hub(kafka, codec, catalog, database_url)
    yield made
    made.close()


def test_a_second_run_of_a_source_is_refused_naming_the_holder_and_the_expiry(hub: Hub) -> None:
    first = holder_name("safehub roster import")
    with SourceLease(hub.state, hub.name, first, 60) as held:
        assert held.lease is not None
        with pytest.raises(SourceBusyError) as busy:
            hub.sync(holder_name("scheduled sync of sis_roster"))
        refused = busy.value
        assert refused.source == hub.name and refused.lease.holder == first
        assert refused.lease.expires_at >= held.lease.expires_at
        message = str(refused)
        assert f"source {hub.name!r} is busy" in message and first in message
        assert f"renewed until {stamp(refused.lease.expires_at)}" in message
        assert "try again after it finishes" in message
        # The refused run did nothing: no event, no state, and the lease is still the first's.
        assert hub.roster() == []
        assert hub.state.load_records(hub.name) == {}
        stored = hub.state.lease_of(hub.name)
        assert stored is not None and stored.holder == first
    # Once the first run gave the source up, the same run goes through.
    report = hub.sync(holder_name("scheduled sync of sis_roster"))
    assert report.entities["USER"].added == 6


def test_a_sync_holds_the_source_while_it_runs_and_releases_it_at_the_end(hub: Hub) -> None:
    holder = holder_name("safehub roster import")
    seen: list[str | None] = []

    def look(_rows: int, _total: int | None) -> None:
        lease = hub.state.lease_of(hub.name)
        seen.append(None if lease is None else lease.holder)

    report = hub.sync(holder, on_progress=look)

    assert report.rows > 0 and seen and set(seen) == {holder}
    assert hub.state.lease_of(hub.name) is None
    # Free at once for anyone else (not only once a ttl has passed).
    other = hub.state.acquire(hub.name, "another run", MINUTE)
    assert other.holder == "another run"


def test_a_failed_sync_releases_the_source_too(hub: Hub) -> None:
    holder = holder_name("safehub roster import")
    seen: list[str | None] = []

    def fail(_rows: int, _total: int | None) -> None:
        lease = hub.state.lease_of(hub.name)
        seen.append(None if lease is None else lease.holder)
        raise RuntimeError("the run fails mid-import")

    with pytest.raises(RuntimeError, match="mid-import"):
        hub.sync(holder, on_progress=fail)

    assert seen == [holder]  # held while it ran
    assert hub.state.lease_of(hub.name) is None


def test_an_expired_lease_is_taken_over(hub: Hub) -> None:
    then = datetime.now(UTC) - 5 * MINUTE
    hub.state.acquire(hub.name, "a run that stopped renewing", MINUTE, now=then)
    # Until it expires, it holds (the same stored lease, asked at an earlier instant).
    with pytest.raises(SourceBusyError):
        hub.state.acquire(hub.name, "too early", MINUTE, now=then + MINUTE / 2)

    report = hub.sync(holder_name("scheduled sync of sis_roster"))

    assert report.entities["USER"].added == 6
    assert hub.state.lease_of(hub.name) is None


def test_a_run_that_lost_its_lease_records_nothing_more(hub: Hub) -> None:
    stale = "a run stalled past its lease"
    hub.state.acquire(hub.name, stale, MINUTE, now=datetime.now(UTC) - 5 * MINUTE)
    with SourceLease(hub.state, hub.name, holder_name("the next run"), 60) as taken:
        assert taken.lease is not None and taken.lease.holder != stale
        with pytest.raises(LeaseLostError, match="expired and another run took it"):
            hub.state.renew(hub.name, stale, MINUTE)
        with pytest.raises(LeaseLostError):
            hub.state.checkpoint(
                hub.name,
                "csv:stale",
                records=[("users", "usr-x", Applied(1, "digest"))],
                people=[],
                position={"file_index": 0, "line": 2},
                report={},
                lease=(stale, MINUTE),
            )
        # The checkpoint's transaction was rolled back whole.
        assert hub.state.load_records(hub.name) == {}
        assert hub.state.progress_of(hub.name, "csv:stale") is None
        # Its release cannot free the source for a third run either.
        hub.state.release(hub.name, stale)
        holder = hub.state.lease_of(hub.name)
        assert holder is not None and holder.holder == taken.holder


def test_a_holder_whose_process_died_on_this_host_is_taken_over_at_once(hub: Hub) -> None:
    here = socket.gethostname()
    hub.state.acquire(hub.name, "a crashed import", MINUTE, host=here, pid=dead_pid())

    report = hub.sync(holder_name("safehub roster import"))

    assert report.entities["USER"].added == 6


@pytest.mark.parametrize(
    "where", ["a live process on this host", "a process on another host"], ids=["live", "remote"]
)
def test_a_holder_that_may_be_running_is_not_taken_over(hub: Hub, where: str) -> None:
    if where.startswith("a live"):
        host, pid = socket.gethostname(), os.getppid()
    else:
        host, pid = "another-host.invalid", dead_pid()  # its pid means nothing here
    hub.state.acquire(hub.name, where, MINUTE, host=host, pid=pid)

    with pytest.raises(SourceBusyError) as busy:
        hub.sync(holder_name("safehub roster import"))

    assert busy.value.lease.holder == where and busy.value.lease.pid == pid
    assert hub.roster() == []


def test_the_heartbeat_renews_the_lease_of_a_long_run(hub: Hub) -> None:
    with SourceLease(hub.state, hub.name, holder_name("a long import"), 0.6) as held:
        assert held.lease is not None
        first = held.lease.expires_at
        wait_until(lambda: held.renewals >= 2, timeout=10, what="two renewals")
        renewed = hub.state.lease_of(hub.name)
        assert renewed is not None and renewed.expires_at > first
        held.check()  # still the holder: the run goes on


def test_a_scheduled_sync_of_a_busy_source_skips_the_interval(hub: Hub) -> None:
    with SourceLease(hub.state, hub.name, holder_name("safehub roster import"), 60):
        skipped = scheduled_sync(hub.config, hub.source, hub.producer, hub.catalog, hub.state)
        assert skipped is None
        assert hub.roster() == []

    reports = scheduled_sync(hub.config, hub.source, hub.producer, hub.catalog, hub.state)

    assert reports is not None and reports[0].entities["USER"].added == 6


def test_the_cli_exits_4_saying_who_holds_the_source_and_what_to_do(
    kafka: KafkaSettings, codec: Codec, catalog: TopicCatalog, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'roster-state.sqlite3'}"
    env = cli_env(kafka, catalog, url)
    command = ["roster", "import", str(FULL), "--district", "dist-1", "--json"]
    holder = holder_name("scheduled sync of sis_roster")
    with RosterState(url) as state:
        # Held by this (live) test process on this host: the CLI may not take it over.
        lease = state.acquire("cli", holder, MINUTE, host=socket.gethostname(), pid=os.getpid())

        busy = run_cli(command, env)

        assert busy.returncode == 4, busy.stderr[-3000:]
        assert "busy: source 'cli' is busy" in busy.stderr
        assert holder in busy.stderr
        assert f"try again after it finishes, or after {stamp(lease.expires_at)}" in busy.stderr
        assert roster(kafka, codec, catalog) == []

        state.release("cli", holder)
        done = run_cli(command, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json_report(done)["entities"]["USER"]["added"] == 6
