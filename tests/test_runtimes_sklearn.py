from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from berth.errors import ArtifactIntegrityError, InvalidInput, ModelLoadError
from berth.registry.artifacts import file_sha256
from berth.registry.signature import ColumnSpec, Signature, TensorSpec
from berth.runtimes import UntrustedArtifact, load_runtime
from berth.runtimes.base import Runtime
from berth.runtimes.sklearn import builtin_trusted

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 3))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


def _double(values: Any) -> Any:
    return values * 2


def _load(path: Path, **trust: Any) -> Runtime:
    """Load as the registry does: a pickle with the digest recorded when it was trusted."""
    if path.suffix != ".skops":
        trust.setdefault("pickle_sha256", file_sha256(path))
    return load_runtime("sklearn", path, **trust)


def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, size=n).astype(float),
            "income": rng.normal(50_000, 10_000, size=n),
            "city": rng.choice(["paris", "oslo", "lima"], size=n),
        }
    )


def _pipeline(frame: pd.DataFrame) -> Pipeline:
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
        ]
    )
    target = np.where((frame["age"] > 45) | (frame["city"] == "oslo"), "yes", "no")
    return Pipeline([("pre", pre), ("clf", LogisticRegression())]).fit(frame, target)


@pytest.fixture(scope="module")
def logistic() -> LogisticRegression:
    return LogisticRegression().fit(X, Y)


@pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".skops"])
def test_logistic_regression_round_trip(
    tmp_path: Path, logistic: LogisticRegression, suffix: str
) -> None:
    path = tmp_path / f"model{suffix}"
    if suffix == ".skops":
        sio.dump(logistic, path)
    else:
        joblib.dump(logistic, path)

    runtime = _load(path)
    result = runtime.predict(X[:10])

    assert runtime.flavor == "sklearn"
    # Fitted on an array, it knows its width: a float tensor of 3, and what it returns.
    assert runtime.declared_signature() == Signature(
        kind="tensor",
        inputs=(TensorSpec("input", "float64", (-1, 3)),),
        outputs=(
            TensorSpec("predict", "int64", (-1,)),
            TensorSpec("predict_proba", "float64", (-1, 2)),
        ),
    )
    assert_array_equal(result.predictions, logistic.predict(X[:10]))
    assert result.probabilities is not None
    assert_allclose(result.probabilities, logistic.predict_proba(X[:10]))
    assert result.classes == [0, 1]


@pytest.mark.filterwarnings("error")
def test_frame_given_to_array_fitted_model_is_passed_as_array(
    tmp_path: Path, logistic: LogisticRegression
) -> None:
    joblib.dump(logistic, tmp_path / "model.joblib")
    frame = pd.DataFrame(X[:5], columns=["a", "b", "c"])

    result = _load(tmp_path / "model.joblib").predict(frame)

    assert_array_equal(result.predictions, logistic.predict(X[:5]))


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_column_transformer_pipeline_on_frame(tmp_path: Path, suffix: str) -> None:
    frame = _frame()
    pipeline = _pipeline(frame)
    path = tmp_path / f"pipeline{suffix}"
    if suffix == ".skops":
        sio.dump(pipeline, path)
    else:
        joblib.dump(pipeline, path)
    request = pd.DataFrame(
        {"age": [25.0, 60.0, 33.0], "income": [40_000.0, 70_000.0, 52_000.0]}
        | {"city": ["oslo", "paris", "tokyo"]}  # tokyo: unseen category, ignored
    )

    result = _load(path).predict(request)

    assert_array_equal(result.predictions, pipeline.predict(request))
    assert result.probabilities is not None
    assert_allclose(result.probabilities, pipeline.predict_proba(request))
    assert_allclose(result.probabilities.sum(axis=1), 1.0)
    assert result.classes == ["no", "yes"]


