"""Running Alembic from code: `campaign db upgrade`, and the schema check every command makes.

On the embedded SQLite default a command applies pending migrations itself; on PostgreSQL a
database that is behind is refused with a clear message (an operator runs `campaign db
upgrade` on purpose, once, before the new workers start).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from campaigns.db import is_sqlite, make_engine
from campaigns.errors import SchemaError

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    return cfg


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def current_revision(database_url: str) -> str | None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise SchemaError(f"cannot reach the database: {exc.__class__.__name__}: {exc}") from exc
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def ensure_schema(database_url: str) -> None:
    """Make sure the schema is at head: upgrade SQLite, refuse a PostgreSQL that is behind."""
    current = current_revision(database_url)
    head = head_revision(database_url)
    if current == head:
        return
    if is_sqlite(database_url):
        upgrade(database_url)
        return
    raise SchemaError(
        f"the database schema is at {current or 'nothing'} but this version needs {head}: "
        "run `campaign db upgrade` first"
    )
