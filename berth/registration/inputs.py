"""What registration learns about a version's inputs: its signature, example rows, reference.

The signature comes from --signature, else from the --sample rows, else from what the model
declares; the sample is predicted on, so a model that fails on its own inputs is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from berth.errors import BerthError, InvalidInput, ModelLoadError
from berth.registry.csv_header import first_row, has_header
from berth.registry.signature import (
    Signature,
    infer_signature,
    load_signature_file,
    read_sample,
)

# numpy, pandas, the drift statistics and the runtimes' base are imported by the functions that
# use them: `berth models register` brings them when it loads the model, not when it starts.
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from berth.runtimes.base import Prediction, Runtime

_SAMPLE_ROWS = 100
_EXAMPLE_ROWS = 3

Sample: TypeAlias = "np.ndarray[Any, Any] | pd.DataFrame"


@dataclass(frozen=True)
class Inputs:
    """What registration learned about a version's inputs."""

    signature: Signature
    sample: Sample | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleRows:
    """Rows at hand to use as the sample when none is given: `berth validate` has its --data."""

    source: str
    """How messages name them, e.g. "--data holdout.csv (without --target)"."""
    read: Callable[[list[str] | None], Sample]
    """The rows, given the model's column names when known (for a CSV without a header)."""


def inputs_for(
    runtime: Runtime,
    sample: Path | None,
    signature: Path | None,
    rows_at_hand: SampleRows | None = None,
) -> Inputs:
    """The signature from `signature` (--signature), else the `sample`, else the rows at hand,
    else what the model declares; with sample rows, its outputs from the model's prediction
    on them."""
    from berth.runtimes.base import output_specs

    declared, undeclared = _declared(runtime)
    given = load_signature_file(signature) if signature is not None else None
    names = _column_names(given or declared)
    notes: list[str] = []
    rows = None
    source = ""
    if sample is not None:
        path = sample.expanduser()
        rows = read_sample(path, names)
        source = str(path)
        notes.extend(_headerless_note(path, names))
    elif given is None and rows_at_hand is not None:
        rows = rows_at_hand.read(names)
        source = rows_at_hand.source
    if given is not None:
        found = given
    elif rows is not None:
        found = infer_signature(rows)
    elif declared is not None:
        found = declared
        notes.append(
            f"no --sample or --signature: the model declares its inputs ({_describe(declared)}); "
            "pass --sample FILE to check them on real rows and keep example rows"
        )
    else:
        raise InvalidInput(
            f"cannot tell what inputs this model takes{f' ({undeclared})' if undeclared else ''}; "
            "pass --sample FILE (a few rows of input data) or --signature FILE (a JSON signature)"
        )
    if rows is None:
        return Inputs(found, None, tuple(notes))
    prediction = _predict_sample(runtime, _sample_input(rows, found), source)
    return Inputs(found.with_outputs(output_specs(prediction)), rows, tuple(notes))


def example(sample: Sample | None, signature: Signature) -> list[Any] | None:
    """Up to three sample rows as JSON-safe v1 instances (for warm-up and docs)."""
    import numpy as np
    import pandas as pd

    if sample is None:
        return None
    rows = _sample_input(sample, signature)[:_EXAMPLE_ROWS]
    if isinstance(rows, pd.DataFrame):
        records = json.loads(rows.to_json(orient="records"))
        return list(records)
    return list(np.asarray(rows).tolist())


def reference_stats(path: Path | None, signature: Signature) -> dict[str, Any] | None:
    """Drift reference statistics of the --reference data, checked against the signature."""
    from berth.registry.profile import reference_statistics

    if path is None:
        return None
    path = path.expanduser()
    try:
        return reference_statistics(read_sample(path, _column_names(signature)), signature)
    except InvalidInput as exc:
        raise InvalidInput(f"--reference {path}: {exc.message}") from exc


def _declared(runtime: Runtime) -> tuple[Signature | None, str | None]:
    """The signature the model declares, or None and why not (when it tried and failed)."""
    try:
        return runtime.declared_signature(), None
    except BerthError as exc:
        return None, exc.message


def _column_names(signature: Signature | None) -> list[str] | None:
    if signature is None or signature.kind != "tabular":
        return None
    return signature.input_names


def _headerless_note(path: Path, names: list[str] | None) -> list[str]:
    if path.suffix.lower() != ".csv":
        return []
    row = first_row(path)
    if row is None or has_header(row, names):
        return []
    named = (
        f"the model's column names ({', '.join(names)})"
        if names
        else "the positional column names 0, 1, ..."
    )
    return [f"{path.name} has no header row: its first line is data, with {named}"]


def _describe(signature: Signature) -> str:
    if signature.kind == "tabular":
        columns = ", ".join(f"{c.name} {c.dtype}" for c in signature.columns)
        return f"{len(signature.columns)} columns: {columns}"
    return ", ".join(f"{t.name} {t.dtype} {list(t.shape)}" for t in signature.inputs)


def _predict_sample(runtime: Runtime, rows: Sample, source: str) -> Prediction:
    """The model's prediction on the sample; its own errors become one clear BerthError."""
    try:
        return runtime.predict(rows)
    except BerthError:
        raise
    except Exception as exc:  # the user's model code raised: say so, not a traceback
        raise ModelLoadError(
            f"the model failed on the rows of {source} ({type(exc).__name__}: {exc}); fix its "
            "predict (call it on those rows yourself to see where), or pass other sample rows"
        ) from exc


def _sample_input(sample: Sample, signature: Signature) -> Sample:
    import pandas as pd

    rows = sample[:_SAMPLE_ROWS]
    if isinstance(rows, pd.DataFrame):
        missing = [n for n in signature.input_names if n not in rows.columns]
        if signature.kind == "tabular":
            if missing:
                raise InvalidInput(f"sample is missing the signature's columns: {missing}")
            return rows[signature.input_names]
        dtype = signature.inputs[0].dtype
        return rows.to_numpy(dtype=None if dtype == "string" else dtype)
    return rows
