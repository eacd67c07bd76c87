"""Registry tables (SQLAlchemy 2 ORM). Schema changes go through Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every database.

    SQLite has no time zones: SQLAlchemy writes the wall-clock digits and drops the offset, and
    reads back naive datetimes. Values are converted to UTC before they are written (a naive
    value is taken as UTC) and marked UTC when read, so both databases hand back the same
    aware instant.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    versions: Mapped[list[VersionRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="VersionRow.number"
    )
    aliases: Mapped[list[AliasRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="AliasRow.name"
    )


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_versions_model_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    flavor: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(Text)
    entry: Mapped[str] = mapped_column(Text)
    is_directory: Mapped[bool] = mapped_column(default=False)
    size_bytes: Mapped[int] = mapped_column(Integer)
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    example: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    trusted_types: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """Types beyond the built-in allow-list this version's skops file may load."""
    pickle_trusted: Mapped[bool] = mapped_column(default=False)
    """Registered with --trust-pickle: the only way a pickle/joblib artifact is ever loaded."""
    reference_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Per-feature reference statistics (quantile bins) for drift, from --reference data."""
    source_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The model of the version this one was derived from (e.g. by `berth models optimize`).

    Name and number rather than a foreign key: lineage is history, and it outlives the deletion
    of its source version."""
    source_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """How it was derived from the source: method, quantization, the equivalence check."""
    accelerated: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Its accelerated twin, or why it has none (`berth.registry.accelerated`); None: not tried."""
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    model: Mapped[ModelRow] = relationship(back_populates="versions")


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    model: Mapped[ModelRow] = relationship(back_populates="aliases")
    version: Mapped[VersionRow] = relationship()


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    # A name belongs to one key that is not revoked: a revoked key keeps its row (its audit
    # trail names it) while a new key takes the name.
    __table_args__ = (
        Index(
            "uq_api_keys_active_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
        Index("ix_api_keys_name", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    previous_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The hash of the secret before the last rotation, valid until previous_valid_until."""
    previous_valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rate: Mapped[str | None] = mapped_column(String(32), nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class PredictionRow(Base):
    """One logged prediction (a row of a request), joined later with its feedback."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_model_version_at", "model", "version", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    prediction: Mapped[Any] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Probability of the positive class (binary) or of the predicted class; None for regressors."""
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)


class FeedbackRow(Base):
    """The true outcome for an earlier prediction."""

    __tablename__ = "feedback"

    prediction_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    actual: Mapped[Any] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


# traffic management ----------------------------------------------------------------------


class EndpointRow(Base):
    """The stable name clients call; its routes say which versions answer, and how often."""

    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    sticky: Mapped[str] = mapped_column(String(160), default="")
    """Where the sticky key is read: `header:X-User-ID`, `cookie:uid`, `field:user_id`; empty
    for a weighted random split."""
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    routes: Mapped[list[RouteRow]] = relationship(
        back_populates="endpoint", cascade="all, delete-orphan", order_by="RouteRow.id"
    )


