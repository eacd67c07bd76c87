"""Local files as the parts of a multipart upload to a server, with a progress bar.

A directory is packed into a `.tar.gz` (which the server unpacks safely, as registration
does); each file is read in chunks as it is sent, never whole, and the bytes sent count
towards a progress bar on stderr (shown on a terminal only, so stdout stays the output).
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from berth.cli.context import err_console
from berth.errors import InvalidInput

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

_CHUNK = 1024 * 1024


@contextmanager
def sendable(path: Path, missing: str) -> Iterator[Path]:
    """`path` as a file to send: itself, or a directory packed as NAME.tar.gz (removed on exit).
    `missing` is the error when there is nothing at `path`."""
    source = path.expanduser()
    if not source.exists():
        raise InvalidInput(missing)
    if not source.is_dir():
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="berth-pack-") as private:
        packed = Path(private) / f"{source.resolve().name}.tar.gz"
        with tarfile.open(packed, "w:gz") as archive:
            for item in sorted(source.rglob("*")):
                if "__pycache__" not in item.relative_to(source).parts:
                    archive.add(item, arcname=str(item.relative_to(source)), recursive=False)
        yield packed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Bar:
    """One progress bar over every part; when the last byte is out, it says what comes next."""

    progress: Progress
    task: TaskID
    total: int
    then: str
    sent: int = 0

    def advance(self, size: int) -> None:
        self.sent += size
        self.progress.advance(self.task, size)
        if size and self.sent >= self.total:
            self.progress.update(self.task, description=self.then)


class _Counted:
    """A file whose reads advance the bar; httpx streams it (and sizes it by fstat)."""

    def __init__(self, handle: IO[bytes], bar: _Bar) -> None:
        self.handle = handle
        self.bar = bar

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.bar.advance(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def fileno(self) -> int:
        return self.handle.fileno()


@contextmanager
def upload_parts(parts: dict[str, Path], server: str, then: str) -> Iterator[dict[str, Any]]:
    """httpx `files=` for `parts` (part name -> local file), sent with a progress bar that says
    `then` once every byte is out (while the server works on them)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    total = sum(path.stat().st_size for path in parts.values())
    with ExitStack() as stack:
        stack.enter_context(progress)
        bar = _Bar(progress, progress.add_task(f"Uploading to {server}", total=total), total, then)
        yield {
            name: (path.name, _Counted(stack.enter_context(path.open("rb")), bar))
            for name, path in parts.items()
        }
