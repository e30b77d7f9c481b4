"""Alembic environment of the sis_roster state: see :func:`safehub.kernel.store.migrate`."""

from safehub.kernel.store import run_migrations

run_migrations()
