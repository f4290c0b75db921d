"""Migrations are the only schema source: upgrade, no drift, downgrade, upgrade again."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from campaigns import migrate
from campaigns.db import make_engine
from campaigns.errors import SchemaError
from campaigns.models import Base, Contact, Recipient
from tests.conftest import BACKEND, POSTGRES_URL
from tests.integration.factories import campaign_toml, create_campaign, make_list, us_numbers


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


def test_the_migration_files_name_the_head_alembic_names(empty_database: str) -> None:
    assert migrate._quick_head() == migrate.head_revision(empty_database)


def test_a_database_at_head_is_checked_without_loading_alembic(empty_database: str) -> None:
    """Every command checks the schema first; at head that must not cost Alembic's import."""
    migrate.upgrade(empty_database)
    code = (
        "import sys\n"
        "from campaigns import migrate\n"
        f"migrate.ensure_schema({empty_database!r})\n"
        "print('alembic' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def test_a_database_one_revision_behind_is_not_taken_for_one_at_head(
    empty_database: str,
) -> None:
    migrate.upgrade(empty_database, "0004")
    assert not migrate._at_quick_head(empty_database)
    if BACKEND == "sqlite":
        migrate.ensure_schema(empty_database)
        assert migrate.current_revision(empty_database) == migrate.head_revision(empty_database)
    else:
        with pytest.raises(SchemaError, match="is at 0004"):
            migrate.ensure_schema(empty_database)


def test_migration_files_that_do_not_give_one_head_leave_the_check_to_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(name: str, revision: str, down: str | None) -> None:
        shown = "None" if down is None else f'"{down}"'
        (tmp_path / name).write_text(
            f'revision: str = "{revision}"\ndown_revision: str | None = {shown}\n'
        )

    monkeypatch.setattr(migrate, "VERSIONS", tmp_path)
    write("a.py", "a", None)
    write("b.py", "b", "a")
    assert migrate._quick_head() == "b"
    write("c.py", "c", "a")  # a branch: two heads
    assert migrate._quick_head() is None
    (tmp_path / "c.py").write_text("revision = make_id()\n")  # not a literal
    assert migrate._quick_head() is None


def _count(url: str, sql: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_a_contact_must_name_an_existing_list_and_leaves_with_it(database_url: str) -> None:
    """contact.list_id has no FOREIGN KEY (0002): its triggers keep the same rule."""
    kept = make_list(database_url, us_numbers(3), name="kept")
    gone = make_list(database_url, us_numbers(2, start=10), name="gone")
    engine = make_engine(database_url)
    try:
        with pytest.raises(IntegrityError, match="no such contact_list"), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO contact (list_id, phone, attributes) "
                    "VALUES (:list_id, '+12025550199', '{}')"
                ),
                {"list_id": kept + gone + 100},
            )
        with pytest.raises(IntegrityError, match="no such contact_list"), engine.begin() as conn:
            conn.execute(
                text("UPDATE contact SET list_id = :other WHERE list_id = :list_id"),
                {"other": kept + gone + 100, "list_id": kept},
            )
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM contact_list WHERE id = :id"), {"id": gone})
    finally:
        engine.dispose()
    assert _count(database_url, f"SELECT count(*) FROM contact WHERE list_id = {kept}") == 3
    assert _count(database_url, f"SELECT count(*) FROM contact WHERE list_id = {gone}") == 0


