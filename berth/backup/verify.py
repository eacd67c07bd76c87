"""`berth backup list` and `verify`: what a destination holds, and whether it is whole."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from berth.backup.destination import Destination
from berth.backup.manifest import load, snapshot_folder

_CHUNK = 1024 * 1024


def list_snapshots(destination: Destination) -> list[dict[str, Any]]:
    """The complete snapshots at `destination`, oldest first, with what each holds."""
    found = []
    for snapshot in destination.snapshot_ids():
        manifest = load(destination, snapshot)
        found.append(
            {
                "id": manifest.id,
                "created_at": manifest.created_at,
                "berth_version": manifest.berth_version,
                "schema_revision": manifest.schema_revision,
                "rows": sum(t.rows for t in manifest.tables.values()),
                "artifacts": len(manifest.artifacts),
                "artifact_bytes": sum(manifest.objects().values()),
            }
        )
    return found


@dataclass
class VerifyReport:
    url: str
    snapshot: str
    deep: bool
    objects: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "snapshot": self.snapshot,
            "deep": self.deep,
            "objects": self.objects,
            "bytes": self.bytes,
            "ok": not self.problems,
            "problems": self.problems,
        }


def verify(destination: Destination, snapshot: str, deep: bool = False) -> VerifyReport:
    """Check that `snapshot`'s manifest, table files and objects are all there with their
    sizes; `deep` re-hashes every byte too."""
    manifest = load(destination, snapshot)
    report = VerifyReport(destination.url, snapshot, deep)
    folder = snapshot_folder(snapshot)
    for name, table in sorted(manifest.tables.items()):
        _check(destination, f"{folder}/{table.file}", table.sha256, table.size, deep, report,
               f"table file {name}")  # fmt: skip
    for digest, size in sorted(manifest.objects().items()):
        report.objects += 1
        report.bytes += size
        _check(destination, Destination.object_key(digest), digest, size, deep, report,
               f"object {digest}")  # fmt: skip
    return report


def _check(
    destination: Destination,
    relative: str,
    digest: str,
    size: int,
    deep: bool,
    report: VerifyReport,
    what: str,
) -> None:
    found = destination.size(relative)
    if found is None:
        report.problems.append(f"{what} is missing")
        return
    if found != size:
        report.problems.append(f"{what} has {found} bytes, expected {size}")
        return
    if deep:
        hasher = hashlib.sha256()
        with destination.open(relative) as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
        if hasher.hexdigest() != digest:
            report.problems.append(f"{what} is corrupted (sha256 {hasher.hexdigest()})")