def test_frame_fitted_pipeline_declares_its_columns(tmp_path: Path) -> None:
    """Names from feature_names_in_, types from what the first step does with each column."""
    from sklearn.impute import SimpleImputer

    frame = _frame()
    frame["plan"] = np.where(frame["age"] > 40, 1, 2)  # an integer category
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age"]),
            ("scaled", StandardScaler(), [1]),  # income, by position
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
        ]
    )
    model = make_pipeline(make_pipeline(pre), LogisticRegression()).fit(frame, Y)
    sio.dump(model, tmp_path / "model.skops")

    signature = _load(tmp_path / "model.skops").declared_signature()

    assert signature is not None
    assert signature.columns == (
        ColumnSpec("age", "float64", nullable=True),  # imputed
        ColumnSpec("income", "float64"),
        ColumnSpec("city", "string"),
        ColumnSpec("plan", "int64"),
    )
    assert [o.name for o in signature.outputs] == ["predict", "predict_proba"]


def test_estimator_that_refuses_its_declared_inputs_says_so(tmp_path: Path) -> None:
    model = _Picky().fit(pd.DataFrame({"a": X[:, 0] + 5, "b": X[:, 1] + 5}), Y)
    joblib.dump(model, tmp_path / "model.joblib")

    with pytest.raises(InvalidInput, match=r"names its inputs \(feature_names_in_\) but refused"):
        _load(tmp_path / "model.joblib").declared_signature()


class _Picky:
    """Knows its columns, but refuses zeros: the probe row of its declared inputs fails."""

    def fit(self, frame: pd.DataFrame, _target: Any) -> _Picky:
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        return self

    def predict(self, rows: Any) -> Any:
        if (np.asarray(rows, dtype=float) == 0).any():
            raise ValueError("zero is not a valid reading")
        return np.zeros(len(rows), dtype=np.int64)


def test_named_arrays_become_a_table(tmp_path: Path) -> None:
    frame = _frame()
    pipeline = _pipeline(frame)
    joblib.dump(pipeline, tmp_path / "pipeline.joblib")
    inputs = {name: frame[name].to_numpy()[:4] for name in ["age", "income", "city"]}

    result = _load(tmp_path / "pipeline.joblib").predict(inputs)

    assert_array_equal(result.predictions, pipeline.predict(frame[:4]))


def test_array_given_to_frame_fitted_model_uses_feature_names(tmp_path: Path) -> None:
    frame = _frame()[["age", "income"]]
    model = LinearRegression().fit(frame, frame["age"] * 2 + 1)
    joblib.dump(model, tmp_path / "model.joblib")

    result = _load(tmp_path / "model.joblib").predict(frame.to_numpy()[:3])

    assert_allclose(result.predictions, model.predict(frame[:3]))


def test_frame_columns_are_put_in_fitted_order(tmp_path: Path) -> None:
    frame = _frame()[["age", "income"]]
    model = LinearRegression().fit(frame, frame["age"] * 2 + frame["income"])
    joblib.dump(model, tmp_path / "model.joblib")
    request = frame[["income", "age"]].assign(extra=1.0)[:3]

    result = _load(tmp_path / "model.joblib").predict(request)

    assert_allclose(result.predictions, model.predict(frame[:3]))


def test_regressor_has_no_probabilities(tmp_path: Path) -> None:
    model = LinearRegression().fit(X, X @ np.array([1.0, -2.0, 0.5]))
    joblib.dump(model, tmp_path / "model.joblib")

    result = _load(tmp_path / "model.joblib").predict(X[:4])

    assert_allclose(result.predictions, model.predict(X[:4]))
    assert result.probabilities is None
    assert result.classes is None


def test_wrong_feature_count_is_invalid_input(tmp_path: Path, logistic: LogisticRegression) -> None:
    joblib.dump(logistic, tmp_path / "model.joblib")
    runtime = _load(tmp_path / "model.joblib")

    with pytest.raises(InvalidInput, match="5 features"):
        runtime.predict(np.ones((2, 5)))


def test_missing_column_is_invalid_input(tmp_path: Path) -> None:
    frame = _frame()
    joblib.dump(_pipeline(frame), tmp_path / "pipeline.joblib")
    runtime = _load(tmp_path / "pipeline.joblib")

    with pytest.raises(InvalidInput, match="city"):
        runtime.predict(frame.drop(columns=["city"]))


