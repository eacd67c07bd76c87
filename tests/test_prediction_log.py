"""The prediction log: rows and scores, batched writes off the hot path, drops, retention."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select

from berth.config import Settings
from berth.monitoring.config import PerformanceConfig, PredictionLogConfig
from berth.monitoring.prediction_log import (
    COLUMNS,
    PredictionLog,
    json_safe,
    prediction_rows,
    prediction_values,
)
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes.base import Prediction
from berth.serving.dataplane import PredictResult
from berth.store.tables import FeedbackRow, PredictionRow


def log_config(**changes: Any) -> PredictionLogConfig:
    """The log's configuration under the default settings, with these fields changed."""
    return replace(PredictionLogConfig.from_settings(Settings()), **changes)


def result(
    predictions: list[Any],
    probabilities: list[list[float]] | np.ndarray[Any, Any] | None = None,
    classes: list[Any] | None = None,
    model: str = "m",
    version: int = 1,
) -> PredictResult:
    info = cast(VersionInfo, SimpleNamespace(model=model, number=version))
    return PredictResult(
        version=info,
        prediction=Prediction(
            np.asarray(predictions),
            None if probabilities is None else np.asarray(probabilities),
            classes,
        ),
        prediction_id=uuid.uuid4().hex,
        rows=len(predictions),
        seconds=0.004,
        endpoint="v1",
    )


def dropped() -> float:
    return REGISTRY.get_sample_value("berth_prediction_log_dropped_total") or 0.0


def logged(registry: Registry) -> int:
    with registry.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(PredictionRow)) or 0)


# rows ------------------------------------------------------------------------------------


def test_binary_rows_score_the_positive_class() -> None:
    found = result(["no", "yes"], [[0.9, 0.1], [0.2, 0.8]], ["no", "yes"])
    rows = prediction_rows(found, datetime.now(UTC))
    assert [r["id"] for r in rows] == [f"{found.prediction_id}-0", f"{found.prediction_id}-1"]
    assert [r["prediction"] for r in rows] == ["no", "yes"]
    assert [r["score"] for r in rows] == pytest.approx([0.1, 0.8])
    assert rows[0]["latency_ms"] == pytest.approx(4.0)
    assert rows[0]["model"] == "m"
    assert rows[0]["version"] == 1
    assert rows[0]["endpoint"] == "v1"


def test_multiclass_rows_score_the_predicted_class() -> None:
    # The second row's label is not the argmax (a custom threshold): its own probability counts.
    found = result([2, 0], [[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]], [0, 1, 2])
    rows = prediction_rows(found, datetime.now(UTC))
    assert [r["score"] for r in rows] == pytest.approx([0.7, 0.3])
    assert [r["prediction"] for r in rows] == [2, 0]
    assert all(type(r["prediction"]) is int for r in rows)


def test_each_list_of_classes_keeps_its_own_columns() -> None:
    # The writer remembers a class list's columns; a list with the same labels in another order
    # (another version) must not be scored with the first one's.
    first, second = ["a", "b", "c"], ["c", "b", "a"]
    for _ in range(2):
        rows = prediction_rows(result(["a"], [[0.7, 0.2, 0.1]], first), datetime.now(UTC))
        assert rows[0]["score"] == pytest.approx(0.7)
        rows = prediction_rows(result(["a"], [[0.1, 0.2, 0.7]], second), datetime.now(UTC))
        assert rows[0]["score"] == pytest.approx(0.7)


def test_a_label_outside_the_classes_scores_its_rows_top_probability() -> None:
    # Float32 probabilities score as the same numbers numpy's float64 would; a NaN or an
    # infinity anywhere in the row leaves the top one unknown, as numpy's max would.
    found = result(
        ["other", "other", "other"],
        np.array([[0.2, 0.5, 0.3], [0.2, np.nan, 0.9], [0.1, np.inf, 0.2]], dtype=np.float32),
        ["a", "b", "c"],
    )
    scores = [row["score"] for row in prediction_rows(found, datetime.now(UTC))]
    assert scores == [float(np.float32(0.5)), None, None]


def test_rows_as_values_follow_the_columns() -> None:
    found = result([2, 0], [[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]], [0, 1, 2])
    at = datetime.now(UTC)
    assert [dict(zip(COLUMNS, values, strict=True)) for values in prediction_values(found, at)] == (
        prediction_rows(found, at)
    )


def test_regression_rows_have_no_score_and_json_safe_values() -> None:
    found = result([1.5])
    rows = prediction_rows(found, datetime.now(UTC))
    assert rows[0]["id"] == found.prediction_id  # a single row keeps the request's id
    assert rows[0]["score"] is None
    assert rows[0]["prediction"] == 1.5
    assert json_safe([np.float32(np.nan), np.int64(3), [np.inf, "a"]]) == [None, 3, [None, "a"]]


# writing ---------------------------------------------------------------------------------


