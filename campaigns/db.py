"""Engines and session factories. Nothing is created at import time.

One `DATABASE_URL` serves both the synchronous engine (migrations, bulk import and export,
which use COPY on PostgreSQL) and the asyncio engine (workers, ingester): the driver is
chosen here, psycopg 3 for PostgreSQL (sync and async) and sqlite3 / aiosqlite for SQLite.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker


def _url(database_url: str, *, asynchronous: bool) -> URL:
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite" if asynchronous else "sqlite")
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


def is_sqlite(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, foreign_keys: bool = True) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_pragmas_without_foreign_keys(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record, foreign_keys=False)
    # The driver commits DDL as it goes; with its own transaction handling off and a BEGIN
    # at each SQLAlchemy begin, a migration is one transaction that a failure undoes.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def make_engine(database_url: str, *, migrating: bool = False, **kwargs: Any) -> Engine:
    """A synchronous engine (migrations, bulk import/export).

    `migrating`: on SQLite, foreign keys are not enforced on its connections, and each
    transaction (DDL included) is a real one. Rebuilding a table that others reference (how
    SQLite alters a table) would otherwise cascade the DROP of the old copy into the
    referencing rows; the migration checks the keys itself before it commits (SQLite's
    documented procedure for such schema changes)."""
    url = _url(database_url, asynchronous=False)
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        if migrating:
            event.listen(engine, "connect", _sqlite_pragmas_without_foreign_keys)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_async_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    """An asyncio engine (workers, webhook ingester, CLI queries)."""
    url = _url(database_url, asynchronous=True)
    if url.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
        kwargs.setdefault("pool_pre_ping", True)
        # Sessions in UTC: psycopg then returns `datetime.UTC` itself as the tzinfo, and
        # reading a timestamp needs no conversion (hot in the event applier). Added to
        # any `options` the URL gives (connect_args would replace them).
        given = url.query.get("options")
        given = given if isinstance(given, str) else " ".join(given or ())
        options = f"{given} -c TimeZone=UTC".strip()
        kwargs.setdefault("connect_args", {"options": options})
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
