"""The Runtime protocol: how a flavor loads an artifact and predicts on a batch.

Serving hands a runtime inputs that already passed the signature:
- a tabular signature gives a `pandas.DataFrame` with the signature's columns, in order;
- a tensor signature with one input gives a `numpy.ndarray` (batch axis first);
- a tensor signature with several inputs gives a `dict[str, numpy.ndarray]`.

`predict` returns one prediction per input row, and class probabilities when the model has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

from berth.registry.signature import Signature, TensorSpec, numpy_dtype_name

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

ModelInput: TypeAlias = "np.ndarray[Any, Any] | pd.DataFrame | dict[str, np.ndarray[Any, Any]]"


@dataclass(frozen=True)
class Prediction:
    """What a runtime returns for a batch of n rows."""

    predictions: np.ndarray[Any, Any]
    """n predictions (labels, values, or an n x k array for multi-output models)."""

    probabilities: np.ndarray[Any, Any] | None = None
    """n x c class probabilities, columns in the order of `classes`; None if the model has none."""

    classes: list[Any] | None = None
    """Class labels matching the probability columns."""


class Runtime(Protocol):
    """A loaded version, ready to predict. Implementations must be safe to call from threads."""

    flavor: str

    def predict(self, inputs: ModelInput) -> Prediction:
        """Predict on a batch; raises `berth.errors.InvalidInput` when the data cannot be used."""
        ...

    def declared_signature(self) -> Signature | None:
        """The signature the artifact itself declares (ONNX graphs do), or None."""
        ...


def row_count(inputs: ModelInput) -> int:
    if isinstance(inputs, dict):
        return len(next(iter(inputs.values())))
    return len(inputs)


class RuntimeLoader(Protocol):
    def __call__(self, path: Path) -> Runtime: ...


def output_specs(prediction: Prediction) -> tuple[TensorSpec, ...]:
    """The output tensors a prediction shows a version returns (for its signature)."""
    predictions = np.asarray(prediction.predictions)
    specs = [
        TensorSpec(
            name="predict",
            dtype=numpy_dtype_name(predictions.dtype),
            shape=(-1, *predictions.shape[1:]),
        )
    ]
    if prediction.probabilities is not None:
        probabilities = np.asarray(prediction.probabilities)
        specs.append(
            TensorSpec(
                name="predict_proba",
                dtype=numpy_dtype_name(probabilities.dtype),
                shape=(-1, *probabilities.shape[1:]),
            )
        )
    return tuple(specs)
