"""A/B experiments through the real app: sticky variants, feedback outcomes, the report."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from berth.errors import Conflict, InvalidInput, NotFound
from berth.registry.endpoints import EndpointService, RouteSpec
from berth.rollouts import strategies as s
from berth.rollouts.experiments import ExperimentService, parse_variant
from berth.rollouts.service import RolloutService
from tests.conftest import ApiSetup, register_iris

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def lab(api: ApiSetup, iris_files: tuple[Path, Path]) -> ApiSetup:
    register_iris(api.registry, iris_files)  # iris:2
    EndpointService(api.registry).create("flowers", "iris:1")
    return api


def _dataplane(api: ApiSetup):  # type: ignore[no-untyped-def]
    return api.client.app.state.services.dataplane  # type: ignore[attr-defined]


def _apply(api: ApiSetup) -> None:
    api.client.portal.call(_dataplane(api).refresh_endpoints)  # type: ignore[union-attr]


def _flush(api: ApiSetup) -> None:
    api.client.portal.call(_dataplane(api).route_stats.flush)  # type: ignore[union-attr]


def _ask(api: ApiSetup, user: str) -> tuple[str, str]:
    response = api.client.post(
        "/api/v1/endpoints/flowers/predict",
        json={"features": ROW},
        headers={**api.auth(), "X-User-ID": user},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body["route"], body["prediction_id"]


def _run(api: ApiSetup, users: int, lift: float, seed: int) -> dict[str, str]:
    """Every user asks twice; outcomes are posted as feedback (b's are `lift` higher)."""
    rng = random.Random(seed)
    variant_of: dict[str, str] = {}
    feedback = []
    for i in range(users):
        user = f"user-{i}"
        first, first_id = _ask(api, user)
        second, second_id = _ask(api, user)
        assert first == second, f"{user} moved from {first} to {second}"
        variant_of[user] = first
        for prediction_id in (first_id, second_id):
            outcome = rng.gauss(10.0 + (lift if first == "b" else 0.0), 2.0)
            feedback.append({"prediction_id": prediction_id, "actual": round(outcome, 3)})
    answer = api.client.post("/api/v1/feedback", json={"feedback": feedback}, headers=api.auth())
    assert answer.status_code == 200, answer.text
    assert answer.json()["unknown"] == []
    _flush(api)
    return variant_of


def test_sticky_variants_outcomes_report_and_conclusion(lab: ApiSetup) -> None:
    experiments = ExperimentService(lab.registry)
    started = experiments.start(
        "flowers",
        ["a=iris:1:50", "b=iris:2:50"],
        sticky="header:X-User-ID",
        metric="outcome",
        min_samples=50,
    )
    assert [v.ref for v in started.variants] == ["iris:1", "iris:2"]
    _apply(lab)

    variant_of = _run(lab, users=150, lift=1.5, seed=7)
    shares = Counter(variant_of.values())
    assert set(shares) == {"a", "b"}
    assert 0.3 < shares["b"] / 150 < 0.7

    info, report = experiments.report("flowers")
    assert info.status == "running"
    rows = {row.name: row for row in report.variants}
    assert rows["a"].requests == 2 * shares["a"]
    assert rows["b"].requests == 2 * shares["b"]
    assert rows["b"].samples == 2 * shares["b"]
    assert rows["b"].estimate is not None
    assert rows["a"].estimate is not None
    assert rows["b"].estimate > rows["a"].estimate
    comparison = report.comparisons[0]
    assert comparison.test.name.lower().startswith("welch")
    assert comparison.significant
    assert report.recommendation == "b"

    with pytest.raises(Conflict, match="runs experiment"):
        RolloutService(lab.registry).start("flowers", "iris:2", s.CANARY)
    concluded = experiments.conclude("flowers", "b")
    assert (concluded.status, concluded.winner) == ("concluded", "b")
    endpoint = EndpointService(lab.registry).get("flowers")
    assert endpoint.routes == (RouteSpec("stable", "stable", "iris", 2, 100.0),)
    assert endpoint.sticky is None  # restored
    history = EndpointService(lab.registry).history("flowers")
    assert history[0].reason == f"experiment {info.id} concluded: b (iris:2) takes all traffic"


def test_no_recommendation_without_a_significant_difference(lab: ApiSetup) -> None:
    experiments = ExperimentService(lab.registry)
    experiments.start("flowers", ["a=iris:1:50", "b=iris:2:50"], metric="outcome", min_samples=20)
    _apply(lab)
    _run(lab, users=60, lift=0.0, seed=3)
    _info, report = experiments.report("flowers")
    assert report.recommendation is None
    assert "not significant" in report.explanation


def test_accuracy_experiment_waits_for_the_minimum_sample(lab: ApiSetup) -> None:
    experiments = ExperimentService(lab.registry)
    experiments.start("flowers", ["a=iris:1:50", "b=iris:2:50"], min_samples=500)
    _apply(lab)
    _run(lab, users=20, lift=0.0, seed=1)
    _info, report = experiments.report("flowers")
    assert report.recommendation is None
    assert "too few samples" in report.explanation


def test_bad_experiments_are_refused(lab: ApiSetup) -> None:
    experiments = ExperimentService(lab.registry)
    cases = {
        "at least two variants": ["a=iris:1:100"],
        "add up to 100": ["a=iris:1:50", "b=iris:2:40"],
        "its own version": ["a=iris:1:50", "b=iris:1:50"],
        "names must differ": ["a=iris:1:50", "a=iris:2:50"],
        "NAME=MODEL:VERSION:WEIGHT": ["a=iris", "b=iris:2:50"],
    }
    for message, variants in cases.items():
        with pytest.raises(InvalidInput, match=message):
            experiments.start("flowers", variants)
    with pytest.raises(InvalidInput, match="sticky key"):
        experiments.start("flowers", ["a=iris:1:50", "b=iris:2:50"], sticky="")
    with pytest.raises(NotFound, match="no endpoint 'nope'"):
        experiments.start("nope", ["a=iris:1:50", "b=iris:2:50"])
    with pytest.raises(NotFound, match="runs no experiment"):
        experiments.conclude("flowers", "a")
    experiments.start("flowers", ["a=iris:1:50", "b=iris:2:50"])
    with pytest.raises(InvalidInput, match="no variant 'c'"):
        experiments.conclude("flowers", "c")
    with pytest.raises(Conflict, match="runs experiment"):
        experiments.start("flowers", ["a=iris:1:50", "b=iris:2:50"])


def test_parse_variant() -> None:
    assert parse_variant("a=churn:2:50") == ("a", "churn:2", 50.0)
    assert parse_variant("control=churn@staging:12.5") == ("control", "churn@staging", 12.5)
    with pytest.raises(InvalidInput):
        parse_variant("churn:2:50")


def test_a_shadow_route_keeps_mirroring_through_an_experiment(lab: ApiSetup) -> None:
    shadow = RouteSpec("shadow", "shadow", "iris", 2, 10.0)
    EndpointService(lab.registry).set_routes(
        "flowers", [RouteSpec("stable", "stable", "iris", 1, 100.0), shadow], "mirror v2"
    )
    experiments = ExperimentService(lab.registry)
    experiments.start("flowers", ["a=iris:1:50", "b=iris:2:50"])
    assert EndpointService(lab.registry).get("flowers").route("shadow") == shadow
    experiments.conclude("flowers", "a")
    assert EndpointService(lab.registry).get("flowers").routes == (
        RouteSpec("stable", "stable", "iris", 1, 100.0),
        shadow,
    )
