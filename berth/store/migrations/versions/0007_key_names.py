"""A revoked key's name can be given to a new key: names are unique among unrevoked keys only.

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ACTIVE = sa.text("revoked_at IS NULL")


def _without_unique_name() -> sa.Table:
    """api_keys as 0002 left it, but with no UNIQUE on name (SQLite rebuilds the table)."""
    return sa.Table(
        "api_keys",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("previous_hash", sa.String(128), nullable=True),
        sa.Column("previous_valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rate", sa.String(32), nullable=True),
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # SQLite cannot drop a constraint, and 0001's UNIQUE(name) has no name to drop by.
        with op.batch_alter_table("api_keys", recreate="always", copy_from=_without_unique_name()):
            pass
    else:
        for constraint in sa.inspect(bind).get_unique_constraints("api_keys"):
            if constraint["column_names"] == ["name"] and constraint["name"]:
                op.drop_constraint(constraint["name"], "api_keys", type_="unique")
    op.create_index(
        "uq_api_keys_active_name",
        "api_keys",
        ["name"],
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.create_index("ix_api_keys_name", "api_keys", ["name"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_name", "api_keys")
    op.drop_index("uq_api_keys_active_name", "api_keys")
    with op.batch_alter_table("api_keys") as table:
        table.create_unique_constraint("uq_api_keys_name", ["name"])
