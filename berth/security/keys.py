"""API keys: created with scopes, shown once, stored as keyed hashes, checked in constant time.

A key reads `berth_<key id>_<secret>`. The key id is public and finds the row; the whole key is
hashed with HMAC-SHA256 under the server secret, so a leaked database alone does not let anyone
check guesses offline. The server secret comes from `BERTH_SECRET_KEY`, or a random file in the
data directory created on first use (replicas on several machines must share one).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from berth.errors import Conflict, InvalidInput, NotFound
from berth.registry.references import check_name
from berth.security.config import KeyConfig
from berth.security.ratelimit import parse_rate
from berth.security.scopes import DEFAULT_SCOPES as DEFAULT_SCOPES
from berth.security.scopes import SCOPES as SCOPES
from berth.store import audit
from berth.store.db import Database
from berth.store.tables import ApiKeyRow, utcnow

KEY_PREFIX = "berth"


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_id: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rate: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not _expired(self.expires_at)

    def to_dict(self) -> dict[str, object]:
        """Everything about a key but its secret (which is never stored)."""
        return {
            "name": self.name,
            "key_id": self.key_id,
            "scopes": list(self.scopes),
            "rate": self.rate,
            "active": self.active,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
        }


@dataclass(frozen=True)
class StoredKey:
    """What the verifier needs to check a presented key without the database."""

    info: KeyInfo
    secret_hash: str
    previous_hash: str | None = None
    previous_valid_until: datetime | None = None

    def matches_current(self, presented_hash: str) -> bool:
        return hmac.compare_digest(self.secret_hash, presented_hash)

    def matches(self, presented_hash: str) -> bool:
        """Constant-time check against the current secret, or the previous one in its grace."""
        current = self.matches_current(presented_hash)
        previous = self.previous_hash is not None and not _expired(self.previous_valid_until)
        earlier = previous and hmac.compare_digest(self.previous_hash or "", presented_hash)
        return current or earlier


def server_secret(config: KeyConfig) -> bytes:
    if config.secret is not None:
        return config.secret.get_secret_value().encode()
    path = config.secret_file
    if not path.exists():
        _create_secret_file(path)
    secret = path.read_text().strip()
    if not secret:
        raise InvalidInput(
            f"the server secret file {path} is empty; delete it to have a new one created "
            "(existing API keys then stop working) or set BERTH_SECRET_KEY"
        )
    return secret.encode()


def _create_secret_file(path: Path) -> None:
    """Write a random secret and publish it whole: server workers starting together on a new
    data directory race here, and each must end up reading the one secret that won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
        # Fails if another process published first; theirs wins and is what everyone reads.
        with contextlib.suppress(FileExistsError):
            os.link(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def hash_key(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def split_key(key: str) -> str | None:
    """The key id of a presented key, or None if it does not look like a Berth key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    for scope in scopes:
        base, _, target = scope.partition(":")
        if base not in SCOPES or (target and base != "predict"):
            raise InvalidInput(
                f"scope '{scope}' is not valid; use predict, predict:MODEL, read or admin"
            )
        if target:
            check_name("model", target)
    return tuple(dict.fromkeys(scopes))


class KeyService:
    """Key administration. Every change is audited in its own transaction."""

    def __init__(self, db: Database, secret: bytes) -> None:
        self.db = db
        self.secret = secret
        self.audit = audit.AuditLog(db)

    def create(
        self,
        name: str,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        expires_at: datetime | None = None,
        rate: str | None = None,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> tuple[KeyInfo, str]:
        """A new key; the plain key is returned here once and never stored."""
        check_name("key", name)
        scopes = check_scopes(scopes or DEFAULT_SCOPES)
        rate = str(parse_rate(rate)) if rate else None
        key_id = secrets.token_hex(6)
        key = self._new_key(key_id)
        row = ApiKeyRow(
            name=name,
            key_id=key_id,
            secret_hash=hash_key(self.secret, key),
            scopes=list(scopes),
            expires_at=expires_at,
            rate=rate,
        )
        event = audit.event(
            actor, address, "key.create", name, {"scopes": list(scopes), "rate": rate}
        )
        with self.audit.refusals(event):
            try:
                with self.db.session() as session:
                    session.add(row)
                    session.flush()
                    audit.add(session, event)
                    return _info(row), key
            except IntegrityError as exc:
                raise Conflict(
                    f"a key named '{name}' already exists; pick another name or revoke it first "
                    f"(`berth keys revoke {name}`: its name is then free again)"
                ) from exc

    def rotate(
        self, name: str, grace: timedelta, *, actor: str | None = None, address: str | None = None
    ) -> tuple[KeyInfo, str]:
        """A new secret for the key; the old one keeps working for `grace`, then stops."""
        event = audit.event(
            actor, address, "key.rotate", name, {"grace_seconds": grace.total_seconds()}
        )
        with self.audit.refusals(event), self.db.session() as session:
            row = _row(session, name)
            if not _info(row).active:
                raise Conflict(f"key '{name}' is revoked or expired; create a new key instead")
            key = self._new_key(row.key_id)
            row.previous_hash = row.secret_hash if grace.total_seconds() > 0 else None
            row.previous_valid_until = utcnow() + grace if grace.total_seconds() > 0 else None
            row.secret_hash = hash_key(self.secret, key)
            audit.add(session, event)
            return _info(row), key

    def revoke(
        self,
        name: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        caller_key_id: str | None = None,
    ) -> KeyInfo:
        """Revoke the key `name`; refused when it is `caller_key_id`, the key the request is
        made with: the caller would lock themselves out mid-session, and a remote CLI would
        only learn it from the next command's 401."""
        event = audit.event(actor, address, "key.revoke", name)
        with self.audit.refusals(event), self.db.session() as session:
            row = _row(session, name)
            if caller_key_id is not None and row.key_id == caller_key_id and row.revoked_at is None:
                raise Conflict(
                    f"key '{name}' is the key this request is made with; revoking it would lock "
                    "you out: revoke it with another admin key, or with `berth keys revoke` on "
                    "the server's host"
                )
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            audit.add(session, event)
            return _info(row)

    def list(self) -> list[KeyInfo]:
        """Every key, revoked ones included (a name may have several: one unrevoked at most)."""
        with self.db.session() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.name, ApiKeyRow.id))
            return [_info(r) for r in rows]

    def lookup(self, key_id: str) -> StoredKey | None:
        with self.db.session() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id))
            if row is None:
                return None
            return StoredKey(
                info=_info(row),
                secret_hash=row.secret_hash,
                previous_hash=row.previous_hash,
                previous_valid_until=row.previous_valid_until,
            )

    def touch(self, key_ids: set[str], when: datetime) -> None:
        """Record last use; called in batches by the verifier, never per request."""
        if not key_ids:
            return
        with self.db.session() as session:
            for row in session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_id.in_(key_ids))):
                row.last_used_at = when

    @staticmethod
    def _new_key(key_id: str) -> str:
        return f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def _row(session: Session, name: str) -> ApiKeyRow:
    """The key a name means: its unrevoked key, else the one revoked last."""
    row = session.scalar(
        select(ApiKeyRow)
        .where(ApiKeyRow.name == name)
        .order_by(ApiKeyRow.revoked_at.is_not(None), ApiKeyRow.id.desc())
        .limit(1)
    )
    if row is None:
        raise NotFound(f"no key named '{name}'; see `berth keys list`")
    return row


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _expired(expires_at: datetime | None) -> bool:
    if expires_at is None:
        return False
    if expires_at.tzinfo is None:  # SQLite returns naive UTC datetimes
        expires_at = expires_at.replace(tzinfo=UTC)
    return expires_at <= datetime.now(UTC)


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        name=row.name,
        key_id=row.key_id,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        rate=row.rate,
    )
