"""The manifest of a snapshot: what it holds, written last to mark it complete."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from berth.backup.destination import MANIFEST, SNAPSHOTS, Destination
from berth.errors import InvalidInput, NotFound

FORMAT = 1
SECRETS_NOTE = (
    "the server secret (BERTH_SECRET_KEY or the secret file) is not in this backup: API keys "
    "work after a restore only with the same secret; otherwise re-create them"
)


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative to the artifact's root."""
    sha256: str
    size: int


@dataclass(frozen=True)
class ArtifactEntry:
    sha256: str
    is_directory: bool
    entry: str
    size_bytes: int
    files: list[FileEntry]


@dataclass(frozen=True)
class TableEntry:
    file: str
    """Relative to the snapshot's folder."""
    rows: int
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    id: str
    created_at: str
    berth_version: str
    schema_revision: str
    database: str
    """The engine the snapshot was read from (sqlite, postgresql): restores go to any."""
    tables: dict[str, TableEntry]
    artifacts: list[ArtifactEntry]
    secrets: dict[str, Any] = field(
        default_factory=lambda: {"server_secret": "not included", "note": SECRETS_NOTE}
    )
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def objects(self) -> dict[str, int]:
        """Every object the snapshot needs: sha256 -> size."""
        return {f.sha256: f.size for a in self.artifacts for f in a.files}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise InvalidInput(
                f"backup {data.get('id')} has format {data.get('format')}, this Berth reads "
                f"format {FORMAT}; use a Berth version that reads it"
            )
        return cls(
            id=data["id"],
            created_at=data["created_at"],
            berth_version=data["berth_version"],
            schema_revision=data["schema_revision"],
            database=data["database"],
            tables={name: TableEntry(**entry) for name, entry in data["tables"].items()},
            artifacts=[
                ArtifactEntry(**{**a, "files": [FileEntry(**f) for f in a["files"]]})
                for a in data["artifacts"]
            ],
            secrets=data["secrets"],
            format=data["format"],
        )


def new_id(now: datetime) -> str:
    """Sortable by time; the suffix keeps two backups of one second apart."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def snapshot_folder(snapshot: str) -> str:
    return f"{SNAPSHOTS}/{snapshot}"


def manifest_path(snapshot: str) -> str:
    return f"{snapshot_folder(snapshot)}/{MANIFEST}"


def load(destination: Destination, snapshot: str) -> Manifest:
    """The manifest of `snapshot` at `destination`, or one clear error."""
    if destination.size(manifest_path(snapshot)) is None:
        raise NotFound(
            f"no complete backup {snapshot} at {destination.url} (its manifest is missing); "
            f"run `berth backup list {destination.url}` to see the backups there"
        )
    try:
        return Manifest.from_dict(json.loads(destination.read(manifest_path(snapshot))))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(
            f"the manifest of backup {snapshot} at {destination.url} is damaged ({exc}); "
            "restore from another backup or destination"
        ) from exc


def latest(destination: Destination) -> str:
    ids = destination.snapshot_ids()
    if not ids:
        raise NotFound(
            f"no complete backup at {destination.url}; create one with "
            f"`berth backup create --to {destination.url}`"
        )
    return ids[-1]