@pytest.mark.parametrize("name", ["model.joblib", "model.skops"])
def test_garbage_file_is_load_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"not a model at all")

    with pytest.raises(ModelLoadError, match="could not"):
        _load(tmp_path / name)


def test_skops_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    model = make_pipeline(FunctionTransformer(_double), LogisticRegression()).fit(X, Y)
    sio.dump(model, tmp_path / "model.skops")

    with pytest.raises(ModelLoadError, match=r"_double.*python flavor"):
        _load(tmp_path / "model.skops")


def test_object_without_predict_is_load_error(tmp_path: Path) -> None:
    joblib.dump({"weights": [1, 2]}, tmp_path / "model.joblib")

    with pytest.raises(ModelLoadError, match="no predict"):
        _load(tmp_path / "model.joblib")


def test_unfitted_estimator_is_load_error(tmp_path: Path) -> None:
    joblib.dump(LogisticRegression(), tmp_path / "model.joblib")
    runtime = _load(tmp_path / "model.joblib")

    with pytest.raises(ModelLoadError, match="never fitted"):
        runtime.predict(X[:2])


def _classifiers() -> list[Any]:
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.tree import DecisionTreeClassifier

    return [
        LogisticRegression(max_iter=500),
        RandomForestClassifier(n_estimators=10, random_state=0),
        GradientBoostingClassifier(n_estimators=10, random_state=0),
        HistGradientBoostingClassifier(max_iter=10),
        DecisionTreeClassifier(random_state=0),
    ]


@pytest.mark.parametrize("estimator", _classifiers(), ids=lambda e: type(e).__name__)
def test_labels_derived_from_probabilities_match_predict(estimator: Any, tmp_path: Path) -> None:
    from sklearn.datasets import make_classification

    features, target = make_classification(
        n_samples=400, n_features=6, n_classes=3, n_informative=4, random_state=1
    )
    model = estimator.fit(features, target)
    joblib.dump(model, tmp_path / "m.joblib")
    runtime = _load(tmp_path / "m.joblib")
    probe = np.random.default_rng(3).normal(size=(500, 6)) * 3
    assert_array_equal(runtime.predict(probe).predictions, model.predict(probe))


# trust: pickles ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.joblib", "model.pkl", "model.pickle", "model.bin"])
def test_pickle_without_digest_is_refused(
    tmp_path: Path, logistic: LogisticRegression, name: str
) -> None:
    joblib.dump(logistic, tmp_path / name)

    with pytest.raises(UntrustedArtifact) as caught:
        load_runtime("sklearn", tmp_path / name)
    message = caught.value.message
    assert name in message
    assert "runs any code" in message
    assert 'skops.io.dump(model, "model.skops")' in message
    assert "--trust-pickle" in message


def test_pickle_with_another_digest_is_refused(
    tmp_path: Path, logistic: LogisticRegression
) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(logistic, path)
    registered = file_sha256(path)
    joblib.dump(LinearRegression().fit(X, X[:, 0]), path)  # swapped after it was trusted

    with pytest.raises(ArtifactIntegrityError, match=f"expected {registered}"):
        load_runtime("sklearn", path, pickle_sha256=registered)


@pytest.mark.parametrize("compress", [0, 3])
def test_trusted_pickle_loads_plain_and_compressed(
    tmp_path: Path, logistic: LogisticRegression, compress: int
) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(logistic, path, compress=compress)

    result = load_runtime("sklearn", path, pickle_sha256=file_sha256(path)).predict(X[:5])

    assert_array_equal(result.predictions, logistic.predict(X[:5]))


def test_plain_pickle_loads_when_trusted(tmp_path: Path, logistic: LogisticRegression) -> None:
    import pickle

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(logistic))

    result = load_runtime("sklearn", path, pickle_sha256=file_sha256(path)).predict(X[:5])

    assert_array_equal(result.predictions, logistic.predict(X[:5]))


# trust: the skops allow-list -----------------------------------------------------------------


REAL_MODELS = [
    "column-transformer",
    "random-forest",
    "hist-gradient-boosting",
    "log1p",
    "imputer",
    "select-k-best",
    "knn",
    "mlp",
]


