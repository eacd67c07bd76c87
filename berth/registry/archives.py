"""Model archives (.tar.gz, .tgz, .tar, .zip), unpacked without trusting their contents.

An archive may hold only regular files and folders, under relative paths that stay inside the
destination: an absolute path, a `..` component, a symlink, a hard link, a device or FIFO is
refused, naming the member. The number of members and the bytes written are capped (an archive
bomb stops at the cap, whatever its headers claim). Members are written one by one with
`O_EXCL | O_NOFOLLOW` into a fresh private folder; nothing is ever extracted by the archive
libraries themselves.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from berth.errors import InvalidInput

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_MEMBERS = 10_000
"""Most members (files and folders) an archive may hold."""
MAX_BYTES = 16 * 1024**3
"""Most bytes an archive may unpack to (16 GiB)."""

_CHUNK = 1024 * 1024
_SKIPPED_TOP = "__MACOSX"  # resource forks macOS Finder adds to every zip it makes

OpenMember = Callable[[], IO[bytes]]
"""Opens one member's bytes for reading."""


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def safe_extract(
    archive: Path,
    destination: Path,
    *,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
) -> Path:
    """Unpack `archive` into `destination` (created, private, must not exist or be empty).

    Returns the root of the model: `destination`, or the archive's single top-level folder when
    it has exactly one (`tar czf model.tgz model/`). Raises `InvalidInput` naming the offending
    member for anything that is not a plain file or folder inside the destination, or when the
    archive is over `max_members` members or `max_bytes` bytes.
    """
    if not archive.is_file():
        raise InvalidInput(f"{archive} does not exist; pass the path of a model archive")
    name = archive.name.lower()
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise InvalidInput(
            f"{archive.name} is not a model archive; use {', '.join(ARCHIVE_SUFFIXES)}"
        )
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise InvalidInput(f"cannot unpack {archive.name} into {destination}: it is not empty")
    writer = _Writer(archive, destination, max_members, max_bytes)
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, writer)
        else:
            _extract_tar(archive, writer)
    except InvalidInput:
        _empty(destination)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        _empty(destination)
        raise InvalidInput(
            f"could not unpack {archive.name} ({type(exc).__name__}: {exc}); "
            "check that it is a complete .tar.gz, .tar or .zip file"
        ) from exc
    if writer.files == 0:
        raise InvalidInput(f"archive {archive.name} holds no files")
    return _model_root(destination)


