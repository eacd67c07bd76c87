"""Batch jobs, their schedules and every tick a schedule had.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_NOW = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("job_key", sa.String(64), nullable=False, index=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(160), nullable=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("sink", sa.Text, nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("origin", sa.String(160), nullable=False),
        sa.Column("rows_total", sa.BigInteger, nullable=True),
        sa.Column("rows_scored", sa.BigInteger, nullable=False),
        sa.Column("rows_skipped", sa.BigInteger, nullable=False),
        sa.Column("rows_rejected", sa.BigInteger, nullable=False),
        sa.Column("rows_per_second", sa.Float, nullable=False),
        sa.Column("resumed_at_row", sa.BigInteger, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("host", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("created_at", _NOW, nullable=False),
        sa.Column("started_at", _NOW, nullable=True),
        sa.Column("heartbeat_at", _NOW, nullable=True),
        sa.Column("finished_at", _NOW, nullable=True),
    )
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("cron", sa.String(128), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("last_tick", _NOW, nullable=True),
        sa.Column("created_at", _NOW, nullable=False),
        sa.Column("updated_at", _NOW, nullable=False),
    )
    op.create_table(
        "schedule_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "schedule",
            sa.String(128),
            sa.ForeignKey("schedules.name", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("tick", _NOW, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("at", _NOW, nullable=False),
        sa.UniqueConstraint("schedule", "tick", name="uq_schedule_runs_tick"),
    )


def downgrade() -> None:
    for table in ("schedule_runs", "schedules", "jobs"):
        op.drop_table(table)
