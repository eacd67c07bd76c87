"""Lineage: the version a version was derived from (`berth models optimize`), and how.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as table:
        table.add_column(sa.Column("source_model", sa.String(128), nullable=True))
        table.add_column(sa.Column("source_version", sa.Integer, nullable=True))
        table.add_column(sa.Column("lineage", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("versions") as table:
        table.drop_column("lineage")
        table.drop_column("source_version")
        table.drop_column("source_model")
