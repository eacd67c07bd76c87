"""What the monitoring features read from the settings: the prediction log, performance, drift.

Each object is built from `Settings` by its `from_settings` alone, so a knob's default lives in
`berth.config` and nowhere else. Durations are parsed here, once, so a bad one stops the server
at start-up rather than inside a background task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from berth.config import Settings
from berth.durations import parse_duration


@dataclass(frozen=True)
class PredictionLogConfig:
    """How predicted rows are buffered, written and kept (feedback goes with its prediction)."""

    enabled: bool
    """Log every predicted row; off, the log's buffer takes nothing."""

    queue_rows: int
    """Rows a worker buffers; a request whose rows do not fit is dropped and counted."""

    batch_rows: int
    """Write buffered rows as soon as this many wait."""

    flush_seconds: float
    """Write buffered rows at least this often."""

    max_age: timedelta
    """Logged predictions, and feedback, older than this are deleted."""

    max_rows: int
    """Most logged predictions kept; the oldest beyond it are deleted."""

    retention_seconds: float
    """How often retention (max age, then max rows) runs."""

    @classmethod
    def from_settings(cls, settings: Settings) -> PredictionLogConfig:
        return cls(
            enabled=settings.prediction_log_enabled,
            queue_rows=settings.prediction_log_queue_rows,
            batch_rows=settings.prediction_log_batch_rows,
            flush_seconds=settings.prediction_log_flush_seconds,
            max_age=parse_duration(settings.prediction_log_max_age),
            max_rows=settings.prediction_log_max_rows,
            retention_seconds=settings.prediction_log_retention_seconds,
        )


@dataclass(frozen=True)
class PerformanceConfig:
    """The `berth_model_accuracy` gauges of served versions, computed from feedback."""

    window: timedelta
    """Predictions made within this span (and their feedback) are judged."""

    refresh_seconds: float
    """How often the gauges are recomputed."""

    @classmethod
    def from_settings(cls, settings: Settings) -> PerformanceConfig:
        return cls(
            window=parse_duration(settings.performance_window),
            refresh_seconds=settings.performance_refresh_seconds,
        )


@dataclass(frozen=True)
class DriftConfig:
    """The drift monitor: live inputs per version against the version's reference profile."""

    window_rows: int
    """Live input rows kept per version (a rolling window, per worker)."""

    refresh_seconds: float
    """How often `berth_feature_drift` is recomputed."""

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftConfig:
        return cls(
            window_rows=settings.drift_window_rows,
            refresh_seconds=settings.drift_refresh_seconds,
        )
