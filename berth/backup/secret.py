"""The server secret API keys are checked with: sealed into an encrypted backup, and put back.

An unencrypted backup never holds it. An encrypted one does, so a restore brings back working
keys. On restore the secret goes to the target's secret file (`<home>/secret.key`, or the file
given): a missing file is written, an identical one is left alone, and a different one (keys
made with it would stop working) is replaced only when asked, keeping the old one beside it.
When the target takes its secret from BERTH_SECRET_KEY, nothing is written there; a different
value is refused before anything is restored, since the restored keys would not work.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from berth.backup.crypto import Codec, Sealed, seal
from berth.backup.manifest import SECRET_FILE, SECRETS_NOTE, secret_purpose
from berth.errors import Conflict
from berth.security.config import KeyConfig

ENV = "BERTH_SECRET_KEY"
SEALED_NOTE = "the server secret is in this backup, encrypted: a restore puts it back"
NONE_NOTE = (
    "the registry had no server secret when it was backed up (no API key was made): a "
    "restore writes none"
)
RECREATE = (
    "API keys made before the backup work only if this server uses the same server secret "
    "(BERTH_SECRET_KEY or the secret file); otherwise re-create them with `berth keys create`"
)


@dataclass(frozen=True)
class ServerSecret:
    value: bytes = field(repr=False)
    source: str
    """BERTH_SECRET_KEY or the secret file's path."""


def current_secret(config: KeyConfig) -> ServerSecret | None:
    """The secret this server checks keys with, without creating one (as `server_secret`
    would): None when there is none yet."""
    if config.secret is not None:
        return ServerSecret(config.secret.get_secret_value().encode(), ENV)
    path = config.secret_file
    if path.is_file():
        value = path.read_text().strip()
        if value:
            return ServerSecret(value.encode(), str(path))
    return None


def sealed_entry(
    codec: Codec, secret: ServerSecret | None, snapshot: str
) -> tuple[dict[str, Any], bytes | None]:
    """The manifest's `secrets` entry and the sealed secret file (None: nothing to write).
    The secret is written only when `codec` encrypts."""
    if not isinstance(codec, Sealed):
        return {"server_secret": "not included", "note": SECRETS_NOTE}, None
    if secret is None:
        return {"server_secret": "none", "note": NONE_NOTE}, None
    sealed = seal(codec, secret.value, secret_purpose(snapshot))
    source = ENV if secret.source == ENV else "secret file"
    entry = {
        "server_secret": "encrypted",
        "file": SECRET_FILE,
        "stored_size": len(sealed),
        "source": source,
        "note": SEALED_NOTE,
    }
    return entry, sealed


@dataclass(frozen=True)
class SecretTarget:
    """Where a restore puts the secret: the target's key settings, and a file to write it to
    instead of theirs (None: the settings' secret file)."""

    config: KeyConfig
    file: Path | None = None


@dataclass(frozen=True)
class SecretPlan:
    """What a restore does with the secret, decided before anything is written."""

    message: str
    value: bytes | None = field(default=None, repr=False)
    path: Path | None = None
    replace: bool = False

    def apply(self) -> str:
        if self.value is None or self.path is None:
            return self.message
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.replace and self.path.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            os.replace(self.path, self.path.with_name(f"{self.path.name}.replaced-{stamp}"))
        staging = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.value)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, self.path)
        finally:
            staging.unlink(missing_ok=True)
        return self.message


def plan(value: bytes | None, recorded: str, target: SecretTarget, force: bool) -> SecretPlan:
    """What to do with the backup's secret `value` (None: the backup has none, as
    `recorded`, its manifest's word, says), or one clear refusal."""
    if value is None:
        if recorded == "none":
            return SecretPlan(NONE_NOTE)
        return SecretPlan(f"the server secret is not in this backup: {RECREATE}")
    config = target.config
    if target.file is None and config.secret is not None:
        if hmac.compare_digest(config.secret.get_secret_value().encode(), value):
            return SecretPlan("the server secret matches BERTH_SECRET_KEY: API keys work")
        raise Conflict(
            "the backup's server secret differs from BERTH_SECRET_KEY, which this server "
            "checks API keys with: pass --secret-file PATH to write the backup's secret there "
            "and set BERTH_SECRET_KEY from it, or unset BERTH_SECRET_KEY"
        )
    path = target.file or config.secret_file
    works = "API keys made before the backup work"
    if config.secret is not None:
        works = "set BERTH_SECRET_KEY to its contents so API keys made before the backup work"
    if path.is_file():
        if hmac.compare_digest(path.read_bytes().strip(), value):
            return SecretPlan(f"the server secret in {path} is the backup's: {works}")
        if not force:
            raise Conflict(
                f"{path} holds another server secret (API keys made with it would stop "
                "working): pass --force to replace it with the backup's (the old one is kept "
                f"beside it), or --secret-file PATH to write the backup's elsewhere"
            )
        return SecretPlan(
            f"replaced the server secret in {path} with the backup's (the old one is kept as "
            f"{path.name}.replaced-*): {works}",
            value,
            path,
            replace=True,
        )
    return SecretPlan(f"restored the server secret to {path}: {works}", value, path)
