"""Feature drift when serving: a rolling window of live inputs compared with the version's profile.

`DriftMonitor` is a dataplane observer: after each successful prediction it copies the tracked
features of (at most `max_rows_per_request` randomly chosen) rows into a ring buffer per version
(the last `window_rows` rows). `compute` compares the window with the reference statistics taken
at registration (`berth.registry.profile`): PSI over the reference bins (plus a missing bin,
epsilon-smoothed) and, for numeric features, `scipy.stats.ks_2samp` against the reference sample.
`run` refreshes the gauge `berth_feature_drift{model,version,feature}` (PSI) periodically.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import numpy as np
from prometheus_client import Gauge

from berth.frames import is_frame, is_missing_marker
from berth.observability import metrics
from berth.registry.profile import EPSILON, OTHER, FeatureSource
from berth.registry.versions import VersionInfo
from berth.serving.dataplane import PredictResult

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

log = logging.getLogger("berth.drift")

Array = np.ndarray[Any, Any]

MODERATE = 0.1
DRIFTED = 0.25


# comparison -----------------------------------------------------------------------------


def psi(
    expected: Sequence[float] | Array, actual: Sequence[float] | Array, epsilon: float = EPSILON
) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), empty bins as epsilon."""
    e = np.clip(np.asarray(expected, dtype=np.float64), epsilon, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), epsilon, None)
    return float(np.sum((a - e) * np.log(a / e)))


def verdict(value: float | None) -> str:
    """`stable` below 0.1, `moderate` below 0.25, else `drifted`; `no_data` without live rows."""
    if value is None:
        return "no_data"
    if value < MODERATE:
        return "stable"
    if value < DRIFTED:
        return "moderate"
    return "drifted"


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    psi: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    live_count: int

    @property
    def verdict(self) -> str:
        return verdict(self.psi)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind,
            "psi": self.psi,
            "ks_statistic": self.ks_statistic,
            "ks_pvalue": self.ks_pvalue,
            "live_count": self.live_count,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class _Numeric:
    source: FeatureSource
    edges: Array
    expected: Array
    """Reference fractions per bin, then missing."""
    sample: Array


@dataclass(frozen=True)
class _Categorical:
    source: FeatureSource
    codes: dict[str, int]
    """Category to code; OTHER is len(codes), missing is -1."""
    expected: Array
    """Reference fractions per category, then OTHER, then missing."""


@dataclass(frozen=True)
class _Plan:
    """The reference of one version, ready for comparison."""

    kind: str
    numeric: tuple[_Numeric, ...]
    categorical: tuple[_Categorical, ...]
    order: tuple[str, ...]
    """Feature names in registration order, for reports."""

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> _Plan:
        numeric: list[_Numeric] = []
        categorical: list[_Categorical] = []
        for name, feature in stats["features"].items():
            if feature["type"] == "numeric":
                source = FeatureSource(name, feature["input"], feature["index"], False)
                expected = [*feature["fractions"], feature["missing"]]
                numeric.append(
                    _Numeric(
                        source=source,
                        edges=np.asarray(feature["edges"], dtype=np.float64),
                        expected=np.asarray(expected, dtype=np.float64),
                        sample=np.asarray(feature["sample"], dtype=np.float64),
                    )
                )
            else:
                source = FeatureSource(name, feature["input"], feature["index"], True)
                frequencies = dict(feature["frequencies"])
                other = frequencies.pop(OTHER, 0.0)
                codes = {category: i for i, category in enumerate(frequencies)}
                expected = [*frequencies.values(), other, feature["missing"]]
                categorical.append(
                    _Categorical(
                        source=source, codes=codes, expected=np.asarray(expected, dtype=np.float64)
                    )
                )
        return cls(
            kind=stats.get("kind", "tabular"),
            numeric=tuple(numeric),
            categorical=tuple(categorical),
            order=tuple(stats["features"]),
        )


class _Window:
    """The last `capacity` rows of one version's tracked features, as a ring buffer."""

    def __init__(self, plan: _Plan, capacity: int) -> None:
        self.plan = plan
        self.capacity = capacity
        self.values = np.full((capacity, len(plan.numeric)), np.nan)
        self.codes = np.full((capacity, len(plan.categorical)), -1, dtype=np.int32)
        self.position = 0
        self.filled = 0
        self.seen = 0

    def append(self, values: Array, codes: Array) -> None:
        rows = len(values)
        if rows == 0:
            return
        self.seen += rows
        if rows > self.capacity:
            values, codes = values[-self.capacity :], codes[-self.capacity :]
            rows = self.capacity
        slots = (self.position + np.arange(rows)) % self.capacity
        self.values[slots] = values
        self.codes[slots] = codes
        self.position = int((self.position + rows) % self.capacity)
        self.filled = min(self.capacity, self.filled + rows)

    def snapshot(self) -> _Snapshot:
        return _Snapshot(
            self.plan, self.values[: self.filled].copy(), self.codes[: self.filled].copy()
        )


