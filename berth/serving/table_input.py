"""A table or array as a runtime gets it when serving: checked and cast per the signature.

Batch jobs, validation gates and optimization checks read whole tables; this turns them into the
input a request with the same rows would give the runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from berth.errors import InvalidInput
from berth.frames import is_frame
from berth.registry.signature import Signature, TensorSpec
from berth.serving.validation import validate_columns, validate_tensor

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

CheckInput: TypeAlias = "np.ndarray[Any, Any] | pd.DataFrame"


def model_input(signature: Signature, table: CheckInput, field: str) -> CheckInput:
    """A table or array as the runtime gets it when serving: checked and cast per signature."""
    if signature.kind == "tabular":
        if not is_frame(table):
            raise InvalidInput(
                f"{field}: this model takes a table; give .csv or .parquet with the columns "
                f"{signature.input_names}"
            )
        missing = [n for n in signature.input_names if n not in table.columns]
        if missing:
            raise InvalidInput(f"{field}: missing the signature's columns {missing}")
        arrays = {name: table[name].to_numpy() for name in signature.input_names}
        return validate_columns(signature, arrays, field)
    spec = single_input(signature)
    array = table.to_numpy() if is_frame(table) else np.asarray(table)
    if len(spec.shape) == 1 and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    return validate_tensor(spec, array, field)


def single_input(signature: Signature) -> TensorSpec:
    if len(signature.inputs) != 1:
        raise InvalidInput(
            f"the signature has {len(signature.inputs)} tensor inputs; optimize handles models "
            "with one input tensor or a table"
        )
    return signature.inputs[0]
