"""sis_roster state: one lease per source (a CLI import and a scheduled sync never overlap),
and when each REST source's last full sync finished.

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
    """Add the leases table and ``syncs.full_at``."""
    p = migration_option("table_prefix", "sis_roster_")
    op.create_table(
        f"{p}leases",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("since", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    op.add_column(f"{p}syncs", sa.Column("full_at", _TS))


def downgrade() -> None:
    """Drop them."""
    p = migration_option("table_prefix", "sis_roster_")
    with op.batch_alter_table(f"{p}syncs") as batch:
        batch.drop_column("full_at")
    op.drop_table(f"{p}leases")
