"""sis_roster state: what each source last applied, its people, import progress, syncs.

Every name carries the state's table prefix (``sis_roster_``).

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
TABLES = ("records", "people", "progress", "syncs")


def upgrade() -> None:
    """Create the tables."""
    p = migration_option("table_prefix", "sis_roster_")
    op.create_table(
        f"{p}records",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("entity", sa.String(40), primary_key=True),
        sa.Column("sourced_id", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(40), nullable=False),
        sa.Column("seen", sa.String(80)),
        sa.Column("person_id", sa.String(255)),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        f"{p}people",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("person_id", sa.String(255), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("published_version", sa.BigInteger, nullable=False),
        sa.Column("published_digest", sa.String(40)),
    )
    op.create_table(
        f"{p}progress",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("fingerprint", sa.String(80), primary_key=True),
        sa.Column("position", sa.Text, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        f"{p}syncs",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("high_water", _TS),
        sa.Column("finished_at", _TS, nullable=False),
    )


def downgrade() -> None:
    """Drop everything (the next import starts from scratch)."""
    p = migration_option("table_prefix", "sis_roster_")
    for table in reversed(TABLES):
        op.drop_table(f"{p}{table}")
