"""Security: key rotation and rates, the audit log, trusted artifact types.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("previous_hash", sa.String(128), nullable=True))
        table.add_column(
            sa.Column("previous_valid_until", sa.DateTime(timezone=True), nullable=True)
        )
        table.add_column(sa.Column("rate", sa.String(32), nullable=True))
    with op.batch_alter_table("versions") as table:
        table.add_column(sa.Column("trusted_types", sa.JSON, nullable=True))
        table.add_column(
            sa.Column("pickle_trusted", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_actor", "audit_events")
    op.drop_index("ix_audit_events_at", "audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("versions") as table:
        table.drop_column("pickle_trusted")
        table.drop_column("trusted_types")
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("rate")
        table.drop_column("previous_valid_until")
        table.drop_column("previous_hash")
