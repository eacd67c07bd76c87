"""A backup destination: a folder or any fsspec URL, written through partial files."""

from __future__ import annotations

import contextlib
import uuid
from typing import IO, Any

import fsspec

from berth.errors import InvalidInput

OBJECTS = "objects"
SEALED_OBJECTS = "objects-enc"
"""Encrypted objects, under the id of their key: an object in clear, or sealed with another
key, never stands in for one an encrypted backup needs (nor the other way round)."""
SNAPSHOTS = "snapshots"
MANIFEST = "manifest.json"


class Destination:
    """Where backups go (and are read back from); `url` is a local path or an fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") or url
        self.fs, self.root = open_url(self.url)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    @staticmethod
    def object_key(sha256: str, key_id: str | None = None) -> str:
        if key_id is not None:
            return f"{SEALED_OBJECTS}/{key_id}/{sha256[:2]}/{sha256}"
        return f"{OBJECTS}/{sha256[:2]}/{sha256}"

    def size(self, relative: str) -> int | None:
        """The size of a stored file, None when it is absent."""
        target = self.path(relative)
        if not self.fs.isfile(target):
            return None
        return int(self.fs.size(target))

    def open_partial(self, relative: str) -> tuple[IO[bytes], str]:
        """A writer for `relative` under a name of its own, and that name; `publish` it when
        complete, so a reader never sees half a file under the final name."""
        target = self.path(relative)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        partial = f"{target}.{uuid.uuid4().hex}.partial"
        handle: IO[bytes] = self.fs.open(partial, "wb")
        return handle, partial

    def publish(self, partial: str, relative: str) -> None:
        self.fs.mv(partial, self.path(relative))

    def discard(self, partial: str) -> None:
        # Cleanup after a failure must not hide that failure; a partial file left behind is
        # never mistaken for a complete one.
        with contextlib.suppress(Exception):
            if self.fs.exists(partial):
                self.fs.rm(partial)

    def write(self, relative: str, data: bytes) -> None:
        handle, partial = self.open_partial(relative)
        try:
            with handle:
                handle.write(data)
            self.publish(partial, relative)
        except BaseException:
            self.discard(partial)
            raise

    def read(self, relative: str) -> bytes:
        with self.fs.open(self.path(relative), "rb") as handle:
            data: bytes = handle.read()
        return data

    def open(self, relative: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(self.path(relative), "rb")
        return handle

    def snapshot_ids(self) -> list[str]:
        """Ids of the snapshots that have a manifest (complete ones), oldest first."""
        folder = self.path(SNAPSHOTS)
        if not self.fs.isdir(folder):
            return []
        ids = []
        for entry in self.fs.ls(folder, detail=False):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if self.fs.isfile(f"{folder}/{name}/{MANIFEST}"):
                ids.append(name)
        return sorted(ids)


def open_url(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url` and the root path in it, or one clear error."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise InvalidInput(
            f"the backup destination {url} needs the Python package '{exc.name}' for "
            f"{protocol}:// URLs, which is not installed; install it and try again"
        ) from exc
    except ValueError as exc:
        raise InvalidInput(
            f"the backup destination {url} is not a URL Berth can write to ({exc}); use a "
            "local folder, s3://, gs:// or az://"
        ) from exc
    return fs, str(root).rstrip("/") or str(root)
