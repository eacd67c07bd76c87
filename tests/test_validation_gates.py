"""Validation gates (`berth validate`): real models, real files, each gate passing and failing."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, mean_absolute_error, roc_auc_score

from berth.errors import InvalidInput, NotFound
from berth.ops.gate_config import GateConfig, parse_output_range
from berth.ops.gate_report import GateCheck, GateReport, report_table
from berth.ops.validation import run_gates
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from tests.conftest import Run, register_iris

# trained models and their files ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A trained model saved with skops, its feature sample and a test file with the target."""

    model: Path
    sample: Path
    test: Path
    frame: pd.DataFrame
    """The test rows, target included."""
    estimator: Any


def _case(folder: Path, name: str, estimator: Any, train: pd.DataFrame, test: pd.DataFrame) -> Case:
    features = [c for c in train.columns if c != "y"]
    estimator.fit(train[features], train["y"])
    sio.dump(estimator, folder / f"{name}.skops")
    train[features].head(20).to_csv(folder / f"{name}-sample.csv", index=False)
    test.to_csv(folder / f"{name}-test.csv", index=False)
    return Case(
        folder / f"{name}.skops",
        folder / f"{name}-sample.csv",
        folder / f"{name}-test.csv",
        test,
        estimator,
    )


def _binary_frame() -> pd.DataFrame:
    x, y = make_classification(
        n_samples=400,
        n_features=4,
        n_informative=3,
        n_redundant=0,
        class_sep=2.0,
        random_state=3,
    )
    frame = pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"])
    frame["y"] = y
    return frame


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("gates")
    binary = _binary_frame()
    train, test = binary.iloc[:300], binary.iloc[300:].reset_index(drop=True)
    # The same features with shuffled labels: a model that learned nothing.
    noise = train.assign(y=np.random.default_rng(1).permutation(train["y"].to_numpy()))

    iris = load_iris(as_frame=True)
    flowers = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    flowers["y"] = iris.target_names[iris.target]

    x, y = make_regression(n_samples=300, n_features=3, noise=5.0, random_state=0)
    numbers = pd.DataFrame(x, columns=["a", "b", "c"])
    numbers["y"] = y
    return {
        "binary": _case(folder, "binary", LogisticRegression(), train, test),
        "noise": _case(folder, "noise", LogisticRegression(), noise, test),
        "iris": _case(folder, "iris", LogisticRegression(max_iter=1000), flowers, flowers),
        "ridge": _case(folder, "ridge", Ridge(alpha=1.0), numbers.iloc[:200], numbers.iloc[200:]),
        "weak_ridge": _case(
            folder, "weak_ridge", Ridge(alpha=1e4), numbers.iloc[:200], numbers.iloc[200:]
        ),
    }


def _register(registry: Registry, name: str, case: Case) -> str:
    version = register(registry, RegisterRequest(name=name, path=case.model, sample=case.sample))
    return version.ref


def _checks(report: GateReport) -> dict[str, GateCheck]:
    return {check.name: check for check in report.checks}


# classifiers -------------------------------------------------------------------------------


def test_binary_classifier_passes_every_gate(
    sqlite_registry: Registry, cases: dict[str, Case]
) -> None:
    case = cases["binary"]
    ref = _register(sqlite_registry, "churn", case)
    config = GateConfig(
        data=case.test,
        target="y",
        min_accuracy=0.8,
        min_auc=0.85,
        max_latency_ms=5_000,
        no_nan=True,
        output_range=(0.0, 1.0),
    )
    report = run_gates(sqlite_registry, ref, config)

    assert report.passed, report.to_dict()
    assert report.failures() == []
    assert report.reference == "churn:1"
    assert report.rows == 100
    checks = _checks(report)
    assert list(checks) == [
        "accuracy",
        "auc",
        "latency_p99_ms",
        "no_nan",
        "output_range",
    ]
    features = case.frame[["f0", "f1", "f2", "f3"]]
    expected_accuracy = accuracy_score(case.frame["y"], case.estimator.predict(features))
    expected_auc = roc_auc_score(case.frame["y"], case.estimator.predict_proba(features)[:, 1])
    assert checks["accuracy"].value == pytest.approx(expected_accuracy)
    assert checks["auc"].value == pytest.approx(expected_auc)
    assert "positive class 1" in checks["auc"].detail
    latency = checks["latency_p99_ms"].value
    assert latency is not None
    assert 0 < latency < 5_000
    assert checks["no_nan"].value == 0
    assert checks["output_range"].value == 0
    assert checks["output_range"].detail.startswith("predictions")


