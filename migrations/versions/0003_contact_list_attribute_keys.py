"""contact_list.attribute_keys and name_key: what the export needs, kept by the importer

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:25:00

The recipient export wrote its attribute columns after reading every contact of the list
twice (their attribute keys, then whether one attribute holds the name): 0.4-0.7 s per
million contacts before the first row. The importer knows both; lists imported before this
revision keep NULL, and the export reads their contacts as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE on both backends (SQLite has ADD and DROP COLUMN): a batch rebuild
    # of contact_list would trip over 0002's triggers on contact, which name it.
    op.add_column(
        "contact_list",
        sa.Column(
            "attribute_keys",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )
    op.add_column("contact_list", sa.Column("name_key", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("contact_list", "name_key")
    op.drop_column("contact_list", "attribute_keys")
