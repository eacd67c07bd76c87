"""Smoke and Open Inference Protocol checks of a staged version, over HTTP, as a client would.

`berth ci smoke` runs them against NAME@staging right after the pipeline moved the alias:

- the server is ready (`GET /v2/health/ready`);
- the model's metadata names the staged version and its inputs (`GET /v2/models/NAME@ALIAS`);
- inference on the sample's rows answers one prediction per row, from the staged version, with
  no NaN (`POST /v2/models/NAME@ALIAS/infer`, an Open Inference Protocol request built from the
  metadata's inputs);
- the REST v1 route answers one row too (`POST /api/v1/models/NAME@ALIAS/predict`).

Servers pick up an alias's move within seconds: until then they answer with the version the
alias named before, and the checks are repeated until the staged version answers or
`wait_seconds` pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from berth.errors import BerthError, InvalidInput, NotFound

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import pandas as pd

ROWS = 5
"""Rows of the sample sent in one inference request."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    milliseconds: float


@dataclass
class SmokeReport:
    reference: str
    """NAME@ALIAS."""
    version: int
    """The version the alias names: the one every answer must come from."""
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


@dataclass(frozen=True)
class Target:
    url: str
    key: str
    model: str
    alias: str


class _Failed(Exception):
    """One check's failure, with what was seen."""


def smoke(
    target: Target,
    sample: Path,
    wait_seconds: float = 30.0,
    on_check: Callable[[Check], None] | None = None,
) -> SmokeReport:
    import httpx

    reference = f"{target.model}@{target.alias}"
    headers = {"x-api-key": target.key}
    with httpx.Client(base_url=target.url.rstrip("/"), headers=headers, timeout=30.0) as client:
        version = _aliased_version(client, target)
        report = SmokeReport(reference, version)
        rows = _sample_rows(sample)
        deadline = time.monotonic() + wait_seconds
        while True:
            checks = list(_checks(client, reference, version, rows))
            stale = any(c.detail.startswith(_STALE) for c in checks if not c.passed)
            if not stale or time.monotonic() >= deadline:
                break
            time.sleep(0.5)  # the server has not picked up the alias's move yet
        for check in checks:
            report.checks.append(check)
            if on_check is not None:
                on_check(check)
        return report


_STALE = "answered by version"


def _checks(client: httpx.Client, reference: str, version: int, rows: _Rows) -> Iterator[Check]:
    path = quote(reference, safe="@")
    state: dict[str, Any] = {}
    steps: tuple[tuple[str, Callable[[], str]], ...] = (
        ("server ready", lambda: _ready(client)),
        ("metadata", lambda: _metadata(client, path, version, state)),
        ("v2 inference", lambda: _infer(client, path, version, rows, state)),
        ("v1 prediction", lambda: _predict(client, path, version, rows)),
    )
    for name, run in steps:
        started = time.perf_counter()
        try:
            detail, passed = run(), True
        except _Failed as failed:
            detail, passed = str(failed), False
        yield Check(name, passed, detail, (time.perf_counter() - started) * 1000)
        if not passed and name in ("server ready", "metadata"):
            return  # the later checks need these


def _aliased_version(client: httpx.Client, target: Target) -> int:
    document = _json(client.get(f"/api/v1/models/{quote(target.model, safe='')}"), target)
    version = document.get("aliases", {}).get(target.alias)
    if not isinstance(version, int):
        raise NotFound(
            f"{target.model}@{target.alias} does not exist on {target.url}; move it with "
            f"`berth models alias {target.model} {target.alias} VERSION`"
        )
    return version


def _json(response: httpx.Response, target: Target) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    message = body.get("error") if isinstance(body, dict) else None
    raise BerthError(
        f"{target.url} answered {response.status_code}"
        + (f": {message}" if message else " with no Berth JSON document; is it a Berth server?")
    )


def _ready(client: httpx.Client) -> str:
    response = client.get("/v2/health/ready")
    if response.status_code != 200 or response.json().get("ready") is not True:
        raise _Failed(f"GET /v2/health/ready answered {response.status_code}: {response.text}")
    return "GET /v2/health/ready: ready"


