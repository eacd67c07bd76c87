"""A backup destination: a folder or any fsspec URL (s3://, gs://, az://, ...).

Credentials and endpoints come from each backend's own environment (AWS_ACCESS_KEY_ID,
AWS_ENDPOINT_URL, AZURE_STORAGE_CONNECTION_STRING, GOOGLE_APPLICATION_CREDENTIALS,
STORAGE_EMULATOR_HOST, ...) and from fsspec's configuration (FSSPEC_<PROTOCOL>_<OPTION>
variables or ~/.config/fsspec), so Berth passes no options of its own.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec

from berth.errors import BerthError, InvalidInput

OBJECTS = "objects"
SEALED_OBJECTS = "objects-enc"
"""Encrypted objects, under the id of their key: an object in clear, or sealed with another
key, never stands in for one an encrypted backup needs (nor the other way round)."""
SNAPSHOTS = "snapshots"
MANIFEST = "manifest.json"

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""Protocols whose uploads appear whole or not at all: an S3 PUT or completed multipart upload,
a finalized GCS upload and a committed Azure block list each publish the object atomically, and
an upload that is abandoned never shows. Writing there straight to the final key saves the copy
a rename would cost (object stores have no rename: `mv` is copy then delete)."""

PART_BYTES = 8 * 1024 * 1024
"""How much of an object an upload holds in memory before sending it as one part: over S3's
5 MiB minimum part and a multiple of GCS's 256 KiB, and small enough that a backup streaming
one file to several destinations holds little (the backends' defaults go up to 50 MiB each)."""


class Upload:
    """One file being written: `commit` makes it appear whole under its name, `abort` leaves
    nothing a reader would take for it."""

    def __init__(self, fs: Any, target: str, direct: bool) -> None:
        self.fs = fs
        self.target = target
        if direct:
            self.partial: str | None = None
            self.handle: IO[bytes] = fs.open(target, "wb", block_size=PART_BYTES)
        else:
            # A folder (or a filesystem whose writes are not atomic): a file of its own name,
            # renamed once complete, so a reader never sees half a file under the final name.
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.partial = f"{target}.{uuid.uuid4().hex}.partial"
            self.handle = fs.open(self.partial, "wb")

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.close()
        if self.partial is not None:
            self.fs.mv(self.partial, self.target)

    def abort(self) -> None:
        """Give up on the file. Cleanup after a failure must not hide that failure, so its own
        errors (a destination that is gone) are swallowed."""
        if self.partial is not None:
            with contextlib.suppress(Exception):
                self.handle.close()
            with contextlib.suppress(Exception):
                if self.fs.exists(self.partial):
                    self.fs.rm(self.partial)
            return
        # An object store's file commits whatever it holds when it is closed, also by the
        # garbage collector: cancel the upload (S3 aborts the multipart upload, GCS deletes the
        # resumable session, Azure's uncommitted blocks expire), then mark the file closed so
        # nothing commits it later.
        discard = getattr(self.handle, "discard", None)
        with contextlib.suppress(Exception):
            if discard is not None:
                discard()
        with contextlib.suppress(Exception):
            self.handle.closed = True  # type: ignore[misc]


class Destination:
    """Where backups go (and are read back from); `url` is a local path or an fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") or url
        self.fs, self.root = open_url(self.url)
        protocols = self.fs.protocol
        names = {protocols} if isinstance(protocols, str) else set(protocols)
        self.object_store = bool(names & OBJECT_STORES)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    @staticmethod
    def object_key(sha256: str, key_id: str | None = None) -> str:
        if key_id is not None:
            return f"{SEALED_OBJECTS}/{key_id}/{sha256[:2]}/{sha256}"
        return f"{OBJECTS}/{sha256[:2]}/{sha256}"

    def require_bucket(self) -> None:
        """Before writing to an object store: its bucket (container) must exist. Berth does not
        create buckets: where they live, who may read them and how long objects are kept are
        the operator's choices, and backup credentials need not be allowed to create them."""
        if not self.object_store:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.info(bucket)
        except FileNotFoundError:
            raise InvalidInput(
                f"the bucket {bucket} of the backup destination {self.url} does not exist; "
                "create it (with the retention and access you want) and run the backup again"
            ) from None

    def size(self, relative: str) -> int | None:
        """The size of a stored file, None when it is absent."""
        try:
            info = self.fs.info(self.path(relative))
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return int(info["size"])

    def upload(self, relative: str) -> Upload:
        return Upload(self.fs, self.path(relative), direct=self.object_store)

    def write(self, relative: str, data: bytes) -> None:
        upload = self.upload(relative)
        try:
            upload.write(data)
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def read(self, relative: str) -> bytes:
        with self.fs.open(self.path(relative), "rb") as handle:
            data: bytes = handle.read()
        return data

    def open(self, relative: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(self.path(relative), "rb")
        return handle

    def snapshot_ids(self) -> list[str]:
        """Ids of the snapshots that have a manifest (complete ones), oldest first. An object
        store has no empty folders: a prefix without objects is as absent as a missing one."""
        folder = self.path(SNAPSHOTS)
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        ids = []
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if self.size(f"{SNAPSHOTS}/{name}/{MANIFEST}") is not None:
                ids.append(name)
        return sorted(ids)


def one_line(exc: BaseException) -> str:
    """A storage failure as one line: storage clients put request ids and XML bodies on the
    lines after the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else repr(exc)}"


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    """A storage failure while reading `url` (unreachable, credentials refused) as one error
    naming the destination, not as a bug."""
    try:
        yield
    except BerthError:
        raise
    except Exception as exc:
        raise BerthError(
            f"the backup destination {url} failed ({one_line(exc)}); check that it is "
            "reachable and that its credentials (the storage's usual environment variables) "
            "allow reading it"
        ) from exc


def open_url(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url` and the root path in it, or one clear error.

    A filesystem of its own (not fsspec's shared instance, whose listings may be cached from
    before): what a destination holds is read fresh by every command, and by every backup of a
    process that runs several."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except ImportError as exc:
        # fsspec re-raises the backend's ImportError with a hint; the module is on its cause.
        missing = exc.name or getattr(exc.__cause__, "name", None) or "its fsspec backend"
        hint = "pip install 'berth[backup-cloud]'" if protocol in OBJECT_STORES else str(exc)
        raise InvalidInput(
            f"the backup destination {url} needs the Python package {missing} for "
            f"{protocol}:// URLs, which is not installed; install it ({hint}) and try again"
        ) from exc
    except ValueError as exc:
        raise InvalidInput(
            f"the backup destination {url} is not a URL Berth can write to ({exc}); use a "
            "local folder, s3://, gs:// or az://"
        ) from exc
    return fs, str(root).rstrip("/") or str(root)