class RouteRow(Base):
    """One version behind an endpoint, with its share of traffic and its role."""

    __tablename__ = "routes"
    __table_args__ = (UniqueConstraint("endpoint_id", "label", name="uq_routes_endpoint_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[str] = mapped_column(String(64))
    """What `X-Berth-Route` names: the role for rollouts (stable, canary), the variant name in
    experiments (a, b)."""
    role: Mapped[str] = mapped_column(String(16))
    """stable, canary, green, blue, variant or shadow."""
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    """No cascade: a routed version cannot be deleted (the registry refuses, naming the route)."""
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    """Percent of the endpoint's traffic (for a shadow route: percent of requests mirrored)."""

    endpoint: Mapped[EndpointRow] = relationship(back_populates="routes")
    version: Mapped[VersionRow] = relationship()


class EndpointChangeRow(Base):
    """History: every change to an endpoint's routes, with who made it and why."""

    __tablename__ = "endpoint_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128), index=True)
    """A name, not a foreign key: history outlives the endpoint."""
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    routes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """The routes after the change: label, role, model, version, weight."""
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    experiment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RevisionRow(Base):
    """A counter per kind of shared state, raised in the transaction of every change.

    Servers poll one row (cheap) and re-read the state only when the number moved.
    """

    __tablename__ = "revisions"

    topic: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, default=0)


class RolloutRow(Base):
    """A rollout of one endpoint to a new version; the controller moves it along its states."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128), index=True)
    strategy: Mapped[str] = mapped_column(String(16))
    """blue-green or canary."""
    status: Mapped[str] = mapped_column(String(16), index=True)
    """running, paused (still active); promoted, rolled_back, aborted, failed (finished)."""
    phase: Mapped[str] = mapped_column(String(32))
    """Where a running rollout is: loading, step, switched, ..."""
    from_model: Mapped[str] = mapped_column(String(128))
    from_version: Mapped[int] = mapped_column(Integer)
    to_model: Mapped[str] = mapped_column(String(128))
    to_version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What a restarted controller needs: step index, step start, metric baselines."""
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RolloutEventRow(Base):
    """What the controller saw and did at each decision, for `berth rollout show`."""

    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ExperimentRow(Base):
    """An A/B split of an endpoint with sticky assignment, reported per variant."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    """running or concluded."""
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Variants, sticky key, outcome metric, alpha, minimum sample."""
    baseline: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Route counters when it started: the report counts from there."""
    winner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    concluded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RouteStatsRow(Base):
    """One server process's running totals for one (endpoint, version).

    Every process upserts its own row about once a second; the sum over processes is the
    endpoint's traffic across workers and replicas (what the rollout controller judges).
    """

    __tablename__ = "route_stats"
    __table_args__ = (
        UniqueConstraint("process", "endpoint", "model", "version", name="uq_route_stats_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    """Server-side failures (5xx); a client's invalid input is not the version's fault."""
    latency_counts: Mapped[list[int]] = mapped_column(JSON, default=list)
    """Cumulative count per latency bucket (berth.observability.metrics.LATENCY_BUCKETS)."""
    latency_sum: Mapped[float] = mapped_column(Float, default=0.0)
    shadow_compared: Mapped[int] = mapped_column(Integer, default=0)
    """For a shadow route: rows compared with the primary's answer, and how many agreed."""
    shadow_agreed: Mapped[int] = mapped_column(Integer, default=0)
    shadow_seconds_delta: Mapped[float] = mapped_column(Float, default=0.0)
    """Sum over mirrored requests of (shadow seconds - primary seconds)."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class LeaseRow(Base):
    """Who may act alone (the rollout controller, a scheduler), until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobRow(Base):
    """One run of a job: a batch job (what it scores, where its results go, and how far it
    got) or a backup (`model` empty, `sink` its destinations)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_kind_status_finished", "kind", "status", "finished_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="batch")
    """batch or backup (berth.jobs.kinds)."""
    status: Mapped[str] = mapped_column(String(16), index=True)
    """queued, running, succeeded, failed or cancelled."""
    job_key: Mapped[str] = mapped_column(String(64), index=True)
    """Fingerprint of source, query, sink and model: runs with one key resume each other."""
    model: Mapped[str] = mapped_column(String(256))
    """The reference as given (e.g. churn@production)."""
    version: Mapped[str | None] = mapped_column(String(160), nullable=True)
    """The version it resolved to (e.g. churn:3), once running."""
    source: Mapped[str] = mapped_column(Text)
    sink: Mapped[str] = mapped_column(Text)
    args: Mapped[list[str]] = mapped_column(JSON, default=list)
    """The `berth batch run` arguments, so the job can be run again as it was."""
    origin: Mapped[str] = mapped_column(String(160), default="cli")
    """cli, api or schedule:NAME."""
    rows_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rows_scored: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_per_second: Mapped[float] = mapped_column(Float, default=0.0)
    resumed_at_row: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Source rows an earlier, interrupted run had already committed."""
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Why it failed or was cancelled, or its summary when it succeeded."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    host: Mapped[str] = mapped_column(String(128), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What the run that ended it reported (rows, seconds, where the results are), so that
    `berth batch run` in remote mode prints what it would locally."""


class ScheduleRow(Base):
    """A job run on a cron schedule by `berth scheduler`: a batch run or a backup."""

    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="batch", server_default="batch")
    """batch (`args` are `berth batch run` arguments) or backup (`berth backup create`)."""
    cron: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    args: Mapped[list[str]] = mapped_column(JSON, default=list)
    """The arguments of each run's command (see `kind`)."""
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_tick: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """The latest tick handled (run or recorded as missed)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScheduleRunRow(Base):
    """One tick of a schedule: run (with its job) or missed. Unique per tick, so two schedulers
    can never both start a job for the same tick."""

    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule", "tick", name="uq_schedule_runs_tick"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule: Mapped[str] = mapped_column(
        ForeignKey("schedules.name", ondelete="CASCADE"), index=True
    )
    tick: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    """started or missed."""
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
