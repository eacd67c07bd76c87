"""A file sink: a folder of parts plus `_manifest.json`, committed by replacing the manifest.

A part is written to a temporary name, synced and renamed; then the manifest naming it is
replaced the same way. A part the manifest does not name was never committed: the next run
deletes it and redoes its chunk. A lock on `_lock` keeps a second run out while one is writing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from berth.errors import Conflict, InvalidInput
from berth.jobs.sink_types import Checkpoint, ErrorWriter, id_key, rejected_ids
from berth.jobs.sources import CSV, PARQUET

Array = np.ndarray[Any, Any]

MANIFEST = "_manifest.json"
LOCK = "_lock"
ERRORS_FOLDER = "_errors"
_PART = re.compile(r"^part-(\d+)\.(csv|parquet|jsonl)$")
_ERRORS_PART = re.compile(r"^errors-(\d+)\.(csv|parquet|jsonl)$")


class FileSink:
    """A folder of parts (CSV, Parquet or JSON lines) and the manifest that commits them."""

    def __init__(self, folder: Path, fmt: str, id_column: str, errors: ErrorWriter) -> None:
        self.folder = folder
        self.format = fmt
        self.id_column = id_column
        self.errors: ErrorWriter | None = errors
        self.description = f"{folder}/ ({fmt} parts)"
        self._lock: IO[bytes] | None = None
        self._manifest: dict[str, Any] = {}
        self._ids: IdSet | None = None

    def open(self, job_key: str) -> Checkpoint:
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidInput(
                f"--sink {self.folder} is a file; Berth writes a folder of parts there. Give "
                "a path that does not exist yet (or an earlier run's folder)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        manifest = self._read_manifest()
        if manifest and manifest.get("job_key") != job_key:
            raise Conflict(
                f"{self.folder} holds the results of another job ({manifest.get('job')}); "
                "give this job its own --sink folder"
            )
        self._manifest = manifest or {"job_key": job_key, "format": self.format, "parts": []}
        if self._manifest.get("format", self.format) != self.format:
            raise Conflict(
                f"{self.folder} holds {self._manifest['format']} parts; keep the extension"
            )
        checkpoint = Checkpoint.from_dict(self._manifest.get("checkpoint", {}))
        self._drop_uncommitted()
        assert self.errors is not None
        self.errors.open(job_key, checkpoint.chunks)
        return checkpoint

    def existing(self, ids: Array, scored_only: bool) -> Array:
        if self._ids is None:
            self._ids = IdSet(self._committed_ids())
        return self._ids.contains(ids)

    def commit(
        self, results: pd.DataFrame, rejected: pd.DataFrame, before: Checkpoint, after: Checkpoint
    ) -> None:
        if len(rejected):
            assert self.errors is not None
            self.errors.write(self._manifest["job_key"], after.chunks, rejected)
        parts = list(self._manifest.get("parts", []))
        if len(results):
            name = f"part-{after.chunks:06d}.{self.format}"
            write_frame(results, self.folder / name, self.format)
            parts.append({"file": name, "rows": len(results), "chunk": after.chunks})
        manifest = {**self._manifest, "parts": parts, "checkpoint": after.to_dict()}
        manifest["updated_at"] = datetime.now(UTC).isoformat()
        _write_atomically(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        self._manifest = manifest

    def finish(self, before: Checkpoint) -> Checkpoint:
        after = replace(before, finished=True)
        manifest = {**self._manifest, "checkpoint": after.to_dict()}
        manifest["updated_at"] = datetime.now(UTC).isoformat()
        _write_atomically(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        self._manifest = manifest
        return after

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def describe_parts(self) -> str:
        parts = self._manifest.get("parts", [])
        return f"{len(parts)} part{'s' if len(parts) != 1 else ''}"

    def set_job(self, job: str) -> None:
        """A human description of the job, kept in the manifest for whoever finds the folder."""
        self._manifest["job"] = job

    def _take_lock(self) -> None:
        handle = (self.folder / LOCK).open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise Conflict(
                f"another run is writing to {self.folder}; wait for it to finish, or cancel it "
                "(`berth jobs list`, `berth jobs cancel ID`)"
            ) from exc
        self._lock = handle

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.exists():
            if any(not p.name.startswith(("_", ".")) for p in self.folder.iterdir()):
                raise Conflict(
                    f"{self.folder} already holds files but no Berth manifest; give the job an "
                    "empty or new --sink folder"
                )
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise Conflict(f"cannot read {path}: {exc}; move the folder aside") from exc
        if not isinstance(manifest, dict):
            raise Conflict(f"{path} is not a Berth manifest; move the folder aside")
        return manifest

    def _drop_uncommitted(self) -> None:
        named = {part["file"] for part in self._manifest.get("parts", [])}
        for path in self.folder.iterdir():
            if path.name.endswith(".tmp") or (_PART.match(path.name) and path.name not in named):
                path.unlink()

    def _committed_ids(self) -> Array:
        arrays = [
            read_column(self.folder / part["file"], self.format, self.id_column)
            for part in self._manifest.get("parts", [])
        ]
        return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


class FolderErrors:
    """Rejected rows as a folder of parts, one per chunk, named by the chunk's number.

    A row is recorded once: a rerun that rejects it again (the same command, run again over the
    same source) does not add it a second time.
    """

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder = folder
        self.format = fmt
        self.description = f"{folder}/"
        self._recorded: set[str] = set()

    def open(self, job_key: str, chunks: int) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidInput(f"--errors {self.folder} is a file; give a folder path for parts")
        if not self.folder.exists():
            return
        for path in sorted(self.folder.iterdir()):
            match = _ERRORS_PART.match(path.name)
            if path.name.endswith(".tmp") or (match and int(match.group(1)) > chunks):
                path.unlink()
            elif match:
                self._recorded.update(rejected_ids(_read_part(path, match.group(2))))

    def write(self, job_key: str, chunk: int, rejected: pd.DataFrame) -> None:
        fresh = rejected[~np.isin(rejected_ids(rejected), list(self._recorded))]
        if not len(fresh):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        write_frame(fresh, self.folder / f"errors-{chunk:06d}.{self.format}", self.format)
        self._recorded.update(rejected_ids(fresh))


def _read_part(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == PARQUET:
        return pd.read_parquet(path)
    if fmt == CSV:
        return pd.read_csv(path)
    return pd.read_json(path, orient="records", lines=True)


def write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write a part under a temporary name, sync it, then rename it into place."""
    temporary = path.with_name(path.name + ".tmp")
    if fmt == PARQUET:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), temporary)
    elif fmt == CSV:
        frame.to_csv(temporary, index=False)
    else:
        frame.to_json(temporary, orient="records", lines=True, date_format="iso")
    _sync(temporary)
    temporary.replace(path)
    _sync_folder(path.parent)


