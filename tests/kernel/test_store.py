"""The kernel's persistence (safehub.kernel.store) and the three stores built on it: the SQLite
engine's pragmas, the dialect upsert on SQLite and PostgreSQL, errors wrapped naming the store,
migrations that adopt files made by ``create_all``, and the one delivery status order of notify.
What every store must do on both back ends is the store contract
(tests/kernel/test_store_contract.py).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from connectors.psap_cad.ledger import Ledger
from safehub.kernel.errors import ConfigError
from safehub.kernel.store import (
    StoreError,
    insert_for,
    insert_or_ignore,
    make_engine,
    upsert,
    wrap_errors,
)
from services.notify import dispatcher
from services.notify import store as notify_store
from tests.support.store_contract import versions as version_rows


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


# -- engine ------------------------------------------------------------------------------------


def test_sqlite_engine_is_wal_with_normal_sync_busy_timeout_and_foreign_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "not" / "yet" / "there.sqlite3"
    engine = make_engine(f"sqlite:///{path}", name="test store")
    try:
        with engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
        assert path.exists()  # the parent folders were created
        assert pragma == {
            "journal_mode": "wal",
            "synchronous": 1,  # NORMAL
            "busy_timeout": 30000,
            "foreign_keys": 1,
        }
    finally:
        engine.dispose()


def test_begin_immediate_takes_the_write_lock_at_begin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    writer = make_engine(url, name="test store", begin_immediate=True)
    try:
        with writer.begin() as conn:
            conn.execute(select(1))  # a read only, yet the lock is held
            other = sqlite3.connect(tmp_path / "db.sqlite3", timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.close()
    finally:
        writer.dispose()


def test_a_wrong_url_or_back_end_is_a_config_error_naming_the_store() -> None:
    with pytest.raises(ConfigError, match=r"^notify database URL is invalid"):
        make_engine("not a url", name="notify")
    with pytest.raises(ConfigError, match=r"^psap_cad ledger database backend 'mysql' is not"):
        make_engine("mysql://localhost/x", name="psap_cad ledger")
    with pytest.raises(ConfigError, match="not supported"):
        insert_for("oracle")


# -- upsert ------------------------------------------------------------------------------------


@pytest.fixture
def versions(database_url: str) -> Iterator[tuple[Table, str]]:
    """A throw-away (key, version, value) table on each back end."""
    engine = make_engine(database_url, name="test store")
    table = Table(
        f"{_prefix()}versions",
        MetaData(),
        Column("key", String(20), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("value", String(20), nullable=False),
    )
    table.create(engine)
    try:
        yield table, database_url
    finally:
        table.drop(engine)
        engine.dispose()


def test_upsert_and_insert_or_ignore_agree_on_sqlite_and_postgresql(
    versions: tuple[Table, str],
) -> None:
    table, url = versions
    engine = make_engine(url, name="test store")

    def put(version: int, value: str) -> None:
        with engine.begin() as conn:
            conn.execute(
                upsert(
                    conn,
                    table,
                    {"key": "k", "version": version, "value": value},
                    keys=["key"],
                    where=table.c.version < version,
                )
            )

    def rows() -> list[tuple[str, int, str]]:
        with engine.connect() as conn:
            query = select(table.c.key, table.c.version, table.c.value).order_by(table.c.key)
            return [(str(k), int(v), str(x)) for k, v, x in conn.execute(query)]

    try:
        put(2, "two")
        assert rows() == [("k", 2, "two")]
        put(1, "one")  # older: the stored row stays
        assert rows() == [("k", 2, "two")]
        put(3, "three")
        assert rows() == [("k", 3, "three")]
        with engine.begin() as conn:
            conn.execute(
                insert_or_ignore(engine, table, keys=["key"]),
                [
                    {"key": "k", "version": 9, "value": "nine"},
                    {"key": "m", "version": 1, "value": "m"},
                ],
            )
            # Only the named columns change on a conflict when ``update`` is given.
            conn.execute(
                upsert(
                    conn,
                    table,
                    {"key": "m", "version": 5, "value": "ignored"},
                    keys=["key"],
                    update={"version": 5},
                )
            )
        assert rows() == [("k", 3, "three"), ("m", 5, "m")]
    finally:
        engine.dispose()


# -- errors ------------------------------------------------------------------------------------


class _ThingError(StoreError):
    store = "thing store"


def test_errors_are_wrapped_naming_the_store_and_the_operation(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}", name="thing store")

    @wrap_errors(_ThingError, "cannot count things")
    def count() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM things")).scalar_one())

    try:
        with pytest.raises(_ThingError) as caught:
            count()
        assert str(caught.value) == "thing store: cannot count things: OperationalError"
        assert isinstance(caught.value.__cause__, SQLAlchemyError)
        assert "SELECT" not in str(caught.value)  # never the SQL (or its data)
        with pytest.raises(StoreError, match=r"^thing store: cannot write: OperationalError$"):
            with wrap_errors(_ThingError, "cannot write"), engine.begin() as conn:
                conn.execute(text("INSERT INTO things VALUES (1)"))
    finally:
        engine.dispose()


def test_a_store_error_names_its_store_and_the_operation_never_the_sql(tmp_path: Path) -> None:
    # Every store's error class is a kernel StoreError: tests/kernel/test_store_contract.py.
    store = notify_store.Store(f"sqlite:///{tmp_path / 'notify.sqlite3'}")
    try:
        with store._engine.begin() as conn:
            conn.execute(text("DROP TABLE notify_outbox"))
        with pytest.raises(notify_store.StoreError) as caught:
            store.record_statuses([], [notify_store.OutboxItem("e-1", b"x")])
        assert (
            str(caught.value) == "notify store: cannot record delivery statuses: OperationalError"
        )
        assert isinstance(caught.value.__cause__, SQLAlchemyError)
    finally:
        store.close()


# -- migrations --------------------------------------------------------------------------------


def test_a_notify_file_made_by_create_all_is_adopted_and_re_ranked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'notify.sqlite3'}"
    store = notify_store.Store(url)
    # What an older hub left: no version table, and the old ranks (FAILED 3 above DELIVERED 2).
    store.mark_incident("inc-1", "LOCKDOWN", 2, "n-1", ["staff:s"])
    with store._engine.begin() as conn:
        conn.execute(text("DROP TABLE notify_alembic_version"))
        for delivery_id, status, rank in (("d-failed", "FAILED", 3), ("d-ok", "DELIVERED", 2)):
            conn.execute(
                store.deliveries.insert().values(
                    delivery_id=delivery_id,
                    notification_id="n-1",
                    recipient_id="stf-1",
                    channel="SMS",
                    attempt=1,
                    status=status,
                    rank=rank,
                    reason="initial",
                    created_at=1.0,
                    updated_at=1.0,
                )
            )
    store.close()
    store = notify_store.Store(url)
    try:
        assert store.incident_mark("inc-1") == ("LOCKDOWN", 2, "n-1", ["staff:s"])  # data kept
        assert version_rows(url, "notify_alembic_version") == ["0002"]
        with store._engine.connect() as conn:
            query = select(store.deliveries.c.delivery_id, store.deliveries.c.rank)
            ranks = {str(d): int(r) for d, r in conn.execute(query)}
        assert ranks == {"d-failed": 2, "d-ok": 3}
        store.record_statuses(
            [
                notify_store.StatusChange("d-failed", "DELIVERED"),  # a late carrier receipt
                notify_store.StatusChange("d-ok", "FAILED"),  # a late bounce
            ],
            [],
        )
        assert [store.delivery(d).status for d in ("d-failed", "d-ok")] == [  # type: ignore[union-attr]
            "DELIVERED",
            "DELIVERED",
        ]
    finally:
        store.close()


def test_a_ledger_file_made_by_create_all_is_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger(url)
    ledger.record_decision("inc-1", 1, "exercise")
    with ledger._engine.begin() as conn:
        conn.execute(text("DROP TABLE psap_cad_alembic_version"))
    ledger.close()
    with Ledger(url) as reopened:
        assert reopened.decision("inc-1", 1) == "exercise"
    assert version_rows(url, "psap_cad_alembic_version") == ["0001"]
    assert "psap_cad_alembic_version" in inspect(make_engine(url, name="x")).get_table_names()


# -- notify's delivery status order ------------------------------------------------------------


def test_one_status_order_where_delivered_outranks_every_failure() -> None:
    rank = notify_store.RANK
    assert dispatcher.RANK is rank  # one copy: the dispatcher's check and the store's column
    assert rank["QUEUED"] < rank["SENT"] < rank["FAILED"] < rank["DELIVERED"]
    assert rank["FAILED"] == rank["REJECTED"] == rank["EXPIRED"]  # the first failure stays
    assert max(rank, key=rank.__getitem__) == "DELIVERED"
