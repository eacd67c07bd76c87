"""Accelerated twins: a scikit-learn version's ONNX form, made and checked when it is registered,
then served in its place (`berth.registry.accelerated` says what is kept).

The twin must compute what the version does on the version's own example rows, topped up with
rows drawn from its signature and reference statistics (`berth.optimize.data`): every label
identical and every probability within `TOLERANCE` (1e-4). It is kept only when it is also
faster at one row, the size most requests are. Whatever goes wrong (no converter for an
estimator, nothing to check on, a difference) is kept as the reason, and the version is served
as it is; nothing about the version itself changes either way.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from berth.errors import BerthError, InvalidInput
from berth.optimize.data import check_data
from berth.optimize.equivalence import TOLERANCE, check
from berth.optimize.service import convert_source
from berth.optimize.speed import compare
from berth.registry.accelerated import Accelerated
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes import load_runtime
from berth.runtimes.loading import load_version

log = logging.getLogger("berth.optimize")

SOURCE_FLAVORS = ("sklearn",)
"""Flavors that get a twin: scikit-learn estimators and pipelines (XGBoost and LightGBM models
included, through their converters)."""
TWIN_FLAVOR = "onnx"
SPEED_SECONDS = 0.2
"""How long each of the version and its twin is timed on one row."""

Progress = Callable[[str], None]


def accelerate(
    registry: Registry,
    version: VersionInfo,
    *,
    actor: str | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> VersionInfo:
    """Make, check and keep `version`'s twin, or keep why it has none; the updated version.

    `InvalidInput` only for a version of a flavor that has no twin."""
    if version.flavor not in SOURCE_FLAVORS:
        raise InvalidInput(
            f"{version.ref} is a {version.flavor} version; accelerated twins are made for "
            "scikit-learn versions (an ONNX version is fast already)"
        )
    try:
        twin = make_twin(registry, version, progress or _silent)
    except Exception as exc:  # a converter meeting a user's own estimator may raise anything
        twin = _refused(version, f"making its ONNX form failed ({type(exc).__name__}: {exc})")
    return registry.set_accelerated(
        version.model, version.number, twin, actor=actor, address=address
    )


def accelerate_registered(
    registry: Registry,
    version: VersionInfo,
    *,
    actor: str | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> VersionInfo:
    """What registering does after storing a version: its twin when its flavor gets one (the
    version unchanged otherwise), keeping the notes of registering it."""
    if version.flavor not in SOURCE_FLAVORS:
        return version
    updated = accelerate(registry, version, actor=actor, address=address, progress=progress)
    return replace(updated, notes=version.notes)


def make_twin(registry: Registry, version: VersionInfo, step: Progress) -> Accelerated:
    """The twin of `version` stored in the artifact store, or the reason there is none."""
    try:
        step(f"loading {version.ref}")
        source = load_version(registry, version)
        rows = check_data(version)
        step("converting to ONNX")
        converted = convert_source(version, source, float_only=False)
    except BerthError as exc:  # no converter, nothing to check on, a model that will not load
        return _refused(version, exc.message)
    if converted is None:
        return _refused(version, "it is an ONNX graph already")
    detail: dict[str, Any] = {"converter": converted.converter, "precision": converted.precision}
    with tempfile.TemporaryDirectory(prefix="berth-twin-") as work:
        path = Path(work) / f"{version.model}.onnx"
        path.write_bytes(converted.onnx_bytes)
        try:
            twin = load_runtime(TWIN_FLAVOR, path)
        except BerthError as exc:
            return _refused(version, f"its ONNX form did not load: {exc.message}")
        step(f"checking it on {rows.rows} rows")
        # Every label the version's own: a twin changes no answer a client sees.
        report = check(source, twin, rows, tolerance=TOLERANCE, min_agreement=1.0)
        detail["check"] = {
            "rows": report.rows,
            "agreeing": report.agreeing,
            "max_probability_diff": report.max_probability_diff,
            "max_value_diff": report.max_value_diff,
            "tolerance": report.tolerance,
        }
        if not report.passed:
            reason = "its ONNX form does not compute what it does: " + "; ".join(report.failures())
            return _refused(version, reason, detail)
        step("timing one row")
        one_row = compare(source, twin, rows, batches=(1,), budget_seconds=SPEED_SECONDS)
        timing = one_row.timings[0]
        detail["one_row_ms"] = {
            "version": round(timing.source_ms, 4),
            "twin": round(timing.optimized_ms, 4),
        }
        if timing.optimized_ms >= timing.source_ms:
            return _refused(version, "its ONNX form is not faster at one row", detail)
        artifact = registry.store.put(path)
    log.info("%s has an ONNX twin, %.1fx faster at one row", version.ref, timing.speedup)
    return Accelerated(TWIN_FLAVOR, artifact, detail)


def _refused(
    version: VersionInfo, reason: str, detail: dict[str, object] | None = None
) -> Accelerated:
    log.info("%s has no accelerated twin: %s", version.ref, reason)
    return Accelerated(TWIN_FLAVOR, None, detail or {}, reason=reason)


def _silent(_: str) -> None:
    return None
