"""contact_list.attribute_keys: the attribute columns of an export, kept by the importer

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:25:00

The recipient export found its attribute columns by reading every contact of the list (0.35
s per million before the first row). When one import made all of a list's contacts, it knows
them; other lists (several imports, contacts written otherwise, lists imported before this
revision) keep NULL, and the export reads their contacts as before.
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


def downgrade() -> None:
    op.drop_column("contact_list", "attribute_keys")
