"""Client-side encryption of backups: AES-256-GCM over 1 MiB chunks, streamed.

A sealed file is a header (magic, a random 16-byte salt, a random 8-byte nonce prefix) and
then chunks, each up to 1 MiB of plaintext plus its 16-byte tag. Every file gets its own AES
key, derived from the backup key and the salt by HKDF, so nonces never repeat across files
however many are written. A chunk's nonce is the prefix and the chunk's index; its associated
data names what the file is (an object's sha256, a table of a snapshot), the index and whether
it is the last chunk. So a file swapped for another, chunks reordered, dropped or appended, or
a file cut at a chunk boundary all fail to open, as does any changed byte.

The backup key is 32 random bytes (`berth backup key new`); its id, an HMAC of a constant under
the key, is recorded in the manifest so a wrong key is named before anything is decrypted.
`cryptography` is imported only when a file is sealed or opened, so `berth` starts fast.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from berth.errors import ArtifactIntegrityError, InvalidInput

ALGORITHM = "AES-256-GCM"
KEY_ENV = "BERTH_BACKUP_KEY"
CHUNK = 1024 * 1024
_MAGIC = b"BERTHBK1"
_SALT = 16
_PREFIX = 8
_TAG = 16
HEADER = len(_MAGIC) + _SALT + _PREFIX
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
KEY_HELP = "32 random bytes as 64 hex digits or base64, e.g. from `berth backup key new`"


class Unreadable(ArtifactIntegrityError):
    """A sealed file failed to open: a changed or missing byte, or another key."""

    def __init__(self, purpose: str, detail: str) -> None:
        super().__init__(f"{purpose} {detail}")
        self.detail = detail


@dataclass(frozen=True)
class BackupKey:
    material: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key (it reveals nothing of it)."""
        return hmac.new(self.material, b"berth backup key id", hashlib.sha256).hexdigest()[:16]


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_key(text: str, where: str) -> BackupKey:
    """The key written in `text` (hex or base64 of 32 bytes), or one error naming `where`."""
    text = text.strip()
    if _HEX_KEY.match(text):
        return BackupKey(bytes.fromhex(text))
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            material = decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(material) == 32:
            return BackupKey(material)
    raise InvalidInput(
        f"the backup key in {where} is not a key: it must be {KEY_HELP} (not a passphrase)"
    )


def load_key(file: Path | None, environ: dict[str, str] | None = None) -> BackupKey | None:
    """The key in `file` if given, else in BERTH_BACKUP_KEY, else None (no encryption)."""
    if file is not None:
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(
                f"cannot read the backup key file {file} ({exc}); give a file holding {KEY_HELP}"
            ) from exc
        return parse_key(text, f"the file {file}")
    value = (os.environ if environ is None else environ).get(KEY_ENV, "")
    return parse_key(value, KEY_ENV) if value.strip() else None


