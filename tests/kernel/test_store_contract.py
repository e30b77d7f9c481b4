"""Every store keeps the store contract on SQLite and PostgreSQL (tests/support/store_contract)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from connectors.psap_cad.ledger import Ledger, LedgerError
from services.notify import store as notify_store
from services.timeline import store as timeline_store
from tests.support.store_contract import StoreContract
from tests.support.timeline import fresh_database


class _Prefixed(StoreContract):
    """Stores that take a table prefix share one database, each test on its own tables."""

    @pytest.fixture(autouse=True)
    def _prefix(self) -> None:
        self.prefix = f"t{uuid.uuid4().hex[:8]}_"

    @property
    def version_table(self) -> str:  # type: ignore[override]
        return f"{self.prefix}alembic_version"


class TestNotifyStore(_Prefixed):
    name = "notify store"
    error = notify_store.StoreError
    head = "0002"

    def open(self, url: str) -> Any:
        return notify_store.Store(url, table_prefix=self.prefix)

    def engine_of(self, store: Any) -> Engine:
        engine: Engine = store._engine
        return engine

    def metadata_of(self, store: Any) -> MetaData:
        metadata: MetaData = store.notifications.metadata
        return metadata


class TestPsapCadLedger(_Prefixed):
    name = "psap_cad ledger"
    error = LedgerError
    head = "0001"

    def open(self, url: str) -> Any:
        return Ledger(url, table_prefix=self.prefix)

    def engine_of(self, store: Any) -> Engine:
        engine: Engine = store._engine
        return engine

    def metadata_of(self, store: Any) -> MetaData:
        metadata: MetaData = store.incidents.metadata
        return metadata


class TestTimelineStore(StoreContract):
    name = "timeline store"
    error = timeline_store.StoreError
    head = "0001"
    version_table = "alembic_version"

    @contextmanager
    def database(self, database_url: str) -> Iterator[str]:
        # The timeline takes no table prefix: a database of its own on PostgreSQL.
        with fresh_database(database_url) as url:
            yield url

    def open(self, url: str) -> Any:
        return timeline_store.Store(url)

    def engine_of(self, store: Any) -> Engine:
        engine: Engine = store.engine
        return engine

    def metadata_of(self, store: Any) -> MetaData:
        return timeline_store.metadata
