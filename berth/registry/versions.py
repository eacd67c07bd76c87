"""What the registry holds about models and versions, as the frozen values its readers get.

`NewVersion` is what a caller hands the registry to record; `VersionInfo` and `ModelInfo` are
what it reads back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from berth.registry.accelerated import Accelerated
from berth.registry.artifacts import StoredArtifact
from berth.registry.signature import Signature


@dataclass(frozen=True)
class Lineage:
    """Where a version came from: the version it was derived from, and how (a JSON detail)."""

    source_model: str
    source_version: int
    detail: Mapping[str, Any] = field(default_factory=dict)
    """e.g. {"method": "onnx", "quantized": "int8", "check": {...}}; stored as given."""

    @property
    def source(self) -> str:
        return f"{self.source_model}:{self.source_version}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **self.detail}


@dataclass(frozen=True)
class NewVersion:
    """Everything stored about a version being added; its artifact is in the store already."""

    name: str
    flavor: str
    artifact: StoredArtifact
    signature: Signature
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    """Also the model's description when this version creates the model."""
    aliases: tuple[str, ...] = ()
    """Aliases of the model pointed at the new version."""
    trusted_types: tuple[str, ...] = ()
    """Types beyond the built-in allow-list its skops file may load, checked names."""
    pickle_trusted: bool = False
    """Its pickle may be unpickled (after its sha256 matches)."""
    lineage: Lineage | None = None
    """The registered version it was derived from; it must exist."""
    example: list[Any] | None = None
    reference_stats: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class VersionInfo:
    model: str
    number: int
    flavor: str
    artifact: StoredArtifact
    signature: Signature
    metrics: dict[str, float]
    tags: dict[str, str]
    description: str
    created_at: datetime
    aliases: tuple[str, ...] = ()
    example: list[Any] | None = None
    """A few input rows from the registration sample, in the v1 `instances` format."""
    trusted_types: tuple[str, ...] = ()
    """Types beyond the built-in allow-list its skops file may load (--trust-type)."""
    pickle_trusted: bool = False
    """Registered with --trust-pickle: its pickle is unpickled (after its sha256 matches)."""
    reference_stats: dict[str, Any] | None = None
    """Per-feature reference statistics for drift (from --reference), or None."""
    lineage: Lineage | None = None
    """The version this one was derived from (e.g. by `berth models optimize`), or None."""
    accelerated: Accelerated | None = None
    """Its accelerated twin (served in its place), or why it has none; None: never tried."""
    notes: tuple[str, ...] = field(default=(), compare=False)
    """What adding it found worth telling (an inferred signature, the same bytes already
    registered as another version); set when it is added only, never stored."""

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.number}"

    def to_dict(self) -> dict[str, Any]:
        from berth.registry.profile import reference_summary

        return {
            "model": self.model,
            "version": self.number,
            "flavor": self.flavor,
            "sha256": self.artifact.sha256,
            "size_bytes": self.artifact.size_bytes,
            "signature": self.signature.to_dict(),
            "metrics": self.metrics,
            "tags": self.tags,
            "description": self.description,
            "aliases": list(self.aliases),
            "created_at": self.created_at.isoformat(),
            "example": self.example,
            "trusted_types": list(self.trusted_types),
            "pickle_trusted": self.pickle_trusted,
            "reference": reference_summary(self.reference_stats),
            "lineage": self.lineage.to_dict() if self.lineage else None,
            "accelerated": self.accelerated.to_dict() if self.accelerated else None,
        }

    def registered_dict(self) -> dict[str, Any]:
        """What registering it answers (the command prints it, the upload route returns it):
        `to_dict` with the notes of adding it, which are never stored."""
        return {**self.to_dict(), "notes": list(self.notes)}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    created_at: datetime
    versions: tuple[VersionInfo, ...]
    aliases: dict[str, int] = field(default_factory=dict)

    @property
    def latest(self) -> VersionInfo | None:
        return self.versions[-1] if self.versions else None

    def to_dict(self) -> dict[str, Any]:
        latest = self.latest
        return {
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "latest_version": latest.number if latest else None,
            "latest_flavor": latest.flavor if latest else None,
            "versions": [v.number for v in self.versions],
            "aliases": self.aliases,
        }