class StreamSealer(Protocol):
    def start(self) -> bytes: ...
    def update(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class Codec(Protocol):
    """How a destination's files are written: in clear or sealed with a key."""

    @property
    def key_id(self) -> str | None: ...
    def stored_size(self, size: int) -> int: ...
    def sealer(self, purpose: str) -> StreamSealer: ...
    def opened(self, handle: IO[bytes], purpose: str) -> Iterator[bytes]: ...
    def encryption(self) -> dict[str, Any] | None: ...


def seal(codec: Codec, data: bytes, purpose: str) -> bytes:
    sealer = codec.sealer(purpose)
    return sealer.start() + sealer.update(data) + sealer.finish()


def unseal(codec: Codec, handle: IO[bytes], purpose: str) -> bytes:
    return b"".join(codec.opened(handle, purpose))


class _Passthrough:
    def start(self) -> bytes:
        return b""

    def update(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class Plain:
    """Files as they are."""

    key_id: str | None = None

    def stored_size(self, size: int) -> int:
        return size

    def sealer(self, purpose: str) -> StreamSealer:
        return _Passthrough()

    def opened(self, handle: IO[bytes], purpose: str) -> Iterator[bytes]:
        while chunk := handle.read(CHUNK):
            yield chunk

    def encryption(self) -> dict[str, Any] | None:
        return None


def _aad(purpose: bytes, index: int, final: bool) -> bytes:
    return _MAGIC + purpose + b"\x00" + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _file_key(key: BackupKey, salt: bytes) -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(hashes.SHA256(), 32, salt, b"berth backup file key").derive(key.material)
    return AESGCM(derived)


class _Sealer:
    """Chunks a stream: the last chunk is held back until `finish`, which marks it final."""

    def __init__(self, key: BackupKey, purpose: bytes) -> None:
        self._salt = secrets.token_bytes(_SALT)
        self._prefix = secrets.token_bytes(_PREFIX)
        self._aead = _file_key(key, self._salt)
        self._purpose = purpose
        self._pending = bytearray()
        self._index = 0

    def start(self) -> bytes:
        return _MAGIC + self._salt + self._prefix

    def _chunk(self, plain: bytes, final: bool) -> bytes:
        nonce = self._prefix + self._index.to_bytes(4, "big")
        sealed: bytes = self._aead.encrypt(nonce, plain, _aad(self._purpose, self._index, final))
        self._index += 1
        return sealed

    def update(self, data: bytes) -> bytes:
        self._pending += data
        out = []
        while len(self._pending) > CHUNK:
            out.append(self._chunk(bytes(self._pending[:CHUNK]), final=False))
            del self._pending[:CHUNK]
        return b"".join(out)

    def finish(self) -> bytes:
        last = self._chunk(bytes(self._pending), final=True)
        self._pending.clear()
        return last


def _read_exact(handle: IO[bytes], size: int) -> bytes:
    parts = []
    while size > 0:
        part = handle.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


@dataclass(frozen=True)
class Sealed:
    """Files sealed with `key` (AES-256-GCM in chunks)."""

    key: BackupKey

    @property
    def key_id(self) -> str | None:
        return self.key.key_id

    def stored_size(self, size: int) -> int:
        chunks = max(1, -(-size // CHUNK))
        return HEADER + size + chunks * _TAG

    def sealer(self, purpose: str) -> StreamSealer:
        return _Sealer(self.key, purpose.encode())

    def opened(self, handle: IO[bytes], purpose: str) -> Iterator[bytes]:
        """The plaintext of a sealed file, chunk by chunk; Unreadable at the first chunk that
        does not authenticate (nothing unauthenticated is ever yielded)."""
        from cryptography.exceptions import InvalidTag

        header = _read_exact(handle, HEADER)
        if len(header) < HEADER or not header.startswith(_MAGIC):
            raise Unreadable(purpose, "is not a sealed backup file (its header is wrong)")
        salt = header[len(_MAGIC) : len(_MAGIC) + _SALT]
        prefix = header[len(_MAGIC) + _SALT :]
        aead = _file_key(self.key, salt)
        index = 0
        block = _read_exact(handle, CHUNK + _TAG)
        while True:
            following = _read_exact(handle, CHUNK + _TAG) if len(block) == CHUNK + _TAG else b""
            final = not following
            nonce = prefix + index.to_bytes(4, "big")
            try:
                plain: bytes = aead.decrypt(nonce, block, _aad(purpose.encode(), index, final))
            except InvalidTag:
                raise Unreadable(
                    purpose,
                    f"fails its authentication check at chunk {index} (a changed, missing or "
                    "reordered byte)",
                ) from None
            yield plain
            if final:
                return
            block, index = following, index + 1

    def encryption(self) -> dict[str, Any] | None:
        return {"algorithm": ALGORITHM, "key_id": self.key.key_id, "chunk_bytes": CHUNK}


def codec_for(key: BackupKey | None) -> Codec:
    return Plain() if key is None else Sealed(key)


def reading_codec(encryption: dict[str, Any] | None, key: BackupKey | None, what: str) -> Codec:
    """The codec to read a snapshot whose manifest records `encryption`, with `key` if given;
    one clear error when the key is needed and absent, or is not the one it was sealed with."""
    if encryption is None:
        return Plain()
    recorded = str(encryption.get("key_id"))
    if encryption.get("algorithm") != ALGORITHM:
        raise InvalidInput(
            f"{what} is encrypted with {encryption.get('algorithm')}, this Berth reads "
            f"{ALGORITHM}; use a Berth version that reads it"
        )
    if key is None:
        raise InvalidInput(
            f"{what} is encrypted (key {recorded}): give its key with --encryption-key-file "
            f"PATH or {KEY_ENV}"
        )
    if key.key_id != recorded:
        raise InvalidInput(
            f"{what} was encrypted with key {recorded}, the key given is {key.key_id}; give "
            "the key it was made with"
        )
    return Sealed(key)
