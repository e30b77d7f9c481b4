"""Delivery ranks follow the one status order: DELIVERED (3) above every failure (2).

Before, the store ranked FAILED/REJECTED/EXPIRED 3 and DELIVERED 2 (a late FAILED could
overwrite a DELIVERED) while the dispatcher held them equal; ``services.notify.store.RANK`` is
now the only order. Stored rows get the rank of their status under it (values frozen here).

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

_RANKS = {"QUEUED": 0, "SENT": 1, "FAILED": 2, "REJECTED": 2, "EXPIRED": 2, "DELIVERED": 3}
_OLD = {"QUEUED": 0, "SENT": 1, "DELIVERED": 2, "FAILED": 3, "REJECTED": 3, "EXPIRED": 3}


def _rerank(ranks: dict[str, int]) -> None:
    p = migration_option("table_prefix", "notify_")
    deliveries = sa.table(f"{p}deliveries", sa.column("status"), sa.column("rank"))
    op.execute(
        deliveries.update().values(
            rank=sa.case(
                *((deliveries.c.status == status, rank) for status, rank in ranks.items()),
                else_=0,
            )
        )
    )


def upgrade() -> None:
    """Re-rank every stored delivery by its status."""
    _rerank(_RANKS)


def downgrade() -> None:
    """The ranks of the old store order."""
    _rerank(_OLD)
