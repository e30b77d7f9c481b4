"""sis_roster state: a lease names its holder's host and process id, so a run on that host
can take over at once from a holder that died (rather than wait for the lease to expire).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from safehub.kernel.store import migration_option

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``leases.host`` and ``leases.pid`` (null: a holder that gave neither)."""
    p = migration_option("table_prefix", "sis_roster_")
    op.add_column(f"{p}leases", sa.Column("host", sa.String(255)))
    op.add_column(f"{p}leases", sa.Column("pid", sa.Integer))


def downgrade() -> None:
    """Drop them."""
    p = migration_option("table_prefix", "sis_roster_")
    with op.batch_alter_table(f"{p}leases") as batch:
        batch.drop_column("pid")
        batch.drop_column("host")
