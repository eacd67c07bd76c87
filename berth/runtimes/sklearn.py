"""scikit-learn (and compatible) estimators saved with skops, or with joblib/pickle when trusted.

skops files load with an allow-list of types (below); a pickle is unpickled only with the sha256
the registry recorded for a version registered with --trust-pickle (see `berth.runtimes`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import io
import re
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from berth.errors import ArtifactIntegrityError, BerthError, InvalidInput, ModelLoadError
from berth.registry.signature import Signature
from berth.runtimes import SKOPS_SUFFIX, UntrustedArtifact, pickle_refusal
from berth.runtimes.base import ModelInput, Prediction, output_specs


def argmax_families() -> tuple[type, ...]:
    """Classifiers whose predict() is exactly the argmax of predict_proba().

    For these, serving computes probabilities once and derives the labels, instead of running
    the whole pipeline twice (for a pandas ColumnTransformer that halves the latency).
    """
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    return (
        LogisticRegression,
        RandomForestClassifier,
        ExtraTreesClassifier,
        DecisionTreeClassifier,
        ExtraTreeClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
    )


class SklearnRuntime:
    flavor: str = "sklearn"

    def __init__(self, model: Any) -> None:
        self.model = model
        names = getattr(model, "feature_names_in_", None)
        self.feature_names: list[str] | None = None if names is None else [str(n) for n in names]
        classes = getattr(model, "classes_", None)
        self.classes: list[Any] | None = None if classes is None else np.asarray(classes).tolist()
        self._labels = None if classes is None else np.asarray(classes)
        final = model.steps[-1][1] if hasattr(model, "steps") else model
        self._argmax_predicts = self._labels is not None and isinstance(final, argmax_families())

    def predict(self, inputs: ModelInput) -> Prediction:
        features = self._features(inputs)
        try:
            probabilities = self._probabilities(features)
            if probabilities is not None and self._labels is not None and self._argmax_predicts:
                predictions = self._labels[probabilities.argmax(axis=1)]
            else:
                predictions = np.asarray(self.model.predict(features))
        except NotFittedError as exc:
            raise ModelLoadError(
                f"the artifact holds an estimator that was never fitted ({exc}); "
                "call fit() before saving the model"
            ) from exc
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"the model rejected the input: {exc}") from exc
        classes = self.classes if probabilities is not None else None
        return Prediction(predictions=predictions, probabilities=probabilities, classes=classes)

    def declared_signature(self) -> Signature | None:
        """The inputs the estimator knows (`feature_names_in_`, `n_features_in_`), with the
        outputs of a probe row; None when it knows none. Raises `InvalidInput` when the model
        refuses the probe: then its declared inputs are not enough to call it."""
        from berth.runtimes.sklearn_inputs import declared_inputs

        declared = declared_inputs(self.model)
        if declared is None:
            return None
        try:
            prediction = self.predict(declared.probe)
        except Exception as exc:  # the estimator's own code: any error means "cannot tell"
            reason = exc.message if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
            raise InvalidInput(
                f"the estimator names its inputs ({declared.source}) but refused a row built "
                f"from them: {reason}"
            ) from exc
        return declared.signature.with_outputs(output_specs(prediction))

    def _features(self, inputs: ModelInput) -> np.ndarray[Any, Any] | pd.DataFrame:
        if isinstance(inputs, dict):
            inputs = _frame_from_arrays(inputs)
        if isinstance(inputs, pd.DataFrame):
            return self._frame_features(inputs)
        if self.feature_names is not None and _matches_width(inputs, len(self.feature_names)):
            # Models fitted on a DataFrame select columns by name (ColumnTransformer).
            return pd.DataFrame(inputs, columns=self.feature_names)
        return inputs

    def _frame_features(self, frame: pd.DataFrame) -> np.ndarray[Any, Any] | pd.DataFrame:
        if self.feature_names is None:
            # A model fitted on a plain array warns on (and may misread) named columns.
            return frame.to_numpy()
        if set(self.feature_names) <= {str(c) for c in frame.columns}:
            # Estimators fitted on a DataFrame reject columns in another order.
            return frame[self.feature_names]
        return frame

    def _probabilities(
        self, features: np.ndarray[Any, Any] | pd.DataFrame
    ) -> np.ndarray[Any, Any] | None:
        # hasattr is False for estimators whose predict_proba is unavailable (SVC without
        # probability=True, pipelines ending in a regressor).
        if not hasattr(self.model, "predict_proba"):
            return None
        probabilities = self.model.predict_proba(features)
        # Multi-output classifiers return one array per output; they have no n x c form.
        if not isinstance(probabilities, np.ndarray) or probabilities.ndim != 2:
            return None
        return probabilities


def load(
    path: Path, *, trusted_types: tuple[str, ...] = (), pickle_sha256: str | None = None
) -> SklearnRuntime:
    """Load a skops file (allow-listed types only) or a trusted pickle (see `berth.runtimes`)."""
    if path.suffix.lower() == SKOPS_SUFFIX:
        model = _load_skops(path, _read(path), trusted_types)
    else:
        model = _load_pickle(path, pickle_sha256)
    if not callable(getattr(model, "predict", None)):
        raise ModelLoadError(
            f"{path} holds a {type(model).__name__}, which has no predict() method; "
            "save the fitted estimator or pipeline itself"
        )
    return SklearnRuntime(model)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"could not read {path}: {exc.strerror}") from exc


# pickle ------------------------------------------------------------------------------------


def _load_pickle(path: Path, pickle_sha256: str | None) -> Any:
    if pickle_sha256 is None:
        raise UntrustedArtifact(pickle_refusal(path.name))
    # One read: the bytes checked are the bytes unpickled, whatever happens to the file meanwhile.
    data = _read(path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != pickle_sha256:
        raise ArtifactIntegrityError(
            f"{path.name} fails its sha256 check (expected {pickle_sha256}, got {actual}); it "
            "was changed after registration and will not be unpickled. Restore the artifact "
            "store, or register the model again"
        )
    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path} with joblib ({type(exc).__name__}: {exc}); save the model with "
            "joblib.dump and install the same library versions the model was trained with"
        ) from exc


# skops -------------------------------------------------------------------------------------


def _load_skops(path: Path, data: bytes, trusted_types: tuple[str, ...]) -> Any:
    # Imported here: skops walks every scikit-learn module on import, which pulls in torch when
    # it is installed (1.5 s and 400 MB per worker that serves no skops file).
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise ModelLoadError(
            f"could not read {path} as a skops file ({type(exc).__name__}: {exc}); "
            "save the model with skops.io.dump"
        ) from exc
    extra = set(trusted_types)
    rejected = sorted(t for t in untrusted if t not in extra and not builtin_trusted(t))
    if rejected:
        raise UntrustedArtifact(untrusted_types_refusal(path.name, rejected))
    try:
        return sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path} with skops ({type(exc).__name__}: {exc}); "
            "install the same library versions the model was trained with"
        ) from exc


def untrusted_types_refusal(name: str, rejected: list[str]) -> str:
    flags = " ".join(f"--trust-type {t}" for t in rejected)
    listed = ", ".join(f'"{t}"' for t in rejected)
    return (
        f"{name} holds types Berth does not trust: {', '.join(rejected)}. Loading a type runs "
        "its code, and only scikit-learn classes and scores, numpy ufuncs and numpy/scipy array "
        "and dtype types are trusted by default. If you trust the code of these types, register with "
        f"`berth models register NAME PATH {flags}` (recorded on the version), or trust them on "
        f"the whole server with BERTH_TRUSTED_TYPES='[{listed}]'. Otherwise remove the custom "
        "code from the model, or serve it with the python flavor"
    )


# The allow-list. skops trusts its own defaults (builtins containers, numpy dtypes and ufuncs,
# scipy.special ufuncs, random generators, scikit-learn estimators) and never reports them; of
# what it does report, Berth trusts:
# - classes defined by scikit-learn (tree structures, optimizers, calibration, Bunch, ...);
# - functions defined in sklearn.metrics and sklearn.feature_selection: scores, kernels and
#   distances that estimators keep as parameters (SelectKBest(f_classif), make_scorer), which
#   compute and do no I/O. Other scikit-learn functions are not trusted: FunctionTransformer
#   calls its function on every request with its kw_args, and some write files
#   (sklearn.datasets.dump_svmlight_file);
# - numpy ufuncs, and numpy/scipy array, scalar, dtype and sparse matrix types (not the
#   file-backed numpy.memmap).
# Every other name (numpy.load, numpy.sum, builtins.eval, functools.partial, your own classes)
# needs explicit trust. A name is checked by importing its module from the installed package,
# never from the file, and test suites and entry points are not imported at all.
_SKLEARN_FUNCTION_MODULES = ("sklearn.metrics", "sklearn.feature_selection")
_TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_NEVER_IMPORTED = re.compile(r"^(?:tests?|testing|conftest|__main__|setup)(?:_.*)?$")


@functools.lru_cache(maxsize=4096)
def builtin_trusted(type_name: str) -> bool:
    """Whether a type name skops reports is on Berth's built-in allow-list (see above)."""
    if not _NAME.fullmatch(type_name):
        return False
    package = type_name.split(".", 1)[0]
    if package not in _TRUSTED_PACKAGES:
        return False
    found = _resolve(type_name)
    if found is None:
        return False
    if package == "sklearn":
        return _sklearn_trusted(found)
    return _array_or_dtype(found)


