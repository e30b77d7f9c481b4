"""Timeline store: entries (hash-chained per subject), subjects, pending signals, claims, spans.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables and the indexes the queries use."""
    op.create_table(
        "entries",
        sa.Column("subject_id", sa.String(200), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("subject_kind", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(100), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("occurred_at", _TS, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.Column("state", sa.String(100), nullable=False),
        sa.Column("district", sa.String(200), nullable=False),
        sa.Column("school", sa.String(200)),
        sa.Column("building", sa.String(200)),
        sa.Column("room", sa.String(200)),
        sa.Column("exercise", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("actor", sa.String(200)),
        sa.Column("lane", sa.String(40), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("classification", sa.Text, nullable=False),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        # A redelivered event is a no-op: one entry per (subject, event).
        sa.UniqueConstraint("subject_id", "event_id", name="uq_entries_subject_event"),
    )
    op.create_index("ix_entries_trace", "entries", ["trace_id"])
    op.create_index("ix_entries_subject_type", "entries", ["subject_id", "event_type"])
    op.create_table(
        "subjects",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(100), nullable=False),
        sa.Column("district", sa.String(200), nullable=False),
        sa.Column("school", sa.String(200)),
        sa.Column("building", sa.String(200)),
        sa.Column("room", sa.String(200)),
        sa.Column("type", sa.String(100)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("incident_state", sa.String(40)),
        sa.Column("srp_action", sa.String(40)),
        sa.Column("cad_status", sa.String(40)),
        sa.Column("summary", sa.Text),
        sa.Column("exercise", sa.Boolean, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("opened_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("entry_count", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_subjects_opened", "subjects", ["opened_at", "id"])
    op.create_index("ix_subjects_district_opened", "subjects", ["district", "opened_at", "id"])
    op.create_table(
        "pending",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("draft", sa.Text, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
    )
    op.create_index("ix_pending_received", "pending", ["received_at"])
    op.create_table(
        "claims",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("subject_id", sa.String(200), primary_key=True),
        sa.Column("subject_kind", sa.String(16), nullable=False),
        sa.Column("claimed_at", _TS, nullable=False),
    )
    op.create_index("ix_claims_claimed", "claims", ["claimed_at"])
    op.create_table(
        "spans",
        sa.Column("trace_id", sa.String(32), primary_key=True),
        sa.Column("span_id", sa.String(16), primary_key=True),
        sa.Column("parent_span_id", sa.String(16)),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("service", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("start_ns", sa.BigInteger, nullable=False),
        sa.Column("end_ns", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
    )


def downgrade() -> None:
    """Drop everything (the store is rebuilt from the topics only while they retain data)."""
    for table in ("spans", "claims", "pending", "subjects", "entries"):
        op.drop_table(table)
