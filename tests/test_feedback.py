"""Feedback and live performance: metrics by hand, the join, and the API end to end."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import event, insert, select
from starlette.testclient import TestClient

from berth.api.feedback import MAX_FEEDBACK_ITEMS, Monitoring, attach
from berth.config import Settings
from berth.monitoring.config import PerformanceConfig, PredictionLogConfig
from berth.monitoring.feedback import store_feedback
from berth.monitoring.performance import (
    PerformanceGauges,
    Scores,
    Window,
    compute_performance,
    measure,
    roc_auc,
    version_scores,
)
from berth.monitoring.performance_series import performance_series, series_document
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.security.auth import Principal
from berth.store.audit import AuditLog
from berth.store.tables import FeedbackRow, PredictionRow
from tests.cli_modes import Mode
from tests.conftest import Run, register_iris
from tests.local_twin import assert_same_output

# metrics by hand -------------------------------------------------------------------------


def test_roc_auc_by_ranks() -> None:
    # Pairs (positive, negative): (0.8>0.1) (0.8>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4.
    assert roc_auc([True, False, True, False], [0.8, 0.4, 0.35, 0.1]) == pytest.approx(0.75)
    # A tie between a positive and a negative counts half.
    assert roc_auc([True, False], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([True, True], [0.1, 0.2]) is None


def test_binary_classifier_accuracy_and_auc() -> None:
    rows = [  # (prediction, P(yes), actual)
        ("yes", 0.9, "yes"),
        ("yes", 0.7, "no"),
        ("no", 0.4, "yes"),
        ("no", 0.2, "no"),
        ("no", 0.1, "no"),
    ]
    scores = measure(rows)
    assert scores.kind == "classification"
    assert scores.accuracy == pytest.approx(3 / 5)
    # yes: 0.9, 0.4; no: 0.7, 0.2, 0.1 -> 0.9 beats 3, 0.4 beats 2: 5 of 6 pairs.
    assert scores.auc == pytest.approx(5 / 6)
    assert scores.mae is None
    assert scores.rmse is None


def test_integer_labels_pick_the_larger_as_positive() -> None:
    rows = [(1, 0.8, 1), (0, 0.3, 1.0), (0, 0.2, "0"), (1, 0.6, 0)]
    scores = measure(rows)
    assert scores.accuracy == pytest.approx(2 / 4)  # 1.0 and "1" are the label 1
    # positives (1): 0.8, 0.3; negatives (0): 0.2, 0.6 -> 0.8>both, 0.3>0.2: 3 of 4.
    assert scores.auc == pytest.approx(0.75)


def test_multiclass_has_accuracy_but_no_auc() -> None:
    scores = measure([(0, 0.9, 0), (1, 0.6, 2), (2, 0.5, 2)])
    assert scores.kind == "classification"
    assert scores.accuracy == pytest.approx(2 / 3)
    assert scores.auc is None


def test_regressor_mae_and_rmse() -> None:
    rows = [(2.5, None, 3.0), (0.0, None, -1), (4.0, None, 2.0), (1.0, None, 1.0)]
    scores = measure(rows)
    assert scores.kind == "regression"
    # errors -0.5, 1, 2, 0
    assert scores.mae == pytest.approx((0.5 + 1 + 2 + 0) / 4)
    assert scores.rmse == pytest.approx(math.sqrt((0.25 + 1 + 4 + 0) / 4))
    assert scores.accuracy is None
    assert scores.auc is None


def test_nothing_labelled_is_no_kind() -> None:
    assert measure([]).kind is None
    assert measure([([1, 2], None, [1, 2])]).kind is None


# the join on each database ---------------------------------------------------------------


def _predictions(registry: Registry, rows: list[tuple[str, int, Any, float | None, float]]) -> None:
    """(id, version, prediction, score, age in hours) rows of model m."""
    now = datetime.now(UTC)
    with registry.db.session() as session:
        session.execute(
            insert(PredictionRow),
            [
                {
                    "id": row_id,
                    "model": "m",
                    "version": version,
                    "endpoint": "",
                    "created_at": now - timedelta(hours=age),
                    "prediction": prediction,
                    "score": score,
                    "latency_ms": 1.0,
                }
                for row_id, version, prediction, score, age in rows
            ],
        )


ADMIN = Principal(name="admin", scopes=("admin",))


def test_performance_joins_feedback_per_version_and_window(registry: Registry) -> None:
    _predictions(
        registry,
        [
            ("c1", 1, "yes", 0.9, 1),
            ("c2", 1, "yes", 0.7, 2),
            ("c3", 1, "no", 0.4, 3),
            ("c4", 1, "no", 0.2, 4),
            ("c5", 1, "no", 0.1, 5),
            ("c6", 1, "no", 0.1, 6),  # no feedback
            ("old", 1, "yes", 0.9, 48),  # outside a 24 h window
            ("r1", 2, 2.5, None, 1),
            ("r2", 2, 0.0, None, 2),
            ("r3", 2, 4.0, None, 3),
            ("r4", 2, 1.0, None, 4),
        ],
    )
    actual = {"c1": "yes", "c2": "no", "c3": "yes", "c4": "no", "c5": "no", "old": "no"}
    actual |= {"r1": 3.0, "r2": -1, "r3": 2.0, "r4": 1.0}
    assert store_feedback(registry.db, actual, ADMIN) == (10, [])
    classifier, regressor = compute_performance(
        registry.db, "m", window=Window(timedelta(hours=24))
    )
    assert classifier.to_dict() == {
        "version": 1,
        "count": 6,
        "labelled": 5,
        "kind": "classification",
        "accuracy": pytest.approx(3 / 5),
        "auc": pytest.approx(5 / 6),
        "mae": None,
        "rmse": None,
    }
    assert regressor.to_dict() == {
        "version": 2,
        "count": 4,
        "labelled": 4,
        "kind": "regression",
        "accuracy": None,
        "auc": None,
        "mae": pytest.approx(3.5 / 4),
        "rmse": pytest.approx(math.sqrt(5.25 / 4)),
    }
    # The last 2 labelled rows of version 1 (c1, c2): one right.
    (recent,) = compute_performance(registry.db, "m", 1, Window(since=None, last=2))
    assert (recent.count, recent.labelled, recent.scores.accuracy) == (7, 2, 0.5)
    assert compute_performance(registry.db, "other") == []


def test_performance_series_scores_each_hour_bucket_apart(registry: Registry) -> None:
    _predictions(
        registry,
        [
            ("a1", 1, "yes", None, 0.5),  # bucket 3 (the last hour): a1 right, a2 wrong
            ("a2", 1, "yes", None, 0.6),
            ("a3", 1, "no", None, 0.7),  # no feedback: counted, not labelled
            ("b1", 1, "no", None, 2.5),  # bucket 1: right; bucket 2 has nothing
            ("c1", 1, "no", None, 3.5),  # bucket 0: wrong
            ("c2", 1, "yes", None, 3.6),  # no feedback
            ("old", 1, "no", None, 5),  # before the first bucket
            ("v2", 2, "no", None, 0.5),  # another version
        ],
    )
    actual = {"a1": "yes", "a2": "no", "b1": "no", "c1": "yes", "old": "no", "v2": "yes"}
    store_feedback(registry.db, actual, ADMIN)
    now = datetime.now(UTC)
    found = performance_series(registry.db, "m", 1, 4, timedelta(hours=1), now)
    assert [b.start for b in found] == [now - timedelta(hours=h) for h in (4, 3, 2, 1)]
    assert [(b.count, b.labelled, b.scores.accuracy) for b in found] == [
        (2, 1, 0.0),
        (1, 1, 1.0),
        (0, 0, None),
        (3, 2, 0.5),
    ]
    document = series_document(found)
    assert document["kind"] == "classification"
    assert document["metric"] == "accuracy"
    assert document["value"] == [0.0, 1.0, None, 0.5]
    assert document["labelled"] == [1, 1, 0, 2]
    assert document["count"] == [2, 1, 0, 3]
    assert document["t"] == [round(b.start.timestamp(), 3) for b in found]
    # The whole span is the sum of its buckets: nothing counted twice at a boundary.
    (whole,) = compute_performance(registry.db, "m", 1, Window(timedelta(hours=4)), now=now)
    assert whole.count == sum(b.count for b in found)


def test_performance_series_of_a_regressor_draws_mae(registry: Registry) -> None:
    _predictions(registry, [("r1", 3, 2.5, None, 0.5), ("r2", 3, 1.5, None, 1.5)])
    store_feedback(registry.db, {"r1": 3.0, "r2": 0.5}, ADMIN)
    found = performance_series(registry.db, "m", 3, 3, timedelta(hours=1), datetime.now(UTC))
    document = series_document(found)
    assert (document["kind"], document["metric"]) == ("regression", "mae")
    assert document["value"] == [None, pytest.approx(1.0), pytest.approx(0.5)]
    empty = series_document(performance_series(registry.db, "none", 1, 2, timedelta(hours=1),
                                               datetime.now(UTC)))  # fmt: skip
    assert empty["kind"] is None
    assert empty["value"] == [None, None]
    assert empty["labelled"] == [0, 0]


def test_feedback_before_its_prediction_is_logged_joins_later(registry: Registry) -> None:
    assert store_feedback(registry.db, {"early": "yes"}, ADMIN) == (0, ["early"])
    _predictions(registry, [("early", 1, "yes", 0.8, 0)])
    (found,) = compute_performance(registry.db, "m")
    assert (found.labelled, found.scores.accuracy) == (1, 1.0)


def test_feedback_upserts_last_wins(registry: Registry) -> None:
    _predictions(registry, [("p", 1, "yes", 0.8, 0)])
    store_feedback(registry.db, {"p": "no"}, ADMIN)
    store_feedback(registry.db, {"p": "yes"}, ADMIN)
    with registry.db.session() as session:
        assert session.scalars(select(FeedbackRow.actual)).all() == ["yes"]


def test_performance_gauges_for_served_versions(registry: Registry) -> None:
    _predictions(registry, [("g1", 7, "a", None, 0), ("g2", 7, "b", None, 0)])
    store_feedback(registry.db, {"g1": "a", "g2": "a"}, ADMIN)
    gauges = PerformanceGauges(
        registry.db, lambda: [("m", 7)], PerformanceConfig.from_settings(Settings())
    )
    gauges.update()
    labels = {"model": "m", "version": "7", "metric": "accuracy"}
    assert REGISTRY.get_sample_value("berth_model_accuracy", labels) == pytest.approx(0.5)
    gauges.versions = list  # the version is no longer served: its series goes
    gauges.update()
    assert REGISTRY.get_sample_value("berth_model_accuracy", labels) is None


def test_gauges_read_no_prediction_while_no_feedback_arrived_in_the_window(
    registry: Registry,
) -> None:
    _predictions(registry, [(f"n{i}", 3, "a", None, 0) for i in range(50)])
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    event.listen(registry.db.engine, "before_cursor_execute", seen)
    try:
        window = Window(since=timedelta(hours=24))
        assert version_scores(registry.db, "m", 3, window) == Scores()
        assert statements  # the feedback was asked for
        assert not [s for s in statements if "predictions" in s]
        # Feedback arrives: the same scores as the performance API's, from the same rows.
        store_feedback(registry.db, {"n1": "a", "n2": "b", "n3": "a"}, ADMIN)
        statements.clear()
        scores = version_scores(registry.db, "m", 3, window)
        assert [s for s in statements if "predictions" in s]
    finally:
        event.remove(registry.db.engine, "before_cursor_execute", seen)
    (whole,) = compute_performance(registry.db, "m", 3, window)
    assert scores == whole.scores
    assert scores.accuracy == pytest.approx(2 / 3)


# the API ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    client: TestClient
    registry: Registry
    monitoring: Monitoring
    keys: dict[str, str]

    def auth(self, who: str = "writer") -> dict[str, str]:
        return {"X-API-Key": self.keys[who]}


def with_monitoring(app: FastAPI, monitoring: Monitoring) -> None:
    """Start and stop the log and gauges with the app (what app.py's lifespan will do)."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[Any]:
        async with inner(running) as state:
            await monitoring.start()
            try:
                yield state
            finally:
                await monitoring.stop()

    app.router.lifespan_context = lifespan


@pytest.fixture
def api(registry: Registry, settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[Api]:
    from berth.api.app import build_services, create_app
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    register_iris(registry, iris_files, aliases=("production",))
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    made = {
        name: keys.create(name, scopes)[1]
        for name, scopes in {
            "writer": ("predict", "read"),
            "reader": ("read",),
            "churn-only": ("predict:churn",),
            "iris-only": ("predict:iris",),
        }.items()
    }
    svc = build_services(settings, registry)
    app = create_app(settings, svc)
    log = replace(PredictionLogConfig.from_settings(settings), flush_seconds=0.05)
    monitoring = attach(app, svc, log, PerformanceConfig.from_settings(settings))
    with_monitoring(app, monitoring)
    with TestClient(app) as client:
        yield Api(client=client, registry=registry, monitoring=monitoring, keys=made)


ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [6.9, 3.1, 5.4, 2.1], [5.0, 3.4, 1.5, 0.2]]


def _predict(api: Api) -> tuple[list[str], list[int]]:
    answer = api.client.post(
        "/api/v1/models/iris/batch-predict", json={"instances": ROWS}, headers=api.auth()
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["prediction_ids"], answer.json()["predictions"]


def test_end_to_end_predict_feedback_performance(api: Api) -> None:
    ids, predictions = _predict(api)
    assert predictions == [0, 1, 2, 0]
    single = api.client.post(
        "/api/v1/models/iris/predict", json={"features": ROWS[0]}, headers=api.auth()
    ).json()
    actual = [0, 1, 1, 0]  # the third is wrong
    answer = api.client.post(
        "/api/v1/feedback",
        json={
            "feedback": [
                {"prediction_id": i, "actual": a} for i, a in zip(ids, actual, strict=True)
            ]
        },
        headers=api.auth(),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 4, "unknown": []}
    answer = api.client.post(
        "/api/v1/feedback",
        json={"prediction_id": single["prediction_id"], "actual": "0"},
        headers=api.auth(),
    )
    assert answer.json() == {"accepted": 1, "unknown": []}

    answer = api.client.get("/api/v1/models/iris/performance?window=1h", headers=api.auth("reader"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "model": "iris",
        "window": "1h",
        "last": None,
        "versions": [
            {
                "version": 1,
                "count": 5,
                "labelled": 5,
                "kind": "classification",
                "accuracy": pytest.approx(4 / 5),
                "auc": None,  # three classes
                "mae": None,
                "rmse": None,
            }
        ],
    }
    answer = api.client.get("/api/v1/models/iris/performance?last=2&version=1", headers=api.auth())
    assert answer.json()["versions"][0]["labelled"] == 2
    # The log wrote every row with its score (P of the predicted class) and latency.
    with api.registry.db.session() as session:
        scores = session.scalars(select(PredictionRow.score)).all()
    assert len(scores) == 5
    assert all(s is not None and 1 / 3 < s <= 1 for s in scores)


def test_unknown_ids_are_reported(api: Api) -> None:
    ids, _ = _predict(api)
    answer = api.client.post(
        "/api/v1/feedback",
        json={
            "feedback": [
                {"prediction_id": ids[0], "actual": 0},
                {"prediction_id": "nope", "actual": 1},
            ]
        },
        headers=api.auth(),
    )
    assert answer.json() == {"accepted": 1, "unknown": ["nope"]}
    # A key that may predict with any model has unknown ids kept, to join a later prediction.
    with api.registry.db.session() as session:
        assert sorted(session.scalars(select(FeedbackRow.prediction_id))) == sorted(
            [ids[0], "nope"]
        )

    answer = api.client.post(
        "/api/v1/feedback",
        json={"prediction_id": "elsewhere", "actual": 1},
        headers=api.auth("iris-only"),
    )
    assert answer.json() == {"accepted": 0, "unknown": ["elsewhere"]}
    with api.registry.db.session() as session:
        assert session.get(FeedbackRow, "elsewhere") is None


def test_repeated_feedback_last_wins(api: Api) -> None:
    ids, _ = _predict(api)
    body = {
        "feedback": [
            {"prediction_id": ids[0], "actual": 2},
            {"prediction_id": ids[0], "actual": 1},
        ]
    }
    assert api.client.post("/api/v1/feedback", json=body, headers=api.auth()).json() == {
        "accepted": 1,
        "unknown": [],
    }
    api.client.post(
        "/api/v1/feedback",
        json={"prediction_id": ids[0], "actual": 0},
        headers=api.auth("iris-only"),
    )
    with api.registry.db.session() as session:
        assert session.get(FeedbackRow, ids[0]).actual == 0  # type: ignore[union-attr]


def test_too_many_items_is_413(api: Api) -> None:
    items = [{"prediction_id": f"id{i}", "actual": 1} for i in range(MAX_FEEDBACK_ITEMS + 1)]
    answer = api.client.post("/api/v1/feedback", json={"feedback": items}, headers=api.auth())
    assert answer.status_code == 413
    assert "10,000" in answer.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"feedback": "x"},
        {"feedback": [1]},
        {"prediction_id": "", "actual": 1},
        {"prediction_id": 5, "actual": 1},
        {"prediction_id": "x" * 65, "actual": 1},
        {"prediction_id": "p"},
        {"prediction_id": "p", "actual": None},
        {"prediction_id": "p", "actual": {"a": 1}},
        {"prediction_id": "p", "actual": 1, "feedback": []},
    ],
)
def test_bad_bodies_are_400(api: Api, body: dict[str, Any]) -> None:
    answer = api.client.post("/api/v1/feedback", json=body, headers=api.auth())
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]


