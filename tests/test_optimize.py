from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from alembic import command
from alembic.config import Config
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import SplineTransformer
from sqlalchemy import inspect
from starlette.testclient import TestClient

from berth.config import Settings
from berth.errors import InvalidInput, NotFound
from berth.optimize import speed
from berth.optimize.convert import (
    ConversionError,
    register_booster_converters,
    require,
    to_onnx,
)
from berth.optimize.data import MIN_ROWS, CheckData, check_data, model_input
from berth.optimize.equivalence import NotEquivalent, check, compare
from berth.optimize.quantize import QuantizationError
from berth.optimize.service import optimize
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.registry.versions import Lineage
from berth.runtimes import load_runtime
from berth.runtimes.base import Prediction, Runtime
from berth.runtimes.loading import artifact_path, load_version
from berth.store.db import MIGRATIONS
from tests.conftest import Run, register_churn, register_iris

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

IrisFiles = tuple[Path, Path]
IRIS_X = load_iris(return_X_y=True)[0].astype(np.float32)


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed is measured, not asserted: a short budget keeps the suite fast."""
    monkeypatch.setattr(speed, "BUDGET_SECONDS", 0.005)


def _register(
    registry: Registry, name: str, model: Any, sample: np.ndarray[Any, Any], folder: Path
) -> None:
    joblib.dump(model, folder / f"{name}.joblib")
    np.save(folder / f"{name}.npy", sample)
    register(
        registry,
        RegisterRequest(
            name=name,
            path=folder / f"{name}.joblib",
            sample=folder / f"{name}.npy",
            trust_pickle=True,
        ),
    )


def _versions(registry: Registry, name: str) -> list[int]:
    return [v.number for v in registry.get_model(name).versions]


# conversions -------------------------------------------------------------------------------


def test_iris_becomes_an_onnx_version_linked_to_its_source(
    registry: Registry, iris_files: IrisFiles
) -> None:
    source = register_iris(registry, iris_files, aliases=("production",))

    report = optimize(registry, "iris", actor="tester")

    version = registry.resolve("iris:2")
    assert version.flavor == "onnx"
    assert version.signature.inputs == source.signature.inputs
    assert version.example == source.example
    assert registry.resolve("iris@production").number == 1  # no alias moved
    assert version.lineage is not None
    assert version.lineage.source == "iris:1"
    lineage = version.to_dict()["lineage"]
    assert lineage["source"] == "iris:1"
    assert lineage["method"] == "onnx"
    assert lineage["quantized"] is None
    assert lineage["check"]["rows"] == MIN_ROWS
    assert lineage["check"]["label_agreement"] == 1.0
    assert lineage["check"]["max_probability_diff"] <= 1e-4
    assert report.check.passed
    assert report.data.sources[0] == ("example rows", 3)
    assert [t.batch for t in report.speed.timings] == [1, 64]
    assert all(t.optimized_ms > 0 for t in report.speed.timings)

    expected = load_version(registry, source).predict(IRIS_X)
    actual = load_version(registry, version).predict(IRIS_X)
    assert_array_equal(actual.predictions, expected.predictions)
    assert actual.classes == expected.classes == [0, 1, 2]
    assert actual.probabilities is not None
    assert_allclose(actual.probabilities, expected.probabilities, atol=1e-4)


def test_served_answers_keep_their_shape(
    settings: Settings, sqlite_registry: Registry, iris_files: IrisFiles
) -> None:
    from berth.api.app import build_services, create_app

    register_iris(sqlite_registry, iris_files, aliases=("production",))
    dev = settings.model_copy(update={"dev": True})

    def served() -> dict[str, Any]:
        app = create_app(dev, build_services(dev, sqlite_registry))
        with TestClient(app) as client:
            answer = client.post(
                "/api/v1/models/iris/batch-predict", json={"instances": IRIS_X[::10].tolist()}
            )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    before = served()
    optimize(sqlite_registry, "iris", alias="production")
    after = served()

    assert after["model_version"] == 2
    assert set(after) == set(before)
    assert after["predictions"] == before["predictions"]
    assert after["classes"] == before["classes"]
    assert_allclose(after["probabilities"], before["probabilities"], atol=1e-4)


def test_random_forest_checked_on_given_data(sqlite_registry: Registry, tmp_path: Path) -> None:
    features, target = make_classification(n_samples=600, n_features=20, random_state=0)
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(features, target)
    _register(sqlite_registry, "forest", forest, features[:20], tmp_path)
    np.save(tmp_path / "holdout.npy", features)

    report = optimize(sqlite_registry, "forest:1", data=tmp_path / "holdout.npy")

    assert report.data.sources == (("rows of holdout.npy", 600),)
    assert report.check.rows == 600
    assert report.check.agreeing is not None
    assert report.check.agreeing == 600  # ties break to the first class, as in scikit-learn
    optimized = load_version(sqlite_registry, report.version).predict(features)
    assert_allclose(optimized.probabilities, forest.predict_proba(features), atol=1e-4)


def test_churn_pipeline_takes_the_same_columns(
    sqlite_registry: Registry, churn_files: tuple[Path, Path, Path]
) -> None:
    source = register_churn(sqlite_registry, churn_files)
    sample = pd.read_csv(churn_files[1])

    report = optimize(sqlite_registry, "churn", data=churn_files[1])

    assert report.version.signature.columns == source.signature.columns
    assert report.version.example == source.example
    assert sqlite_registry.resolve("churn@production").number == 1
    frame = model_input(source.signature, sample, "sample")
    expected = load_version(sqlite_registry, source).predict(frame)
    actual = load_version(sqlite_registry, report.version).predict(frame)
    assert_array_equal(actual.predictions, expected.predictions)
    assert_allclose(actual.probabilities, expected.probabilities, atol=1e-4)
    assert actual.classes == expected.classes


def test_a_conversion_gives_the_same_bytes_every_time(
    sqlite_registry: Registry, churn_files: tuple[Path, Path, Path]
) -> None:
    """No random graph name: one model converts to one sha256 (an export is reproducible)."""
    source = register_churn(sqlite_registry, churn_files)
    model = load_version(sqlite_registry, source).model  # type: ignore[attr-defined]

    first, second = (to_onnx(model, source.signature) for _ in range(2))

    assert first.onnx_bytes == second.onnx_bytes
    import onnx

    assert onnx.load_from_string(first.onnx_bytes).graph.name == "Pipeline"


def test_generated_rows_follow_the_reference_statistics(
    sqlite_registry: Registry, churn_files: tuple[Path, Path, Path]
) -> None:
    model, sample, signature = churn_files
    version = register(
        sqlite_registry,
        RegisterRequest(
            name="churn", path=model, sample=sample, signature=signature, reference=sample
        ),
    )

    data = check_data(version)

    assert data.rows == MIN_ROWS
    assert data.generated_from == "the reference statistics"
    assert isinstance(data.inputs, pd.DataFrame)
    assert set(data.inputs["plan"]) <= {"basic", "pro", "enterprise"}
    assert data.inputs["tenure_months"].between(0, 600).all()
    # Deterministic: the same rows every time.
    assert check_data(version).inputs.equals(data.inputs)
    report = optimize(sqlite_registry, "churn:1")
    assert report.version.reference_stats == version.reference_stats


def test_check_data_without_header_row_gets_the_signatures_columns(
    sqlite_registry: Registry, churn_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    version = register_churn(sqlite_registry, churn_files)
    frame = pd.read_csv(churn_files[1])
    frame.to_csv(tmp_path / "rows.csv", index=False, header=False)

    data = check_data(version, tmp_path / "rows.csv")

    assert data.rows == len(frame)  # the first row is checked too
    assert isinstance(data.inputs, pd.DataFrame)
    assert list(data.inputs.columns) == list(frame.columns)


def test_regressor_compares_values(sqlite_registry: Registry, tmp_path: Path) -> None:
    features, _ = make_classification(n_samples=200, n_features=5, random_state=1)
    _register(
        sqlite_registry, "ridge", Ridge().fit(features, features @ np.arange(5)), features, tmp_path
    )

    report = optimize(sqlite_registry, "ridge:1")

    assert report.check.agreeing is None
    assert report.check.max_value_diff is not None
    assert report.check.max_value_diff <= 1e-4


def test_lightgbm_is_converted(sqlite_registry: Registry, tmp_path: Path) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    pytest.importorskip("onnxmltools")
    features, target = make_classification(n_samples=300, n_features=8, random_state=0)
    booster = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(features, target)
    _register(sqlite_registry, "boosted", booster, features[:20], tmp_path)

    report = optimize(sqlite_registry, "boosted:1")

    assert report.version.flavor == "onnx"
    assert report.precision == "float"  # the LightGBM converter writes float graphs only
    assert report.check.passed


def test_xgboost_regressor_is_converted(sqlite_registry: Registry, tmp_path: Path) -> None:
    xgboost = pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    features, _ = make_classification(n_samples=300, n_features=8, random_state=0)
    booster = xgboost.XGBRegressor(n_estimators=10).fit(features, features[:, 0])
    _register(sqlite_registry, "xgb", booster, features[:20], tmp_path)

    report = optimize(sqlite_registry, "xgb:1")

    assert report.check.max_value_diff is not None
    assert report.check.max_value_diff <= 1e-4


def test_booster_packages_are_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    register_booster_converters.cache_clear()
    try:
        assert register_booster_converters() == ()
    finally:
        register_booster_converters.cache_clear()
    with pytest.raises(InvalidInput, match="pip install"):
        require("berth_no_such_package", "the ONNX conversion")


# quantization ------------------------------------------------------------------------------


@pytest.fixture
def network(sqlite_registry: Registry, tmp_path: Path) -> Registry:
    features, target = make_classification(n_samples=300, n_features=10, random_state=0)
    features = features.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier((16,), max_iter=300, random_state=0).fit(features, target)
    _register(sqlite_registry, "network", model, features[:20], tmp_path)
    return sqlite_registry


def test_int8_quantization_within_a_tolerance(network: Registry) -> None:
    report = optimize(network, "network:1", quantize="int8", tolerance=0.5)

    assert report.quantized == "int8"
    assert report.check.tolerance == 0.5
    lineage = report.version.to_dict()["lineage"]
    assert lineage["quantized"] == "int8"
    graph = onnx.load_from_string(artifact_path(network, report.version).read_bytes())
    assert "MatMulInteger" in {node.op_type for node in graph.graph.node}


def test_int8_quantization_beyond_the_tolerance_is_refused(network: Registry) -> None:
    with pytest.raises(NotEquivalent) as refused:
        optimize(network, "network:1", quantize="int8", tolerance=1e-9)

    assert "raise --tolerance" in refused.value.message
    assert _versions(network, "network") == [1]


def test_an_onnx_version_can_be_quantized(network: Registry) -> None:
    optimize(network, "network:1")

    report = optimize(network, "network:2", quantize="int8", tolerance=0.5)

    assert report.precision is None  # nothing converted: the source is a graph already
    lineage = report.version.to_dict()["lineage"]
    assert lineage["source"] == "network:2"
    assert lineage["quantized"] == "int8"


def test_quantizing_a_double_graph_is_refused(sqlite_registry: Registry, tmp_path: Path) -> None:
    features, target = make_classification(n_samples=300, n_features=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier((8,), max_iter=50, random_state=0).fit(features, target)
    _register(sqlite_registry, "wide", model, features[:20], tmp_path)
    assert optimize(sqlite_registry, "wide:1").precision == "double"

    with pytest.raises(QuantizationError, match="works on float32 graphs"):
        optimize(sqlite_registry, "wide:2", quantize="int8")


def test_quantizing_a_graph_without_weights_is_refused(
    sqlite_registry: Registry, iris_files: IrisFiles
) -> None:
    register_iris(sqlite_registry, iris_files)

    with pytest.raises(QuantizationError, match="LinearClassifier"):
        optimize(sqlite_registry, "iris:1", quantize="int8")

    assert _versions(sqlite_registry, "iris") == [1]


# refusals ----------------------------------------------------------------------------------


def test_non_equivalent_conversion_is_refused_with_the_measurements(
    registry: Registry, iris_files: IrisFiles
) -> None:
    register_iris(registry, iris_files)

    # float32 arithmetic cannot match float64 scikit-learn exactly: a zero tolerance fails.
    with pytest.raises(NotEquivalent) as refused:
        optimize(registry, "iris:1", tolerance=0.0)

    message = refused.value.message
    assert f"on {MIN_ROWS} rows" in message
    assert "max probability difference" in message
    assert "above the tolerance 0" in message
    assert "Nothing was registered" in message
    report = refused.value.report
    assert not report.passed
    assert report.rows == MIN_ROWS
    assert report.max_probability_diff is not None
    assert report.max_probability_diff > 0
    assert report.worst
    assert _versions(registry, "iris") == [1]


def test_check_refuses_a_different_model(
    sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    source = register_iris(sqlite_registry, iris_files)
    labels = np.random.default_rng(0).integers(0, 3, len(IRIS_X))
    other = LogisticRegression(max_iter=1000).fit(IRIS_X, labels)
    path = tmp_path / "other.onnx"
    path.write_bytes(to_onnx(other, source.signature).onnx_bytes)
    data = CheckData(IRIS_X, (("iris rows", len(IRIS_X)),))

    report = check(load_version(sqlite_registry, source), load_runtime("onnx", path), data)

    assert not report.passed
    assert report.label_agreement is not None
    assert report.label_agreement < 0.999
    assert any("labels identical on" in failure for failure in report.failures())
    # The worst rows come first, disagreeing labels before mere probability differences.
    assert report.worst[0].source != report.worst[0].optimized


def test_ties_broken_the_other_way_are_reported_not_counted() -> None:
    """A 0.5/0.5 row: float rounding picks the label, so either runtime's answer is the source's."""
    rows = np.zeros((1000, 2), dtype=np.float32)
    data = CheckData(rows, (("rows", 1000),))
    probabilities = np.tile([0.9, 0.1], (1000, 1))
    probabilities[:5] = [0.5, 0.5]  # five ties
    probabilities[5] = [0.6, 0.4]  # and one real disagreement
    source = Prediction(np.zeros(1000, dtype=np.int64), probabilities, [0, 1])
    labels = np.zeros(1000, dtype=np.int64)
    labels[:6] = 1
    shifted = probabilities.copy()
    shifted[:5] = [0.49999994, 0.50000006]
    optimized = Prediction(labels, shifted, [0, 1])

    report = compare(source, optimized, data)

    assert report.ties == 5
    assert report.agreeing == 999  # the real disagreement still counts
    assert report.passed  # 99.9%
    assert "5 of them ties broken the other way" in report.summary()
    assert report.to_dict()["ties"] == 5

    labels[6] = 1  # a second real disagreement: 99.8%
    assert not compare(source, Prediction(labels, shifted, [0, 1]), data).passed


def test_rejected_rows_fail_the_check(sqlite_registry: Registry, iris_files: IrisFiles) -> None:
    source = register_iris(sqlite_registry, iris_files)

    class Refusing:
        flavor = "onnx"

        def predict(self, inputs: Any) -> Any:
            raise InvalidInput("no")

        def declared_signature(self) -> None:
            return None

    refusing: Runtime = Refusing()
    report = check(load_version(sqlite_registry, source), refusing, check_data(source))

    assert not report.passed
    assert "rejected rows" in report.failures()[0]


def test_unsupported_transformer_is_named(sqlite_registry: Registry, tmp_path: Path) -> None:
    features, target = make_classification(
        n_samples=100, n_features=3, n_informative=2, n_redundant=0, random_state=0
    )
    model = make_pipeline(SplineTransformer(), LogisticRegression()).fit(features, target)
    _register(sqlite_registry, "splines", model, features[:10], tmp_path)

    with pytest.raises(ConversionError, match=r"SplineTransformer.*no ONNX converter"):
        optimize(sqlite_registry, "splines:1")

    assert _versions(sqlite_registry, "splines") == [1]


def test_python_model_is_refused(sqlite_registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "scorer.py").write_text(
        "class Model:\n    def load(self):\n        pass\n\n"
        "    def predict(self, inputs):\n        return inputs.sum(axis=1)\n"
    )
    np.save(tmp_path / "sample.npy", IRIS_X[:5])
    register(
        sqlite_registry,
        RegisterRequest(name="scorer", path=tmp_path / "scorer.py", sample=tmp_path / "sample.npy"),
    )

    with pytest.raises(InvalidInput, match="is a python model; optimize converts scikit-learn"):
        optimize(sqlite_registry, "scorer:1")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"tolerance": 1e-3}, "looser than 0.0001"),
        ({"tolerance": -1.0}, "at least 0"),
        ({"quantize": "int4"}, "unknown quantization 'int4'"),
        ({"alias": "bad alias"}, "alias name 'bad alias' is not valid"),
    ],
)
def test_bad_options_are_refused(
    sqlite_registry: Registry, iris_files: IrisFiles, options: dict[str, Any], match: str
) -> None:
    register_iris(sqlite_registry, iris_files)

    with pytest.raises(InvalidInput, match=match):
        optimize(sqlite_registry, "iris:1", **options)


def test_onnx_source_needs_quantize(sqlite_registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(sqlite_registry, iris_files)
    optimize(sqlite_registry, "iris:1")

    with pytest.raises(InvalidInput, match="ONNX model already; to quantize it"):
        optimize(sqlite_registry, "iris:2")


def test_alias_moves_when_asked(sqlite_registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(sqlite_registry, iris_files, aliases=("production",))

    optimize(sqlite_registry, "iris@production", alias="staging")

    assert sqlite_registry.resolve("iris@staging").number == 2
    assert sqlite_registry.resolve("iris@production").number == 1


def test_lineage_needs_a_registered_source(
    sqlite_registry: Registry, iris_files: IrisFiles
) -> None:
    model, sample = iris_files
    request = RegisterRequest(
        name="iris",
        path=model,
        sample=sample,
        trust_pickle=True,
        lineage=Lineage("iris", 7, {"method": "onnx"}),
    )
    with pytest.raises(NotFound, match="source version iris:7"):
        register(sqlite_registry, request)


# migration ---------------------------------------------------------------------------------


def test_migration_0004_adds_and_removes_lineage(registry: Registry) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    def columns() -> set[str]:
        with registry.db.engine.connect() as connection:
            return {c["name"] for c in inspect(connection).get_columns("versions")}

    lineage = {"source_model", "source_version", "lineage"}
    assert lineage <= columns()
    for target, migrate in (("0003", command.downgrade), ("head", command.upgrade)):
        with registry.db.engine.begin() as connection:
            config.attributes["connection"] = connection
            migrate(config, target)
        assert (lineage <= columns()) == (target == "head")


# CLI ---------------------------------------------------------------------------------------


def test_cli_optimize_and_show(run_both: Run, iris_files: IrisFiles) -> None:
    run = run_both
    model, sample = iris_files
    assert (
        run(
            "models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle"
        ).code
        == 0
    )

    done = run("models", "optimize", "iris:1")

    assert done.code == 0, done.err
    assert "iris:2" in done.out
    assert "ms per call, batch 64" in done.out
    assert "speedup" in done.out
    assert "label agreement" in done.out
    assert "│ iris:2 (onnx, float) from iris:1 (sklearn)" in done.out
    assert "no alias moved; serve it with `berth models alias iris production 2`" in done.out
    shown = run("models", "show", "iris:2")
    assert "lineage  derived from iris:1 (onnx, float)" in shown.out
    as_json = json.loads(run("models", "show", "iris:2", "--json").out)
    assert as_json["lineage"]["source"] == "iris:1"


def test_cli_optimize_on_rows_of_a_file(
    run_both: Run, iris_files: IrisFiles, tmp_path: Path
) -> None:
    """--data goes to the server with the options (a multipart body) in remote mode."""
    run = run_both
    model, sample = iris_files
    run("models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle")
    rows = tmp_path / "holdout.npy"
    np.save(rows, IRIS_X[:120])

    done = run(
        "models", "optimize", "iris:1", "--data", str(rows), "--alias", "staging", "--json"
    )  # fmt: skip

    assert done.code == 0, done.err
    report = json.loads(done.out)
    assert report["source"] == "iris:1"
    assert report["source_flavor"] == "sklearn"
    assert report["check"]["data"] == {
        "rows": 120,
        "sources": {"rows of holdout.npy": 120},
        "generated_from": None,
        "labelled": False,
        "description": "120 rows of holdout.npy",
    }
    assert report["check"]["agreeing"] == 120
    assert report["version"]["aliases"] == ["staging"]
    assert report["version"]["lineage"]["check"]["data"] == {"rows of holdout.npy": 120}
    missing = run("models", "optimize", "iris:1", "--data", str(tmp_path / "none.csv"))
    assert missing.code == 1
    assert "--data " in missing.err
    assert "none.csv does not exist" in missing.err
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, IRIS_X[:5, :2])
    refused = run("models", "optimize", "iris:1", "--data", str(wrong))
    assert refused.code == 1
    assert refused.err.count("\n") == 1
    assert str(tmp_path) not in refused.err.replace(str(wrong), "")  # no server path


def test_cli_refusal_is_one_line(run_both: Run, iris_files: IrisFiles) -> None:
    run = run_both
    model, sample = iris_files
    run("models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle")

    refused = run("models", "optimize", "iris:1", "--tolerance", "0")

    assert refused.code == 1
    assert refused.err.startswith("error: optimize refused")
    assert refused.err.strip().count("\n") == 0
    assert json.loads(run("models", "list", "--json").out)[0]["versions"] == [1]
    for flags, named in (
        (["--quantize", "int4"], "unknown quantization 'int4'"),
        (["--tolerance", "0.5"], "--tolerance 0.5 is looser than 0.0001"),
        (["--alias", "a/b"], "alias name 'a/b' is not valid"),
    ):
        wrong = run("models", "optimize", "iris:1", *flags)
        assert wrong.code == 1
        assert named in wrong.err, flags


def test_cli_help_has_an_example(run: Run) -> None:
    shown = run("models", "optimize", "--help")

    assert "Example: berth models optimize" in shown.out
