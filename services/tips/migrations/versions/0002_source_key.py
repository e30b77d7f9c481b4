"""Tips store: each tip's pseudonymous source (rate limits and flood detection).

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


def upgrade() -> None:
    """Add ``source_key`` (an HMAC of where a tip came from, never the source itself)."""
    p = migration_option("table_prefix", "tips_")
    op.add_column(f"{p}tips", sa.Column("source_key", sa.String(100)))
    op.create_index(f"ix_{p}tips_source_key", f"{p}tips", ["source_key"])


def downgrade() -> None:
    """Drop it."""
    p = migration_option("table_prefix", "tips_")
    op.drop_index(f"ix_{p}tips_source_key", f"{p}tips")
    op.drop_column(f"{p}tips", "source_key")
