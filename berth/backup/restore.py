"""`berth backup restore`: a snapshot into an empty SQLite or PostgreSQL registry.

The schema is created by Berth's own migrations at the snapshot's revision, the rows go in with
their ids through tables reflected from that schema (so an older snapshot fits the schema it was
taken from), then the migrations bring it to the newest revision. PostgreSQL's id sequences are
moved past the restored ids. Artifacts are copied into the target's store first, checked by
sha256 as they are copied, and version rows are pointed at that store.

An encrypted snapshot needs its key (checked by id before anything is read); its server secret
is put back last, once the rows are in (see berth.backup.secret).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    MetaData,
    Table,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)

from berth.backup.crypto import BackupKey, Codec, Unreadable, reading_codec, unseal
from berth.backup.destination import Destination
from berth.backup.manifest import (
    ArtifactEntry,
    Manifest,
    load,
    object_purpose,
    secret_purpose,
    snapshot_folder,
    table_purpose,
)
from berth.backup.rows import decode
from berth.backup.secret import SecretPlan, SecretTarget, plan
from berth.errors import ArtifactIntegrityError, Conflict, InvalidInput
from berth.registry.artifacts import ArtifactStore
from berth.store.db import MIGRATIONS, Database, head_revision
from berth.store.tables import Base, JobRow

_BATCH = 1000
Progress = Callable[[int], None]


@dataclass
class RestoreReport:
    snapshot: str
    database: str
    schema_revision: str
    rows: dict[str, int] = field(default_factory=dict)
    objects_copied: int = 0
    bytes_copied: int = 0
    secrets: str = ""
    interrupted_jobs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "database": self.database,
            "schema_revision": self.schema_revision,
            "rows": self.rows,
            "objects_copied": self.objects_copied,
            "bytes_copied": self.bytes_copied,
            "interrupted_jobs": self.interrupted_jobs,
            "secrets": self.secrets,
        }


def restore(
    source: Destination,
    snapshot: str,
    db: Database,
    store: ArtifactStore,
    force: bool = False,
    advance: Progress | None = None,
    key: BackupKey | None = None,
    secret: SecretTarget | None = None,
) -> RestoreReport:
    """Restore `snapshot` into `db` and `store`, decrypting with `key`; with `secret`, the
    backup's server secret is put where it says (else the report says what to do)."""
    manifest = load(source, snapshot)
    _check_revision(manifest)
    codec = reading_codec(manifest.encryption, key, f"backup {manifest.id}")
    current = _current_revision(db)
    if _holds_rows(db):
        if not force:
            raise Conflict(
                f"the database {db.engine.url.render_as_string(hide_password=True)} already "
                "holds a registry; restore into an empty database, or pass --force to replace "
                "its contents"
            )
        if current != manifest.schema_revision:
            raise InvalidInput(
                f"the database is at schema revision {current} and the backup at "
                f"{manifest.schema_revision}; restore into an empty database instead"
            )
    secret_plan = _secret_plan(source, manifest, codec, secret, force)
    report = RestoreReport(
        manifest.id, db.engine.dialect.name, manifest.schema_revision,
        secrets=secret_plan.message,
    )  # fmt: skip
    for artifact in manifest.artifacts:
        _restore_artifact(source, manifest, codec, artifact, store, report, advance)
    with db.engine.begin() as connection:
        _upgrade(connection, manifest.schema_revision)
    with db.engine.begin() as connection:
        tables = _reflected(connection)
        for table in reversed(tables):
            connection.execute(delete(table))
        for table in tables:
            entry = manifest.tables.get(table.name)
            if entry is None:
                continue
            with source.open(f"{snapshot_folder(manifest.id)}/{entry.file}") as handle:
                try:
                    data = unseal(codec, handle, table_purpose(manifest.id, table.name))
                except Unreadable as exc:
                    raise ArtifactIntegrityError(
                        f"{exc}; restore from another destination"
                    ) from None
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise ArtifactIntegrityError(
                    f"the table file {entry.file} of backup {manifest.id} fails its sha256 "
                    "check; restore from another destination"
                )
            report.rows[table.name] = _insert(connection, table, data, store)
        if connection.dialect.name == "postgresql":
            _reset_sequences(connection, tables)
    db.migrate()
    report.interrupted_jobs = _close_interrupted_jobs(db, manifest)
    report.secrets = secret_plan.apply()
    return report


def _close_interrupted_jobs(db: Database, manifest: Manifest) -> int:
    """Jobs queued or running when the snapshot was read have no process in the restored world:
    they are recorded failed, saying why (a batch job run again resumes its committed work)."""
    # The statuses of JobRow (its docstring): berth.jobs sits above this layer.
    active = ("queued", "running")
    message = (
        f"interrupted: the registry was restored from backup {manifest.id}, taken while this "
        "job was queued or running; run it again"
    )
    with db.session() as session:
        closed = session.execute(
            update(JobRow)
            .where(JobRow.status.in_(active))
            .values(status="failed", message=message, finished_at=datetime.now(UTC))
        )
        return int(closed.rowcount or 0)  # type: ignore[attr-defined]


