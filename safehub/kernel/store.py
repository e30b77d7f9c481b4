"""Persistence, once for every store: engine, dialect upsert, error wrapping, migrations.

Each deployable that keeps state (notify's delivery store, psap_cad's ledger, the timeline)
opens its database through :func:`make_engine` (SQLite file by default, PostgreSQL by URL,
nothing else), writes ``INSERT … ON CONFLICT`` through :func:`insert_for` / :func:`upsert`
(both dialects spell it the same way in SQLAlchemy, through different classes), wraps
SQLAlchemy's errors into its own :class:`StoreError` subclass with :func:`wrap_errors`, and
gets its schema from its own alembic migrations through :func:`migrate` — one strategy for all
of them, never ``create_all``.

A store's migrations folder holds ``env.py`` (two lines: :func:`run_migrations`),
``script.py.mako`` and ``versions/``. Revisions read the store's options (a table prefix)
with :func:`migration_option`. Each store keeps its own version table, so stores sharing one
PostgreSQL database never see each other's revisions.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, Table, create_engine, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from safehub.kernel.errors import ConfigError, SafeHubError

#: The back ends a store may use (URL scheme → SQLAlchemy dialect).
DIALECTS = ("sqlite", "postgresql")
#: How long a SQLite connection waits for another writer's lock before failing (ms).
BUSY_TIMEOUT_MS = 30_000


class StoreError(SafeHubError):
    """A store could not be opened, migrated, read or written (the message names the store).

    Each store subclasses it and sets :attr:`store`, the name its messages start with.
    """

    store: ClassVar[str] = "store"


# -- engine -------------------------------------------------------------------------------


def make_engine(
    url: str | URL,
    *,
    name: str,
    pool_size: int = 5,
    begin_immediate: bool = False,
) -> Engine:
    """An engine for a store's database URL (``name`` appears in every error message).

    SQLite: the parent folder is created; every connection gets WAL (readers never block the
    writer), ``synchronous=NORMAL`` (a committed transaction survives a process crash, not a
    power cut, without an fsync per commit), a busy timeout and foreign keys; connections are
    shared between threads. ``begin_immediate`` makes every transaction take the write lock
    at BEGIN (a read-then-write transaction never meets ``SQLITE_BUSY`` halfway); PostgreSQL
    ignores it. PostgreSQL (``postgresql+psycopg://``): connections are pinged on checkout (a
    server drops idle ones). Any other back end is a :class:`ConfigError`.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"{name} database URL is invalid: {type(exc).__name__}") from exc
    dialect = parsed.get_backend_name()
    if dialect not in DIALECTS:
        raise ConfigError(f"{name} database backend {dialect!r} is not supported")
    if dialect == "postgresql":
        return create_engine(parsed, pool_size=pool_size, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:":
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{name} database folder cannot be created: {type(exc).__name__}"
            ) from exc
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        pool_size=pool_size,
    )
    event.listen(engine, "connect", _sqlite_immediate if begin_immediate else _sqlite_pragmas)
    if begin_immediate:
        event.listen(engine, "begin", _begin_immediate)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_immediate(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    dbapi_connection.isolation_level = None  # the driver must not BEGIN on its own


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# -- dialect upsert -----------------------------------------------------------------------


def _dialect_name(bind: Engine | Connection | str) -> str:
    return bind if isinstance(bind, str) else bind.dialect.name


def insert_for(bind: Engine | Connection | str) -> Callable[[Table], Any]:
    """The ``insert`` of ``bind``'s dialect: its statements have ``on_conflict_do_nothing``,
    ``on_conflict_do_update`` and ``excluded`` (the same spelling on SQLite and PostgreSQL).
    """
    dialect = _dialect_name(bind)
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise ConfigError(f"database backend {dialect!r} is not supported")


def upsert(
    bind: Engine | Connection | str,
    table: Table,
    values: Mapping[str, Any],
    *,
    keys: Collection[str],
    update: Mapping[str, Any] | None = None,
    where: Any = None,
) -> Any:
    """``INSERT values … ON CONFLICT (keys) DO UPDATE SET update [WHERE where]``.

    ``update`` defaults to every value that is not a key; ``where`` (optional) decides, on a
    conflict, whether the stored row is replaced (e.g. only by a newer version).
    """
    statement = insert_for(bind)(table).values(**values)
    changes = (
        dict(update) if update is not None else {k: v for k, v in values.items() if k not in keys}
    )
    return statement.on_conflict_do_update(index_elements=list(keys), set_=changes, where=where)


def insert_or_ignore(
    bind: Engine | Connection | str, table: Table, *, keys: Collection[str]
) -> Any:
    """``INSERT … ON CONFLICT (keys) DO NOTHING`` (values given to ``execute`` or ``values``)."""
    return insert_for(bind)(table).on_conflict_do_nothing(index_elements=list(keys))


# -- errors -------------------------------------------------------------------------------


@contextmanager
def wrap_errors(error: type[StoreError], doing: str) -> Iterator[None]:
    """Re-raise a SQLAlchemy error inside the block as ``error`` (``raise … from``).

    The message is ``"<store>: <doing>: <exception class>"``: it names the store and the
    operation, never the SQL or its parameters (they can hold event data). Also a decorator:
    ``@wrap_errors(LedgerError, "cannot read")``.
    """
    try:
        yield
    except SQLAlchemyError as exc:
        raise error(f"{error.store}: {doing}: {type(exc).__name__}") from exc


# -- migrations ---------------------------------------------------------------------------


def migrate(
    engine: Engine,
    migrations: Path,
    *,
    error: type[StoreError] = StoreError,
    table_prefix: str = "",
    adopt: Collection[str] = (),
) -> None:
    """Bring the store's schema to the newest revision in ``migrations`` (idempotent).

    One transaction (on PostgreSQL behind an advisory lock named by the version table, so two
    replicas starting together do not both create the tables). ``table_prefix`` is the store's
    (its revisions read it with ``migration_option("table_prefix")``) and names its version
    table, ``<prefix>alembic_version``. ``adopt``: the tables ``create_all`` made before the
    store had migrations; a database holding all of them but no version table is stamped at
    the first revision (which must create exactly those tables), then upgraded.
    """
    config = Config()
    config.set_main_option("script_location", str(migrations).replace("%", "%%"))
    version_table = f"{table_prefix}alembic_version"
    config.attributes["version_table"] = version_table
    config.attributes["options"] = {"table_prefix": table_prefix}
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                key = zlib.crc32(f"safehub-migrate:{version_table}".encode())
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            config.attributes["connection"] = conn
            inspector = inspect(conn)
            if (
                adopt
                and not inspector.has_table(version_table)
                and all(inspector.has_table(t) for t in adopt)
            ):
                command.stamp(config, _first_revision(config))
            command.upgrade(config, "head")
    except (SQLAlchemyError, CommandError) as exc:
        raise error(f"{error.store}: cannot migrate: {type(exc).__name__}") from exc


def _first_revision(config: Config) -> str:
    bases = ScriptDirectory.from_config(config).get_bases()
    if len(bases) != 1:
        raise CommandError(f"expected one first revision, found {len(bases)}")
    return bases[0]


def run_migrations() -> None:
    """The body of every store's ``env.py``: run on the connection :func:`migrate` passes."""
    from alembic import context

    attributes = context.config.attributes
    connection = attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("store migrations run through safehub.kernel.store.migrate")
    context.configure(
        connection=connection,
        version_table=attributes.get("version_table", "alembic_version"),
        render_as_batch=True,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


def migration_option(name: str, default: str = "") -> str:
    """An option given to :func:`migrate`; a revision reads ``migration_option("table_prefix")``."""
    from alembic import context

    options: Mapping[str, str] = context.config.attributes.get("options", {})
    return str(options.get(name, default))
