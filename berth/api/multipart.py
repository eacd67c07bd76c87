"""A `multipart/form-data` body streamed to disk, part by part, never held whole in memory.

Starlette's `request.form()` keeps every field in memory and spools files to anonymous temporary
files, with no bound on a file part: a model upload needs its files at real paths (their names
decide how they load), a bound on the whole body counted as it arrives, and each file's sha256
computed while it is written. So the body is fed, in slices of about a MiB, to python-multipart's
streaming parser in a worker thread (hashing and writing never stall the event loop); file parts
go to files in a directory the caller owns, the few small fields to bounded buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from berth.errors import InvalidInput, PayloadTooLarge

SLICE_BYTES = 1024 * 1024
"""Body bytes handed to the parser at once: one thread hop per MiB, not per network chunk."""

MAX_FIELD_BYTES = 64 * 1024
"""Largest non-file part (JSON metadata)."""

MAX_HEADER_BYTES = 8 * 1024
"""Largest header block of one part."""


@dataclass
class Received:
    """What a multipart body held: file parts written to disk (with their sha256), and fields."""

    files: dict[str, Path] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    fields: dict[str, bytes] = field(default_factory=dict)

    def shown(self, message: str) -> str:
        """`message` with the server's paths of the files replaced by the names they were sent
        with: a client knows its files, not where the server kept them."""
        for path in self.files.values():
            message = message.replace(str(path), path.name)
        return message


async def receive(
    request: Request,
    directory: Path,
    files: Collection[str],
    fields: Collection[str],
    max_bytes: int,
) -> Received:
    """Parse the request's multipart body: the parts named in `files` are written under
    `directory` (each in a folder of its own, under the name it was sent with); `fields` are
    kept. Any other part, a repeated part, a body over `max_bytes`: refused."""
    boundary = _boundary(request.headers.get("content-type", ""), [*files, *fields])
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(_too_large(max_bytes))
    parts = _Parts(directory, files, fields)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        received = 0
        pending: list[bytes] = []
        pending_bytes = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise PayloadTooLarge(_too_large(max_bytes))
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= SLICE_BYTES:
                await anyio.to_thread.run_sync(parser.write, b"".join(pending))
                pending, pending_bytes = [], 0
        if pending:
            await anyio.to_thread.run_sync(parser.write, b"".join(pending))
        parser.finalize()
    finally:
        parts.close()
    if not parts.ended:
        raise InvalidInput(
            "the multipart body ends early (no closing boundary); send the whole body"
        )
    return parts.received


def _boundary(content_type: str, parts: list[str]) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidInput(
            "send the upload as multipart/form-data (Content-Type: multipart/form-data; "
            f"boundary=...), with the parts {', '.join(parts)}"
        )
    if len(boundary) > 70:  # RFC 2046
        raise InvalidInput("the multipart boundary is longer than 70 characters")
    return boundary


def _too_large(limit: int) -> str:
    return (
        f"the upload is larger than the limit of {limit} bytes; send a smaller artifact "
        "(or raise BERTH_MAX_UPLOAD_BYTES)"
    )


class _Parts:
    """The parser's callbacks: each part's headers, then its data to a file or a buffer."""

    def __init__(self, directory: Path, files: Collection[str], fields: Collection[str]) -> None:
        self.directory = directory
        self.files = files
        self.fields = fields
        self.received = Received()
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._name = ""
        self._file: IO[bytes] | None = None
        self._hash: Any = None
        self._field = bytearray()

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0
        self._name = ""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidInput(f"a multipart part has over {MAX_HEADER_BYTES} bytes of headers")

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or not name:
            raise InvalidInput(
                "every multipart part needs Content-Disposition: form-data; name=..."
            )
        known = [*self.files, *self.fields]
        if name not in known:
            raise InvalidInput(f"unknown part '{name[:64]}'; known parts: {', '.join(known)}")
        if name in self.received.files or name in self.received.fields:
            raise InvalidInput(f"the '{name}' part is sent twice; send it once")
        self._name = name
        if name in self.fields:
            self._field = bytearray()
            return
        filename = _file_name(name, options.get(b"filename"))
        folder = self.directory / name
        folder.mkdir()
        path = folder / filename
        self._file = path.open("xb")
        self._hash = hashlib.sha256()
        self.received.files[name] = path

    def _data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._file is not None:
            self._file.write(piece)
            self._hash.update(piece)
            return
        self._field += piece
        if len(self._field) > MAX_FIELD_BYTES:
            raise InvalidInput(f"the '{self._name}' part is over {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if self._file is not None:
            self.close()
            self.received.sha256[self._name] = self._hash.hexdigest()
        else:
            self.received.fields[self._name] = bytes(self._field)

    def _finished(self) -> None:
        self.ended = True


def _file_name(part: str, raw: bytes | None) -> str:
    """The name a file part was sent with, without any directories (never a path on the
    server: a name like `../../x` must not leave the upload's directory)."""
    if raw is None:
        raise InvalidInput(
            f"the '{part}' part must be a file: give it a filename (e.g. model.skops), whose "
            "suffix tells how it loads"
        )
    name = PurePosixPath(raw.decode("utf-8", "replace").replace("\\", "/")).name
    if name in ("", ".", "..") or "\x00" in name or len(name.encode()) > 255:
        raise InvalidInput(
            f"the '{part}' part's filename '{raw[:64]!r}' is not a file name; send e.g. "
            "model.skops or model.tar.gz"
        )
    return name
