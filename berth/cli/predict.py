"""`berth predict`: predict in this process through the serving dataplane, or in remote mode
through the server's v1 prediction routes; both print the v1 response document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.context import registry, remote, settings
from berth.errors import InvalidInput

# The dataplane (the serving stack, numpy, pandas) is imported when `berth predict` runs.
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from berth.cli.remote import Remote


def predict(
    reference: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    input_: str = typer.Option(
        ..., "--input", "-i", help="JSON text, or a .json/.csv/.parquet/.jsonl file."
    ),
) -> None:
    """Predict with a registered version and print the result as JSON (the v1 response).

    Locally the version is loaded in this process. In remote mode the rows go to the server's
    v1 prediction route (`/api/v1/models/REF/predict` for one row, `batch-predict` for several),
    so the server must serve the model (`berth serve NAME`, or any model with a production
    alias) and the key needs the predict scope (or predict:NAME).

    Example: berth predict churn@production --input '{"features": {"tenure_months": 3, "plan": "basic"}}'
    """
    import orjson

    rows, single = _rows(input_)
    server = remote()
    if server is not None:
        document = _remote_predict(server, reference, rows, single)
    else:
        document = _local_predict(reference, rows, single)
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def _local_predict(reference: str, rows: list[Any], single: bool) -> dict[str, Any]:
    """The v1 response document, predicted in this process through the serving dataplane."""
    import asyncio

    from berth.serving.dataplane import DataPlane
    from berth.serving.responses import batch_document, single_document
    from berth.serving.validation import instances_decoder

    dataplane = DataPlane(registry(), [reference])
    field = "features" if single else "instances"
    decoder = instances_decoder(rows, field, settings().max_batch_rows, single)
    result = asyncio.run(dataplane.predict(reference, decoder))
    return single_document(result) if single else batch_document(result)


def _remote_predict(server: Remote, reference: str, rows: list[Any], single: bool) -> Any:
    """The server's v1 response document."""
    from berth.cli.remote import LONG_SECONDS, path
    from berth.registry.references import parse_reference

    # Refused here as locally: a reference with a '/' would not even reach the route.
    parse_reference(reference)
    if single:
        return server.post(path("models", reference, "predict"), {"features": rows[0]})
    # The server bounds the work (BERTH_MAX_BATCH_ROWS, its prediction timeout); a long batch
    # must not be cut off by the client's default timeout.
    return server.post(
        path("models", reference, "batch-predict"), {"instances": rows}, timeout=LONG_SECONDS
    )


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
        from berth.serving.validation import features_row

        return features_row(document["features"]), True
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
