"""One consistent read of every registry table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, RowMapping, select

from berth.backup.rows import encode
from berth.registry.accelerated import Accelerated
from berth.registry.artifacts import StoredArtifact
from berth.store.db import Database
from berth.store.tables import Base, VersionRow


@dataclass(frozen=True)
class TableDump:
    name: str
    data: bytes
    """The table's gzip'd JSON Lines (see berth.backup.rows)."""
    rows: int


@contextmanager
def _consistent(db: Database) -> Iterator[Connection]:
    """A connection whose reads all see one instant of the database.

    PostgreSQL: a SERIALIZABLE READ ONLY DEFERRABLE transaction waits for a snapshot no
    concurrent writer can make anomalous, then never blocks or fails. SQLite (in WAL mode): a
    deferred transaction reads from the snapshot its first statement takes, while writers go on.
    """
    if db.engine.dialect.name == "postgresql":
        options = {"isolation_level": "SERIALIZABLE", "postgresql_readonly": True,
                   "postgresql_deferrable": True}  # fmt: skip
        with (
            db.engine.connect().execution_options(**options) as connection,
            connection.begin(),
        ):
            yield connection
        return
    with db.engine.connect() as connection:
        connection.exec_driver_sql("BEGIN")
        try:
            yield connection
        finally:
            connection.exec_driver_sql("ROLLBACK")


def read_tables(db: Database) -> tuple[list[TableDump], list[StoredArtifact]]:
    """Every table of the registry (parents before children), read in one transaction, and
    the artifacts its versions name (each once)."""
    dumps = []
    artifacts: dict[str, StoredArtifact] = {}
    with _consistent(db) as connection:
        for table in Base.metadata.sorted_tables:
            key = list(table.primary_key.columns)
            rows = connection.execute(select(table).order_by(*key)).all()
            data, count = encode(table, rows)
            dumps.append(TableDump(table.name, data, count))
            if table.name == VersionRow.__tablename__:
                for row in rows:
                    for artifact in _version_artifacts(row._mapping):
                        artifacts.setdefault(artifact.sha256, artifact)
    return dumps, sorted(artifacts.values(), key=lambda a: a.sha256)


def _version_artifacts(version: RowMapping) -> list[StoredArtifact]:
    """The artifact a versions row names, and its accelerated twin's when it has one."""
    found = [
        StoredArtifact(
            sha256=version["sha256"],
            uri=version["artifact_uri"],
            entry=version["entry"],
            is_directory=bool(version["is_directory"]),
            size_bytes=int(version["size_bytes"]),
        )
    ]
    twin = Accelerated.from_stored(version.get("accelerated"))
    if twin is not None and twin.artifact is not None:
        found.append(twin.artifact)
    return found
