"""Content-addressed artifact store on any fsspec URL.

A file's address is the sha256 of its bytes (so `sha256sum model.joblib` matches). A directory's
address is the sha256 of its manifest: one line `<sha256>  <relative path>` per file, sorted.
Artifacts live at `<root>/sha256/<digest>/...`. Loading always goes through `fetch`, which copies
the artifact into a local cache and verifies the copy's digest before returning it: a mismatch
raises `ArtifactIntegrityError` and the bytes are never handed to a runtime.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec

from berth.errors import ArtifactIntegrityError, InvalidInput, NotFound

_CHUNK = 1024 * 1024
# The extra of Berth that installs the fsspec backend package of a remote artifact store.
BACKEND_EXTRAS = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    uri: str
    entry: str
    """Path of the loadable file relative to the artifact root ('' for a directory artifact)."""
    is_directory: bool
    size_bytes: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def directory_sha256(root: Path) -> str:
    lines = [f"{file_sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in _files_under(root)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def artifact_sha256(path: Path) -> str:
    return directory_sha256(path) if path.is_dir() else file_sha256(path)


class ArtifactStore:
    """Where version artifacts live; `url` is any fsspec URL or a local path."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = _filesystem(self.url)
        self.cache_dir = cache_dir

    def _uri(self, digest: str) -> str:
        return f"{self.root}/sha256/{digest}"

    def uri_of(self, digest: str) -> str:
        """Where the artifact of `digest` lives in this store (what a version row records)."""
        return self._uri(digest)

    def put(self, source: Path) -> StoredArtifact:
        """Copy a file or directory into the store (idempotent: same bytes, same address)."""
        if not source.exists():
            raise InvalidInput(
                f"{source} does not exist; pass the path of a model file or directory"
            )
        digest = artifact_sha256(source)
        target = self._uri(digest)
        files = list(_files_under(source)) if source.is_dir() else [source]
        if not files:
            raise InvalidInput(f"directory {source} is empty; it holds no model files")
        base = source if source.is_dir() else source.parent
        for path in files:
            rel = path.relative_to(base).as_posix()
            self._put_file(path, f"{target}/{rel}")
        return StoredArtifact(
            sha256=digest,
            uri=target,
            entry="" if source.is_dir() else source.name,
            is_directory=source.is_dir(),
            size_bytes=sum(p.stat().st_size for p in files),
        )

    def _put_file(self, path: Path, target: str) -> None:
        if self._holds(target, path):
            return
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        # A name of its own per writer: concurrent puts of one artifact must not share a file.
        partial = f"{target}.{uuid.uuid4().hex}.partial"
        self.fs.put_file(str(path), partial)
        self.fs.mv(partial, target)

    def _holds(self, target: str, path: Path) -> bool:
        """Whether the store already has `path`'s bytes at `target` (a damaged copy does not
        count, so registering again repairs it)."""
        if not self.fs.exists(target) or self.fs.size(target) != path.stat().st_size:
            return False
        digest = hashlib.sha256()
        with self.fs.open(target, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == file_sha256(path)

    def fetch(self, artifact: StoredArtifact) -> Path:
        """A verified local copy of the artifact; the path to hand the runtime."""
        local = self.cache_dir / artifact.sha256
        if local.exists() and not matches(local, artifact):
            # A damaged cache copy is not evidence against the store: fetch it once more.
            shutil.rmtree(local)
        if not local.exists():
            self._download(artifact, local)
        try:
            verify(local, artifact)
        except ArtifactIntegrityError:
            # Keep no bad copy around: the next fetch downloads again (after a repair).
            shutil.rmtree(local, ignore_errors=True)
            raise
        return local / artifact.entry if artifact.entry else local

    def files(self, artifact: StoredArtifact) -> list[tuple[str, int]]:
        """The artifact's stored files as (path relative to its root, size), sorted by path:
        what `fetch` copies. Read straight from the store, so nothing is cached or verified
        here; whoever receives the bytes checks them against the sha256."""
        if not artifact.is_directory:
            stored = f"{artifact.uri}/{artifact.entry}"
            if not self.fs.isfile(stored):
                raise self._missing(artifact)
            return [(artifact.entry, int(self.fs.size(stored)))]
        found = self.fs.find(artifact.uri, detail=True) if self.fs.isdir(artifact.uri) else {}
        listed = [
            (remote[len(artifact.uri) :].lstrip("/"), int(info["size"]))
            for remote, info in found.items()
        ]
        files = sorted((rel, size) for rel, size in listed if not rel.endswith(".partial"))
        if not files:
            raise self._missing(artifact)
        return files

    def open(self, artifact: StoredArtifact, relative: str) -> IO[bytes]:
        """One stored file of the artifact (a path `files` gave), for reading."""
        handle: IO[bytes] = self.fs.open(f"{artifact.uri}/{relative}", "rb")
        return handle

    def _missing(self, artifact: StoredArtifact) -> NotFound:
        return NotFound(
            f"artifact {artifact.sha256[:12]} is missing from the store at {artifact.uri}; "
            "restore the store from a backup or register the model again"
        )

    def _download(self, artifact: StoredArtifact, local: Path) -> None:
        if not self.fs.exists(artifact.uri):
            raise self._missing(artifact)
        # A staging folder of its own: workers of one server fetch the same artifact at once.
        staging = local.with_name(f"{local.name}.{uuid.uuid4().hex}.partial")
        staging.mkdir(parents=True)
        try:
            for remote in self.fs.find(artifact.uri):
                rel = remote[len(artifact.uri) :].lstrip("/")
                if rel.endswith(".partial"):
                    continue
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(remote, str(staging / rel))
            try:
                staging.rename(local)
            except OSError:
                # Another fetch got there first; its copy is verified like ours would be.
                if not local.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "cache_dir": str(self.cache_dir)}


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of the store and the root path in it, or one clear error."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        from fsspec.registry import known_implementations

        # fsspec names the class it could not import: its package is the backend to install.
        implementation = known_implementations.get(protocol, {})
        package = str(implementation.get("class", "")).split(".", 1)[0] or exc.name or protocol
        extra = BACKEND_EXTRAS.get(package)
        install = f"pip install 'berth[{extra}]'" if extra else f"pip install {package}"
        raise InvalidInput(
            f"the artifact store {url} (BERTH_ARTIFACT_URL) needs the {package} package for "
            f"{protocol}:// URLs, which is not installed; run: {install}"
        ) from exc
    except ValueError as exc:  # "Protocol not known: ..."
        raise InvalidInput(
            f"the artifact store {url} (BERTH_ARTIFACT_URL) is not a URL Berth can store "
            f"artifacts at ({exc}); use a local folder, s3://, gs:// or az://"
        ) from exc
    return fs, str(root)


