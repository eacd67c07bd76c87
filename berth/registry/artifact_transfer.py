"""A stored artifact as one stream of bytes, and that stream received into a folder, verified.

A file artifact travels as its own bytes, so what `curl -o model.joblib` saves hashes
(`sha256sum`) to the version's sha256. A directory travels as an uncompressed tar (models are
mostly numbers that compress little) written on the fly from the store: its members are the
artifact's files in path order, with fixed metadata (mode 0644, owner 0, time 0), so the same
artifact always gives the same bytes and the length is known before the first byte is read.
Its sha256 is the directory's (a digest of its files' digests), which the receiver checks once
the tar is unpacked, with the same safe unpacking as an uploaded archive.

Nothing here trusts the sender: a received file that does not hash to the sha256 the receiver
expected is deleted and refused (`ArtifactIntegrityError`).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from berth.errors import ArtifactIntegrityError
from berth.registry.archives import safe_extract
from berth.registry.artifacts import ArtifactStore, StoredArtifact, directory_sha256

FILE_MEDIA_TYPE = "application/octet-stream"
TAR_MEDIA_TYPE = "application/x-tar"
FILE = "file"
DIRECTORY = "directory"
SHA256_HEADER = "X-Berth-Sha256"
"""The HTTP header with the artifact's sha256 (hex)."""
KIND_HEADER = "X-Berth-Artifact"
"""The HTTP header saying what the body is: FILE (the file itself) or DIRECTORY (a tar)."""
_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1024 * 1024
_FILE_MODE = 0o644

Advance = Callable[[int], None]
"""Told of every byte received (a progress bar)."""


@dataclass(frozen=True)
class Outgoing:
    """What to send for an artifact: its length and type are known before its bytes."""

    kind: str
    """file or directory."""
    filename: str
    """The file's own name, or NAME-VERSION.tar for a directory."""
    media_type: str
    size: int
    chunks: Iterator[bytes]
    """The bytes, read from the store as they are sent."""


def outgoing(store: ArtifactStore, artifact: StoredArtifact, stem: str) -> Outgoing:
    """How `artifact` is sent; `stem` names a directory's tar (e.g. churn-3)."""
    files = store.files(artifact)  # before any byte: a missing artifact is a clean NotFound
    if not artifact.is_directory:
        ((_entry, size),) = files
        return Outgoing(FILE, artifact.entry, FILE_MEDIA_TYPE, size, _read(store, artifact, files))
    headers = [_tar_header(relative, size) for relative, size in files]
    size = sum(len(h) + _padded(n) for h, (_, n) in zip(headers, files, strict=True)) + 2 * _BLOCK
    chunks = _tar(store, artifact, files, headers)
    return Outgoing(DIRECTORY, f"{stem}.tar", TAR_MEDIA_TYPE, size, chunks)


def _tar_header(relative: str, size: int) -> bytes:
    info = tarfile.TarInfo(relative)
    info.size = size
    info.mtime = 0
    info.mode = _FILE_MODE
    info.type = tarfile.REGTYPE
    # PAX: names of any length and any characters, as the files were named when registered.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _tar(
    store: ArtifactStore,
    artifact: StoredArtifact,
    files: list[tuple[str, int]],
    headers: list[bytes],
) -> Iterator[bytes]:
    for header, (relative, size) in zip(headers, files, strict=True):
        yield header
        yield from _read(store, artifact, [(relative, size)])
        if size % _BLOCK:
            yield bytes(_BLOCK - size % _BLOCK)
    yield bytes(2 * _BLOCK)  # the end-of-archive marker


def _read(
    store: ArtifactStore, artifact: StoredArtifact, files: list[tuple[str, int]]
) -> Iterator[bytes]:
    """Exactly the listed number of bytes of each file; a file that turns out shorter stops the
    stream (the receiver sees a short body, never a shifted tar)."""
    for relative, size in files:
        left = size
        with store.open(artifact, relative) as handle:
            while left:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    raise ArtifactIntegrityError(
                        f"artifact {artifact.sha256[:12]}: {relative} in the store is shorter "
                        "than listed; restore the store from a backup"
                    )
                left -= len(chunk)
                yield chunk


# receiving ---------------------------------------------------------------------------------


def receive(
    chunks: Iterable[bytes],
    kind: str,
    artifact: StoredArtifact,
    folder: Path,
    *,
    scratch: Path,
    advance: Advance | None = None,
) -> None:
    """Write a sent artifact into `folder` (which must be empty): the file as `artifact.entry`,
    or the directory's files; refused unless they hash to `artifact.sha256`.

    `scratch` is a private folder for a directory's tar until it is unpacked.
    """
    if kind != (DIRECTORY if artifact.is_directory else FILE):
        raise ArtifactIntegrityError(
            f"a {kind} was sent for a {'directory' if artifact.is_directory else 'file'} "
            "artifact; the server and this version disagree, try again"
        )
    try:
        actual = _received(chunks, artifact, folder, scratch, advance)
    except BaseException:  # a stream that broke off, an unsafe tar, Ctrl-C: keep no part
        _empty(folder)
        raise
    if actual != artifact.sha256:
        _empty(folder)
        raise ArtifactIntegrityError(
            f"the artifact received fails its sha256 check (expected {artifact.sha256}, got "
            f"{actual}): it changed on the way or in the server's store; nothing was kept"
        )


def _received(
    chunks: Iterable[bytes],
    artifact: StoredArtifact,
    folder: Path,
    scratch: Path,
    advance: Advance | None,
) -> str:
    """The artifact written into `folder`; the sha256 of what was written."""
    if artifact.is_directory:
        tar = scratch / "artifact.tar"
        _write(chunks, tar, advance)
        try:
            safe_extract(tar, folder)
        finally:
            tar.unlink(missing_ok=True)
        return directory_sha256(folder)
    return _write(chunks, folder / artifact.entry, advance)


def _write(chunks: Iterable[bytes], path: Path, advance: Advance | None) -> str:
    """The bytes into a new file at `path`; their sha256, computed as they are written."""
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
            if advance is not None:
                advance(len(chunk))
    return digest.hexdigest()


def _empty(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
