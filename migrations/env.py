"""Alembic environment: runs migrations with the project's own engine factory."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from campaigns.config import Settings
from campaigns.db import make_engine
from campaigns.errors import SchemaError
from campaigns.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    # `campaigns.migrate` passes the URL explicitly; the alembic CLI reads DATABASE_URL.
    url = config.attributes.get("database_url")
    if isinstance(url, str):
        return url
    return Settings.from_env(os.environ).database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_database_url(), migrating=True)
    try:
        with engine.connect() as conn:
            context.configure(
                connection=conn,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
                # SQLite's DDL is transactional once its driver leaves the transactions to
                # SQLAlchemy (`make_engine(migrating=True)`): all the migrations of one
                # run are one transaction there too.
                transactional_ddl=True,
            )
            with context.begin_transaction():
                broken = _broken_sqlite_foreign_keys(conn)
                context.run_migrations()
                _check_sqlite_foreign_keys(conn, broken)
    finally:
        engine.dispose()


def _broken_sqlite_foreign_keys(conn: Connection) -> set[tuple[object, ...]]:
    if conn.dialect.name != "sqlite":
        return set()
    return {tuple(row) for row in conn.exec_driver_sql("PRAGMA foreign_key_check")}


def _check_sqlite_foreign_keys(conn: Connection, before: set[tuple[object, ...]]) -> None:
    """SQLite migrates with foreign keys off (see `make_engine`): refuse (roll back) a
    schema change that left a row pointing at nothing that did not before."""
    new = _broken_sqlite_foreign_keys(conn) - before
    if new:
        table, rowid, parent, _ = sorted(new, key=str)[0]
        raise SchemaError(
            f"the migration would leave {len(new)} row(s) pointing at nothing "
            f"(e.g. {table} row {rowid} -> {parent}); nothing was changed"
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