def _secret_plan(
    source: Destination,
    manifest: Manifest,
    codec: Codec,
    target: SecretTarget | None,
    force: bool,
) -> SecretPlan:
    """What becomes of the backup's server secret, decided (and refused) before any write."""
    recorded = str(manifest.secrets.get("server_secret"))
    if target is None:
        return SecretPlan(str(manifest.secrets.get("note", "")))
    value = None
    if recorded == "encrypted":
        relative = f"{snapshot_folder(manifest.id)}/{manifest.secrets['file']}"
        try:
            with source.open(relative) as handle:
                value = unseal(codec, handle, secret_purpose(manifest.id))
        except FileNotFoundError:
            raise ArtifactIntegrityError(
                f"the server secret of backup {manifest.id} is missing; restore from another "
                "destination"
            ) from None
        except Unreadable as exc:
            raise ArtifactIntegrityError(f"{exc}; restore from another destination") from None
    return plan(value, recorded, target, force)


def _check_revision(manifest: Manifest) -> None:
    if manifest.schema_revision not in _known_revisions():
        raise InvalidInput(
            f"backup {manifest.id} is from a newer Berth (schema revision "
            f"{manifest.schema_revision}, made by Berth {manifest.berth_version}; this Berth "
            f"knows up to {head_revision()}); restore it with that Berth version or newer"
        )


def _known_revisions() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        found = connection.scalar(text("SELECT version_num FROM alembic_version"))
        return None if found is None else str(found)


def _holds_rows(db: Database) -> bool:
    with db.engine.connect() as connection:
        present = set(inspect(connection).get_table_names())
        for table in Base.metadata.sorted_tables:
            if table.name in present and connection.scalar(select(func.count()).select_from(table)):
                return True
    return False


def _reflected(connection: Connection) -> list[Table]:
    """The tables as the database has them (parents first); JSON columns write None as SQL
    NULL, as the rows were read."""
    metadata = MetaData()
    metadata.reflect(connection)
    tables = [t for t in metadata.sorted_tables if t.name != "alembic_version"]
    for table in tables:
        for column in table.columns:
            if isinstance(column.type, JSON):
                column.type = JSON(none_as_null=True)
    return tables


def _insert(connection: Connection, table: Table, data: bytes, store: ArtifactStore) -> int:
    names, rows = decode(data, connection.dialect.name)
    unknown = sorted(set(names) - set(table.columns.keys()))
    if unknown:
        raise InvalidInput(
            f"the backup's table {table.name} has columns {', '.join(unknown)} that its schema "
            "revision does not; the backup is damaged: restore from another destination"
        )
    count = 0
    batch: list[dict[str, Any]] = []
    for row in rows:
        if table.name == "versions":
            # The version's artifact now lives in the target's store.
            row["artifact_uri"] = store.uri_of(row["sha256"])
        batch.append(row)
        count += 1
        if len(batch) >= _BATCH:
            connection.execute(insert(table), batch)
            batch = []
    if batch:
        connection.execute(insert(table), batch)
    return count


def _reset_sequences(connection: Connection, tables: list[Table]) -> None:
    """Move each id sequence past the restored ids, so the next row does not collide."""
    for table in tables:
        if "id" not in table.columns or not table.columns["id"].primary_key:
            continue
        sequence = connection.scalar(
            text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table.name}
        )
        if sequence is None:
            continue
        highest = connection.scalar(select(func.max(table.columns["id"])))
        connection.execute(
            text("SELECT setval(CAST(:sequence AS regclass), :value, :called)"),
            {"sequence": sequence, "value": highest or 1, "called": highest is not None},
        )


def _restore_artifact(
    source: Destination,
    manifest: Manifest,
    codec: Codec,
    artifact: ArtifactEntry,
    store: ArtifactStore,
    report: RestoreReport,
    advance: Progress | None,
) -> None:
    root = store.uri_of(artifact.sha256)
    for file in artifact.files:
        target = f"{root}/{file.path}"
        if store.fs.isfile(target) and int(store.fs.size(target)) == file.size:
            if advance:
                advance(file.size)
            continue
        store.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        partial = f"{target}.restore.partial"
        hasher = hashlib.sha256()
        try:
            with (
                source.open(manifest.object_key(file.sha256)) as reader,
                store.fs.open(partial, "wb") as writer,
            ):
                for chunk in codec.opened(reader, object_purpose(file.sha256)):
                    hasher.update(chunk)
                    writer.write(chunk)
                    if advance:
                        advance(len(chunk))
        except Unreadable as exc:
            store.fs.rm(partial)
            raise ArtifactIntegrityError(
                f"{exc}; restore from another destination, or run `berth backup verify --deep`"
            ) from None
        if hasher.hexdigest() != file.sha256:
            store.fs.rm(partial)
            raise ArtifactIntegrityError(
                f"object {file.sha256} of the backup is corrupted (its sha256 does not match); "
                "restore from another destination, or run `berth backup verify --deep`"
            )
        store.fs.mv(partial, target)
        report.objects_copied += 1
        report.bytes_copied += file.size
