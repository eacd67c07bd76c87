"""Everything stored about a version, as one JSON document, and the `VersionInfo` read back.

`VersionInfo.to_dict` is what listings and `berth models show` print: it leaves out the
artifact's layout and gives the drift reference as a summary. The record adds both (the
reference statistics in full, with their samples of the training data), so a client holding
only an API key can rebuild the very `VersionInfo` the registry has: `berth build` in remote
mode writes a bundle manifest from it that is the one local mode writes. The store's URI is the
one thing left out (a server's path means nothing to its clients).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from berth.errors import InvalidInput
from berth.registry.artifacts import StoredArtifact
from berth.registry.signature import Signature
from berth.registry.versions import Lineage, VersionInfo


def version_record(version: VersionInfo) -> dict[str, Any]:
    """`version.to_dict()`, plus its artifact's layout and its full reference statistics."""
    return {
        **version.to_dict(),
        "artifact": {
            "sha256": version.artifact.sha256,
            "size_bytes": version.artifact.size_bytes,
            "entry": version.artifact.entry,
            "is_directory": version.artifact.is_directory,
        },
        "reference_stats": version.reference_stats,
    }


def version_from_record(record: dict[str, Any]) -> VersionInfo:
    """The `VersionInfo` a record (`version_record`) was made from, with no store URI."""
    try:
        artifact = record["artifact"]
        return VersionInfo(
            model=str(record["model"]),
            number=int(record["version"]),
            flavor=str(record["flavor"]),
            artifact=StoredArtifact(
                sha256=str(artifact["sha256"]),
                uri="",
                entry=str(artifact["entry"]),
                is_directory=bool(artifact["is_directory"]),
                size_bytes=int(artifact["size_bytes"]),
            ),
            signature=Signature.from_dict(record["signature"]),
            metrics=dict(record["metrics"]),
            tags=dict(record["tags"]),
            description=str(record["description"]),
            created_at=datetime.fromisoformat(record["created_at"]),
            aliases=tuple(record["aliases"]),
            example=record["example"],
            trusted_types=tuple(record["trusted_types"]),
            pickle_trusted=bool(record["pickle_trusted"]),
            reference_stats=record["reference_stats"],
            lineage=_lineage(record["lineage"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"the version record is incomplete or malformed ({type(exc).__name__}: {exc}); "
            "is the server a Berth of the same version as this one?"
        ) from exc


def _lineage(document: dict[str, Any] | None) -> Lineage | None:
    """Lineage from its `to_dict` form: {"source": "NAME:VERSION", **detail}."""
    if document is None:
        return None
    detail = {key: value for key, value in document.items() if key != "source"}
    model, _, number = str(document["source"]).rpartition(":")
    return Lineage(source_model=model, source_version=int(number), detail=detail)
