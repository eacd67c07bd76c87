"""`berth backup create`: one snapshot of the registry to several destinations at once.

The tables are read once, in one transaction; each artifact file is read once from the store
and streamed to every destination that lacks it (by sha256 and size), so a second backup with
no changes copies no artifact bytes. A destination that fails is dropped at once and gets no
manifest; the others go on. The manifest is each destination's last write.

With a backup key every file is sealed once and the same ciphertext goes to every destination;
objects keep their plaintext sha256 as name (so nothing unchanged is copied again) under a
prefix of the key's id, and the server secret is sealed into the snapshot too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from berth import __version__
from berth.backup.crypto import BackupKey, Codec, Sealed, codec_for, seal
from berth.backup.destination import Destination, Upload, one_line
from berth.backup.manifest import (
    FORMAT,
    SEALED_FORMAT,
    ArtifactEntry,
    FileEntry,
    Manifest,
    TableEntry,
    manifest_path,
    new_id,
    object_purpose,
    snapshot_folder,
    table_purpose,
)
from berth.backup.secret import ServerSecret, sealed_entry
from berth.backup.snapshot import TableDump, read_tables
from berth.errors import ArtifactIntegrityError, InvalidInput
from berth.registry.artifacts import ArtifactStore, StoredArtifact
from berth.store.db import Database, head_revision

_CHUNK = 1024 * 1024
Progress = Callable[[int], None]
P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class DestinationReport:
    url: str
    objects_copied: int = 0
    bytes_copied: int = 0
    objects_present: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "complete": self.error is None,
            "objects_copied": self.objects_copied,
            "bytes_copied": self.bytes_copied,
            "objects_present": self.objects_present,
            "error": self.error,
        }


@dataclass
class BackupReport:
    snapshot: str
    schema_revision: str
    rows: dict[str, int]
    artifacts: int
    artifact_bytes: int
    destinations: list[DestinationReport] = field(default_factory=list)
    encryption: dict[str, Any] | None = None
    secrets: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "schema_revision": self.schema_revision,
            "rows": self.rows,
            "artifacts": self.artifacts,
            "artifact_bytes": self.artifact_bytes,
            "destinations": [d.to_dict() for d in self.destinations],
            "encryption": self.encryption,
            "secrets": self.secrets,
        }


class _Target:
    """A destination with its report; a failure takes it out of the rest of the backup."""

    def __init__(self, url: str) -> None:
        self.report = DestinationReport(url)
        self.destination = self.attempt(Destination, url)
        if self.destination is not None:
            self.attempt(self.destination.require_bucket)

    @property
    def alive(self) -> bool:
        return self.report.error is None and self.destination is not None

    def attempt(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """`work`'s result, or None once this destination has failed (now or before)."""
        if self.report.error is not None:
            return None
        try:
            return work(*args, **kwargs)
        except Exception as exc:  # any failure of one destination is its own
            self.report.error = one_line(exc)
            return None


@dataclass(frozen=True)
class Snapshot:
    """The registry's rows as read in one transaction, before anything is written."""

    database: str
    tables: list[TableDump]
    artifacts: list[StoredArtifact]

    @property
    def artifact_bytes(self) -> int:
        return sum(a.size_bytes for a in self.artifacts)


def take_snapshot(db: Database) -> Snapshot:
    tables, artifacts = read_tables(db)
    return Snapshot(db.engine.dialect.name, tables, artifacts)


