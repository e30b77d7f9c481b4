"""Directory store: people (current version), person_versions (history), person_schools.

Every name carries the store's table prefix (``directory_``).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from safehub.kernel.store import migration_option

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables."""
    p = migration_option("table_prefix", "directory_")
    op.create_table(
        f"{p}people",
        sa.Column("person_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("roster_source", sa.String(200), nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("staff_role", sa.String(40)),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        f"{p}person_versions",
        sa.Column("person_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("change", sa.String(20), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("roster_source", sa.String(200), nullable=False),
        sa.Column("school_ids", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        # A redelivered event is a no-op.
        sa.UniqueConstraint("event_id", name=f"uq_{p}person_versions_event"),
    )
    op.create_table(
        f"{p}person_schools",
        sa.Column("school_id", sa.String(200), primary_key=True),
        sa.Column("person_id", sa.String(200), primary_key=True),
    )
    op.create_index(f"ix_{p}person_schools_person", f"{p}person_schools", ["person_id"])


def downgrade() -> None:
    """Drop the tables."""
    p = migration_option("table_prefix", "directory_")
    op.drop_table(f"{p}person_schools")
    op.drop_table(f"{p}person_versions")
    op.drop_table(f"{p}people")
