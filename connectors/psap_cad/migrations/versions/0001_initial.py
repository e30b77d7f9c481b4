"""psap_cad ledger: incidents sent to CAD, decisions, signals, inbound CAD updates, outbox.

The tables as ``create_all`` made them before the ledger had migrations (a file made then is
stamped at this revision). Every name carries the ledger's table prefix (``psap_cad_``).

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
TABLES = ("incidents", "decisions", "signals", "inbound", "outbox")


def upgrade() -> None:
    """Create the tables."""
    p = migration_option("table_prefix", "psap_cad_")
    op.create_table(
        f"{p}incidents",
        sa.Column("incident_id", sa.String(200), primary_key=True),
        sa.Column("psap_id", sa.String(200), nullable=False),
        sa.Column("cad_incident_id", sa.String(200)),
        sa.Column("last_version", sa.BigInteger, nullable=False),
        sa.Column("sent_version", sa.BigInteger, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("snapshot", sa.Text, nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("cad_status", sa.String(40)),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        f"{p}decisions",
        sa.Column("incident_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("decision", sa.String(40), nullable=False),
        sa.Column("eido_id", sa.String(300)),
        sa.Column("cad_incident_id", sa.String(200)),
        sa.Column("decided_at", _TS, nullable=False),
    )
    op.create_table(
        f"{p}signals",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("facts", sa.Text, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
    )
    op.create_table(
        f"{p}inbound",
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("incident_id", sa.String(200), nullable=False),
        sa.Column("cad_incident_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
    )
    op.create_table(
        f"{p}outbox",
        sa.Column("incident_id", sa.String(200), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("psap_id", sa.String(200), nullable=False),
        sa.Column("snapshot", sa.Text, nullable=False),
        sa.Column("causation_id", sa.String(100)),
        sa.Column("trace", sa.Text),
        sa.Column("queued_at", _TS, nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=False),
        sa.Column("claimed_until", _TS, nullable=False),
    )


def downgrade() -> None:
    """Drop everything (undelivered dispatches with it)."""
    p = migration_option("table_prefix", "psap_cad_")
    for table in reversed(TABLES):
        op.drop_table(f"{p}{table}")