def test_flushes_in_batches_off_the_hot_path(registry: Registry) -> None:
    log = PredictionLog(registry.db, log_config(batch_rows=5, flush_seconds=30.0))

    async def scenario() -> tuple[int, int]:
        log.start()
        try:
            for _ in range(3):
                log.observe(result([1.0, 2.0]))
            # Nothing is written by the observer itself: the writer runs later, in a thread.
            written_on_the_hot_path = logged(registry)
            deadline = time.monotonic() + 10  # a third of the writer's own 30 s timer
            while logged(registry) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return written_on_the_hot_path, logged(registry)
        finally:
            await log.stop()

    before, after = asyncio.run(scenario())
    assert before == 0
    # 6 rows pending >= batch_rows 5 woke the writer long before its 30 s timer.
    assert after == 6


def test_flushes_on_its_timer_and_on_stop(registry: Registry) -> None:
    log = PredictionLog(registry.db, log_config(batch_rows=1000, flush_seconds=0.05))

    async def scenario() -> tuple[int, int]:
        log.start()
        log.observe(result(["a"], [[0.4, 0.6]], ["a", "b"]))
        await asyncio.sleep(0.5)
        by_timer = logged(registry)
        log.observe(result(["b"], [[0.4, 0.6]], ["a", "b"]))
        await log.stop()
        return by_timer, logged(registry)

    assert asyncio.run(scenario()) == (1, 2)
    with registry.db.session() as session:
        scores = session.scalars(select(PredictionRow.score)).all()
    assert scores == pytest.approx([0.6, 0.6])


def test_drops_and_counts_when_full(registry: Registry) -> None:
    log = PredictionLog(registry.db, log_config(queue_rows=3))
    before = dropped()
    log.observe(result([1.0, 2.0]))
    log.observe(result([3.0, 4.0]))  # 4 > 3: all of its rows are dropped
    log.observe(result([5.0]))
    assert dropped() - before == 2
    assert log.pending_rows == 3
    assert asyncio.run(log.flush()) == 3
    assert logged(registry) == 3


def test_disabled_log_keeps_nothing(registry: Registry) -> None:
    log = PredictionLog(registry.db, log_config(enabled=False))
    log.observe(result([1.0]))
    assert log.pending_rows == 0


def test_a_failed_write_is_counted_not_raised(registry: Registry) -> None:
    log = PredictionLog(registry.db, log_config())
    before = dropped()
    broken = result([1.0])
    log.observe(broken)
    log.observe(broken)  # the same id twice: the batch's insert fails on the primary key
    assert asyncio.run(log.flush()) == 0
    assert dropped() - before == 2
    assert logged(registry) == 0


# retention -------------------------------------------------------------------------------


def _insert(registry: Registry, ages_days: list[float], now: datetime) -> list[str]:
    ids = [f"p{i}" for i in range(len(ages_days))]
    with registry.db.session() as session:
        session.execute(
            insert(PredictionRow),
            [
                {
                    "id": row_id,
                    "model": "m",
                    "version": 1,
                    "endpoint": "",
                    "created_at": now - timedelta(days=age),
                    "prediction": 1,
                    "score": None,
                    "latency_ms": 1.0,
                }
                for row_id, age in zip(ids, ages_days, strict=True)
            ],
        )
        session.execute(
            insert(FeedbackRow),
            [{"prediction_id": i, "actual": 1, "received_at": now} for i in ids]
            + [{"prediction_id": "orphan-old", "actual": 1, "received_at": now - timedelta(40)}]
            + [{"prediction_id": "orphan-new", "actual": 1, "received_at": now}],
        )
    return ids


def _ids(registry: Registry) -> tuple[list[str], list[str]]:
    with registry.db.session() as session:
        predictions = sorted(session.scalars(select(PredictionRow.id)))
        feedback = sorted(session.scalars(select(FeedbackRow.prediction_id)))
    return predictions, feedback


def test_retention_by_age(registry: Registry) -> None:
    now = datetime.now(UTC)
    _insert(registry, [0.1, 1, 29, 31, 45], now)
    log = PredictionLog(registry.db, log_config(max_age=timedelta(days=30)))
    assert log.apply_retention(now) == 2
    predictions, feedback = _ids(registry)
    assert predictions == ["p0", "p1", "p2"]
    # Feedback went with its predictions; unmatched feedback older than max_age went too.
    assert feedback == ["orphan-new", "p0", "p1", "p2"]


def test_retention_by_rows_keeps_the_newest(registry: Registry) -> None:
    now = datetime.now(UTC)
    _insert(registry, [5, 1, 3, 2, 4], now)
    log = PredictionLog(registry.db, log_config(max_rows=3))
    assert log.apply_retention(now) == 2
    predictions, feedback = _ids(registry)
    assert predictions == ["p1", "p2", "p3"]
    assert feedback == ["orphan-new", "p1", "p2", "p3"]
    assert log.apply_retention(now) == 0


def test_config_from_settings_reads_each_field(settings: Settings) -> None:
    changed = settings.model_copy(
        update={
            "prediction_log_max_age": "7d",
            "prediction_log_max_rows": 10,
            "performance_window": "1h",
        }
    )
    config = PredictionLogConfig.from_settings(changed)
    assert config.max_age == timedelta(days=7)
    assert config.max_rows == 10
    assert PerformanceConfig.from_settings(changed).window == timedelta(hours=1)
    assert config.batch_rows == settings.prediction_log_batch_rows