def create_backup(
    taken: Snapshot,
    store: ArtifactStore,
    urls: list[str],
    advance: Progress | None = None,
    key: BackupKey | None = None,
    secret: ServerSecret | None = None,
    now: datetime | None = None,
) -> BackupReport:
    """Write `taken` and the artifacts it names (read from `store`) to every URL in `urls`,
    sealed with `key` if given (then with the server `secret`, which is never written in
    clear); `now` (the snapshot's time) is for tests."""
    if not urls:
        raise InvalidInput("name at least one destination with --to URL (a folder or fsspec URL)")
    revision = head_revision()
    if revision is None:
        raise InvalidInput("cannot tell the registry's schema revision; reinstall Berth")
    now = now or datetime.now(UTC)
    snapshot = new_id(now)
    codec = codec_for(key)
    sealed = isinstance(codec, Sealed)
    dumps, artifacts = taken.tables, taken.artifacts
    targets = [_Target(url) for url in urls]
    entries = [_copy_artifact(store, artifact, targets, codec, advance) for artifact in artifacts]
    tables: dict[str, TableEntry] = {}
    for dump in dumps:
        relative = f"tables/{dump.name}.jsonl.gz" + (".sealed" if sealed else "")
        stored = seal(codec, dump.data, table_purpose(snapshot, dump.name))
        tables[dump.name] = TableEntry(
            relative, dump.rows, hashlib.sha256(dump.data).hexdigest(), len(dump.data),
            len(stored) if sealed else None,
        )  # fmt: skip
        for target in targets:
            if target.destination is not None:
                path = f"{snapshot_folder(snapshot)}/{relative}"
                target.attempt(target.destination.write, path, stored)
    secrets_entry, sealed_secret = sealed_entry(codec, secret, snapshot)
    if sealed_secret is not None:
        for target in targets:
            if target.destination is not None:
                path = f"{snapshot_folder(snapshot)}/{secrets_entry['file']}"
                target.attempt(target.destination.write, path, sealed_secret)
    manifest = Manifest(
        id=snapshot,
        created_at=now.isoformat(),
        berth_version=__version__,
        schema_revision=revision,
        database=taken.database,
        tables=tables,
        artifacts=entries,
        secrets=secrets_entry,
        encryption=codec.encryption(),
        format=SEALED_FORMAT if sealed else FORMAT,
    )
    document = json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode()
    for target in targets:
        if target.destination is not None:
            target.attempt(target.destination.write, manifest_path(snapshot), document)
    return BackupReport(
        snapshot=snapshot,
        schema_revision=revision,
        rows={name: entry.rows for name, entry in tables.items()},
        artifacts=len(entries),
        artifact_bytes=sum(f.size for e in entries for f in e.files),
        destinations=[t.report for t in targets],
        encryption=manifest.encryption,
        secrets=secrets_entry,
    )


def _copy_artifact(
    store: ArtifactStore,
    artifact: StoredArtifact,
    targets: list[_Target],
    codec: Codec,
    advance: Progress | None,
) -> ArtifactEntry:
    files = []
    for relative, size in store.files(artifact):
        if artifact.is_directory:
            digest = _stored_sha256(store, artifact, relative)
        else:
            digest = artifact.sha256
        stored = codec.stored_size(size) if isinstance(codec, Sealed) else None
        files.append(FileEntry(relative, digest, size, stored))
        _copy_object(store, artifact, relative, digest, size, targets, codec, advance)
    return ArtifactEntry(
        sha256=artifact.sha256,
        is_directory=artifact.is_directory,
        entry=artifact.entry,
        size_bytes=artifact.size_bytes,
        files=files,
    )


def _stored_sha256(store: ArtifactStore, artifact: StoredArtifact, relative: str) -> str:
    digest = hashlib.sha256()
    with store.open(artifact, relative) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_object(
    store: ArtifactStore,
    artifact: StoredArtifact,
    relative: str,
    digest: str,
    size: int,
    targets: list[_Target],
    codec: Codec,
    advance: Progress | None,
) -> None:
    """Stream one stored file (sealed once, if encrypting) to every live destination that
    lacks it, checking its digest on the way: a damaged store file is never published as a
    good object."""
    key = Destination.object_key(digest, codec.key_id)
    stored_size = codec.stored_size(size)
    lacking: list[tuple[_Target, Destination]] = []
    for target in targets:
        destination = target.destination
        if destination is None or not target.alive:
            continue
        found = target.attempt(destination.size, key)
        if not target.alive:
            continue
        if found == stored_size:
            target.report.objects_present += 1
        else:
            lacking.append((target, destination))
    if not lacking:
        if advance:
            advance(size)
        return
    uploads: list[tuple[_Target, Upload]] = []
    for target, destination in lacking:
        upload = target.attempt(destination.upload, key)
        if upload is not None:
            uploads.append((target, upload))
    hasher = hashlib.sha256()
    sealer = codec.sealer(object_purpose(digest))

    def send(data: bytes) -> None:
        if data:
            for target, upload in uploads:
                target.attempt(upload.write, data)

    try:
        send(sealer.start())
        with store.open(artifact, relative) as source:
            while chunk := source.read(_CHUNK):
                hasher.update(chunk)
                send(sealer.update(chunk))
                if advance:
                    advance(len(chunk))
        send(sealer.finish())
    except BaseException:
        for _target, upload in uploads:
            upload.abort()
        raise
    damaged = hasher.hexdigest() != digest
    for target, upload in uploads:
        # The digest is checked before anything is committed: on an object store the upload
        # goes to the final key, and a damaged store file must never appear there.
        if target.alive and not damaged:
            target.attempt(upload.commit)
        if target.alive and not damaged:
            target.report.objects_copied += 1
            target.report.bytes_copied += stored_size
        else:
            upload.abort()
    if damaged:
        raise ArtifactIntegrityError(
            f"artifact {artifact.sha256[:12]} in the store fails its sha256 check (file "
            f"{relative or artifact.entry}); repair the store (register the version again) and "
            "back up again"
        )
