"""A version may keep an accelerated twin (berth.registry.accelerated); the `models` revision
counter exists from the start (berth.registry.revisions: raised by every version, alias and twin
change, so two first changes at once never race to create it).

Revision ID: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("accelerated", sa.JSON(), nullable=True))
    op.execute(
        "INSERT INTO revisions (topic, number) SELECT 'models', 0 "
        "WHERE NOT EXISTS (SELECT 1 FROM revisions WHERE topic = 'models')"
    )


def downgrade() -> None:
    op.execute("DELETE FROM revisions WHERE topic = 'models'")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("accelerated")
