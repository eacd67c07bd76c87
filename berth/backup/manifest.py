"""The manifest of a snapshot: what it holds, written last to mark it complete."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from berth.backup.destination import MANIFEST, SNAPSHOTS, Destination
from berth.errors import InvalidInput, NotFound

FORMAT = 1
SEALED_FORMAT = 2
"""Encrypted snapshots: a Berth that reads only format 1 says so instead of failing on them."""
FORMATS = (FORMAT, SEALED_FORMAT)
SECRETS_NOTE = (
    "the server secret (BERTH_SECRET_KEY or the secret file) is not in this backup: API keys "
    "work after a restore only with the same secret; otherwise re-create them (encrypt the "
    "backup to include the secret)"
)
SECRET_FILE = "server-secret.sealed"  # noqa: S105 (a file name, not a secret)


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative to the artifact's root."""
    sha256: str
    size: int
    stored_size: int | None = None
    """Its size at the destination when that differs (encrypted)."""


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
    """Of the gzip'd JSON Lines, before any encryption."""
    size: int
    stored_size: int | None = None
    """Its size at the destination when that differs (encrypted)."""


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
    encryption: dict[str, Any] | None = None
    """Algorithm and key id when the snapshot is encrypted (see berth.backup.crypto)."""
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        # An unencrypted snapshot's manifest stays exactly format 1.
        if self.encryption is None:
            del document["encryption"]
        for entry in [*document["tables"].values()] + [
            f for a in document["artifacts"] for f in a["files"]
        ]:
            if entry["stored_size"] is None:
                del entry["stored_size"]
        return document

    @property
    def key_id(self) -> str | None:
        return None if self.encryption is None else str(self.encryption["key_id"])

    def objects(self) -> dict[str, int]:
        """Every object the snapshot needs: sha256 -> size."""
        return {f.sha256: f.size for a in self.artifacts for f in a.files}

    def stored_objects(self) -> dict[str, int]:
        """Every object the snapshot needs: sha256 -> its size at the destination."""
        return {
            f.sha256: f.size if f.stored_size is None else f.stored_size
            for a in self.artifacts
            for f in a.files
        }

    def object_key(self, sha256: str) -> str:
        """Where the object `sha256` of this snapshot is at the destination."""
        return Destination.object_key(sha256, self.key_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") not in FORMATS:
            raise InvalidInput(
                f"backup {data.get('id')} has format {data.get('format')}, this Berth reads "
                f"formats {', '.join(map(str, FORMATS))}; use a Berth version that reads it"
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
            encryption=data.get("encryption"),
            format=data["format"],
        )


def object_purpose(sha256: str) -> str:
    """What an object is, as sealed into its encryption (and named in errors)."""
    return f"object {sha256}"


def table_purpose(snapshot: str, table: str) -> str:
    return f"table file {table} of backup {snapshot}"


def secret_purpose(snapshot: str) -> str:
    return f"the server secret of backup {snapshot}"


SNAPSHOT_ID = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{6}$")
"""A snapshot's id: its UTC time to the millisecond, then a random suffix."""


def new_id(now: datetime) -> str:
    """Sortable by time (to the millisecond, so backups made one after the other list in the
    order they were made); the suffix keeps two of one millisecond apart."""
    return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def snapshot_time(snapshot: str) -> datetime | None:
    """When a snapshot was made, read from its id; None for a name that is not an id."""
    if not SNAPSHOT_ID.match(snapshot):
        return None
    return datetime.strptime(snapshot.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


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
