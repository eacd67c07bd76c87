"""Registration: check that an artifact loads and predicts, store it, and record a new version.

The CLI and the admin API both build a `RegisterRequest` and call `register`. Registration works
on a private copy of the artifact (an archive is unpacked into one): the copy is hashed, loaded
and stored, so the bytes checked are the bytes stored. The version is recorded by the registry
(`Registry.add_version`) with an audit event; a refused registration is recorded as `refused`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from berth.errors import InvalidInput
from berth.registration.artifact import loaded_artifact
from berth.registration.inputs import example, inputs_for, reference_stats
from berth.registry.references import check_alias, check_name
from berth.registry.service import Registry, check_type_names
from berth.registry.versions import Lineage, NewVersion, VersionInfo
from berth.store import audit


@dataclass(frozen=True)
class RegisterRequest:
    """Everything `register` needs; the CLI and the admin API build one of these."""

    name: str
    path: Path
    flavor: str | None = None
    sample: Path | None = None
    signature: Path | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    aliases: tuple[str, ...] = ()
    trust_pickle: bool = False
    """Accept a pickle/joblib file, whose loading runs any code it holds (--trust-pickle)."""
    trusted_types: tuple[str, ...] = ()
    """Types beyond the built-in allow-list the skops file may load, recorded on the version."""
    reference: Path | None = None
    """Reference data (.csv/.parquet/.json/.npy) whose per-feature statistics drift is measured
    against (--reference)."""
    reference_stats: Mapping[str, Any] | None = None
    """Reference statistics computed before (e.g. those of the source of a derived version),
    instead of `reference` data."""
    lineage: Lineage | None = None
    """The registered version this one was derived from; it must exist."""
    actor: str | None = None
    """Who registers, for the audit log; None is the local user (`cli:<user>`)."""
    address: str | None = None
    """The client address of an API caller, for the audit log."""


def register(registry: Registry, request: RegisterRequest) -> VersionInfo:
    """Check the artifact loads and predicts, store it, and record a new version."""
    event = audit.event(
        request.actor,
        request.address,
        "model.register",
        request.name,
        {
            "trust_pickle": request.trust_pickle,
            "trusted_types": list(request.trusted_types),
            "aliases": list(request.aliases),
            **_lineage_detail(request.lineage),
        },
    )
    with audit.AuditLog(registry.db).refusals(event):
        return _register(registry, request, event)


def _register(registry: Registry, request: RegisterRequest, event: audit.AuditEvent) -> VersionInfo:
    check_name("model", request.name)
    for alias in request.aliases:
        check_alias(alias)
    trusted_types = check_type_names(request.trusted_types, "--trust-type")
    if request.reference is not None and request.reference_stats is not None:
        raise InvalidInput("give reference data or reference statistics, not both")
    source = request.path.expanduser()
    with loaded_artifact(
        source,
        flavor=request.flavor,
        trust_pickle=request.trust_pickle,
        trusted_types=trusted_types,
        server_trusted_types=registry.trusted_types,
    ) as loaded:
        flavor, digest, pickle_sha256 = loaded.flavor, loaded.sha256, loaded.pickle_sha256
        inputs = inputs_for(loaded.runtime, request.sample, request.signature)
        signature = inputs.signature
        rows = example(inputs.sample, signature)
        stats = reference_stats(request.reference, signature)
        if request.reference_stats is not None:
            stats = dict(request.reference_stats)
        artifact = registry.store.put(loaded.staged)
    if artifact.sha256 != digest:
        raise InvalidInput(
            f"{source} changed while it was being checked (its files were modified when it "
            "was loaded); make the model leave its own files alone, and register it again"
        )
    new = NewVersion(
        name=request.name,
        flavor=flavor,
        artifact=artifact,
        signature=signature,
        metrics=request.metrics,
        tags=request.tags,
        description=request.description,
        aliases=request.aliases,
        trusted_types=trusted_types,
        pickle_trusted=pickle_sha256 is not None and request.trust_pickle,
        lineage=request.lineage,
        example=rows,
        reference_stats=stats,
    )
    detail = {
        "flavor": flavor,
        "sha256": artifact.sha256,
        "trust_pickle": request.trust_pickle,
        "trusted_types": list(trusted_types),
        "aliases": list(request.aliases),
        **_lineage_detail(request.lineage),
    }
    version = registry.add_version(new, replace(event, detail=detail))
    return replace(version, notes=(*inputs.notes, *version.notes))


def _lineage_detail(lineage: Lineage | None) -> dict[str, Any]:
    return {} if lineage is None else {"source": lineage.source}


def parse_pairs(pairs: Iterable[str], what: str) -> dict[str, str]:
    """`k=v` strings (from --metric/--tag) into a dict, with a clear error for a bad one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(
                f"{what} '{pair}' is not KEY=VALUE; write e.g. --{what} accuracy=0.93"
            )
        out[key.strip()] = value.strip()
    return out


def parse_metrics(pairs: Iterable[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in parse_pairs(pairs, "metric").items():
        try:
            metrics[key] = float(value)
        except ValueError as exc:
            raise InvalidInput(
                f"metric '{key}' has value '{value}', which is not a number"
            ) from exc
    return metrics
