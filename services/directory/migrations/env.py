"""Alembic environment of the directory store: see :func:`safehub.kernel.store.migrate`."""

from safehub.kernel.store import run_migrations

run_migrations()
