"""Files sent to a server by remote commands: a `multipart/form-data` body streamed from disk.

The body is written here rather than by httpx so that the JSON parts go last: the artifact's
sha256 is computed from the very bytes as they are sent, and the `metadata` part that follows
carries it. No second pass over a large file, and no window in which the file could change
between hashing and sending: the digest is of exactly the bytes that left this machine, so the
server's check fails only if they changed on the way (a file whose size changes while it is
read stops the upload). Progress shows on stderr, never stdout, whose text is the command's
output; it is drawn only on a terminal.

A directory is packed into a temporary .tar.gz first; the server unpacks archives safely.
"""

from __future__ import annotations

import hashlib
import secrets
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.cli.context import err_console
from berth.cli.remote import LONG_SECONDS, Remote
from berth.cli.remote import path as api_path
from berth.errors import BerthError, InvalidInput
from berth.registration.requests import UploadMetadata

CHUNK_BYTES = 1024 * 1024
PLACEHOLDER_SHA256 = "0" * 64
"""Stands for a digest not computed yet: a real one has the same length, so the body's length
is known before any byte is read."""

Advance = Callable[[int], None]
Fields = Callable[[Mapping[str, str]], Mapping[str, bytes]]
"""The JSON parts, given each file part's sha256 (as sent)."""


def upload_version(
    server: Remote,
    name: str,
    artifact: Path,
    files: Mapping[str, Path | None],
    metadata: UploadMetadata,
) -> dict[str, Any]:
    """Register `artifact` (a file, directory or archive) as the next version of `name` on the
    server, with the other `files` (sample, signature, reference) given; the version's document
    with the notes of adding it."""
    with packed(artifact) if artifact.is_dir() else nullcontext(artifact) as sent:
        parts = [FilePart("artifact", sent, sent.name)]
        parts += [FilePart(part, file, file.name) for part, file in files.items() if file]

        def fields(digests: Mapping[str, str]) -> dict[str, bytes]:
            stamped = metadata.model_copy(update={"sha256": digests["artifact"]})
            return {"metadata": stamped.model_dump_json().encode()}

        document: dict[str, Any] = send(
            server,
            api_path("models", name, "versions"),
            parts,
            fields,
            sending=f"Uploading {artifact.name}",
            waiting=f"Checking and storing on {server.url}",
        )
        return document


def send(
    server: Remote,
    route: str,
    parts: Sequence[FilePart],
    fields: Fields,
    *,
    sending: str,
    waiting: str,
    timeout: float = LONG_SECONDS,
) -> Any:
    """POST `parts` and `fields` as one multipart body, with a progress bar saying `sending`
    while the bytes go and `waiting` once the server works on them; the JSON answer."""
    total = sum(part.path.stat().st_size for part in parts)
    with progress(sending, total) as (advance, describe):
        body = multipart(parts, fields, advance)

        def chunks() -> Iterator[bytes]:
            yield from body.chunks
            describe(waiting)

        return server.post(route, content=chunks(), headers=body.headers, timeout=timeout)


@dataclass(frozen=True)
class FilePart:
    name: str
    """The form field, e.g. artifact."""
    path: Path
    filename: str
    """The name the server sees; its suffix tells the server how the file loads."""


@dataclass(frozen=True)
class Body:
    headers: dict[str, str]
    chunks: Iterator[bytes]
    size: int


def multipart(parts: Sequence[FilePart], fields: Fields, advance: Advance) -> Body:
    """The body of `parts` (streamed, each hashed as it is read) followed by `fields`.

    `advance` is told of every file byte sent; a file whose size changes while it is sent
    stops the body with an InvalidInput (the server sees a short body and registers nothing).
    """
    boundary = secrets.token_hex(16)
    sizes = [part.path.stat().st_size for part in parts]
    heads = [
        _head(boundary, part.name, part.filename, "application/octet-stream") for part in parts
    ]
    planned = _fields(boundary, fields({part.name: PLACEHOLDER_SHA256 for part in parts}))
    closing = f"--{boundary}--\r\n".encode()
    size = sum(len(h) + n + 2 for h, n in zip(heads, sizes, strict=True))
    size += sum(len(field) for field in planned) + len(closing)

    def chunks() -> Iterator[bytes]:
        digests: dict[str, str] = {}
        for part, head, expected in zip(parts, heads, sizes, strict=True):
            yield head
            digest = hashlib.sha256()
            for chunk in _read(part.path, expected):
                digest.update(chunk)
                advance(len(chunk))
                yield chunk
            yield b"\r\n"
            digests[part.name] = digest.hexdigest()
        sent = _fields(boundary, fields(digests))
        if [len(field) for field in sent] != [len(field) for field in planned]:
            raise BerthError("the upload's metadata changed size while it was sent; this is a bug")
        yield from sent
        yield closing

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(size),
    }
    return Body(headers, chunks(), size)


def _read(path: Path, expected: int) -> Iterator[bytes]:
    """The file's `expected` bytes, in chunks; refused if it turns out shorter or longer."""
    changed = InvalidInput(
        f"{path} changed while it was being sent; nothing was registered: send it again "
        "once nothing writes to it"
    )
    left = expected
    with path.open("rb") as handle:
        while left:
            chunk = handle.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise changed
            left -= len(chunk)
            yield chunk
        if handle.read(1):
            raise changed


def _fields(boundary: str, fields: Mapping[str, bytes]) -> list[bytes]:
    return [
        _head(boundary, name, None, "application/json") + value + b"\r\n"
        for name, value in fields.items()
    ]


def _head(boundary: str, name: str, filename: str | None, content_type: str) -> bytes:
    disposition = f'form-data; name="{_quoted(name)}"'
    if filename is not None:
        disposition += f'; filename="{_quoted(filename)}"'
    return (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()


def _quoted(value: str) -> str:
    """A header parameter as browsers write it (HTML's multipart rules): quotes, backslashes and
    line breaks escaped, anything else as UTF-8."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


@contextmanager
def progress(description: str, total: int) -> Iterator[tuple[Advance, Callable[[str], None]]]:
    """A progress bar of `total` bytes on stderr: (advance by bytes, change the description).

    It disappears when done. It is not drawn at all when stderr is not a terminal (rich would
    still end it with a blank line): logs and captured output hold no trace of it.
    """
    if not err_console.is_terminal:
        yield (lambda _size: None), (lambda _text: None)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        bar.refresh()  # drawn at once, not at the next tick: a short upload shows too
        yield (
            lambda size: bar.advance(task, size),
            lambda text: bar.update(task, description=text, refresh=True),
        )


@contextmanager
def packed(directory: Path) -> Iterator[Path]:
    """`directory` as a temporary .tar.gz, its files under one top-level folder (which the
    server takes as the model's root, as it does for `tar czf model.tgz model/`).

    The files are those a local registration copies: every file (symlinks followed), without
    `__pycache__`.
    """
    files = [
        path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(directory).parts
    ]
    top = directory.resolve().name or "model"
    with tempfile.TemporaryDirectory(prefix="berth-upload-") as folder:
        archive = Path(folder) / f"{top}.tar.gz"
        total = sum(path.stat().st_size for path in files)
        # Level 1: models are mostly numbers that compress little, and packing must not take
        # longer than sending.
        with (
            progress(f"Packing {directory}", total) as (advance, _describe),
            tarfile.open(archive, "w:gz", compresslevel=1, dereference=True) as tar,
        ):
            for path in files:
                relative = path.relative_to(directory).as_posix()
                tar.add(path, arcname=f"{top}/{relative}", recursive=False)
                advance(path.stat().st_size)
        yield archive
