"""Alembic environment of the tips store: see :func:`safehub.kernel.store.migrate`."""

from safehub.kernel.store import run_migrations

run_migrations()
