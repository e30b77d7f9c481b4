"""The sync state: what each source last applied, so an import is idempotent and resumable.

Per source it keeps each entity's last applied version and content digest (a row whose
digest is unchanged publishes nothing), each person's assembled record with the version and
digest last published as ``PersonChanged``, the progress of the import in hand (package
fingerprint → last file and line applied, or the REST cursor; the report so far) and, per
REST source, the high-water ``dateLastModified`` of the last finished sync and when the last
full sync finished. A checkpoint writes all of it in one transaction, after the events it
accounts for were confirmed by the broker: a crash repeats at most the rows since the last
checkpoint, under the same event ids.

One run per source at a time: a run (a CLI import or sync, a scheduled sync) takes the
source's row of ``leases`` (holder, since, expiry) in one atomic statement —
:meth:`RosterState.acquire` succeeds only if nobody holds it or the holder's lease expired —,
renews it while it works (:meth:`RosterState.renew`, and every checkpoint checks it is still
the holder in the checkpoint's own transaction) and deletes it at the end
(:meth:`RosterState.release`). A process that dies holds the source only until its lease
expires (or until a run on the same host sees that process is gone:
:meth:`RosterState.take_over`). A second caller gets :class:`SourceBusyError` naming the
holder, since when and until when.

SQLite file by default, PostgreSQL by URL; schema from ``migrations/`` (applied at open).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)

from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing
from safehub.kernel.store import (
    StoreError,
    insert_for,
    make_engine,
    migrate,
    upsert,
    wrap_errors,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StateError(StoreError):
    """The sync state could not be opened, read or written."""

    store = "sis_roster state"


class SourceBusyError(SafeHubError):
    """Another run holds the source's lease: the message names the source, the holder, since
    when and until when, and what to do."""

    def __init__(self, source: str, lease: Lease) -> None:
        super().__init__(
            f"source {source!r} is busy: {lease.holder} has been running it since "
            f"{_stamp(lease.since)} (lease renewed until {_stamp(lease.expires_at)}); "
            f"try again after it finishes, or after {_stamp(lease.expires_at)} if that "
            "process died"
        )
        self.source = source
        self.lease = lease


class LeaseLostError(SafeHubError):
    """The run's lease expired and another run took the source: this one stops unrecorded."""

    def __init__(self, source: str, holder: str) -> None:
        super().__init__(
            f"source {source!r}: the lease of {holder} expired and another run took it; "
            "this run stopped without recording more (the other run goes on)"
        )
        self.source = source


@dataclass(frozen=True)
class Lease:
    """Who runs a source, since when, and until when the lease holds unless renewed; the
    holder's host and process id, if it gave them (a run on that host can tell it died)."""

    holder: str
    since: datetime
    expires_at: datetime
    host: str | None = None
    pid: int | None = None


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _aware(value: datetime) -> datetime:
    # SQLite gives naive datetimes back; every stored time is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _utc(value: datetime | None) -> datetime:
    # Stored (and compared, as text on SQLite) in UTC.
    return datetime.now(UTC) if value is None else _aware(value).astimezone(UTC)


def _lease(row: Any) -> Lease:
    pid = None if row.pid is None else int(row.pid)
    return Lease(row.holder, _aware(row.since), _aware(row.expires_at), row.host, pid)


@dataclass(slots=True)
class Applied:
    """What was last applied of one entity: its version and content digest, the last bulk
    package that listed it (``seen``), whose person it is a piece of, whether it is gone."""

    version: int
    digest: str
    seen: str | None = None
    person_id: str | None = None
    deleted: bool = False


@dataclass
class PersonRow:
    """A person's assembled record and what was last published of it."""

    state: dict[str, Any]
    published_version: int = 0
    published_digest: str | None = None


@dataclass
class Progress:
    """An unfinished (or finished) import of one package or REST sync."""

    position: dict[str, Any]
    report: dict[str, Any]
    done: bool


