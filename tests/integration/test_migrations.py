"""Migrations are the only schema source: upgrade, no drift, downgrade, upgrade again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from campaigns import migrate
from campaigns.db import make_engine
from campaigns.errors import SchemaError
from campaigns.models import Base
from tests.conftest import BACKEND, POSTGRES_URL


@pytest.fixture
def empty_database(tmp_path: Path) -> Iterator[str]:
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"campaigns_mig_{uuid.uuid4().hex[:8]}"
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_check_downgrade_upgrade(empty_database: str) -> None:
    expected = {t.name for t in Base.metadata.sorted_tables}
    migrate.upgrade(empty_database)
    assert _tables(empty_database) == expected
    # `alembic check`: raises if the models and the migrated schema differ.
    command.check(migrate.alembic_config(empty_database))
    migrate.downgrade(empty_database, "base")
    assert _tables(empty_database) == set()
    migrate.upgrade(empty_database)
    assert _tables(empty_database) == expected
    assert migrate.current_revision(empty_database) == migrate.head_revision(empty_database)


def test_ensure_schema_upgrades_sqlite_and_refuses_a_postgresql_behind(
    empty_database: str,
) -> None:
    if BACKEND == "sqlite":
        migrate.ensure_schema(empty_database)
        assert _tables(empty_database) == {t.name for t in Base.metadata.sorted_tables}
    else:
        with pytest.raises(SchemaError, match="campaign db upgrade"):
            migrate.ensure_schema(empty_database)
        assert _tables(empty_database) == set()
