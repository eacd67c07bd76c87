"""The sample rows an edge export ships, and Berth's own answers for them.

The rows are the first check rows (the version's example rows come first), written as v1
`instances`, so `python run.py sample.json` sends exactly what a client would send the server.
The answers are the server's: the rows are decoded and validated against the signature as
`berth serve` decodes a v1 batch-predict body, the version's runtime (loaded as the server
loads it, from its verified artifact) predicts them, and they are kept in the shape of the v1
batch-predict response. A row on which the exported graph gives another
label than the source (a tie the two break differently, allowed by the equivalence check) is
left out of the sample, since the shipped test demands equal labels; the count is reported.
Rows are picked a label at a time, so the sample covers every class the check rows reach.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from berth.errors import InvalidInput
from berth.optimize.data import CheckData
from berth.registry.versions import VersionInfo
from berth.runtimes.base import Runtime
from berth.serving.responses import plain
from berth.serving.validation import decode_instances

SAMPLE_ROWS = 20
"""Rows in sample.json: enough to cover the classes of a small model, quick to read."""
CANDIDATE_ROWS = 1_000
"""Check rows the sample is picked from."""


@dataclass(frozen=True)
class Sample:
    instances: list[Any]
    """The rows, as v1 instances."""
    expected: dict[str, Any]
    """Berth's answer for them: predictions, probabilities and classes of the v1 response."""
    labels: bool
    """Whether predictions are labels (compared exactly) rather than values (within a tolerance)."""
    left_out: int
    """Candidate rows left out because the exported graph labels them differently."""


def sample(source: VersionInfo, served: Runtime, exported: Runtime, rows: CheckData) -> Sample:
    """Sample rows on which the exported graph gives the source's labels, and Berth's answers
    (`served`: the source version's runtime).

    Rows are taken in turn from each label Berth gives, so every class the check rows reach is
    in the sample (the first rows of each, in check row order).
    """
    candidates = instances(rows.take(np.arange(min(rows.rows, CANDIDATE_ROWS))))
    answer = served_answer(source, served, candidates)
    labels = is_labels(answer)
    keep = list(range(len(candidates)))
    if labels:
        decoded = decode_instances(source.signature, candidates, "sample", len(candidates))
        graph = plain(exported.predict(decoded).predictions)
        keep = [i for i in keep if graph[i] == answer["predictions"][i]]
        if not keep:
            raise InvalidInput(
                f"the exported graph labels none of the {len(candidates)} check rows as "
                f"{source.ref} does; pass --data FILE with other rows"
            )
        keep = _by_label(keep, answer["predictions"])
    chosen = sorted(keep[:SAMPLE_ROWS])
    picked = [candidates[i] for i in chosen]
    return Sample(
        picked, served_answer(source, served, picked), labels, len(candidates) - len(keep)
    )


def _by_label(rows: list[int], predictions: list[Any]) -> list[int]:
    """`rows` reordered to take one row of each label in turn."""
    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(json.dumps(predictions[row]), []).append(row)
    ordered: list[int] = []
    for turn in range(max(len(g) for g in groups.values())):
        ordered.extend(group[turn] for group in groups.values() if turn < len(group))
    return ordered


def served_answer(source: VersionInfo, served: Runtime, rows: list[Any]) -> dict[str, Any]:
    """What `berth serve` answers for `rows` of `source` (v1 batch-predict, without ids).

    The server's path with its default options: the body's rows decoded against the signature,
    then one call of the runtime (neither cache nor batcher changes an answer).
    """
    decoded = decode_instances(source.signature, rows, "instances", max(1, len(rows)))
    prediction = served.predict(decoded)
    return {
        "predictions": plain(prediction.predictions),
        "probabilities": plain(prediction.probabilities),
        "classes": plain(prediction.classes),
    }


def is_labels(answer: dict[str, Any]) -> bool:
    """Classifier labels (or any non-float output), as the equivalence check tells them apart."""
    if answer["probabilities"] is not None or answer["classes"] is not None:
        return True
    kind = np.asarray(answer["predictions"]).dtype.kind
    return kind not in "fc"


def instances(inputs: Any) -> list[Any]:
    """Validated model input (a table or an array) back into JSON v1 instances."""
    if isinstance(inputs, pd.DataFrame):
        columns = [str(c) for c in inputs.columns]
        return [
            {name: _json(value) for name, value in zip(columns, row, strict=True)}
            for row in inputs.itertuples(index=False, name=None)
        ]
    array = np.asarray(inputs)
    if array.dtype in (np.float32, np.float16):
        # numpy prints the shortest decimal that reads back as the same float32 (5.1, not
        # 5.099999904632568), so the rows stay readable and decode to the very same values.
        array = array.astype(str).astype(np.float64)
    listed: list[Any] = array.tolist()
    return listed


def _json(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