def _real_model(kind: str) -> tuple[Any, Any]:
    """A common estimator or pipeline, and rows to predict on."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    if kind == "column-transformer":
        frame = _frame()
        return _pipeline(frame), frame
    if kind == "log1p":
        positive = np.abs(X)
        model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression())
        return model.fit(positive, Y), positive
    with_gaps = X.copy()
    with_gaps[0, 0] = np.nan
    estimators = {
        "random-forest": RandomForestClassifier(n_estimators=5, random_state=0),
        "hist-gradient-boosting": HistGradientBoostingClassifier(max_iter=5),
        "imputer": make_pipeline(SimpleImputer(), LogisticRegression()),
        "select-k-best": make_pipeline(SelectKBest(f_classif, k=2), LogisticRegression()),
        "knn": KNeighborsClassifier(3),
        "mlp": MLPClassifier(max_iter=20, random_state=0),
    }
    return estimators[kind].fit(with_gaps if kind == "imputer" else X, Y), X


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", REAL_MODELS)
def test_real_pipelines_load_from_skops_without_extra_trust(tmp_path: Path, kind: str) -> None:
    model, rows = _real_model(kind)
    path = tmp_path / "model.skops"
    sio.dump(model, path)

    result = load_runtime("sklearn", path).predict(rows[:5])

    assert_array_equal(result.predictions, model.predict(rows[:5]))


@pytest.mark.parametrize(
    ("function", "reported"),
    [(np.load, "numpy.load"), (np.sum, "numpy.sum"), (eval, "builtins.eval")],
)
def test_skops_with_a_function_off_the_allow_list_is_refused(
    tmp_path: Path, function: Any, reported: str
) -> None:
    sio.dump(FunctionTransformer(function).fit(X), tmp_path / "model.skops")
    # FunctionTransformer has no predict: the refusal must come first, at the type check.
    with pytest.raises(UntrustedArtifact) as caught:
        load_runtime("sklearn", tmp_path / "model.skops")
    message = caught.value.message
    assert reported in message
    assert f"--trust-type {reported}" in message
    assert "BERTH_TRUSTED_TYPES" in message


def test_skops_loads_a_type_it_is_told_to_trust(tmp_path: Path) -> None:
    model = make_pipeline(FunctionTransformer(_double), LogisticRegression()).fit(X, Y)
    sio.dump(model, tmp_path / "model.skops")
    name = f"{__name__}._double"

    result = load_runtime("sklearn", tmp_path / "model.skops", trusted_types=[name])

    assert_array_equal(result.predict(X[:4]).predictions, model.predict(X[:4]))


@pytest.mark.parametrize(
    ("name", "trusted"),
    [
        # classes defined by scikit-learn
        ("sklearn.tree._tree.Tree", True),
        ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", True),
        ("sklearn.utils._bunch.Bunch", True),
        # scikit-learn scores; not its other functions (this one writes files)
        ("sklearn.feature_selection._univariate_selection.f_classif", True),
        ("sklearn.datasets._svmlight_format_io.dump_svmlight_file", False),
        # numpy/scipy arrays, dtypes, scalars, sparse matrices and ufuncs
        ("numpy.dtype", True),
        ("numpy.ndarray", True),
        ("numpy.float64", True),
        ("numpy.log1p", True),
        ("scipy.sparse._csr.csr_matrix", True),
        # ... but not their other functions or classes
        ("numpy.load", False),
        ("numpy.sum", False),
        ("numpy.vectorize", False),
        ("numpy.memmap", False),
        ("scipy.io.loadmat", False),
        ("scipy.interpolate._bsplines.BSpline", False),
        # names reached through the packages, names that do not exist, other packages
        ("numpy.os.system", False),
        ("sklearn.utils._joblib.Parallel", False),
        ("sklearn.nothing.Here", False),
        ("numpy.conftest.anything", False),
        ("builtins.eval", False),
        ("mypackage.MyTransformer", False),
        ("numpy", False),
        ("numpy.dtype; import os", False),
    ],
)
def test_builtin_allow_list(name: str, trusted: bool) -> None:
    assert builtin_trusted(name) is trusted
