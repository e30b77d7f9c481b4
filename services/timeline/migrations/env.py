"""Alembic environment of the timeline store: runs on the connection the store passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("timeline migrations run through services.timeline.store.Store.migrate")
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
