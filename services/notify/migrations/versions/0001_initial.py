"""Notify store: notifications, recipients, deliveries, incident marks, held, CAP, outbox.

The tables as ``create_all`` made them before the store had migrations (a file made then is
stamped at this revision). Every name carries the store's table prefix (``notify_``).

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

TABLES = (
    "notifications",
    "recipients",
    "deliveries",
    "incident_marks",
    "held",
    "cap_alerts",
    "outbox",
)


def upgrade() -> None:
    """Create the tables and their indexes."""
    p = migration_option("table_prefix", "notify_")
    op.create_table(
        f"{p}notifications",
        sa.Column("notification_id", sa.String(200), primary_key=True),
        sa.Column("request_event_id", sa.String(100), nullable=False),
        sa.Column("incident_id", sa.String(200), index=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("school_id", sa.String(200), nullable=False),
        sa.Column("building", sa.String(100)),
        sa.Column("srp_action", sa.String(40)),
        sa.Column("priority", sa.String(40), nullable=False),
        sa.Column("exercise", sa.Boolean, nullable=False),
        sa.Column("require_ack", sa.Boolean, nullable=False),
        sa.Column("headline", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("audiences", sa.Text, nullable=False),
        sa.Column("cap_identifier", sa.String(300)),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        f"{p}recipients",
        sa.Column("notification_id", sa.String(200), primary_key=True),
        sa.Column("recipient_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("channels", sa.Text, nullable=False),
        sa.Column("acked_at", sa.Double),
        sa.Column("ack_channel", sa.String(40)),
        sa.Column("ack_response", sa.String(40)),
        sa.Column("escalation_level", sa.Integer, nullable=False),
        sa.Column("next_escalation_at", sa.Double),
        sa.Index(f"{p}recipients_due", "next_escalation_at"),
    )
    op.create_table(
        f"{p}deliveries",
        sa.Column("delivery_id", sa.String(100), primary_key=True),
        sa.Column("notification_id", sa.String(200), nullable=False),
        sa.Column("recipient_id", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("provider_message_id", sa.String(200), index=True),
        sa.Column("error", sa.Text),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Index(f"{p}deliveries_by_recipient", "notification_id", "recipient_id"),
        sa.Index(f"{p}deliveries_by_status", "status"),
    )
    op.create_table(
        f"{p}incident_marks",
        sa.Column("incident_id", sa.String(200), primary_key=True),
        sa.Column("srp_action", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("notification_id", sa.String(200), nullable=False),
        sa.Column("audiences", sa.Text, nullable=False),
    )
    op.create_table(
        f"{p}held",
        sa.Column("notification_id", sa.String(200), primary_key=True),
        sa.Column("incident_id", sa.String(200), index=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("school_id", sa.String(200), nullable=False, index=True),
        sa.Column("srp_action", sa.String(40)),
        sa.Column("priority", sa.String(40), nullable=False),
        sa.Column("headline", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("audiences", sa.Text, nullable=False),
        sa.Column("causation_id", sa.String(100)),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(200)),
        sa.Column("decided_at", sa.Double),
        sa.Column("decision_event_id", sa.String(100)),
        sa.Column("note", sa.Text),
        sa.Column("released_headline", sa.Text),
        sa.Column("released_body", sa.Text),
    )
    op.create_table(
        f"{p}cap_alerts",
        sa.Column("identifier", sa.String(300), primary_key=True),
        sa.Column("notification_id", sa.String(200), nullable=False, index=True),
        sa.Column("school_id", sa.String(200), nullable=False),
        sa.Column("msg_type", sa.String(20), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("headline", sa.Text, nullable=False),
        sa.Column("xml", sa.Text, nullable=False),
        sa.Column("sent_at", sa.Double, nullable=False, index=True),
        sa.Column("posted", sa.Boolean, nullable=False),
    )
    op.create_table(
        f"{p}outbox",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop everything (undelivered outbox events and the escalation schedule with it)."""
    p = migration_option("table_prefix", "notify_")
    for table in reversed(TABLES):
        op.drop_table(f"{p}{table}")
