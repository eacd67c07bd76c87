"""`berth backup list` and `verify`: what a destination holds, and whether it is whole."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from berth.backup.crypto import BackupKey, Codec, Unreadable, reading_codec
from berth.backup.destination import Destination
from berth.backup.manifest import (
    load,
    object_purpose,
    secret_purpose,
    snapshot_folder,
    table_purpose,
)


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
                "encrypted": manifest.encryption is not None,
                "key_id": manifest.key_id,
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


def verify(
    destination: Destination, snapshot: str, deep: bool = False, key: BackupKey | None = None
) -> VerifyReport:
    """Check that `snapshot`'s manifest, table files and objects are all there with their
    sizes (no key needed); `deep` re-hashes every byte too (decrypting: with the key)."""
    manifest = load(destination, snapshot)
    codec = reading_codec(manifest.encryption, key, f"backup {snapshot}") if deep else None
    report = VerifyReport(destination.url, snapshot, deep)
    folder = snapshot_folder(snapshot)
    for name, table in sorted(manifest.tables.items()):
        stored = table.size if table.stored_size is None else table.stored_size
        _check(destination, f"{folder}/{table.file}", table.sha256, stored, codec, report,
               f"table file {name}", table_purpose(snapshot, name))  # fmt: skip
    for digest, size in sorted(manifest.stored_objects().items()):
        report.objects += 1
        report.bytes += size
        _check(destination, manifest.object_key(digest), digest, size, codec, report,
               f"object {digest}", object_purpose(digest))  # fmt: skip
    if manifest.secrets.get("server_secret") == "encrypted":
        relative = f"{folder}/{manifest.secrets['file']}"
        _check(destination, relative, None, int(manifest.secrets["stored_size"]), codec,
               report, "the server secret", secret_purpose(snapshot))  # fmt: skip
    return report


def _check(
    destination: Destination,
    relative: str,
    digest: str | None,
    size: int,
    codec: Codec | None,
    report: VerifyReport,
    what: str,
    purpose: str,
) -> None:
    """One file: there, of `size` bytes; with a codec (deep), it opens and its plaintext has
    `digest` (None: opening is the whole check, as for the secret, whose digest is not kept)."""
    found = destination.size(relative)
    if found is None:
        report.problems.append(f"{what} is missing")
        return
    if found != size:
        report.problems.append(f"{what} has {found} bytes, expected {size}")
        return
    if codec is None:
        return
    hasher = hashlib.sha256()
    try:
        with destination.open(relative) as handle:
            for chunk in codec.opened(handle, purpose):
                hasher.update(chunk)
    except Unreadable as exc:
        report.problems.append(f"{what} is corrupted (it {exc.detail})")
        return
    if digest is not None and hasher.hexdigest() != digest:
        report.problems.append(f"{what} is corrupted (sha256 {hasher.hexdigest()})")
