"""contact.list_id: the foreign key becomes triggers checked once per statement

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 23:40:00

A bulk import COPYs up to millions of contacts into one list. The foreign key on
`contact.list_id` checked the list once per row (on PostgreSQL a row trigger running a
`SELECT ... FOR KEY SHARE`), which took half the time of the whole COPY. The same rule is
kept by triggers:

- PostgreSQL: after each INSERT or UPDATE statement on `contact`, one query over the rows it
  wrote (a transition table) touches their lists' rows (a no-op UPDATE) and fails with
  foreign_key_violation if one is missing. The update, not a share lock, so that a
  transaction deleting the list at the same time waits for this one and then fails with a
  serialization error under REPEATABLE READ or SERIALIZABLE (as the foreign key's cascade
  does) instead of missing the new contacts in its snapshot. Concurrent inserts into one
  list therefore take turns (an import holds its list's row locked anyway);
- SQLite: a row trigger before INSERT and UPDATE OF list_id (SQLite's own foreign key
  check is a row check too, so this costs the same as before);
- both: deleting a `contact_list` row deletes its contacts (the former ON DELETE CASCADE).

Not kept: `TRUNCATE contact_list` no longer refuses while contacts exist, and a rebuild of
`contact` or `contact_list` by a later SQLite batch migration would drop these triggers
(recreate them after one).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_contact_list_id_contact_list"

PG_CHECK = """
CREATE FUNCTION contact_list_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lists bigint[];
    missing bigint;
BEGIN
    SELECT array_agg(DISTINCT list_id) INTO lists FROM written;
    UPDATE contact_list l SET updated_at = l.updated_at WHERE l.id = ANY (lists);
    SELECT w.id INTO missing FROM unnest(lists) AS w (id)
     WHERE NOT EXISTS (SELECT 1 FROM contact_list l WHERE l.id = w.id) LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('contact.list_id %s: no such contact_list', missing),
            CONSTRAINT = 'contact_list_exists';
    END IF;
    RETURN NULL;
END
$$
"""

PG_CASCADE = """
CREATE FUNCTION contact_list_delete_contacts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM contact WHERE list_id = OLD.id;
    RETURN OLD;
END
$$
"""

SQLITE_CHECK = """
CREATE TRIGGER contact_list_exists_{event} BEFORE {clause} ON contact
WHEN NOT EXISTS (SELECT 1 FROM contact_list WHERE id = NEW.list_id)
BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: contact.list_id: no such contact_list');
END
"""


def upgrade() -> None:
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.drop_constraint(FK, type_="foreignkey")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_CHECK)
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER contact_list_exists_{event.lower()} AFTER {event} ON contact "
                "REFERENCING NEW TABLE AS written FOR EACH STATEMENT "
                "EXECUTE FUNCTION contact_list_exists()"
            )
        op.execute(PG_CASCADE)
        op.execute(
            "CREATE TRIGGER contact_list_delete_contacts BEFORE DELETE ON contact_list "
            "FOR EACH ROW EXECUTE FUNCTION contact_list_delete_contacts()"
        )
        return
    op.execute(SQLITE_CHECK.format(event="insert", clause="INSERT"))
    op.execute(SQLITE_CHECK.format(event="update", clause="UPDATE OF list_id"))
    op.execute(
        "CREATE TRIGGER contact_list_delete_contacts BEFORE DELETE ON contact_list "
        "BEGIN DELETE FROM contact WHERE list_id = OLD.id; END"
    )


def downgrade() -> None:
    # IF EXISTS: the foreign key that comes back checks every contact anyway.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS contact_list_delete_contacts ON contact_list")
        op.execute("DROP FUNCTION IF EXISTS contact_list_delete_contacts()")
        op.execute("DROP TRIGGER IF EXISTS contact_list_exists_insert ON contact")
        op.execute("DROP TRIGGER IF EXISTS contact_list_exists_update ON contact")
        op.execute("DROP FUNCTION IF EXISTS contact_list_exists()")
    else:
        op.execute("DROP TRIGGER IF EXISTS contact_list_delete_contacts")
        op.execute("DROP TRIGGER IF EXISTS contact_list_exists_insert")
        op.execute("DROP TRIGGER IF EXISTS contact_list_exists_update")
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.create_foreign_key(FK, "contact_list", ["list_id"], ["id"], ondelete="CASCADE")
