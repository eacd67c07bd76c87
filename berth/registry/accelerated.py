"""A version's accelerated twin: the same model in a faster form, served in its place.

A scikit-learn (or XGBoost, LightGBM) version registered as it is predicts one row in about
100 us, most of it the library checking its input; the same model converted to ONNX answers in
a tenth of that. The twin is made when the version is registered (`berth.optimize.twin`), checked
against the version on its example rows and reference statistics, and stored beside it: same
version, same signature, same answers (labels identical, probabilities within the checked
tolerance). A version whose twin could not be made or failed its check keeps the reason, so it is
not tried again at every start, and serves as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from berth.registry.artifacts import StoredArtifact


@dataclass(frozen=True)
class Accelerated:
    flavor: str
    """The runtime that serves the twin ('onnx')."""
    artifact: StoredArtifact | None
    """The twin in the artifact store; None when none could be made (see `reason`)."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    """How it was made and checked: converter, precision, the equivalence check, the speed-up."""
    reason: str = ""
    """Why the version has no twin, when `artifact` is None."""

    @property
    def usable(self) -> bool:
        return self.artifact is not None

    def to_dict(self) -> dict[str, Any]:
        """What version listings show (no store URI)."""
        shown: dict[str, Any] = {"flavor": self.flavor, "served": self.usable}
        if self.artifact is not None:
            shown.update(sha256=self.artifact.sha256, size_bytes=self.artifact.size_bytes)
        if self.reason:
            shown["reason"] = self.reason
        return {**shown, **self.detail}

    def stored(self) -> dict[str, Any]:
        """The JSON the versions table keeps."""
        artifact = self.artifact
        return {
            "flavor": self.flavor,
            "artifact": None
            if artifact is None
            else {
                "sha256": artifact.sha256,
                "uri": artifact.uri,
                "entry": artifact.entry,
                "is_directory": artifact.is_directory,
                "size_bytes": artifact.size_bytes,
            },
            "detail": dict(self.detail),
            "reason": self.reason,
        }

    @classmethod
    def from_stored(cls, document: Mapping[str, Any] | None) -> Accelerated | None:
        if not document:
            return None
        artifact = document.get("artifact")
        return cls(
            flavor=str(document["flavor"]),
            artifact=None
            if artifact is None
            else StoredArtifact(
                sha256=str(artifact["sha256"]),
                uri=str(artifact["uri"]),
                entry=str(artifact["entry"]),
                is_directory=bool(artifact["is_directory"]),
                size_bytes=int(artifact["size_bytes"]),
            ),
            detail=dict(document.get("detail") or {}),
            reason=str(document.get("reason") or ""),
        )
