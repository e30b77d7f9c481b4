"""Directory store: entries (the live directory at the newest version), entry_versions.

The places and systems of ``safehub.directory.v1`` (districts, schools, client systems,
reviewers, call trees): ``entries`` holds each entry at the newest version seen (a deletion
stays as a tombstone, so an older upsert redelivered later cannot bring it back),
``entry_versions`` every version as the event carried it (unique per kind, entry and version,
and per event id: a redelivered event is a no-op). Every name carries the store's table
prefix (``directory_``).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from safehub.kernel.store import migration_option

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables."""
    p = migration_option("table_prefix", "directory_")
    op.create_table(
        f"{p}entries",
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("entry_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("change", sa.String(20), nullable=False),
        sa.Column("district_id", sa.String(200)),
        sa.Column("entry", sa.Text),
        sa.Column("changed_by", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
    )
    op.create_index(f"ix_{p}entries_kind_district", f"{p}entries", ["kind", "district_id"])
    op.create_table(
        f"{p}entry_versions",
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("entry_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("change", sa.String(20), nullable=False),
        sa.Column("district_id", sa.String(200)),
        sa.Column("entry", sa.Text),
        sa.Column("changed_by", sa.String(200), nullable=False),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        # A redelivered event is a no-op.
        sa.UniqueConstraint("event_id", name=f"uq_{p}entry_versions_event"),
    )


def downgrade() -> None:
    """Drop the tables."""
    p = migration_option("table_prefix", "directory_")
    op.drop_table(f"{p}entry_versions")
    op.drop_index(f"ix_{p}entries_kind_district", table_name=f"{p}entries")
    op.drop_table(f"{p}entries")
