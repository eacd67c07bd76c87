"""Checking presented keys on the hot path, and what a verified caller may do.

The verifier keeps each key it has seen in memory and re-reads it from the registry at most once
per refresh interval, so a revocation reaches every worker within that interval while a request
never waits on the database otherwise. Unknown key ids are remembered too, so random keys cannot
turn into a database query each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError

from berth.errors import DatabaseUnavailable, Forbidden, NotReady, Unauthenticated
from berth.security.keys import KeyService, StoredKey, hash_key, split_key

_MAX_CACHED = 10_000

log = logging.getLogger("berth.security")


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do."""

    name: str
    scopes: tuple[str, ...]
    rate: str | None = None
    """This caller's own rate limit (a key's --rate); None: the server default."""
    key_id: str | None = field(default=None, compare=False)
    """The API key the caller presented; None for a JWT or dev mode."""

    def may_predict(self, model: str) -> bool:
        return any(s in ("admin", "predict", f"predict:{model}") for s in self.scopes)

    def may_read(self, model: str | None = None) -> bool:
        if any(s in ("admin", "read", "predict") for s in self.scopes):
            return True
        return model is not None and f"predict:{model}" in self.scopes

    def require_predict(self, model: str) -> None:
        if not self.may_predict(model):
            raise Forbidden(
                f"key '{self.name}' may not predict with model '{model}'; create a key with "
                f"--scope predict or --scope predict:{model}"
            )

    def require_read(self, model: str | None = None) -> None:
        if not self.may_read(model):
            raise Forbidden(
                f"key '{self.name}' may not read model metadata; it needs the read scope"
            )

    def require_admin(self) -> None:
        if "admin" not in self.scopes:
            raise Forbidden(f"key '{self.name}' may not administer Berth; it needs the admin scope")


DEV_PRINCIPAL = Principal(name="dev-mode", scopes=("admin",))


@dataclass
class _Entry:
    stored: StoredKey | None
    fetched_at: float


@dataclass
class _Checked:
    """A presented key whose hash matched `stored`, and the principal it stands for."""

    stored: StoredKey
    principal: Principal


_MAX_CHECKED = 1_024
"""Presented keys remembered as checked, per worker; past it the memo starts again."""


def _invalid() -> Unauthenticated:
    return Unauthenticated(
        "the API key is not valid; check it or create a new one", reason="invalid_token"
    )


REFRESH_EARLY = 0.75
"""Fraction of `refresh_seconds` after which a key is re-read in the background."""


def _log_failure(task: asyncio.Future[_Entry]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("refreshing an API key failed", exc_info=task.exception())


class KeyVerifier:
    def __init__(self, keys: KeyService, refresh_seconds: float) -> None:
        self.keys = keys
        self.refresh_seconds = refresh_seconds
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._checked: dict[str, _Checked] = {}
        self._used: set[str] = set()
        self._pending: dict[str, asyncio.Future[_Entry]] = {}

    async def verify(self, presented: str | None) -> Principal:
        if not presented:
            raise Unauthenticated(
                "this route needs an API key: send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>' (create one with `berth keys create NAME`)"
            )
        key_id = split_key(presented)
        stored = await self._stored(key_id) if key_id else None
        if stored is None:
            raise _invalid()
        checked = self._checked.get(presented)
        if checked is None or checked.stored is not stored:
            checked = self._check(presented, stored)
        if not stored.info.active:
            raise Unauthenticated(
                f"the API key '{stored.info.name}' is revoked or expired; create a new one",
                reason="invalid_token",
            )
        self._used.add(stored.info.key_id)
        return checked.principal

    def _check(self, presented: str, stored: StoredKey) -> _Checked:
        """Hash the presented key and compare; remember a match with the current secret.

        The memo skips the HMAC for a key seen before, for as long as its row stays the one read
        (a re-read row is a new object, so it is checked again). Only a match with the current
        secret is kept: the previous one's grace period ends on its own. Kept per worker and
        bounded: the keys themselves are held, as every request's headers are while it runs.
        """
        hashed = hash_key(self.keys.secret, presented)
        if not stored.matches(hashed):
            raise _invalid()
        info = stored.info
        checked = _Checked(
            stored,
            Principal(name=info.name, scopes=info.scopes, rate=info.rate, key_id=info.key_id),
        )
        if stored.matches_current(hashed):
            if len(self._checked) >= _MAX_CHECKED:
                self._checked.clear()
            self._checked[presented] = checked
        return checked

    async def _stored(self, key_id: str) -> StoredKey | None:
        """The key's registry row, never older than `refresh_seconds` (revocations apply).

        Past `REFRESH_EARLY` of the interval, one background task re-reads the row while
        requests go on with the cached one, so under steady traffic nobody waits for the
        database. Only an entry older than the interval is awaited, and then by one shared read.
        (Before, every request that found the entry stale ran its own query and waited for it:
        once a second the worker stalled and flooded its thread pool.)
        """
        entry = self._cache.get(key_id)
        age = math.inf if entry is None else time.monotonic() - entry.fetched_at
        if age > self.refresh_seconds:
            entry = await self._fetch(key_id)
        elif age > self.refresh_seconds * REFRESH_EARLY:
            self._refresh_later(key_id)
        assert entry is not None
        self._cache.move_to_end(key_id)
        return entry.stored

    async def _fetch(self, key_id: str) -> _Entry:
        """Read the row now; concurrent requests share one read."""
        pending = self._pending.get(key_id)
        if pending is None:
            pending = self._start(key_id)
        return await asyncio.shield(pending)

    def _refresh_later(self, key_id: str) -> None:
        if key_id not in self._pending:
            self._start(key_id).add_done_callback(_log_failure)

    def _start(self, key_id: str) -> asyncio.Future[_Entry]:
        task = asyncio.ensure_future(self._read(key_id))
        self._pending[key_id] = task
        task.add_done_callback(lambda _: self._pending.pop(key_id, None))
        return task

    async def _read(self, key_id: str) -> _Entry:
        used, self._used = self._used, set()
        now = time.monotonic()
        try:
            stored = await anyio.to_thread.run_sync(self._refresh, key_id, used)
        except (DatabaseUnavailable, SQLAlchemyError) as exc:
            self._used |= used  # recorded with the next successful read
            entry = self._stale(key_id, self._cache.get(key_id), exc)
        else:
            entry = _Entry(stored=stored, fetched_at=now)
        self._cache[key_id] = entry
        if len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return entry

    def _refresh(self, key_id: str, used: set[str]) -> StoredKey | None:
        self.keys.touch(used, datetime.now(UTC))
        return self.keys.lookup(key_id)

    @staticmethod
    def _stale(key_id: str, entry: _Entry | None, exc: Exception) -> _Entry:
        # Availability over freshness: a registry outage must not take prediction down for
        # keys this worker has already verified; revocations apply again once it is back.
        if entry is None:
            raise NotReady(
                "cannot check API keys: the registry database is unreachable; retry shortly"
            ) from exc
        log.warning("registry unreachable; using the cached state of key %s (%s)", key_id, exc)
        # Tried again after another interval, not by the next request.
        return _Entry(stored=entry.stored, fetched_at=time.monotonic())
