"""What every store on the kernel's persistence must do, on SQLite and on PostgreSQL.

A new store (the tips inbox, the case file, the directory) inherits :class:`StoreContract`
and says how to open it on a database URL, its version table, its head revision, its
metadata and its error class; it then gets these tests on both back ends (the
``database_url`` fixture is parametrised over SQLite and the PostgreSQL running here).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Engine

from safehub.kernel.errors import SafeHubError
from safehub.kernel.store import StoreError, make_engine


def versions(url: str, table: str) -> list[str]:
    """The revisions recorded in one alembic version table."""
    engine = make_engine(url, name="test store")
    try:
        with engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(text(f'SELECT version_num FROM "{table}"'))]
    finally:
        engine.dispose()


class StoreContract(ABC):
    """Inherit, set the class attributes and implement ``database`` and ``open``."""

    name: str  # how its errors name it ("notify store", "psap_cad ledger", "timeline")
    error: type[StoreError]
    head: str  # the newest migration revision
    version_table: str

    @contextmanager
    def database(self, database_url: str) -> Iterator[str]:
        """A URL where this store can be created afresh (default: the fixture's own)."""
        yield database_url

    @abstractmethod
    def open(self, url: str) -> Any:
        """Open (and migrate) the store on ``url``; the result has ``close()``."""

    @abstractmethod
    def engine_of(self, store: Any) -> Engine:
        """The store's engine."""

    @abstractmethod
    def metadata_of(self, store: Any) -> MetaData:
        """The tables the store declares."""

    def test_its_errors_are_kernel_store_errors(self) -> None:
        assert issubclass(self.error, StoreError) and issubclass(self.error, SafeHubError)

    def test_migrations_are_idempotent(self, database_url: str) -> None:
        with self.database(database_url) as url:
            for _ in range(2):
                self.open(url).close()
            # Each store keeps its own version table (stores may share one database).
            assert versions(url, self.version_table) == [self.head]

    def test_migrated_tables_are_exactly_the_tables_it_declares(self, database_url: str) -> None:
        with self.database(database_url) as url:
            store = self.open(url)
            try:
                metadata = self.metadata_of(store)
                with self.engine_of(store).connect() as conn:
                    context = MigrationContext.configure(
                        conn,
                        opts={
                            "compare_type": True,
                            "include_name": lambda name, type_, _parent: (
                                type_ != "table" or name in metadata.tables
                            ),
                        },
                    )
                    assert compare_metadata(context, metadata) == []
            finally:
                store.close()

    def test_a_database_newer_than_the_code_is_refused_naming_the_store(
        self, database_url: str
    ) -> None:
        with self.database(database_url) as url:
            self.open(url).close()
            engine = make_engine(url, name="test store")
            with engine.begin() as conn:
                conn.execute(text(f"UPDATE \"{self.version_table}\" SET version_num = '9999'"))
            engine.dispose()
            with pytest.raises(self.error, match=rf"^{self.name}: cannot migrate: CommandError$"):
                self.open(url)