def test_a_bare_list_is_400_naming_the_feedback_form(api: Api) -> None:
    items = [{"prediction_id": "p", "actual": 1}]
    answer = api.client.post("/api/v1/feedback", json=items, headers=api.auth())
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "must be a JSON object, not a list" in error
    assert '{"feedback": [{"prediction_id"' in error


def test_feedback_and_performance_need_credentials_and_scopes(api: Api) -> None:
    ids, _ = _predict(api)
    body = {"prediction_id": ids[0], "actual": 0}
    assert api.client.post("/api/v1/feedback", json=body).status_code == 401
    assert (
        api.client.post("/api/v1/feedback", json=body, headers=api.auth("reader")).status_code
        == 403
    )
    refused = api.client.post("/api/v1/feedback", json=body, headers=api.auth("churn-only"))
    assert refused.status_code == 403
    assert "iris" in refused.json()["error"]
    assert api.client.post("/api/v1/feedback", json=body, headers=api.auth("iris-only")).json() == {
        "accepted": 1,
        "unknown": [],
    }
    assert api.client.get("/api/v1/models/iris/performance").status_code == 401
    assert (
        api.client.get(
            "/api/v1/models/iris/performance", headers=api.auth("churn-only")
        ).status_code
        == 403
    )


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("window=soon", 400),
        ("last=0", 400),
        ("last=x", 400),
        ("version=v1", 400),
        ("window=all", 200),
    ],
)
def test_performance_query_checks(api: Api, query: str, status: int) -> None:
    answer = api.client.get(f"/api/v1/models/iris/performance?{query}", headers=api.auth())
    assert answer.status_code == status, answer.text