async def test_migrating_contact_keeps_the_rows_that_reference_it(empty_database: str) -> None:
    """0002 rebuilds `contact` on SQLite: recipients that point at contacts must survive it
    (with foreign keys enforced, dropping the old table would cascade into them), and the
    downgrade back to the foreign key too. 0004 gives the recipients made before it their
    contact's name and attributes."""
    migrate.upgrade(empty_database, "0001")
    make_list(empty_database, us_numbers(4), name="list")
    campaign_id = await create_campaign(
        empty_database, campaign_toml(list_name="list"), start=False
    )
    # Recipients as revision 0001 stored them (today's fan-out writes later columns too).
    engine = make_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO recipient (campaign_id, contact_id, phone, time_zones, "
                    "status, attempts, updated_at) SELECT :cid, id, phone, time_zones, "
                    "'pending', 0, CURRENT_TIMESTAMP FROM contact ORDER BY id"
                ),
                {"cid": campaign_id},
            )
    finally:
        engine.dispose()
    before = _count(empty_database, "SELECT count(*) FROM recipient")
    assert before == 4
    migrate.upgrade(empty_database)
    assert _count(empty_database, "SELECT count(*) FROM recipient") == before
    assert _count(empty_database, "SELECT count(*) FROM contact") == 4
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            copied = conn.execute(
                select(Recipient.name, Recipient.attributes, Contact.name, Contact.attributes)
                .join(Contact, Contact.id == Recipient.contact_id)
                .order_by(Recipient.id)
            ).all()
    finally:
        engine.dispose()
    assert [(name, attributes) for name, attributes, _, _ in copied] == [
        (f"Person {i}", {"city": "Springfield"}) for i in range(4)
    ]
    assert all(r[0] == r[2] and r[1] == r[3] for r in copied)
    migrate.downgrade(empty_database, "0001")
    assert _count(empty_database, "SELECT count(*) FROM recipient") == before
    assert _count(empty_database, "SELECT count(*) FROM contact") == 4


def test_a_migration_that_would_leave_a_dangling_key_changes_nothing(database_url: str) -> None:
    """Going back to 0001 restores the foreign key on contact.list_id: a contact whose list
    is gone (possible only around the triggers, dropped here) makes the downgrade fail as a
    whole, on SQLite too (its migrations run with foreign keys off, checked at the end)."""
    list_id = make_list(database_url, us_numbers(2), name="doomed")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            if BACKEND == "sqlite":
                conn.execute(text("DROP TRIGGER contact_list_delete_contacts"))
            else:
                conn.execute(text("DROP TRIGGER contact_list_delete_contacts ON contact_list"))
            conn.execute(text("DELETE FROM contact_list WHERE id = :id"), {"id": list_id})
    finally:
        engine.dispose()
    with pytest.raises(Exception, match=r"foreign key|pointing at nothing"):
        migrate.downgrade(database_url, "0001")
    assert migrate.current_revision(database_url) == migrate.head_revision(database_url)
    assert _count(database_url, "SELECT count(*) FROM contact") == 2


def test_a_list_deleted_while_contacts_are_added_to_it_keeps_no_orphans(
    database_url: str,
) -> None:
    """The foreign key's cascade under REPEATABLE READ: a delete of the list that waited for
    a transaction adding contacts to it fails (serialization), rather than deleting the
    contacts its snapshot shows and leaving the new ones behind."""
    if BACKEND == "sqlite":
        pytest.skip("SQLite: one writer at a time, the delete cannot overlap the insert")
    list_id = make_list(database_url, us_numbers(1), name="busy")
    engine = make_engine(database_url)
    adding = engine.connect()
    deleting = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    outcome: list[BaseException | None] = []
    try:
        adding.begin()
        deleting.begin()
        deleting.execute(text("SELECT count(*) FROM contact"))  # the snapshot is taken
        adding.execute(
            text(
                "INSERT INTO contact (list_id, phone, attributes) "
                "VALUES (:id, '+12025550177', '{}')"
            ),
            {"id": list_id},
        )

        def delete() -> None:
            try:
                deleting.execute(text("DELETE FROM contact_list WHERE id = :id"), {"id": list_id})
                deleting.commit()
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - checked below
                deleting.rollback()
                outcome.append(exc)

        worker = threading.Thread(target=delete)
        worker.start()
        time.sleep(0.5)  # the delete now waits for the insert's transaction
        assert worker.is_alive()
        adding.commit()
        worker.join(10)
    finally:
        adding.close()
        deleting.close()
        engine.dispose()
    assert outcome
    assert outcome[0] is not None
    assert "could not serialize" in str(outcome[0])
    assert _count(database_url, f"SELECT count(*) FROM contact WHERE list_id = {list_id}") == 2
    assert _count(database_url, f"SELECT count(*) FROM contact_list WHERE id = {list_id}") == 1
