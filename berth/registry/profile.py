"""A version's profile for drift: per-feature reference statistics taken at registration.

`reference_statistics` summarises each input feature of the data given with `--reference`:

- numeric: quantile bin edges (deciles, deduplicated; the outer bins run to -inf/+inf), the
  fraction of rows in each bin and missing, count, mean, std, min, max and a bounded random
  sample of values (for the two-sample Kolmogorov-Smirnov test);
- categorical (string and bool): the frequencies of the 50 commonest values, the rest as
  `__other__`, and the fraction missing.

Tensor signatures: a 1-D input is one feature, each column of a 2-D input is a feature
`<input>[i]`; higher-rank inputs (images) are not tracked. At most 200 features are kept.
The stored statistics are plain JSON (finite numbers only: PostgreSQL refuses Infinity). The
drift monitor (`berth.monitoring.drift`) compares live inputs with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from berth.errors import InvalidInput
from berth.frames import is_frame
from berth.registry.signature import Signature

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

Array = np.ndarray[Any, Any]

STATS_FORMAT = 1
OTHER = "__other__"
BINS = 10
SAMPLE_SIZE = 1_000
SAMPLE_BUDGET = 100_000
"""Reference sample values over all numeric features, so the stored JSON stays a few MB at most."""
TOP_CATEGORIES = 50
MAX_FEATURES = 200
EPSILON = 1e-4
"""Stands in for an empty bin in PSI, so ln(a/e) stays finite."""


@dataclass(frozen=True)
class FeatureSource:
    """Where a feature comes from: a table column, or an input tensor (and its column)."""

    name: str
    input: str
    index: int | None
    categorical: bool


def feature_sources(
    signature: Signature, widths: Mapping[str, int] | None = None
) -> list[FeatureSource]:
    """The features drift tracks for a signature; `widths` gives the columns of 2-D inputs."""
    if signature.kind == "tabular":
        return [
            FeatureSource(c.name, c.name, None, not c.numeric)
            for c in signature.columns[:MAX_FEATURES]
        ]
    sources: list[FeatureSource] = []
    for spec in signature.inputs:
        categorical = spec.dtype in ("string", "bool")
        rank = len(spec.shape)
        if rank == 1:
            sources.append(FeatureSource(spec.name, spec.name, None, categorical))
        elif rank == 2:
            width = spec.shape[1] if spec.shape[1] != -1 else (widths or {}).get(spec.name, 0)
            for i in range(width):
                sources.append(FeatureSource(f"{spec.name}[{i}]", spec.name, i, categorical))
    return sources[:MAX_FEATURES]


def reference_statistics(
    data: pd.DataFrame | Array,
    signature: Signature,
    *,
    bins: int = BINS,
    sample_size: int = SAMPLE_SIZE,
    top_categories: int = TOP_CATEGORIES,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-feature reference statistics of `data` (checked against `signature`), as JSON."""
    columns = _reference_columns(data, signature)
    rows = len(next(iter(columns.values()))[1]) if columns else 0
    if rows == 0:
        raise InvalidInput("reference data has no rows; give a sample of the training data")
    numeric = sum(1 for source, _ in columns.values() if not source.categorical)
    per_feature = min(sample_size, max(100, SAMPLE_BUDGET // max(numeric, 1)))
    rng = np.random.default_rng(seed)
    features: dict[str, Any] = {}
    for name, (source, values) in columns.items():
        where: dict[str, Any] = {"input": source.input, "index": source.index}
        if source.categorical:
            features[name] = {**where, **_categorical_stats(values, top_categories)}
        else:
            features[name] = {**where, **_numeric_stats(values, bins, per_feature, rng)}
    return {"format": STATS_FORMAT, "kind": signature.kind, "rows": rows, "features": features}


def reference_summary(stats: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The statistics without bins and samples: what `VersionInfo.to_dict` shows."""
    if not stats:
        return None
    features: dict[str, Any] = {}
    for name, feature in stats.get("features", {}).items():
        if feature.get("type") == "numeric":
            features[name] = {
                k: feature.get(k) for k in ("type", "count", "missing", "mean", "std", "min", "max")
            }
        else:
            frequencies = feature.get("frequencies", {})
            features[name] = {
                "type": feature.get("type"),
                "count": feature.get("count"),
                "missing": feature.get("missing"),
                "categories": sum(1 for k in frequencies if k != OTHER),
            }
    return {"rows": stats.get("rows"), "features": features}


def _reference_columns(
    data: pd.DataFrame | Array, signature: Signature
) -> dict[str, tuple[FeatureSource, Array]]:
    import pandas as pd

    if signature.kind == "tabular":
        if not is_frame(data):
            raise InvalidInput(
                "this model takes a table; give the reference data as .csv, .parquet or .json "
                f"with the columns {signature.input_names}"
            )
        missing = [n for n in signature.input_names if n not in data.columns]
        if missing:
            raise InvalidInput(
                f"reference data is missing the signature's columns {missing}; it has "
                f"{[str(c) for c in data.columns][:20]}"
            )
        found: dict[str, tuple[FeatureSource, Array]] = {}
        for source, column in zip(
            feature_sources(signature), signature.columns[:MAX_FEATURES], strict=True
        ):
            series = data[source.input]
            if source.categorical:
                found[source.name] = (source, series.to_numpy(dtype=object))
            else:
                found[source.name] = (source, _numeric_column(series, column.name, column.dtype))
        return found
    if len(signature.inputs) != 1:
        raise InvalidInput(
            "reference data for a model with several tensor inputs is not supported; "
            "register without --reference"
        )
    spec = signature.inputs[0]
    array = data.to_numpy() if is_frame(data) else np.asarray(data)
    if len(spec.shape) == 2 and array.ndim == 1:
        array = array.reshape(-1, 1)
    expected = spec.shape[1:]
    if array.ndim != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(expected, array.shape[1:], strict=True)
    ):
        raise InvalidInput(
            f"reference data has shape {list(array.shape)}, but input '{spec.name}' takes "
            f"{list(spec.shape)} (-1: any size)"
        )
    widths = {spec.name: array.shape[1]} if array.ndim == 2 else {}
    found = {}
    for source in feature_sources(signature, widths):
        values = array if source.index is None else array[:, source.index]
        if source.categorical:
            found[source.name] = (source, np.asarray(values, dtype=object))
        else:
            found[source.name] = (
                source,
                _numeric_column(pd.Series(values), source.name, spec.dtype),
            )
    return found


def _numeric_column(series: pd.Series[Any], name: str, dtype: str) -> Array:
    import pandas as pd

    converted = pd.to_numeric(series, errors="coerce")
    bad = converted.isna() & series.notna()
    if bad.any():
        example = series[bad].iloc[0]
        raise InvalidInput(
            f"reference column '{name}' is {dtype} in the signature but holds {example!r}; "
            "give numbers (empty cells count as missing)"
        )
    return np.asarray(converted.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def _numeric_stats(
    values: Array, bins: int, sample_size: int, rng: np.random.Generator
) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    total = len(values)
    finite = values[np.isfinite(values)]
    if len(finite):
        quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        edges = np.unique(quantiles)
    else:
        edges = np.empty(0)
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
    sample = (
        finite if len(finite) <= sample_size else rng.choice(finite, sample_size, replace=False)
    )
    described = len(finite) > 0
    return {
        "type": "numeric",
        "count": total,
        "missing": _round((total - len(finite)) / total),
        "mean": _round(float(finite.mean())) if described else None,
        "std": _round(float(finite.std())) if described else None,
        "min": _round(float(finite.min())) if described else None,
        "max": _round(float(finite.max())) if described else None,
        "edges": [float(e) for e in edges],
        "fractions": [_round(c / total) for c in counts],
        "sample": [_round(float(v)) for v in np.sort(sample)],
    }


def _categorical_stats(values: Array, top: int) -> dict[str, Any]:
    import pandas as pd

    series = pd.Series(values, dtype=object)
    total = len(series)
    present = series[series.notna()].map(_category)
    counts = present.value_counts()
    counts = counts[counts.index != OTHER].head(top)
    frequencies = {str(k): _round(int(v) / total) for k, v in counts.items()}
    frequencies[OTHER] = _round((len(present) - int(counts.sum())) / total)
    return {
        "type": "categorical",
        "count": total,
        "missing": _round((total - len(present)) / total),
        "frequencies": frequencies,
    }


def _category(value: Any) -> str:
    """The category key of a value: bools are `True`/`False` whether Python, numpy or text."""
    return value if isinstance(value, str) else str(value)


def _round(value: float) -> float:
    return float(f"{value:.7g}")
