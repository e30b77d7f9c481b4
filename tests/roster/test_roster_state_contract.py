"""The sis_roster sync state keeps the store contract (tests/support/store_contract) on SQLite
and PostgreSQL: its migrations (to the head, 0003: leases and their holder's process) build
exactly the tables :class:`RosterState` declares, twice over without harm."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from connectors.sis_roster.state import RosterState, StateError
from tests.support.store_contract import StoreContract


class TestRosterState(StoreContract):
    name = "sis_roster state"
    error = StateError
    head = "0003"

    @pytest.fixture(autouse=True)
    def _prefix(self) -> None:
        # Tables of its own in the shared PostgreSQL database.
        self.prefix = f"t{uuid.uuid4().hex[:8]}_"

    @property
    def version_table(self) -> str:  # type: ignore[override]
        return f"{self.prefix}alembic_version"

    def open(self, url: str) -> Any:
        return RosterState(url, table_prefix=self.prefix)

    def engine_of(self, store: Any) -> Engine:
        engine: Engine = store._engine
        return engine

    def metadata_of(self, store: Any) -> MetaData:
        metadata: MetaData = store.records.metadata
        return metadata
