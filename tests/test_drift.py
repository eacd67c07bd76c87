"""Drift: reference statistics at registration, the live window, PSI/KS, the route and the CLI."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Gauge
from scipy.stats import ks_2samp  # type: ignore[import-untyped]
from starlette.testclient import TestClient

from berth.api.drift import router as drift_router
from berth.config import Settings
from berth.demo_model import churn_data
from berth.errors import InvalidInput
from berth.monitoring.drift import DriftMonitor, find_monitor, psi, verdict
from berth.registration.service import RegisterRequest, register
from berth.registry.profile import OTHER, reference_statistics
from berth.registry.service import Registry
from berth.registry.signature import Signature, TensorSpec, infer_signature, read_sample
from berth.registry.versions import VersionInfo
from tests.cli_modes import UNUSABLE_DATABASE, Mode, threaded_server, wait_served
from tests.conftest import Outcome, Run

CHURN_COLUMNS = ["tenure_months", "monthly_charges", "plan", "support_calls"]


def _frame(rows: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    plan = rng.choice(["basic", "pro", "enterprise"], rows, p=[0.5, 0.3, 0.2]).astype(object)
    plan[:10] = None
    return pd.DataFrame(
        {
            "x": np.arange(rows, dtype=np.float64),
            "calls": rng.poisson(2, rows),
            "plan": plan,
            "active": np.arange(rows) % 4 == 0,
        }
    )


def _version(stats: dict[str, Any] | None, model: str = "m", number: int = 1) -> VersionInfo:
    """A VersionInfo stand-in carrying only what the monitor reads."""

    @dataclass(frozen=True)
    class Info:
        model: str
        number: int
        reference_stats: dict[str, Any] | None

    return Info(model, number, stats)  # type: ignore[return-value]


def _gauge() -> Gauge:
    return Gauge("t_drift", "test", ["model", "version", "feature"], registry=CollectorRegistry())


# reference statistics ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_reference_stats_numeric_and_categorical(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ref{suffix}"
    frame = _frame()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    data = read_sample(path)
    stats = reference_statistics(data, infer_signature(data))
    assert stats["rows"] == 1000
    assert stats["kind"] == "tabular"
    assert list(stats["features"]) == ["x", "calls", "plan", "active"]
    x = stats["features"]["x"]
    assert x["type"] == "numeric"
    assert x["count"] == 1000
    assert x["missing"] == 0
    assert x["mean"] == pytest.approx(499.5)
    assert x["std"] == pytest.approx(np.arange(1000).std(), rel=1e-6)
    assert (x["min"], x["max"]) == (0.0, 999.0)
    # deciles of 0..999: 99.9, 199.8, ...; every bin holds 10 %
    assert x["edges"] == pytest.approx([99.9 * i for i in range(1, 10)])
    assert x["fractions"] == pytest.approx([0.1] * 10)
    assert len(x["sample"]) == 1000
    assert x["sample"] == sorted(x["sample"])
    calls = stats["features"]["calls"]
    # Poisson deciles repeat: deduplicated, so fewer than 9 edges; fractions still sum to 1
    assert len(calls["edges"]) < 9
    assert len(calls["fractions"]) == len(calls["edges"]) + 1
    assert sum(calls["fractions"]) + calls["missing"] == pytest.approx(1.0)
    plan = stats["features"]["plan"]
    assert plan["type"] == "categorical"
    assert plan["missing"] == pytest.approx(0.01)
    assert set(plan["frequencies"]) == {"basic", "pro", "enterprise", OTHER}
    assert plan["frequencies"][OTHER] == 0
    assert sum(plan["frequencies"].values()) + plan["missing"] == pytest.approx(1.0)
    active = stats["features"]["active"]
    assert active["type"] == "categorical"
    assert active["frequencies"] == {"True": 0.25, "False": 0.75, OTHER: 0}
    json.dumps(stats, allow_nan=False)  # plain JSON: PostgreSQL refuses NaN and Infinity


def test_reference_stats_keep_top_50_categories_and_bound_the_sample() -> None:
    values = [f"c{i:02d}" for i in range(60) for _ in range(60 - i)]  # c00 commonest
    frame = pd.DataFrame({"city": values, "v": np.linspace(0, 1, len(values))})
    stats = reference_statistics(frame, infer_signature(frame))
    frequencies = stats["features"]["city"]["frequencies"]
    assert len(frequencies) == 51
    assert list(frequencies)[:3] == ["c00", "c01", "c02"]
    tail = sum(60 - i for i in range(50, 60))
    assert frequencies[OTHER] == pytest.approx(tail / len(values), rel=1e-6)
    assert len(stats["features"]["v"]["sample"]) == 1000 < len(values)


def test_reference_stats_of_a_tensor_input() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(300, 3)).astype(np.float32)
    signature = Signature(kind="tensor", inputs=(TensorSpec("input", "float32", (-1, 3)),))
    stats = reference_statistics(data, signature)
    assert list(stats["features"]) == ["input[0]", "input[1]", "input[2]"]
    assert stats["features"]["input[2]"]["index"] == 2
    assert stats["features"]["input[0]"]["count"] == 300
    with pytest.raises(InvalidInput, match="shape"):
        reference_statistics(data[:, :2], signature)


def test_reference_missing_or_wrong_columns_are_invalid() -> None:
    frame = _frame()
    signature = infer_signature(frame)
    with pytest.raises(InvalidInput, match=r"missing the signature's columns \['plan'\]"):
        reference_statistics(frame.drop(columns=["plan"]), signature)
    with pytest.raises(InvalidInput, match="'x' is float64 in the signature but holds 'abc'"):
        reference_statistics(frame.assign(x=["abc", *frame["x"][1:]]), signature)
    with pytest.raises(InvalidInput, match="no rows"):
        reference_statistics(frame.head(0), signature)
    with pytest.raises(InvalidInput, match="takes a table"):
        reference_statistics(np.zeros((3, 4)), signature)


# registration -----------------------------------------------------------------------------


def _register_churn(
    registry: Registry, churn_files: tuple[Path, Path, Path], **extra: Any
) -> VersionInfo:
    model, sample, signature = churn_files
    return register(
        registry,
        RegisterRequest(
            name="churn",
            path=model,
            sample=sample,
            signature=signature,
            aliases=("production",),
            **extra,
        ),
    )


def test_register_with_reference_stores_statistics(
    registry: Registry, churn_files: tuple[Path, Path, Path]
) -> None:
    version = _register_churn(registry, churn_files, reference=churn_files[1])
    assert version.reference_stats is not None
    assert list(version.reference_stats["features"]) == CHURN_COLUMNS
    assert version.reference_stats["rows"] == 200
    stored = registry.resolve("churn:1")
    assert stored.reference_stats == version.reference_stats
    summary = stored.to_dict()["reference"]
    assert summary["rows"] == 200
    assert summary["features"]["plan"] == {
        "type": "categorical",
        "count": 200,
        "missing": 0.0,
        "categories": 3,
    }
    assert "sample" not in summary["features"]["tenure_months"]
    assert summary["features"]["tenure_months"]["type"] == "numeric"
    # Without --reference: none stored.
    plain = _register_churn(registry, churn_files)
    assert plain.reference_stats is None
    assert plain.to_dict()["reference"] is None


def test_register_with_bad_reference_is_invalid_and_registers_nothing(
    registry: Registry, churn_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    pd.read_csv(churn_files[1]).drop(columns=["plan"]).to_csv(bad, index=False)
    with pytest.raises(InvalidInput, match=r"--reference .*bad.csv: .*\['plan'\]"):
        _register_churn(registry, churn_files, reference=bad)
    with pytest.raises(InvalidInput, match="does not exist"):
        _register_churn(registry, churn_files, reference=tmp_path / "nope.csv")
    assert registry.list_models() == []


# comparison -------------------------------------------------------------------------------


def test_psi_hand_checked() -> None:
    # (0.9-0.5)ln(0.9/0.5) + (0.1-0.5)ln(0.1/0.5) = 0.4*0.587787 + 0.4*1.609438
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.878890, abs=1e-6)
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    # an empty bin counts as epsilon (1e-4): (0.5-1e-4)ln(0.5/1e-4) + (1e-4-0.5)ln(1e-4/0.5)
    assert psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(
        0.5 * math.log(2) + (0.5 - 1e-4) * math.log(0.5 / 1e-4), abs=1e-6
    )
    assert [verdict(v) for v in (None, 0.05, 0.1, 0.2, 0.25, 3.0)] == [
        "no_data",
        "stable",
        "moderate",
        "moderate",
        "drifted",
        "drifted",
    ]


def test_shifted_numeric_feature_hand_checked() -> None:
    """Reference 0..999 (10 % per decile bin); live 500..999 fills the upper five bins 20 % each."""
    reference = pd.DataFrame({"x": np.arange(1000, dtype=np.float64)})
    stats = reference_statistics(reference, infer_signature(reference))
    monitor = DriftMonitor(gauge=_gauge())
    live = pd.DataFrame({"x": np.arange(500, 1000, dtype=np.float64)})
    monitor.observe(_version(stats), live)
    (drift,) = monitor.compute("m", 1)
    expected = 5 * (0.2 - 0.1) * math.log(2) + 5 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert expected == pytest.approx(3.79700, abs=1e-5)
    assert drift.psi == pytest.approx(expected, abs=1e-9)
    assert drift.live_count == 500
    assert drift.verdict == "drifted"
    scipy = ks_2samp(live["x"].to_numpy(), np.arange(1000, dtype=np.float64))
    assert drift.ks_statistic == pytest.approx(scipy.statistic) == pytest.approx(0.5)
    assert drift.ks_pvalue == pytest.approx(scipy.pvalue)


def test_same_distribution_is_stable_and_shift_is_drifted() -> None:
    reference, _ = churn_data(4000, seed=1)
    stats = reference_statistics(reference, infer_signature(reference))
    same, _ = churn_data(3000, seed=2)
    monitor = DriftMonitor(window_rows=5000, max_rows_per_request=5000, gauge=_gauge())
    monitor.observe(_version(stats), same)
    stable = {d.feature: d for d in monitor.compute("m", 1)}
    assert set(stable) == set(CHURN_COLUMNS)
    for drift in stable.values():
        assert drift.psi is not None
        assert drift.psi < 0.02, drift
        assert drift.verdict == "stable"
    assert stable["plan"].ks_statistic is None
    assert stable["plan"].ks_pvalue is None
    assert stable["monthly_charges"].ks_pvalue is not None
    assert stable["monthly_charges"].ks_pvalue > 0.01
    shifted = same.assign(
        monthly_charges=same["monthly_charges"] + 20,
        plan=np.where(np.arange(len(same)) % 2 == 0, "enterprise", same["plan"]),
    )
    monitor = DriftMonitor(window_rows=5000, max_rows_per_request=5000, gauge=_gauge())
    monitor.observe(_version(stats), shifted)
    drifted = {d.feature: d for d in monitor.compute("m", 1)}
    assert drifted["monthly_charges"].psi is not None
    assert drifted["monthly_charges"].psi > 0.5
    assert drifted["monthly_charges"].ks_pvalue is not None
    assert drifted["monthly_charges"].ks_pvalue < 1e-6
    assert drifted["plan"].verdict in ("moderate", "drifted")
    assert drifted["tenure_months"].verdict == "stable"
    # the categorical PSI by hand from the reference and live frequencies
    frequencies = stats["features"]["plan"]["frequencies"]
    live = shifted["plan"].value_counts(normalize=True)
    expected = psi(
        [frequencies[c] for c in ("basic", "pro", "enterprise")] + [0.0, 0.0],
        [live.get(c, 0.0) for c in ("basic", "pro", "enterprise")] + [0.0, 0.0],
    )
    assert drifted["plan"].psi == pytest.approx(expected)


def test_unseen_categories_and_missing_values_count_as_drift() -> None:
    reference = pd.DataFrame({"plan": ["a", "b"] * 500, "v": np.linspace(0, 1, 1000)})
    stats = reference_statistics(reference, infer_signature(reference))
    monitor = DriftMonitor(gauge=_gauge())
    live = pd.DataFrame({"plan": ["a", "zzz", None, "b"] * 50, "v": [0.5, np.nan, 0.2, 0.9] * 50})
    monitor.observe(_version(stats), live)
    drift = {d.feature: d for d in monitor.compute("m", 1)}
    # live: a 25 %, b 25 %, other 25 %, missing 25 % against a 50 %, b 50 %
    expected = psi([0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25])
    assert drift["plan"].psi == pytest.approx(expected)
    assert drift["v"].psi is not None
    assert drift["v"].psi > 0.25  # a quarter of the rows went missing


def test_tensor_inputs_are_watched_per_column() -> None:
    rng = np.random.default_rng(3)
    signature = Signature(kind="tensor", inputs=(TensorSpec("input", "float32", (-1, 2)),))
    stats = reference_statistics(rng.normal(size=(2000, 2)), signature)
    monitor = DriftMonitor(gauge=_gauge())
    live = np.column_stack([rng.normal(size=1000), rng.normal(3, 1, size=1000)])
    monitor.observe(_version(stats), live.astype(np.float32))
    first, second = monitor.compute("m", 1)
    assert (first.feature, second.feature) == ("input[0]", "input[1]")
    assert first.verdict == "stable"
    assert second.verdict == "drifted"


# the observer -----------------------------------------------------------------------------


def test_window_is_bounded_and_large_requests_are_sampled() -> None:
    reference = pd.DataFrame({"x": np.arange(1000, dtype=np.float64)})
    stats = reference_statistics(reference, infer_signature(reference))
    monitor = DriftMonitor(window_rows=100, max_rows_per_request=30, gauge=_gauge(), seed=0)
    version = _version(stats)
    monitor.observe(version, reference)  # 1,000 rows: a random 30 kept
    assert monitor.live_rows("m", 1) == 30
    kept = monitor.snapshot("m", 1)
    assert kept is not None
    assert len(np.unique(kept.values[:, 0])) == 30  # sampled without replacement
    for _ in range(10):
        monitor.observe(version, reference.head(7))
    assert monitor.live_rows("m", 1) == 100
    assert monitor.rows_seen("m", 1) == 100
    for _ in range(20):
        monitor.observe(version, pd.DataFrame({"x": [5000.0]}))
    # a ring buffer: the newest 20 rows replaced the oldest
    snapshot = monitor.snapshot("m", 1)
    assert snapshot is not None
    assert len(snapshot.values) == 100
    assert int((snapshot.values[:, 0] == 5000.0).sum()) == 20
    assert monitor.compute("m", 1)[0].live_count == 100


def test_observer_ignores_versions_without_reference() -> None:
    monitor = DriftMonitor(gauge=_gauge())
    monitor.observe(_version(None), pd.DataFrame({"x": [1.0]}))
    assert monitor.watched() == []
    assert monitor.compute("m", 1) == []


def test_compute_without_traffic_reports_no_data() -> None:
    reference = pd.DataFrame({"x": np.arange(10.0), "c": list("ab" * 5)})
    stats = reference_statistics(reference, infer_signature(reference))
    drifts = DriftMonitor(gauge=_gauge()).compute("m", 1, stats)
    assert [(d.feature, d.psi, d.live_count, d.verdict) for d in drifts] == [
        ("x", None, 0, "no_data"),
        ("c", None, 0, "no_data"),
    ]


def test_update_metrics_sets_the_gauge_and_forgets_unloaded_versions() -> None:
    reference = pd.DataFrame({"x": np.arange(1000, dtype=np.float64)})
    stats = reference_statistics(reference, infer_signature(reference))
    gauge = _gauge()
    active = {("m", 1), ("m", 2)}
    monitor = DriftMonitor(min_live_rows=100, gauge=gauge, is_active=lambda m, v: (m, v) in active)
    monitor.observe(_version(stats, number=1), pd.DataFrame({"x": np.arange(500.0, 1000.0)}))
    monitor.observe(_version(stats, number=2), pd.DataFrame({"x": [1.0] * 10}))  # too few rows
    asyncio.run(monitor.update_metrics())
    assert gauge.labels("m", "1", "x")._value.get() == pytest.approx(3.79700, abs=1e-5)
    assert [s.labels for s in next(iter(gauge.collect())).samples] == [
        {"model": "m", "version": "1", "feature": "x"}
    ]
    active.discard(("m", 1))
    asyncio.run(monitor.update_metrics())
    assert monitor.watched() == [("m", 2)]
    assert next(iter(gauge.collect())).samples == []


def test_default_gauge_is_the_metrics_module_one() -> None:
    from berth.observability import metrics

    assert DriftMonitor().gauge is metrics.FEATURE_DRIFT


# the route --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    client: TestClient
    key: str
    monitor: DriftMonitor


@pytest.fixture
def served(settings: Settings, churn_files: tuple[Path, Path, Path]) -> Iterator[Served]:
    from berth.api.app import build_services, create_app
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    registry = Registry.from_settings(settings)
    _register_churn(registry, churn_files, reference=churn_files[1])
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    _, key = keys.create("tester", ("predict", "read"))
    svc = build_services(settings, registry)
    monitor = DriftMonitor(window_rows=1000, max_rows_per_request=500, gauge=_gauge())
    svc.dataplane.observers.append(monitor)
    app = create_app(settings, svc)
    app.include_router(drift_router)
    with TestClient(app) as client:
        yield Served(client, key, monitor)
    registry.db.dispose()


def _predict(served: Served, frame: pd.DataFrame) -> None:
    rows = json.loads(frame.to_json(orient="records"))
    response = served.client.post(
        "/api/v1/models/churn/batch-predict",
        json={"instances": rows},
        headers={"X-API-Key": served.key},
    )
    assert response.status_code == 200, response.text


def test_drift_route_reports_live_drift(served: Served) -> None:
    headers = {"X-API-Key": served.key}
    empty = served.client.get("/api/v1/models/churn/drift", headers=headers)
    assert empty.status_code == 200, empty.text
    assert empty.json()["verdict"] == "no_data"
    assert {f["live_count"] for f in empty.json()["features"]} == {0}
    live, _ = churn_data(400, seed=5)
    live["monthly_charges"] = (live["monthly_charges"] + 40).clip(upper=150)
    _predict(served, live)
    response = served.client.get("/api/v1/models/churn:1/drift", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "churn"
    assert body["version"] == 1
    assert body["window"] == {"rows": 400, "capacity": 1000, "seen": 400}
    assert body["thresholds"] == {"moderate": 0.1, "drifted": 0.25}
    assert body["verdict"] == "drifted"
    features = {f["feature"]: f for f in body["features"]}
    assert list(features) == CHURN_COLUMNS
    assert features["monthly_charges"]["verdict"] == "drifted"
    assert features["monthly_charges"]["ks_pvalue"] < 1e-6
    assert features["plan"]["ks_statistic"] is None
    assert features["plan"]["live_count"] == 400
    assert set(features["tenure_months"]) == {
        "feature",
        "kind",
        "psi",
        "ks_statistic",
        "ks_pvalue",
        "live_count",
        "verdict",
    }


def test_drift_route_errors(served: Served, settings: Settings) -> None:
    headers = {"X-API-Key": served.key}
    assert served.client.get("/api/v1/models/churn/drift").status_code == 401
    assert served.client.get("/api/v1/models/ghost/drift", headers=headers).status_code == 404
    assert served.client.get("/api/v1/models/churn:9/drift", headers=headers).status_code == 404
    assert served.client.get("/api/v1/models/bad%20name/drift", headers=headers).status_code == 400
    assert find_monitor(served.client.app.state.services.dataplane.observers) is served.monitor  # type: ignore[attr-defined]


def test_drift_route_without_reference_is_404(
    settings: Settings, churn_files: tuple[Path, Path, Path]
) -> None:
    from berth.api.app import build_services, create_app

    dev = settings.model_copy(update={"dev": True})
    registry = Registry.from_settings(dev)
    _register_churn(registry, churn_files)
    svc = build_services(dev, registry)
    svc.dataplane.observers.append(DriftMonitor(gauge=_gauge()))
    app = create_app(dev, svc)
    app.include_router(drift_router)
    with TestClient(app) as client:
        response = client.get("/api/v1/models/churn/drift")
        assert response.status_code == 404
        assert "--reference" in response.json()["error"]
    registry.db.dispose()


# the CLI ----------------------------------------------------------------------------------


def _cli_register(run: Run, churn_files: tuple[Path, Path, Path], *extra: str) -> Outcome:
    model, sample, signature = churn_files
    return run(
        "models",
        "register",
        "churn",
        str(model),
        "--sample",
        str(sample),
        "--signature",
        str(signature),
        "--alias",
        "production",
        *extra,
    )


def test_cli_register_reference_and_show_reference_statistics(
    run_both: Run, cli_mode: Mode, churn_files: tuple[Path, Path, Path]
) -> None:
    run = run_both
    registered = _cli_register(run, churn_files, "--reference", str(churn_files[1]))
    assert registered.code == 0, registered.err
    assert "drift reference statistics of 4 features (200 rows)" in registered.out
    summary = json.loads(run("models", "show", "churn", "--json").out)["reference"]
    assert summary["rows"] == 200
    shown = run("models", "drift", "churn")
    assert shown.code == 0, shown.err
    for column in CHURN_COLUMNS:
        assert column in shown.out
    if cli_mode.remote:
        # A server keeps the live inputs: remote mode shows its live drift (none came yet).
        assert "churn:1  live rows 0/5000  verdict no_data" in shown.out
        assert json.loads(run("models", "drift", "churn:1", "--json").out)["verdict"] == "no_data"
        # `berth predict` goes through the server's prediction route: its rows are live inputs.
        wait_served(cli_mode, "churn")
        assert run("predict", "churn", "--input", str(churn_files[1])).code == 0
        live = json.loads(run("models", "drift", "churn:1", "--json").out)
        assert live["window"] == {"rows": 200, "capacity": 5000, "seen": 200}
        return
    assert "reference statistics of 200 rows" in shown.out
    assert "categorical" in shown.out
    assert "--url http://HOST:PORT" in shown.out
    assert json.loads(run("models", "drift", "churn:1", "--json").out) == summary


def test_cli_bad_reference_and_no_reference(
    run_both: Run, churn_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    run = run_both
    bad = tmp_path / "bad.csv"
    pd.read_csv(churn_files[1])[["plan"]].to_csv(bad, index=False)
    refused = _cli_register(run, churn_files, "--reference", str(bad))
    assert refused.code == 1
    assert "missing the signature's columns" in refused.err
    assert _cli_register(run, churn_files).code == 0
    none = run("models", "drift", "churn")
    assert none.code == 1
    assert "no reference statistics" in none.err


def test_cli_drift_from_a_server(
    run: Run,
    settings: Settings,
    churn_files: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    registry = Registry.from_settings(settings)
    _register_churn(registry, churn_files, reference=churn_files[1])
    key = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    secret = key.create("tester", ("predict", "read"))[1]
    registry.db.dispose()
    live, _ = churn_data(300, seed=9)
    live["plan"] = "enterprise"
    with threaded_server(settings) as url:
        predicted = httpx.post(
            f"{url}/api/v1/models/churn/batch-predict",
            json={"instances": json.loads(live.to_json(orient="records"))},
            headers={"X-API-Key": secret},
        )
        assert predicted.status_code == 200, predicted.text
        outcome = run("models", "drift", "churn", "--url", url, "--key", secret)
        assert outcome.code == 0, outcome.err
        assert "churn:1" in outcome.out
        assert "live rows 300/5000" in outcome.out
        plan_line = next(line for line in outcome.out.splitlines() if "plan" in line)
        assert "categorical" in plan_line
        assert "drifted" in plan_line
        assert "PSI < 0.1 stable" in outcome.out
        as_json = json.loads(
            run("models", "drift", "churn", "--url", url, "--key", secret, "--json").out
        )
        assert as_json["verdict"] == "drifted"
        # The same report in remote mode, where the server is the profile's.
        with monkeypatch.context() as remote:
            remote.setenv("BERTH_SERVER", url)
            remote.setenv("BERTH_API_KEY", secret)
            remote.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
            assert run("models", "drift", "churn") == outcome
        refused = run("models", "drift", "churn", "--url", url, "--key", "berth_wrong")
        assert refused.code == 1
        assert refused.err.count("\n") == 1
        assert "refused the key given with --key (or BERTH_API_KEY)" in refused.err
        assert "berth_wrong" not in refused.err
        keyless = run("models", "drift", "churn", "--url", url)
        assert keyless.code == 1
        assert "needs an API key; give --key or set BERTH_API_KEY" in keyless.err


def test_cli_drift_unreachable_server(run: Run) -> None:
    outcome = run("models", "drift", "churn", "--url", "http://127.0.0.1:9", "--key", "k")
    assert outcome.code == 1
    assert outcome.err.count("\n") == 1
    assert "cannot reach http://127.0.0.1:9" in outcome.err
    assert "is the server running" in outcome.err


def test_background_task_refreshes_the_gauge() -> None:
    reference = pd.DataFrame({"x": np.arange(1000, dtype=np.float64)})
    stats = reference_statistics(reference, infer_signature(reference))
    gauge = _gauge()
    monitor = DriftMonitor(gauge=gauge)

    async def scenario() -> None:
        monitor.start(interval=0.01)
        monitor.observe(_version(stats), pd.DataFrame({"x": np.arange(500.0, 1000.0)}))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if next(iter(gauge.collect())).samples:
                break
        await monitor.stop()

    asyncio.run(scenario())
    assert gauge.labels("m", "1", "x")._value.get() == pytest.approx(3.79700, abs=1e-5)


def test_attach_wires_observer_route_and_metric(
    settings: Settings, churn_files: tuple[Path, Path, Path]
) -> None:
    from berth.api.app import build_services, create_app
    from berth.observability import metrics

    dev = settings.model_copy(update={"dev": True, "drift_window_rows": 300})
    registry = Registry.from_settings(dev)
    _register_churn(registry, churn_files, reference=churn_files[1])
    svc = build_services(dev, registry)
    app = create_app(dev, svc)
    monitor = app.state.drift  # create_app attaches the monitor
    assert find_monitor(svc.dataplane.observers) is monitor
    live, _ = churn_data(400, seed=4)
    with TestClient(app) as client:
        rows = json.loads(live.to_json(orient="records"))
        assert client.post(
            "/api/v1/models/churn/batch-predict", json={"instances": rows}
        ).is_success
        body = client.get("/api/v1/models/churn/drift").json()
        assert body["window"] == {"rows": 300, "capacity": 300, "seen": 400}
        asyncio.run(monitor.update_metrics())
        value = metrics.FEATURE_DRIFT.labels("churn", "1", "plan")._value.get()
        assert value == pytest.approx(
            next(f["psi"] for f in body["features"] if f["feature"] == "plan")
        )
    monitor.forget("churn", 1)
    registry.db.dispose()
