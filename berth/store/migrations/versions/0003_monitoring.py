"""Monitoring: the prediction log, feedback, and drift reference statistics.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as table:
        table.add_column(sa.Column("reference_stats", sa.JSON, nullable=True))
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prediction", sa.JSON, nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_index(
        "ix_predictions_model_version_at", "predictions", ["model", "version", "created_at"]
    )
    op.create_table(
        "feedback",
        sa.Column("prediction_id", sa.String(64), primary_key=True),
        sa.Column("actual", sa.JSON, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_received_at", "feedback")
    op.drop_table("feedback")
    op.drop_index("ix_predictions_model_version_at", "predictions")
    op.drop_index("ix_predictions_created_at", "predictions")
    op.drop_table("predictions")
    with op.batch_alter_table("versions") as table:
        table.drop_column("reference_stats")