@dataclass(frozen=True)
class _Snapshot:
    plan: _Plan
    values: Array
    codes: Array

    def compare(self) -> list[FeatureDrift]:
        ks_2samp = _ks_2samp()
        rows = len(self.values)
        out: list[FeatureDrift] = []
        for j, feature in enumerate(self.plan.numeric):
            live = self.values[:, j]
            finite = live[np.isfinite(live)]
            value, ks_statistic, ks_pvalue = None, None, None
            if rows:
                counts = np.bincount(
                    np.searchsorted(feature.edges, finite, side="right"),
                    minlength=len(feature.edges) + 1,
                )
                actual = np.append(counts, rows - len(finite)) / rows
                value = psi(feature.expected, actual)
                if len(finite) and len(feature.sample):
                    result = ks_2samp(finite, feature.sample)
                    ks_statistic = float(result.statistic)
                    ks_pvalue = float(result.pvalue)
            out.append(
                FeatureDrift(feature.source.name, "numeric", value, ks_statistic, ks_pvalue, rows)
            )
        for j, category in enumerate(self.plan.categorical):
            value = None
            if rows:
                # codes: -1 missing, 0..k-1 categories, k other -> bins 0..k-1, k, k+1 (missing)
                shifted = self.codes[:, j].astype(np.int64)
                shifted[shifted < 0] = len(category.codes) + 1
                counts = np.bincount(shifted, minlength=len(category.codes) + 2)
                value = psi(category.expected, counts / rows)
            out.append(FeatureDrift(category.source.name, "categorical", value, None, None, rows))
        order = {name: i for i, name in enumerate(self.plan.order)}
        return sorted(out, key=lambda f: order[f.feature])


# live window ----------------------------------------------------------------------------