def test_binary_classifier_fails_strict_gates(
    sqlite_registry: Registry, cases: dict[str, Case]
) -> None:
    case = cases["binary"]
    ref = _register(sqlite_registry, "churn", case)
    config = GateConfig(
        data=case.test,
        target="y",
        min_accuracy=0.999,
        min_auc=0.9999,
        max_latency_ms=1e-9,
        output_range=(0.0, 0.5),  # the labels are 0 and 1: every 1 is outside
    )
    report = run_gates(sqlite_registry, ref, config)

    assert not report.passed
    assert [c.name for c in report.failures()] == [
        "accuracy",
        "auc",
        "latency_p99_ms",
        "output_range",
    ]
    checks = _checks(report)
    assert checks["accuracy"].threshold == ">= 0.999"
    ones = int((case.estimator.predict(case.frame[["f0", "f1", "f2", "f3"]]) == 1).sum())
    assert checks["output_range"].value == ones
    assert f"{ones} of 100 outside" in checks["output_range"].detail


def test_multiclass_text_labels_macro_auc_and_probability_range(
    sqlite_registry: Registry, cases: dict[str, Case]
) -> None:
    case = cases["iris"]
    ref = _register(sqlite_registry, "iris", case)
    config = GateConfig(
        data=case.test,
        target="y",
        min_accuracy=0.9,
        min_auc=0.95,
        no_nan=True,
        output_range=(0.0, 1.0),
    )
    report = run_gates(sqlite_registry, ref, config)

    assert report.passed, report.to_dict()
    checks = _checks(report)
    features = case.frame.drop(columns=["y"])
    expected = roc_auc_score(
        case.frame["y"], case.estimator.predict_proba(features), multi_class="ovr", average="macro"
    )
    assert checks["auc"].value == pytest.approx(expected)
    assert "macro one-vs-rest over 3 classes" in checks["auc"].detail
    # Text labels have no numeric range: the class probabilities are checked instead.
    assert checks["output_range"].detail.startswith("class probabilities")
    assert "class probabilities" in checks["no_nan"].detail

    narrow = run_gates(sqlite_registry, ref, GateConfig(data=case.test, output_range=(0.0, 0.9)))
    assert not narrow.passed
    assert narrow.checks[0].value is not None
    assert narrow.checks[0].value > 0


def test_labels_compare_by_value(
    sqlite_registry: Registry, cases: dict[str, Case], tmp_path: Path
) -> None:
    """A target of "1"/"0" (JSON lines) or 1.0/0.0 matches the integer labels 1 and 0."""
    case = cases["binary"]
    ref = _register(sqlite_registry, "churn", case)
    config = GateConfig(data=case.test, target="y", min_accuracy=0.0, min_auc=0.0)
    expected = _checks(run_gates(sqlite_registry, ref, config))

    as_text = tmp_path / "test.jsonl"
    case.frame.assign(y=case.frame["y"].astype(str)).to_json(as_text, orient="records", lines=True)
    as_float = tmp_path / "test.parquet"
    case.frame.assign(y=case.frame["y"].astype(float)).to_parquet(as_float)
    for path in (as_text, as_float):
        found = _checks(
            run_gates(sqlite_registry, ref, GateConfig(**{**vars(config), "data": path}))
        )
        assert found["accuracy"].value == expected["accuracy"].value
        assert found["auc"].value == expected["auc"].value


