"""Traffic management: endpoints, routes and their history, rollouts, experiments, route
statistics, leases.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_NOW = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("sticky", sa.String(160), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        sa.Column("updated_at", _NOW, nullable=False),
    )
    op.create_table(
        "routes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "endpoint_id",
            sa.Integer,
            sa.ForeignKey("endpoints.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column(
            "version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False, index=True
        ),
        sa.Column("weight", sa.Float, nullable=False),
        sa.UniqueConstraint("endpoint_id", "label", name="uq_routes_endpoint_label"),
    )
    op.create_table(
        "endpoint_changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint", sa.String(128), nullable=False, index=True),
        sa.Column("at", _NOW, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("routes", sa.JSON, nullable=False),
        sa.Column("rollout_id", sa.Integer, nullable=True),
        sa.Column("experiment_id", sa.Integer, nullable=True),
    )
    op.create_table(
        "revisions",
        sa.Column("topic", sa.String(64), primary_key=True),
        sa.Column("number", sa.Integer, nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint", sa.String(128), nullable=False, index=True),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("from_model", sa.String(128), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=False),
        sa.Column("to_model", sa.String(128), nullable=False),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        sa.Column("updated_at", _NOW, nullable=False),
        sa.Column("finished_at", _NOW, nullable=True),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "rollout_id",
            sa.Integer,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("at", _NOW, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint", sa.String(128), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("baseline", sa.JSON, nullable=False),
        sa.Column("winner", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("started_at", _NOW, nullable=False),
        sa.Column("concluded_at", _NOW, nullable=True),
    )
    op.create_table(
        "route_stats",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("process", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False, index=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency_counts", sa.JSON, nullable=False),
        sa.Column("latency_sum", sa.Float, nullable=False),
        sa.Column("shadow_compared", sa.Integer, nullable=False),
        sa.Column("shadow_agreed", sa.Integer, nullable=False),
        sa.Column("shadow_seconds_delta", sa.Float, nullable=False),
        sa.Column("updated_at", _NOW, nullable=False, index=True),
        sa.UniqueConstraint("process", "endpoint", "model", "version", name="uq_route_stats_key"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", _NOW, nullable=False),
        sa.Column("acquired_at", _NOW, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "leases",
        "route_stats",
        "experiments",
        "rollout_events",
        "rollouts",
        "revisions",
        "endpoint_changes",
        "routes",
        "endpoints",
    ):
        op.drop_table(table)