class DriftMonitor:
    """A dataplane observer keeping a rolling window of live inputs per (model, version).

    Only versions registered with reference statistics are watched. Observing runs on the
    event loop, so it copies just the tracked features of at most `max_rows_per_request`
    rows (a random subset of a larger request) into preallocated numpy buffers.
    """

    def __init__(
        self,
        window_rows: int = 5_000,
        max_rows_per_request: int = 500,
        min_live_rows: int = 100,
        is_active: Callable[[str, int], bool] | None = None,
        gauge: Gauge | None = None,
        seed: int | None = None,
    ) -> None:
        """`is_active(model, version)`: when false, `run` drops the version's window and series
        (pass `dataplane.is_loaded`); `min_live_rows`: fewer live rows set no gauge value."""
        if window_rows < 1 or max_rows_per_request < 1:
            raise ValueError("window_rows and max_rows_per_request must be at least 1")
        self.window_rows = window_rows
        self.max_rows_per_request = max_rows_per_request
        self.min_live_rows = min_live_rows
        self.is_active = is_active
        self.gauge = gauge if gauge is not None else metrics.FEATURE_DRIFT
        self._rng = np.random.default_rng(seed)
        self._windows: dict[tuple[str, int], _Window] = {}
        self._plans: dict[tuple[str, int], _Plan | None] = {}
        self._published: dict[tuple[str, int], set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    # observing ------------------------------------------------------------------------

    def __call__(self, result: PredictResult, inputs: Any) -> None:
        self.observe(result.version, inputs)

    def observe(self, version: VersionInfo, inputs: Any) -> None:
        key = (version.model, version.number)
        window = self._windows.get(key)
        if window is None:
            plan = self._plan(key, version.reference_stats)
            if plan is None:
                return
            window = self._windows[key] = _Window(plan, self.window_rows)
        rows = _row_count(inputs)
        if rows == 0:
            return
        picked: Array | None = None
        if rows > self.max_rows_per_request:
            picked = np.sort(self._rng.choice(rows, self.max_rows_per_request, replace=False))
        values, codes = _extract(window.plan, inputs, picked)
        window.append(values, codes)

    def _plan(self, key: tuple[str, int], stats: Mapping[str, Any] | None) -> _Plan | None:
        if key not in self._plans:
            try:
                self._plans[key] = _Plan.from_stats(stats) if stats else None
            except (KeyError, TypeError, ValueError):
                log.warning("%s:%s has unreadable reference statistics; not watching drift", *key)
                self._plans[key] = None
        return self._plans[key]

    def live_rows(self, model: str, version: int) -> int:
        window = self._windows.get((model, version))
        return window.filled if window else 0

    def rows_seen(self, model: str, version: int) -> int:
        """Rows taken into the window since it started (after sampling large requests)."""
        window = self._windows.get((model, version))
        return window.seen if window else 0

    def watched(self) -> list[tuple[str, int]]:
        return list(self._windows)

    def forget(self, model: str, version: int) -> None:
        """Drop a version's window and its gauge series (it is no longer served)."""
        key = (model, version)
        self._windows.pop(key, None)
        self._plans.pop(key, None)
        for feature in self._published.pop(key, set()):
            with contextlib.suppress(KeyError):
                self.gauge.remove(model, str(version), feature)

    # comparing ------------------------------------------------------------------------

    def snapshot(
        self, model: str, version: int, reference_stats: Mapping[str, Any] | None = None
    ) -> _Snapshot | None:
        """A copy of the window (cheap; on the event loop), or an empty one from the stats."""
        window = self._windows.get((model, version))
        if window is not None:
            return window.snapshot()
        plan = _Plan.from_stats(reference_stats) if reference_stats else None
        if plan is None:
            return None
        return _Snapshot(
            plan, np.empty((0, len(plan.numeric))), np.empty((0, len(plan.categorical)), np.int32)
        )

    def compute(
        self, model: str, version: int, reference_stats: Mapping[str, Any] | None = None
    ) -> list[FeatureDrift]:
        """Drift of each feature; empty when the version is neither watched nor given stats."""
        snapshot = self.snapshot(model, version, reference_stats)
        return snapshot.compare() if snapshot is not None else []

    async def compute_async(
        self, model: str, version: int, reference_stats: Mapping[str, Any] | None = None
    ) -> list[FeatureDrift]:
        """`compute` with the statistics (KS tests) in a worker thread."""
        snapshot = self.snapshot(model, version, reference_stats)
        if snapshot is None:
            return []
        return await anyio.to_thread.run_sync(snapshot.compare)

    async def update_metrics(self) -> None:
        """Set the gauge for every watched version; drop versions no longer served."""
        for model, version in list(self._windows):
            if self.is_active is not None and not self.is_active(model, version):
                self.forget(model, version)
                continue
            drifts = await self.compute_async(model, version)
            published = self._published.setdefault((model, version), set())
            for drift in drifts:
                if drift.psi is None or drift.live_count < self.min_live_rows:
                    continue
                self.gauge.labels(model, str(version), drift.feature).set(drift.psi)
                published.add(drift.feature)

    async def run(self, interval: float = 10.0) -> None:
        """Refresh the gauge every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.update_metrics()
            except Exception:
                log.exception("computing feature drift failed; trying again in %gs", interval)

    def start(self, interval: float = 10.0) -> None:
        """Run `run(interval)` in the background (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(interval))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _ks_2samp() -> Callable[[Array, Array], Any]:
    # scipy ships no type stubs (and is not in the mypy overrides): imported untyped, on first use.
    stats = importlib.import_module("scipy.stats")
    function: Callable[[Array, Array], Any] = stats.ks_2samp
    return function


def find_monitor(observers: Sequence[Any]) -> DriftMonitor | None:
    """The drift monitor among a dataplane's observers, if one is attached."""
    return next((o for o in observers if isinstance(o, DriftMonitor)), None)


def _row_count(inputs: Any) -> int:
    if isinstance(inputs, dict):
        return len(next(iter(inputs.values()))) if inputs else 0
    return len(inputs)


def _extract(plan: _Plan, inputs: Any, picked: Array | None) -> tuple[Array, Array]:
    """The tracked features of the (picked) rows: float values and category codes."""
    if is_frame(inputs):
        frame = inputs if picked is None else inputs.iloc[picked]
        # Column by column: selecting a sub-frame first costs ~10x more for one-row requests.
        values = np.empty((len(frame), len(plan.numeric)))
        for j, feature in enumerate(plan.numeric):
            values[:, j] = _floats(frame[feature.source.input])
        columns = [frame[f.source.input].to_numpy() for f in plan.categorical]
        return values, _codes(plan, columns, len(frame))

    def column(source: FeatureSource) -> Array:
        array = np.asarray(inputs[source.input] if isinstance(inputs, dict) else inputs)
        if picked is not None:
            array = array[picked]
        return array if source.index is None else array[:, source.index]

    rows = _row_count(inputs) if picked is None else len(picked)
    values = np.empty((rows, len(plan.numeric)))
    for j, feature in enumerate(plan.numeric):
        values[:, j] = np.asarray(column(feature.source), dtype=np.float64)
    return values, _codes(plan, [column(f.source) for f in plan.categorical], rows)


def _floats(series: pd.Series[Any]) -> Array:
    import pandas as pd

    array = series.to_numpy()
    if array.dtype.kind in "fiub":
        return array
    # nullable (Int64, Float64) or object columns: missing values become NaN
    return np.asarray(
        pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    )


def _codes(plan: _Plan, columns: list[Array], rows: int) -> Array:
    codes = np.empty((rows, len(plan.categorical)), dtype=np.int32)
    for j, (feature, values) in enumerate(zip(plan.categorical, columns, strict=True)):
        other = len(feature.codes)
        lookup = feature.codes
        codes[:, j] = [
            -1 if _missing(v) else lookup.get(v if isinstance(v, str) else str(v), other)
            for v in values
        ]
    return codes


def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or is_missing_marker(value)
    )
