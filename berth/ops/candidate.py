"""Validation gates on a model file that is not registered (yet): `berth validate model.skops`.

A CI pipeline checks a candidate before anything is registered, so a candidate under the
threshold leaves no version behind. The file is loaded as registration loads it (a private
copy; a pickle only with --trust-pickle; skops types beyond the allow-list only with
--trust-type) and its signature comes as registration's would: from --signature, else
--sample, else the --data rows without the --target column (so the candidate is checked on the
inputs it would be registered with). Nothing is written to the registry but an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from berth.ops.gate_config import GateConfig
from berth.ops.gate_report import GateReport
from berth.ops.validation import (
    DataTable,
    GateData,
    GatedModel,
    baseline_version,
    check_model,
    require_gates,
)
from berth.registration.artifact import loaded_artifact
from berth.registration.inputs import SampleRows, inputs_for
from berth.registry.service import Registry, check_type_names
from berth.store import audit


@dataclass(frozen=True)
class CandidateFile:
    """An unregistered model file, directory or archive, and how to load it."""

    path: Path
    label: str
    """How the report names it, e.g. the file's name."""
    flavor: str | None = None
    sample: Path | None = None
    signature: Path | None = None
    trust_pickle: bool = False
    """Accept a pickle/joblib file, whose loading runs any code it holds (--trust-pickle)."""
    trusted_types: tuple[str, ...] = ()
    """Types beyond the built-in allow-list the skops file may load (--trust-type)."""
    actor: str | None = None
    """Who validates, for the audit log; None is the local user (`cli:<user>`)."""
    address: str | None = None
    """The client address of an API caller, for the audit log."""


def run_gates_on_file(
    registry: Registry, candidate: CandidateFile, config: GateConfig
) -> GateReport:
    """Run every gate of `config` on an unregistered model file.

    Loading a file runs code it may hold (a pickle with --trust-pickle, a python model), so
    each validation is an audit event `model.validate` naming the file, its sha256 and the
    trust given; a refused one (a pickle without trust, a bad gate) is recorded as refused.
    """
    event = audit.event(
        candidate.actor,
        candidate.address,
        "model.validate",
        candidate.label,
        {
            "trust_pickle": candidate.trust_pickle,
            "trusted_types": list(candidate.trusted_types),
            "no_regression_vs": config.no_regression_vs,
        },
    )
    log = audit.AuditLog(registry.db)
    with log.refusals(event):
        report, loaded = _run(registry, candidate, config)
    detail = {
        **(event.detail or {}),
        "flavor": loaded.flavor,
        "sha256": loaded.sha256,
        "passed": report.passed,
    }
    log.record(replace(event, detail=detail))
    return report


@dataclass(frozen=True)
class _Loaded:
    flavor: str
    sha256: str


def _run(
    registry: Registry, candidate: CandidateFile, config: GateConfig
) -> tuple[GateReport, _Loaded]:
    require_gates(config)
    trusted_types = check_type_names(candidate.trusted_types, "--trust-type")
    baseline = baseline_version(registry, config)  # a wrong reference fails before loading
    data = GateData(config)
    shown = f"--data {data.path.name}" + (
        f" (without --target {config.target})" if config.target is not None else ""
    )
    asked: list[list[str] | None] = []

    def rows(names: list[str] | None) -> DataTable:
        asked.append(names)
        return data.features(names)

    with loaded_artifact(
        candidate.path,
        flavor=candidate.flavor,
        trust_pickle=candidate.trust_pickle,
        trusted_types=trusted_types,
        server_trusted_types=registry.trusted_types,
    ) as loaded:
        inputs = inputs_for(
            loaded.runtime, candidate.sample, candidate.signature, SampleRows(shown, rows)
        )
        if asked:
            data.read_as(inputs.signature, asked[0])
        model = GatedModel(candidate.label, inputs.signature, loaded.runtime)
        report = check_model(registry, model, config, data, baseline)
        return report, _Loaded(loaded.flavor, loaded.sha256)
