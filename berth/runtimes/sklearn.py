"""scikit-learn (and compatible) estimators saved with joblib/pickle or skops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.exceptions import NotFittedError

from berth.errors import InvalidInput, ModelLoadError
from berth.registry.signature import Signature
from berth.runtimes.base import ModelInput, Prediction

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "collections.")


def _argmax_families() -> tuple[type, ...]:
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
        self._argmax_predicts = self._labels is not None and isinstance(final, _argmax_families())

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
        return None

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


def load(path: Path) -> SklearnRuntime:
    model = _load_skops(path) if path.suffix.lower() == ".skops" else _load_joblib(path)
    if not callable(getattr(model, "predict", None)):
        raise ModelLoadError(
            f"{path} holds a {type(model).__name__}, which has no predict() method; "
            "save the fitted estimator or pipeline itself"
        )
    return SklearnRuntime(model)


def _load_joblib(path: Path) -> Any:
    try:
        return joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path} with joblib ({type(exc).__name__}: {exc}); save the model with "
            "joblib.dump and install the same library versions the model was trained with"
        ) from exc


def _load_skops(path: Path) -> Any:
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelLoadError(
            f"could not read {path} as a skops file ({type(exc).__name__}: {exc}); "
            "save the model with skops.io.dump"
        ) from exc
    rejected = [t for t in untrusted if not _trusted(t)]
    if rejected:
        raise ModelLoadError(
            f"{path} uses types Berth does not trust: {', '.join(rejected)}; only scikit-learn, "
            "numpy and scipy types load from skops files. Remove the custom code from the "
            "model, or serve it with the python flavor"
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {path} with skops ({type(exc).__name__}: {exc}); "
            "install the same library versions the model was trained with"
        ) from exc


def _trusted(type_name: str) -> bool:
    return type_name.startswith(TRUSTED_PREFIXES)


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
