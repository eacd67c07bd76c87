"""`berth predict`: predict in this process, no server, through the same dataplane."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.context import registry, settings
from berth.errors import InvalidInput

# The dataplane (the serving stack, numpy, pandas) is imported when `berth predict` runs.
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def predict(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    input_: str = typer.Option(
        ..., "--input", "-i", help="JSON text, or a .json/.csv/.parquet/.jsonl file."
    ),
) -> None:
    """Predict with a registered version, in process, and print the result as JSON.

    Example: berth predict churn@production --input '{"features": {"tenure_months": 3, "plan": "basic"}}'
    """
    import asyncio

    import orjson

    from berth.serving.dataplane import DataPlane
    from berth.serving.responses import batch_document, single_document
    from berth.serving.validation import instances_decoder

    rows, single = _rows(input_)
    dataplane = DataPlane(registry(), [reference])
    field = "features" if single else "instances"
    decoder = instances_decoder(rows, field, settings().max_batch_rows, single)
    result = asyncio.run(dataplane.predict(reference, decoder))
    document = single_document(result) if single else batch_document(result)
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def _rows(text: str) -> tuple[list[Any], bool]:
    """Rows to predict and whether the input was one row (`features`) or many."""
    if not text.lstrip().startswith(("{", "[")):
        path = Path(text)
        if not path.exists():
            raise InvalidInput(f"--input {text!r} is neither JSON nor an existing file")
        if path.suffix.lower() != ".json":
            from berth.registry.signature import read_sample

            return _table_rows(read_sample(path)), False
        text = path.read_text()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--input is not valid JSON: {exc}") from exc
    if isinstance(document, dict) and "features" in document:
        return [document["features"]], True
    if isinstance(document, dict) and "instances" in document:
        return document["instances"], False
    if isinstance(document, list) and document and isinstance(document[0], list | dict):
        return document, False
    return [document], True


def _table_rows(sample: np.ndarray[Any, Any] | pd.DataFrame) -> list[Any]:
    import pandas as pd

    if isinstance(sample, pd.DataFrame):
        if list(sample.columns) == [str(i) for i in range(sample.shape[1])]:
            # A CSV without a header row: its rows are values in the model's column order.
            return list(json.loads(sample.to_json(orient="values")))
        return list(json.loads(sample.to_json(orient="records")))
    return list(sample.tolist())
