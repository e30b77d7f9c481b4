"""Tips store: whether a tip not closed within its category's deadline was escalated.

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
    """Add ``close_overdue_notified`` (false for every tip already stored)."""
    p = migration_option("table_prefix", "tips_")
    op.add_column(
        f"{p}tips",
        sa.Column("close_overdue_notified", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    """Drop it."""
    p = migration_option("table_prefix", "tips_")
    op.drop_column(f"{p}tips", "close_overdue_notified")