def test_performance_of_an_unknown_model_is_404(api: Api) -> None:
    answer = api.client.get("/api/v1/models/nosuch/performance", headers=api.auth())
    assert answer.status_code == 404


# the CLI: `berth feedback`, in local and in remote mode ---------------------------------------


def test_cli_performance_and_prune(
    run_both: Run, settings: Settings, iris_files: tuple[Path, Path], cli_mode: Mode
) -> None:
    found = Registry.from_settings(settings)
    model, sample = iris_files
    register(found, RegisterRequest(name="m", path=model, sample=sample, trust_pickle=True))
    _predictions(found, [("x1", 1, "a", None, 1), ("x2", 1, "b", None, 24 * 40)])
    store_feedback(found.db, {"x1": "a", "x2": "a"}, ADMIN)

    outcome = run_both("feedback", "performance", "m", "--window", "all", "--json")
    assert outcome.code == 0, outcome.err
    [version] = json.loads(outcome.out)
    assert (version["version"], version["count"], version["labelled"]) == (1, 2, 2)
    assert version["accuracy"] == 0.5
    recent = json.loads(run_both("feedback", "performance", "m", "--json").out)
    assert [(v["count"], v["accuracy"]) for v in recent] == [(1, 1.0)]  # within 24h
    outcome = run_both("feedback", "performance", "m")
    assert outcome.code == 0, outcome.err
    assert re.search(r"1\s*│\s*classification\s*│\s*1\s*│\s*1\s*│\s*1\.0000", outcome.out)
    assert run_both("feedback", "performance", "m", "--version", "2", "--json").out == "[]\n"
    unknown = run_both("feedback", "performance", "ghost")
    assert unknown.code == 1
    assert "ghost" in unknown.err
    bad = run_both("feedback", "performance", "m", "--window", "soon")
    assert bad.code == 1
    assert "'soon' is not a duration" in bad.err

    outcome = run_both("feedback", "prune")
    assert (outcome.code, outcome.out) == (0, "deleted 1 logged predictions\n")
    assert run_both("feedback", "prune").out == "deleted 0 logged predictions\n"
    with found.db.session() as session:
        assert session.scalars(select(PredictionRow.id)).all() == ["x1"]
    pruned = [e for e in AuditLog(found.db).list() if e.action == "prediction_log.prune"]
    assert [(e.actor, e.detail) for e in pruned] == [
        (cli_mode.actor, {"deleted": 0}),
        (cli_mode.actor, {"deleted": 1}),
    ]
    found.db.dispose()


@pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)
def test_cli_prints_the_same_in_both_modes(
    run_both: Run,
    settings: Settings,
    iris_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = Registry.from_settings(settings)
    model, sample = iris_files
    register(found, RegisterRequest(name="m", path=model, sample=sample, trust_pickle=True))
    _predictions(found, [("x1", 1, "a", 0.9, 1), ("x2", 1, "b", 0.2, 2), ("x3", 1, "b", 0.1, 3)])
    store_feedback(found.db, {"x1": "a", "x2": "a", "x3": "b"}, ADMIN)
    found.db.dispose()
    for command in (
        ["feedback", "performance", "m"],
        ["feedback", "performance", "m", "--json", "--last", "2"],
        ["feedback", "performance", "m", "--window", "90m", "--version", "1"],
        ["feedback", "performance", "ghost"],
        ["feedback", "prune"],
    ):
        assert_same_output(run_both, monkeypatch, None, *command)
