"""Tips store: tips, messages, attachments, escalations, outbox.

Every name carries the store's table prefix (``tips_``).

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


def upgrade() -> None:
    """Create the tables and their indexes."""
    p = migration_option("table_prefix", "tips_")
    op.create_table(
        f"{p}tips",
        sa.Column("tip_id", sa.String(64), primary_key=True),
        sa.Column("code", sa.String(32), nullable=False, unique=True),
        sa.Column("passcode_hash", sa.String(300), nullable=False),
        sa.Column("client_key", sa.String(300), unique=True),
        sa.Column("school_id", sa.String(200), nullable=False, index=True),
        sa.Column("district_id", sa.String(200), nullable=False, index=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("category", sa.String(40), nullable=False),
        sa.Column("language", sa.String(10), nullable=False),
        sa.Column("life_safety", sa.Boolean, nullable=False),
        sa.Column("imminent", sa.Boolean, nullable=False),
        sa.Column("anonymous", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("disposition", sa.String(40)),
        sa.Column("assigned_to", sa.String(200)),
        sa.Column("primary_tip_id", sa.String(64), index=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("subject_ids", sa.Text, nullable=False),
        sa.Column("sealed_identity", sa.LargeBinary),
        sa.Column("contact_key", sa.String(100), index=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("first_human_at", sa.Double),
        sa.Column("closed_at", sa.Double),
        sa.Column("assign_by", sa.Double),
        sa.Column("overdue_notified", sa.Boolean, nullable=False),
    )
    op.create_table(
        f"{p}messages",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("tip_id", sa.String(64), nullable=False, index=True),
        sa.Column("author", sa.String(10), nullable=False),
        sa.Column("analyst_id", sa.String(200)),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        f"{p}attachments",
        sa.Column("attachment_id", sa.String(64), primary_key=True),
        sa.Column("tip_id", sa.String(64), nullable=False, index=True),
        sa.Column("mime", sa.String(40), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("original_sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        f"{p}escalations",
        sa.Column("tip_id", sa.String(64), primary_key=True),
        sa.Column("chain", sa.Text, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("notification_id", sa.String(200), nullable=False),
        sa.Column("deadline_at", sa.Double, nullable=False, index=True),
        sa.Column("acked_by", sa.String(200)),
        sa.Column("acked_at", sa.Double),
        sa.Column("exhausted", sa.Boolean, nullable=False),
    )
    op.create_table(
        f"{p}outbox",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop the tables."""
    p = migration_option("table_prefix", "tips_")
    for name in ("outbox", "escalations", "attachments", "messages", "tips"):
        op.drop_table(f"{p}{name}")