def _metadata(client: httpx.Client, path: str, version: int, state: dict[str, Any]) -> str:
    response = client.get(f"/v2/models/{path}")
    body = _document(response, f"GET /v2/models/{path}")
    versions = body.get("versions") or []
    if str(version) not in versions:
        raise _Failed(f"{_STALE} {', '.join(versions) or 'none'}, not {version} (metadata)")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _Failed(f"the metadata lists no inputs: {body}")
    state["inputs"] = inputs
    names = ", ".join(f"{i['name']} {i['datatype']} {i['shape']}" for i in inputs[:4])
    more = f" and {len(inputs) - 4} more" if len(inputs) > 4 else ""
    return f"version {version}, platform {body.get('platform')}, inputs {names}{more}"


def _infer(
    client: httpx.Client, path: str, version: int, rows: _Rows, state: dict[str, Any]
) -> str:
    request = {"id": "berth-ci-smoke", "inputs": rows.v2_inputs(state["inputs"])}
    response = client.post(f"/v2/models/{path}/infer", json=request)
    body = _document(response, f"POST /v2/models/{path}/infer")
    answered = body.get("model_version")
    if answered != str(version):
        raise _Failed(f"{_STALE} {answered}, not {version} (inference)")
    outputs = {o.get("name"): o for o in body.get("outputs", []) if isinstance(o, dict)}
    predict = outputs.get("predict")
    if predict is None:
        raise _Failed(f"the response has no output 'predict': {sorted(map(str, outputs))}")
    shape = predict.get("shape") or [0]
    if shape[0] != rows.count:
        raise _Failed(f"output 'predict' has shape {shape}: not one prediction per row")
    for name, output in outputs.items():
        if any(_not_finite(value) for value in output.get("data", [])):
            raise _Failed(f"output '{name}' holds NaN or infinity: {output.get('data')}")
    return f"{rows.count} rows, outputs {', '.join(map(str, outputs))}, model_version {answered}"


def _predict(client: httpx.Client, path: str, version: int, rows: _Rows) -> str:
    response = client.post(f"/api/v1/models/{path}/predict", json={"features": rows.first()})
    body = _document(response, f"POST /api/v1/models/{path}/predict")
    if body.get("model_version") != version:
        raise _Failed(f"{_STALE} {body.get('model_version')}, not {version} (v1)")
    if "prediction" not in body or _not_finite(body["prediction"]):
        raise _Failed(f"no usable prediction in {body}")
    return f"prediction {body['prediction']!r}"


def _document(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else response.text[:200]
        raise _Failed(f"{what} answered {response.status_code}: {error}")
    return body


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


# ---------------------------------------------------------------------------- the sample


@dataclass(frozen=True)
class _Rows:
    table: pd.DataFrame | None
    array: np.ndarray[Any, Any] | None

    @property
    def count(self) -> int:
        found = self.table if self.table is not None else self.array
        assert found is not None
        return len(found)

    def first(self) -> Any:
        if self.table is not None:
            return _plain(self.table.iloc[0].to_dict())
        assert self.array is not None
        return self.array[0].tolist()

    def v2_inputs(self, declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One tensor per declared input: a column each for a table, else the rows."""
        if self.table is not None:
            missing = [i["name"] for i in declared if i["name"] not in self.table.columns]
            if missing:
                raise _Failed(f"the sample has no column {missing[0]!r} the model declares")
            return [
                {
                    "name": i["name"],
                    "datatype": i["datatype"],
                    "shape": [self.count, 1],
                    "data": _plain(self.table[i["name"]].tolist()),
                }
                for i in declared
            ]
        assert self.array is not None
        if len(declared) != 1:
            raise _Failed(f"the model declares {len(declared)} inputs; the .npy sample holds one")
        return [
            {
                "name": declared[0]["name"],
                "datatype": declared[0]["datatype"],
                "shape": list(self.array.shape),
                "data": self.array.reshape(-1).tolist(),
            }
        ]


def _sample_rows(path: Path) -> _Rows:
    import pandas as pd

    from berth.registry.signature import read_sample

    sample = read_sample(path)
    if isinstance(sample, pd.DataFrame):
        table = sample.dropna().head(ROWS)  # the protocol's JSON has no NaN
        if table.empty:
            raise InvalidInput(f"sample {path} has no row without missing values to send")
        return _Rows(table.reset_index(drop=True), None)
    if sample.ndim < 2 or not len(sample):
        raise InvalidInput(f"sample {path} must hold rows (an array of at least 2 dimensions)")
    return _Rows(None, sample[:ROWS])


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value
