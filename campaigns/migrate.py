"""Running Alembic from code: `campaign db upgrade`, and the schema check every command makes.

On the embedded SQLite default a command applies pending migrations itself; on PostgreSQL a
database that is behind is refused with a clear message (an operator runs `campaign db
upgrade` on purpose, once, before the new workers start).

The check loads Alembic only when the schema is not at head: a database at head is told
by its `alembic_version` row and the revision ids written in migrations/versions
(`_quick_head`), which spares every command loading Alembic (about 0.1 s of start-up).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from campaigns.db import is_sqlite, make_engine
from campaigns.errors import SchemaError, first_line

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "migrations" / "versions"
_REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN = re.compile(
    r"^down_revision(?:\s*:[^=]+)?\s*=\s*(?:[\"']([^\"']+)[\"']|None)\s*$", re.MULTILINE
)


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    return cfg


def head_revision(database_url: str) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        # the driver's own error (SQLAlchemy's wrapper adds the statement and a link)
        driver = getattr(exc, "orig", None) or exc
        raise SchemaError(f"cannot reach the database: {first_line(driver)}") from exc
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(database_url), revision)


def _quick_head() -> str | None:
    """The head revision as the migration files write it (`revision = "..."`, each with
    its `down_revision`), without loading Alembic; None unless that gives exactly one head
    (Alembic then decides)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision, down = _REVISION.findall(source), _DOWN.findall(source)
        if len(revision) != 1 or len(down) != 1:
            return None
        revisions.add(revision[0])
        if down[0]:
            downs.add(down[0])
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def _at_quick_head(database_url: str) -> bool:
    """The database's one `alembic_version` row names the head (False whenever unsure:
    no such table, several rows, an unreachable database; the full check follows)."""
    head = _quick_head()
    if head is None:
        return False
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()
    return [row[0] for row in rows] == [head]


def ensure_schema(database_url: str) -> None:
    """Make sure the schema is at head: upgrade SQLite, refuse a PostgreSQL that is behind."""
    if _at_quick_head(database_url):
        return
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
