"""Alembic environment of the timeline store: see :func:`safehub.kernel.store.migrate`."""

from safehub.kernel.store import run_migrations

run_migrations()