class RosterState(Closing):
    """The state tables behind one engine."""

    def __init__(self, url: str, *, table_prefix: str = "sis_roster_") -> None:
        self._engine: Engine = make_engine(url, name="sis_roster state")
        metadata = MetaData()
        p = table_prefix
        self.records = Table(
            f"{p}records",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("entity", String(40), primary_key=True),
            Column("sourced_id", String(255), primary_key=True),
            Column("version", BigInteger, nullable=False),
            Column("digest", String(40), nullable=False),
            Column("seen", String(80)),
            Column("person_id", String(255)),
            Column("deleted", Boolean, nullable=False, default=False),
        )
        self.people = Table(
            f"{p}people",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("person_id", String(255), primary_key=True),
            Column("state", Text, nullable=False),
            Column("published_version", BigInteger, nullable=False),
            Column("published_digest", String(40)),
        )
        self.progress = Table(
            f"{p}progress",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("fingerprint", String(80), primary_key=True),
            Column("position", Text, nullable=False),
            Column("report", Text, nullable=False),
            Column("done", Boolean, nullable=False),
            Column("updated_at", DateTime(timezone=True), nullable=False),
        )
        self.syncs = Table(
            f"{p}syncs",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("high_water", DateTime(timezone=True)),
            Column("finished_at", DateTime(timezone=True), nullable=False),
            Column("full_at", DateTime(timezone=True)),
        )
        self.leases = Table(
            f"{p}leases",
            metadata,
            Column("source", String(64), primary_key=True),
            Column("holder", String(200), nullable=False),
            Column("since", DateTime(timezone=True), nullable=False),
            Column("expires_at", DateTime(timezone=True), nullable=False),
            Column("host", String(255)),
            Column("pid", Integer),
        )
        migrate(self._engine, MIGRATIONS, error=StateError, table_prefix=table_prefix)

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()

    # -- reading ---------------------------------------------------------------------------

    def load_records(self, source: str) -> dict[tuple[str, str], Applied]:
        """(entity, sourcedId) → what ``source`` last applied of it."""
        t = self.records
        with wrap_errors(StateError, "cannot read records"), self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.source == source))
            return {
                (r.entity, r.sourced_id): Applied(
                    r.version, r.digest, r.seen, r.person_id, bool(r.deleted)
                )
                for r in rows
            }

    def load_people(self, source: str) -> dict[str, PersonRow]:
        """Person id → assembled record of ``source``."""
        t = self.people
        with wrap_errors(StateError, "cannot read people"), self._engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.source == source))
            return {
                r.person_id: PersonRow(json.loads(r.state), r.published_version, r.published_digest)
                for r in rows
            }

    def progress_of(self, source: str, fingerprint: str) -> Progress | None:
        """The progress of this package (or sync) of ``source``, if it was started."""
        t = self.progress
        with wrap_errors(StateError, "cannot read progress"), self._engine.connect() as conn:
            row = conn.execute(
                select(t).where(t.c.source == source, t.c.fingerprint == fingerprint)
            ).first()
        if row is None:
            return None
        return Progress(json.loads(row.position), json.loads(row.report), bool(row.done))

    def open_sync(self, source: str) -> str | None:
        """The fingerprint of ``source``'s unfinished REST sync, if one was interrupted."""
        t = self.progress
        with wrap_errors(StateError, "cannot read progress"), self._engine.connect() as conn:
            row = conn.execute(
                select(t.c.fingerprint).where(
                    t.c.source == source, t.c.done.is_(False), t.c.fingerprint.like("rest:%")
                )
            ).first()
        return None if row is None else str(row.fingerprint)

    def high_water(self, source: str) -> datetime | None:
        """The newest ``dateLastModified`` the last finished sync of ``source`` saw."""
        t = self.syncs
        with wrap_errors(StateError, "cannot read syncs"), self._engine.connect() as conn:
            value = conn.execute(select(t.c.high_water).where(t.c.source == source)).scalar()
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def last_full_sync(self, source: str) -> datetime | None:
        """When the last full (bulk) REST sync of ``source`` finished (None: never)."""
        t = self.syncs
        with wrap_errors(StateError, "cannot read syncs"), self._engine.connect() as conn:
            value = conn.execute(select(t.c.full_at).where(t.c.source == source)).scalar()
        return _aware(value) if isinstance(value, datetime) else None

    # -- the lease -------------------------------------------------------------------------

    def lease_of(self, source: str) -> Lease | None:
        """The lease on ``source`` as stored (possibly expired), None if nobody holds it."""
        t = self.leases
        with wrap_errors(StateError, "cannot read leases"), self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.source == source)).first()
        return None if row is None else _lease(row)

    def acquire(
        self,
        source: str,
        holder: str,
        ttl: timedelta,
        *,
        host: str | None = None,
        pid: int | None = None,
        now: datetime | None = None,
    ) -> Lease:
        """Take the source for ``holder`` (on ``host``, process ``pid``) until ``ttl`` from
        ``now`` (default: the current time), in one statement: only if nobody holds it, its
        lease expired by ``now``, or ``holder`` holds it already. :class:`SourceBusyError`
        (naming the holder and its lease) otherwise."""
        t = self.leases
        now = _utc(now)
        values = {
            "source": source,
            "holder": holder,
            "since": now,
            "expires_at": now + ttl,
            "host": host,
            "pid": pid,
        }
        with wrap_errors(StateError, "cannot take the lease"), self._engine.begin() as conn:
            taken = conn.execute(
                upsert(
                    conn,
                    t,
                    values,
                    keys=("source",),
                    where=(t.c.expires_at < now) | (t.c.holder == holder),
                ).returning(t.c.holder)  # rowcount of an upsert is -1 on psycopg
            ).first()
            if taken is None:
                row = conn.execute(select(t).where(t.c.source == source)).first()
        if taken is not None:
            return Lease(holder, now, now + ttl, host, pid)
        if row is None:  # released between the two statements: try once more
            return self.acquire(source, holder, ttl, host=host, pid=pid, now=now)
        raise SourceBusyError(source, _lease(row))

    def take_over(
        self,
        source: str,
        stale: Lease,
        holder: str,
        ttl: timedelta,
        *,
        host: str | None = None,
        pid: int | None = None,
        now: datetime | None = None,
    ) -> Lease | None:
        """Take the source from ``stale`` (a holder known to be dead) for ``holder``, in one
        statement that succeeds only while ``stale``'s holder still holds it; None if it no
        longer does (released, or another run was first)."""
        t = self.leases
        now = _utc(now)
        with wrap_errors(StateError, "cannot take the lease"), self._engine.begin() as conn:
            taken = conn.execute(
                update(t)
                .where(t.c.source == source, t.c.holder == stale.holder)
                .values(holder=holder, since=now, expires_at=now + ttl, host=host, pid=pid)
                .returning(t.c.source)
            ).first()
        return None if taken is None else Lease(holder, now, now + ttl, host, pid)

    def renew(self, source: str, holder: str, ttl: timedelta) -> None:
        """Extend ``holder``'s lease to ``ttl`` from now; :class:`LeaseLostError` if it no
        longer holds it (it expired and another run took the source)."""
        with wrap_errors(StateError, "cannot renew the lease"), self._engine.begin() as conn:
            self._renew(conn, source, holder, ttl)

    def _renew(self, conn: Any, source: str, holder: str, ttl: timedelta) -> None:
        t = self.leases
        renewed = conn.execute(
            update(t)
            .where(t.c.source == source, t.c.holder == holder)
            .values(expires_at=datetime.now(UTC) + ttl)
            .returning(t.c.source)
        ).first()
        if renewed is None:
            raise LeaseLostError(source, holder)

    def release(self, source: str, holder: str) -> None:
        """Give the source up (nothing if ``holder`` no longer holds it)."""
        t = self.leases
        with wrap_errors(StateError, "cannot release the lease"), self._engine.begin() as conn:
            conn.execute(delete(t).where(t.c.source == source, t.c.holder == holder))

    # -- writing ---------------------------------------------------------------------------

    def abandon(self, source: str, fingerprint: str) -> None:
        """Close an unfinished run without finishing it (a full sync replaces a delta)."""
        t = self.progress
        with wrap_errors(StateError, "cannot write progress"), self._engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.source == source, t.c.fingerprint == fingerprint)
                .values(done=True, updated_at=datetime.now(UTC))
            )

    def checkpoint(
        self,
        source: str,
        fingerprint: str,
        *,
        records: Iterable[tuple[str, str, Applied]],
        people: Iterable[tuple[str, PersonRow]],
        position: dict[str, Any],
        report: dict[str, Any],
        done: bool = False,
        high_water: datetime | None = None,
        full: bool = False,
        lease: tuple[str, timedelta] | None = None,
    ) -> None:
        """One transaction: changed records and people, the position reached, the report.

        ``full``: a finished REST sync was a full one. ``lease``: (holder, ttl) — the
        transaction first renews that holder's lease and is rolled back with
        :class:`LeaseLostError` if another run took the source meanwhile.
        """
        now = datetime.now(UTC)
        record_rows = [
            {
                "source": source,
                "entity": e,
                "sourced_id": s,
                "version": a.version,
                "digest": a.digest,
                "seen": a.seen,
                "person_id": a.person_id,
                "deleted": a.deleted,
            }
            for e, s, a in records
        ]
        people_rows = [
            {
                "source": source,
                "person_id": pid,
                "state": json.dumps(row.state, sort_keys=True),
                "published_version": row.published_version,
                "published_digest": row.published_digest,
            }
            for pid, row in people
        ]
        with wrap_errors(StateError, "cannot write a checkpoint"), self._engine.begin() as conn:
            if lease is not None:
                self._renew(conn, source, lease[0], lease[1])
            for chunk in _chunks(record_rows):
                conn.execute(
                    _bulk_upsert(conn, self.records, ("source", "entity", "sourced_id")), chunk
                )
            for chunk in _chunks(people_rows):
                conn.execute(_bulk_upsert(conn, self.people, ("source", "person_id")), chunk)
            values = {
                "source": source,
                "fingerprint": fingerprint,
                "position": json.dumps(position, sort_keys=True),
                "report": json.dumps(report, sort_keys=True),
                "done": done,
                "updated_at": now,
            }
            conn.execute(upsert(conn, self.progress, values, keys=("source", "fingerprint")))
            if done and fingerprint.startswith("rest:"):
                sync: dict[str, Any] = {
                    "source": source,
                    "high_water": high_water,
                    "finished_at": now,
                }
                if full:
                    sync["full_at"] = now
                conn.execute(upsert(conn, self.syncs, sync, keys=("source",)))


def _chunks(rows: list[dict[str, Any]], size: int = 500) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _bulk_upsert(conn: Any, table: Table, keys: tuple[str, ...]) -> Any:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` every other column, for executemany."""
    statement = insert_for(conn)(table)
    others = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=others)