def _sklearn_trusted(found: Any) -> bool:
    module = getattr(found, "__module__", None) or ""
    if isinstance(found, type):
        return module.startswith("sklearn.")
    if inspect.isfunction(found):
        return module.startswith(tuple(f"{m}." for m in _SKLEARN_FUNCTION_MODULES))
    return False


def _array_or_dtype(found: Any) -> bool:
    if isinstance(found, np.ufunc):
        return True
    if not isinstance(found, type) or issubclass(found, np.memmap):  # memmap: backed by a file
        return False
    if issubclass(found, np.ndarray | np.generic | np.dtype):
        return True
    sparse: Any = importlib.import_module("scipy.sparse")
    return issubclass(found, sparse.spmatrix | sparse.sparray)


def _resolve(type_name: str) -> Any | None:
    """The object a dotted name points at in the installed packages, or None."""
    parts = type_name.split(".")
    if any(_NEVER_IMPORTED.match(p) for p in parts):
        return None
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found: Any = importlib.import_module(module_name)
        except Exception:  # noqa: S112 - a shorter module path may still resolve
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute, None)
            if found is None:
                return None
        return found
    return None


def _matches_width(array: np.ndarray[Any, Any], width: int) -> bool:
    return array.ndim == 2 and array.shape[1] == width


def _frame_from_arrays(arrays: dict[str, np.ndarray[Any, Any]]) -> pd.DataFrame:
    columns: dict[str, np.ndarray[Any, Any]] = {}
    for name, array in arrays.items():
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise InvalidInput(
                f"input '{name}' has shape {list(array.shape)}; scikit-learn models take one "
                "table, or one value per row for each named input"
            )
        columns[name] = array
    try:
        return pd.DataFrame(columns)
    except ValueError as exc:
        raise InvalidInput(f"the named inputs do not form a table: {exc}") from exc