class _Writer:
    """Checks each member and writes it below the destination, keeping the running totals."""

    def __init__(self, archive: Path, destination: Path, max_members: int, max_bytes: int) -> None:
        self.archive = archive.name
        self.root = destination
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.members = 0
        self.files = 0
        self.written = 0

    def refuse(self, member: str, why: str) -> InvalidInput:
        return InvalidInput(
            f"archive {self.archive}: member '{member}' {why}; an archive may hold only regular "
            "files and folders under relative paths"
        )

    def count(self, member: str) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise self.too_many(member)

    def too_many(self, member: str) -> InvalidInput:
        return InvalidInput(
            f"archive {self.archive} has more than {self.max_members} members (at '{member}'); "
            "it is too large, or an archive bomb: pack fewer files"
        )

    def too_large(self, member: str) -> InvalidInput:
        return InvalidInput(
            f"archive {self.archive} unpacks to more than {self.max_bytes} bytes (at '{member}'); "
            "it is too large, or an archive bomb"
        )

    def target(self, member: str) -> Path | None:
        """Where a member goes; None for the archive's own root entry (`./`) and skipped junk."""
        if "\x00" in member or "\\" in member:
            raise self.refuse(member, "has a backslash or NUL in its name")
        path = PurePosixPath(member)
        if path.is_absolute() or _drive(member):
            raise self.refuse(member, "has an absolute path")
        parts = [p for p in path.parts if p != "."]
        if ".." in parts:
            raise self.refuse(member, "has a '..' component that points outside the archive")
        if not parts:
            return None
        if parts[0] == _SKIPPED_TOP:
            return None
        target = self.root.joinpath(*parts)
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise self.refuse(member, "points outside the archive")
        return target

    def directory(self, member: str) -> None:
        self.count(member)
        target = self.target(member)
        if target is not None:
            self._mkdir(member, target)

    def file(self, member: str, declared_size: int, open_member: OpenMember) -> None:
        self.count(member)
        target = self.target(member)
        if target is None:
            return
        if self.written + declared_size > self.max_bytes:
            raise self.too_large(member)
        self._mkdir(member, target.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_BINARY", 0)
        try:
            descriptor = os.open(target, flags, 0o600)
        except FileExistsError as exc:  # O_EXCL: a member never replaces another
            raise self.refuse(member, "appears twice, or clashes with a folder") from exc
        except OSError as exc:
            raise self.refuse(member, f"cannot be written ({exc.strerror})") from exc
        with os.fdopen(descriptor, "wb") as out, open_member() as source:
            while chunk := source.read(_CHUNK):
                self.written += len(chunk)
                if self.written > self.max_bytes:  # whatever the header claimed
                    raise self.too_large(member)
                out.write(chunk)
        self.files += 1

    def _mkdir(self, member: str, directory: Path) -> None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise self.refuse(member, "clashes with a file of the same name") from exc


def _drive(member: str) -> bool:
    """A Windows drive prefix (`C:`), absolute wherever the archive is unpacked on Windows."""
    return len(member) >= 2 and member[1] == ":" and member[0].isalpha()


def _extract_tar(archive: Path, writer: _Writer) -> None:
    with tarfile.open(archive, "r:*") as tar:
        # Iterating reads one header at a time: a huge member list stops at the cap.
        for member in tar:
            name = member.name
            if member.isdir():
                writer.directory(name)
            elif member.isreg():
                writer.file(name, member.size, _tar_opener(tar, member))
            else:
                writer.count(name)
                raise writer.refuse(name, f"is {_tar_kind(member)}")


def _tar_opener(tar: tarfile.TarFile, member: tarfile.TarInfo) -> OpenMember:
    def opened() -> IO[bytes]:
        handle = tar.extractfile(member)
        if handle is None:  # pragma: no cover - isreg() members always have data
            raise InvalidInput(f"member '{member.name}' has no data")
        return handle

    return opened


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symlink (to '{member.linkname}')"
    if member.islnk():
        return f"a hard link (to '{member.linkname}')"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    return "not a regular file or folder"


def _extract_zip(archive: Path, writer: _Writer) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        if len(infos) > writer.max_members:
            raise writer.too_many(infos[writer.max_members].filename)
        declared = 0
        for info in infos:  # the headers' claim first; the bytes are counted while writing
            declared += info.file_size
            if declared > writer.max_bytes:
                raise writer.too_large(info.filename)
        for info in infos:
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                writer.count(info.filename)
                raise writer.refuse(info.filename, f"is {_zip_kind(kind)}")
            if info.is_dir():
                writer.directory(info.filename)
                continue
            if info.flag_bits & 0x1:
                raise writer.refuse(info.filename, "is encrypted")
            writer.file(info.filename, info.file_size, _zip_opener(bundle, info))


def _zip_opener(bundle: zipfile.ZipFile, info: zipfile.ZipInfo) -> OpenMember:
    return lambda: bundle.open(info)


def _zip_kind(kind: int) -> str:
    if kind == stat.S_IFLNK:
        return "a symlink"
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return "a device file"
    if kind == stat.S_IFIFO:
        return "a FIFO"
    return "not a regular file or folder"


def _model_root(destination: Path) -> Path:
    entries = list(destination.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return destination


def _empty(destination: Path) -> None:
    """Remove what a refused archive left behind (the caller owns `destination` itself)."""
    for entry in destination.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