def _local_sha256(local: Path, artifact: StoredArtifact) -> str:
    try:
        if artifact.is_directory:
            return directory_sha256(local)
        return file_sha256(local / artifact.entry)
    except OSError:
        return "missing"


def matches(local: Path, artifact: StoredArtifact) -> bool:
    return _local_sha256(local, artifact) == artifact.sha256


def verify(local: Path, artifact: StoredArtifact) -> None:
    actual = _local_sha256(local, artifact)
    if actual != artifact.sha256:
        raise ArtifactIntegrityError(
            f"artifact of this version fails its sha256 check (expected {artifact.sha256}, "
            f"got {actual}); it was changed after registration and will not be loaded. "
            "Delete the cached copy under the cache directory and restore the store, "
            "or register the model again"
        )


def entry_sha256(root: Path, entry: Path, artifact: StoredArtifact) -> str:
    """The registered digest of a file of the artifact, from the same hashing that verifies it.

    For a file artifact that is the artifact's own digest. For a directory it is the file's line
    in a manifest whose digest matches the registered one, so it is bound to the registration.
    """
    if not artifact.is_directory:
        return artifact.sha256
    digests = {p.relative_to(root).as_posix(): file_sha256(p) for p in _files_under(root)}
    manifest = "".join(f"{digest}  {rel}\n" for rel, digest in digests.items())
    actual = hashlib.sha256(manifest.encode()).hexdigest()
    relative = entry.relative_to(root).as_posix()
    if actual != artifact.sha256 or relative not in digests:
        raise ArtifactIntegrityError(
            f"artifact of this version fails its sha256 check (expected {artifact.sha256}, got "
            f"{actual}); it was changed after registration and will not be loaded. Restore the "
            "store, or register the model again"
        )
    return digests[relative]
