"""Shared fixtures: a migrated database (SQLite or PostgreSQL) and a real Redis.

The backend is chosen with TEST_DATABASE=sqlite|postgresql (`.ci/run` runs the suite with
both). PostgreSQL and Redis are real services on loopback; when one is missing the tests
that need it fail with the connection error: they never skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from campaigns import migrate
from campaigns.db import make_engine
from campaigns.models import Base

BACKEND = os.environ.get("TEST_DATABASE", "sqlite")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def pytest_report_header() -> str:
    return f"database backend: {BACKEND}; redis: {REDIS_URL}"


@pytest.fixture(scope="session")
def _migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head once per session (a file for SQLite, a DB for PG)."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("db") / "template.db"
        url = f"sqlite:///{path}"
        migrate.upgrade(url)
        yield url
        return
    if BACKEND != "postgresql":
        raise RuntimeError(f"TEST_DATABASE must be sqlite or postgresql, not {BACKEND!r}")
    name = f"campaigns_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(_migrated_template: str, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database for one test; emptied again afterwards."""
    if BACKEND == "sqlite":
        source = Path(make_url(_migrated_template).database or "")
        target = tmp_path / "campaigns.db"
        shutil.copyfile(source, target)
        yield f"sqlite:///{target}"
        return
    yield _migrated_template
    engine = make_engine(_migrated_template)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis database, flushed before and after the test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()
