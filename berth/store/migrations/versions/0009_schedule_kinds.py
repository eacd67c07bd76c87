"""A schedule has a kind (batch or backup), and backup jobs are found by an index.

Revision ID: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every schedule stored before kinds existed runs `berth batch run`.
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="batch"))
    # berth_backup_last_success_timestamp_seconds reads the newest succeeded backup at every
    # scrape: one index lookup rather than a scan of every job ever run.
    op.create_index("ix_jobs_kind_status_finished", "jobs", ["kind", "status", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_kind_status_finished", table_name="jobs")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("kind")
