"""Alembic environment of the psap_cad ledger: see :func:`safehub.kernel.store.migrate`."""

from safehub.kernel.store import run_migrations

run_migrations()