def test_data_without_header_row_gets_the_signatures_columns(
    sqlite_registry: Registry, cases: dict[str, Case], tmp_path: Path
) -> None:
    case = cases["binary"]
    ref = _register(sqlite_registry, "churn", case)
    features = case.frame.drop(columns=["y"])
    headerless = tmp_path / "rows.csv"
    features.to_csv(headerless, index=False, header=False)

    report = run_gates(sqlite_registry, ref, GateConfig(data=headerless, no_nan=True))
    assert report.rows == len(features)  # the first row is a row, not column names
    # With the outcome column too, which column is which cannot be told: say what to add.
    case.frame.to_csv(headerless, index=False, header=False)
    with pytest.raises(
        InvalidInput, match=r"no header row.*add a first line with the column names"
    ):
        run_gates(sqlite_registry, ref, GateConfig(data=headerless, target="y", min_auc=0.5))


def test_tensor_model_takes_every_column_but_the_target(
    sqlite_registry: Registry, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    version = register_iris(sqlite_registry, iris_files)  # a float32 [n, 4] tensor signature
    x, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(species=y)
    frame.to_csv(tmp_path / "iris.csv", index=False)

    report = run_gates(
        sqlite_registry,
        version.ref,
        GateConfig(data=tmp_path / "iris.csv", target="species", min_accuracy=0.9),
    )
    assert report.passed
    assert report.checks[0].value is not None
    assert report.checks[0].value > 0.9

    # Without --target the outcome column would be a fifth feature: explained, not guessed.
    with pytest.raises(InvalidInput, match="every column of --data except --target"):
        run_gates(sqlite_registry, version.ref, GateConfig(data=tmp_path / "iris.csv", no_nan=True))


# regressors --------------------------------------------------------------------------------


def test_regressor_rmse_and_mae(sqlite_registry: Registry, cases: dict[str, Case]) -> None:
    case = cases["ridge"]
    ref = _register(sqlite_registry, "price", case)
    predictions = case.estimator.predict(case.frame[["a", "b", "c"]])
    rmse = float(np.sqrt(np.mean((predictions - case.frame["y"]) ** 2)))
    mae = mean_absolute_error(case.frame["y"], predictions)

    passing = run_gates(
        sqlite_registry,
        ref,
        GateConfig(data=case.test, target="y", max_rmse=rmse * 1.01, max_mae=mae * 1.01),
    )
    assert passing.passed
    checks = _checks(passing)
    assert checks["rmse"].value == pytest.approx(rmse)
    assert checks["mae"].value == pytest.approx(mae)

    failing = run_gates(
        sqlite_registry,
        ref,
        GateConfig(
            data=case.test,
            target="y",
            max_rmse=rmse * 0.99,
            max_mae=mae * 0.99,
            output_range=(-1.0, 1.0),
        ),
    )
    assert [c.name for c in failing.failures()] == ["rmse", "mae", "output_range"]
    assert _checks(failing)["rmse"].threshold.startswith("<= ")


# regression against another version ------------------------------------------------------


def test_no_regression_vs_worse_and_better_versions(
    sqlite_registry: Registry, cases: dict[str, Case]
) -> None:
    good = _register(sqlite_registry, "churn", cases["binary"])  # churn:1
    bad = _register(sqlite_registry, "churn", cases["noise"])  # churn:2
    test = cases["binary"].test

    # Without a metric threshold, accuracy and AUC are compared.
    report = run_gates(
        sqlite_registry, good, GateConfig(data=test, target="y", no_regression_vs=bad)
    )
    assert report.passed
    assert [c.name for c in report.checks] == ["no_regression.accuracy", "no_regression.auc"]

    report = run_gates(
        sqlite_registry, bad, GateConfig(data=test, target="y", no_regression_vs=good)
    )
    assert not report.passed
    failed = report.failures()[0]
    assert failed.name == "no_regression.accuracy"
    assert "churn:2" in failed.detail
    assert "churn:1" in failed.detail

    # Only the metrics with a threshold are compared; a wide tolerance lets it through.
    config = GateConfig(
        data=test, target="y", min_accuracy=0.0, no_regression_vs=good, regression_tolerance=1.0
    )
    report = run_gates(sqlite_registry, bad, config)
    assert [c.name for c in report.checks] == ["accuracy", "no_regression.accuracy"]
    assert report.passed

    # Against itself nothing regresses, even with no tolerance at all.
    same = run_gates(
        sqlite_registry, good, GateConfig(data=test, target="y", no_regression_vs=good)
    )
    assert same.passed


def test_no_regression_lower_is_better_for_regressors(
    sqlite_registry: Registry, cases: dict[str, Case]
) -> None:
    strong = _register(sqlite_registry, "price", cases["ridge"])
    weak = _register(sqlite_registry, "price", cases["weak_ridge"])
    test = cases["ridge"].test

    better = run_gates(
        sqlite_registry, strong, GateConfig(data=test, target="y", no_regression_vs=weak)
    )
    assert better.passed
    assert [c.name for c in better.checks] == ["no_regression.rmse", "no_regression.mae"]

    worse = run_gates(
        sqlite_registry, weak, GateConfig(data=test, target="y", no_regression_vs=strong)
    )
    assert [c.name for c in worse.failures()] == ["no_regression.rmse", "no_regression.mae"]


def test_regression_against_a_model_of_another_kind_is_refused(
    sqlite_registry: Registry, cases: dict[str, Case], tmp_path: Path
) -> None:
    churn = _register(sqlite_registry, "churn", cases["binary"])
    price = _register(sqlite_registry, "price", cases["ridge"])
    # Rows both models can read: the ridge's columns and the classifier's.
    frame = cases["binary"].frame.assign(a=1.0, b=2.0, c=3.0)
    frame.to_csv(tmp_path / "both.csv", index=False)
    config = GateConfig(data=tmp_path / "both.csv", target="y", no_regression_vs=price)
    with pytest.raises(InvalidInput, match="price:1 is a regressor"):
        run_gates(sqlite_registry, churn, config)


# NaN and infinity --------------------------------------------------------------------------

SHAKY_MODEL = """
import numpy as np


class Shaky:
    '''Predicts x, except NaN where x > 5 and infinity where x < -5.'''

    def load(self):
        pass

    def predict(self, inputs):
        x = inputs["x"].to_numpy(dtype=float)
        return np.where(x > 5, np.nan, np.where(x < -5, np.inf, x))
"""


def test_no_nan_gate(sqlite_registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "shaky.py").write_text(textwrap.dedent(SHAKY_MODEL))
    pd.DataFrame({"x": [0.0, 1.0]}).to_csv(tmp_path / "sample.csv", index=False)
    register(
        sqlite_registry,
        RegisterRequest(name="shaky", path=tmp_path / "shaky.py", sample=tmp_path / "sample.csv"),
    )
    pd.DataFrame({"x": [0.0, 1.0, 2.0]}).to_csv(tmp_path / "clean.csv", index=False)
    pd.DataFrame({"x": [0.0, 6.0, -7.0, 8.0]}).to_csv(tmp_path / "dirty.csv", index=False)

    clean = run_gates(
        sqlite_registry, "shaky", GateConfig(data=tmp_path / "clean.csv", no_nan=True)
    )
    assert clean.passed
    dirty = run_gates(
        sqlite_registry,
        "shaky",
        GateConfig(data=tmp_path / "dirty.csv", no_nan=True, output_range=(-10.0, 10.0)),
    )
    checks = _checks(dirty)
    assert not checks["no_nan"].passed
    assert checks["no_nan"].value == 3
    assert "first at row 1" in checks["no_nan"].detail
    # NaN is inside no range.
    assert not checks["output_range"].passed
    assert checks["output_range"].value == 3
    # JSON has no NaN: the report stays valid JSON.
    json.dumps(dirty.to_dict(), allow_nan=False)


# configuration -----------------------------------------------------------------------------


def test_gate_config_json_round_trip(tmp_path: Path) -> None:
    config = GateConfig(
        data=tmp_path / "test.csv",
        target="y",
        min_accuracy=0.8,
        min_auc=0.85,
        max_rmse=1.5,
        max_mae=1.0,
        max_latency_ms=10,
        no_nan=True,
        output_range=(0.0, 1.0),
        no_regression_vs="churn@production",
        regression_tolerance=0.01,
    )
    assert config.any()
    assert GateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    empty = GateConfig()
    assert not empty.any()
    assert GateConfig.from_dict(json.loads(json.dumps(empty.to_dict()))) == empty


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"min_acuracy": 0.8}, "unknown keys"),
        ({"data": "t.csv", "target": "y", "min_accuracy": "0.8"}, "must be a number"),
        ({"data": "t.csv", "no_nan": "yes"}, "true or false"),
        ({"data": "t.csv", "output_range": [0]}, r"\[low, high\]"),
        ({"data": "t.csv", "target": "y", "min_accuracy": 1.5}, "between 0 and 1"),
        ({"data": "t.csv", "max_latency_ms": 0}, "greater than 0"),
        ({"data": "t.csv", "output_range": [1, 0]}, "LOW <= HIGH"),
        ({"data": "t.csv", "target": "y", "no_regression_vs": "a b"}, "not a model reference"),
        ({"min_accuracy": 0.8}, "pass --data"),
        ({"data": "t.csv", "max_rmse": 1.0}, "pass --target"),
        ({"data": "t.csv", "target": "y", "max_mae": -1}, "at least 0"),
    ],
)
def test_bad_gate_config_is_refused(document: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        GateConfig.from_dict(document)


def test_parse_output_range() -> None:
    assert parse_output_range("0,1") == (0.0, 1.0)
    assert parse_output_range(" -1.5 , 2 ") == (-1.5, 2.0)
    assert parse_output_range("[0, 1]") == (0.0, 1.0)
    for text in ("0", "0,1,2", "a,b", "", "1,0", "nan,1"):
        with pytest.raises(InvalidInput, match="--output-range"):
            parse_output_range(text)


# bad inputs --------------------------------------------------------------------------------


def test_bad_inputs_are_explained(
    sqlite_registry: Registry, cases: dict[str, Case], tmp_path: Path
) -> None:
    churn = _register(sqlite_registry, "churn", cases["binary"])
    price = _register(sqlite_registry, "price", cases["ridge"])
    test = cases["binary"].test

    def refused(ref: str, config: GateConfig, match: str) -> None:
        with pytest.raises(InvalidInput, match=match):
            run_gates(sqlite_registry, ref, config)

    refused(churn, GateConfig(data=test, target="label", min_accuracy=0.5), "has no column 'label'")
    refused(churn, GateConfig(data=tmp_path / "nope.csv", no_nan=True), "does not exist")
    refused(churn, GateConfig(), "no gate to run")
    refused(
        price,
        GateConfig(data=cases["ridge"].test, target="y", min_auc=0.8),
        "price:1 is a regressor",
    )
    refused(
        price,
        GateConfig(data=cases["ridge"].test, target="y", min_accuracy=0.8),
        "--min-accuracy applies to classifiers",
    )
    refused(
        churn, GateConfig(data=test, target="y", max_rmse=1.0), "--max-rmse applies to regressors"
    )
    # A target column of the wrong kind: text where the model predicts 0 and 1.
    cases["binary"].frame.assign(y="yes").to_csv(tmp_path / "text.csv", index=False)
    refused(
        churn,
        GateConfig(data=tmp_path / "text.csv", target="y", min_accuracy=0.5),
        "none of which churn:1 predicts",
    )
    cases["ridge"].frame.assign(y="high").to_csv(tmp_path / "words.csv", index=False)
    refused(
        price, GateConfig(data=tmp_path / "words.csv", target="y", max_mae=1.0), "is not numeric"
    )
    # AUC with only one class in the target is undefined.
    cases["binary"].frame.assign(y=1).to_csv(tmp_path / "ones.csv", index=False)
    refused(
        churn,
        GateConfig(data=tmp_path / "ones.csv", target="y", min_auc=0.5),
        "at least two classes",
    )
    # Missing outcomes are not guessed.
    cases["binary"].frame.assign(y=np.where(np.arange(100) < 3, np.nan, 1.0)).to_csv(
        tmp_path / "gaps.csv", index=False
    )
    refused(
        churn,
        GateConfig(data=tmp_path / "gaps.csv", target="y", min_accuracy=0.5),
        "3 empty values",
    )
    (tmp_path / "empty.csv").write_text("f0,f1,f2,f3,y\n")
    refused(churn, GateConfig(data=tmp_path / "empty.csv", no_nan=True), "holds no rows")
    (tmp_path / "test.txt").write_text("f0\n1\n")
    refused(churn, GateConfig(data=tmp_path / "test.txt", no_nan=True), "could not read --data")
    np.save(tmp_path / "rows.npy", np.zeros((3, 4)))
    refused(
        churn,
        GateConfig(data=tmp_path / "rows.npy", target="y", min_accuracy=0.5),
        "no --target column",
    )
    cases["binary"].frame.drop(columns=["f3"]).to_csv(tmp_path / "short.csv", index=False)
    refused(
        churn,
        GateConfig(data=tmp_path / "short.csv", no_nan=True),
        r"missing the signature's columns \['f3'\]",
    )

    with pytest.raises(NotFound, match="ghost"):
        run_gates(sqlite_registry, "ghost:1", GateConfig(data=test, no_nan=True))
    with pytest.raises(NotFound):
        run_gates(
            sqlite_registry, churn, GateConfig(data=test, target="y", no_regression_vs="churn:9")
        )


def test_report_table_and_json(sqlite_registry: Registry, cases: dict[str, Case]) -> None:
    case = cases["binary"]
    ref = _register(sqlite_registry, "churn", case)
    report = run_gates(
        sqlite_registry,
        ref,
        GateConfig(data=case.test, target="y", min_accuracy=0.999, no_nan=True),
    )
    document = json.loads(json.dumps(report.to_dict()))
    assert document["reference"] == "churn:1"
    assert document["passed"] is False
    assert [c["name"] for c in document["checks"]] == ["accuracy", "no_nan"]
    assert [c["passed"] for c in document["checks"]] == [False, True]
    table = report_table(report)
    assert [column.header for column in table.columns] == [
        "check",
        "value",
        "threshold",
        "result",
        "detail",
    ]
    assert table.row_count == 2


# the command -------------------------------------------------------------------------------


def test_cli_exit_codes_table_and_json(
    run_both: Run, sqlite_registry: Registry, cases: dict[str, Case]
) -> None:
    case = cases["binary"]
    assert _register(sqlite_registry, "churn", case) == "churn:1"
    data = ["--data", str(case.test), "--target", "y"]

    passing = run_both(
        "validate", "churn:1", *data, "--min-accuracy", "0.8", "--no-nan", "--output-range", "0,1"
    )
    assert passing.code == 0, passing.err
    assert "PASS" in passing.out
    assert "FAIL" not in passing.out
    assert "accuracy" in passing.out

    failing = run_both("validate", "churn:1", *data, "--min-accuracy", "0.999", "--min-auc", "0.5")
    assert failing.code == 1
    assert "FAIL" in failing.out
    assert "1 of 2 checks failed: accuracy" in failing.out

    as_json = run_both("validate", "churn:1", *data, "--min-accuracy", "0.999", "--json")
    assert as_json.code == 1
    document = json.loads(as_json.out)
    assert document["passed"] is False
    assert document["checks"][0]["name"] == "accuracy"

    bad_range = run_both("validate", "churn:1", *data, "--output-range", "0-1")
    assert bad_range.code == 1
    assert "error: --output-range '0-1' is not LOW,HIGH" in bad_range.err

    unknown = run_both("validate", "ghost", *data, "--min-accuracy", "0.5")
    assert unknown.code == 1
    assert "error:" in unknown.err
    assert "ghost" in unknown.err

    missing = run_both(
        "validate",
        "churn:1",
        "--data",
        str(case.test),
        "--target",
        "label",
        "--min-accuracy",
        "0.5",
    )
    assert missing.code == 1
    assert "has no column 'label'" in missing.err

    helped = run_both("validate", "--help")
    assert helped.code == 0
    assert "Example" in helped.out