def read_column(path: Path, fmt: str, column: str) -> Array:
    if fmt == PARQUET:
        values: Array = pq.read_table(path, columns=[column]).column(0).to_numpy()
        return values
    if fmt == CSV:
        return pd.read_csv(path, usecols=[column])[column].to_numpy()
    return pd.read_json(path, lines=True)[column].to_numpy()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    _sync_folder(path.parent)


def _sync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class IdSet:
    """Ids already in a sink, for skipping: a sorted array for numbers, a set otherwise."""

    def __init__(self, ids: Array) -> None:
        self._numeric = ids.dtype.kind in "iuf"
        if self._numeric:
            self._sorted = np.unique(ids)
            self._set: set[Any] = set()
        else:
            self._sorted = np.empty(0)
            self._set = {id_key(v) for v in ids.tolist()}

    def contains(self, ids: Array) -> Array:
        if self._numeric and ids.dtype.kind in "iuf":
            if not len(self._sorted):
                return np.zeros(len(ids), dtype=bool)
            at = np.searchsorted(self._sorted, ids).clip(max=len(self._sorted) - 1)
            found: Array = self._sorted[at] == ids
            return found
        known = self._set or {id_key(v) for v in self._sorted.tolist()}
        return np.fromiter((id_key(v) in known for v in ids.tolist()), bool, count=len(ids))


def folder_parts(folder: Path) -> Iterable[Path]:
    """The committed parts of a file sink, in order (what a reader should read)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return [folder / part["file"] for part in manifest.get("parts", [])]
