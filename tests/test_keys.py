"""API keys: creation, storage as keyed hashes, the cached verifier and scope rules."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from berth.config import Settings
from berth.errors import Conflict, Forbidden, InvalidInput, NotFound, NotReady, Unauthenticated
from berth.registry.service import Registry
from berth.security.auth import DEV_PRINCIPAL, KeyVerifier, Principal
from berth.security.config import KeyConfig
from berth.security.keys import (
    KeyService,
    StoredKey,
    check_scopes,
    hash_key,
    server_secret,
    split_key,
)
from berth.store.tables import ApiKeyRow

SECRET = b"test-server-secret"


@pytest.fixture
def keys(registry: Registry) -> KeyService:
    return KeyService(registry.db, SECRET)


class CountingLookups:
    """Wraps `KeyService.lookup` on one instance to count database lookups."""

    def __init__(self, keys: KeyService) -> None:
        self.calls: list[str] = []
        self._lookup = keys.lookup
        keys.lookup = self  # type: ignore[method-assign]

    def __call__(self, key_id: str) -> StoredKey | None:
        self.calls.append(key_id)
        return self._lookup(key_id)


def verify(verifier: KeyVerifier, key: str | None) -> Principal:
    return asyncio.run(verifier.verify(key))


def _rows(keys: KeyService) -> list[ApiKeyRow]:
    with keys.db.session() as session:
        return list(session.scalars(select(ApiKeyRow)))


# creation and storage -----------------------------------------------------------------------


def test_create_returns_key_once_and_stores_only_a_hash(keys: KeyService) -> None:
    info, key = keys.create("ci", ("predict", "read"))
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "berth"
    assert key_id == info.key_id
    assert len(key_id) == 12
    assert len(secret) >= 40
    assert split_key(key) == key_id
    assert info.name == "ci"
    assert info.scopes == ("predict", "read")
    assert info.active
    assert info.revoked_at is None
    assert info.expires_at is None
    assert info.last_used_at is None

    [row] = _rows(keys)
    assert row.secret_hash == hash_key(SECRET, key)
    values = [str(getattr(row, column.key)) for column in ApiKeyRow.__table__.columns]
    assert not any(secret in value for value in values)
    assert not any(key in value for value in values)
    # A keyed hash: the same key under another server secret hashes differently.
    assert hash_key(b"other", key) != row.secret_hash


def test_keys_are_unique(keys: KeyService) -> None:
    (first, a), (second, b) = keys.create("a"), keys.create("b")
    assert a != b
    assert first.key_id != second.key_id
    assert first.scopes == second.scopes == ("predict", "read")  # the default scopes


def test_duplicate_name_conflicts(keys: KeyService) -> None:
    keys.create("ci")
    with pytest.raises(Conflict, match="a key named 'ci' already exists"):
        keys.create("ci", ("admin",))
    assert [k.scopes for k in keys.list()] == [("predict", "read")]


def test_a_revoked_keys_name_can_be_reused(keys: KeyService) -> None:
    old, old_secret = keys.create("ci", ("admin",))
    keys.revoke("ci")
    new, new_secret = keys.create("ci", ("read",))
    assert new.key_id != old.key_id
    # Both rows stay: the revoked one is what the audit trail of "ci" refers to.
    listed = [(k.name, k.key_id, k.active) for k in keys.list()]
    assert listed == [("ci", old.key_id, False), ("ci", new.key_id, True)]
    stored_old, stored_new = keys.lookup(old.key_id), keys.lookup(new.key_id)
    assert stored_old is not None
    assert not stored_old.info.active
    assert stored_new is not None
    assert stored_new.info.active
    assert stored_new.matches(hash_key(SECRET, new_secret))
    assert not stored_new.matches(hash_key(SECRET, old_secret))
    # The name means the unrevoked key: rotating and revoking act on it.
    rotated, _ = keys.rotate("ci", timedelta(0))
    assert rotated.key_id == new.key_id
    # While it is active the name stays taken.
    with pytest.raises(Conflict, match="a key named 'ci' already exists"):
        keys.create("ci")
    assert keys.revoke("ci").key_id == new.key_id
    assert keys.revoke("ci").key_id == new.key_id  # again: the key revoked last, unchanged
    third, _ = keys.create("ci")
    assert [k.key_id for k in keys.list() if k.active] == [third.key_id]
    actions = [(e.action, e.outcome) for e in reversed(keys.audit.list()) if e.target == "ci"]
    assert actions[:3] == [("key.create", "ok"), ("key.revoke", "ok"), ("key.create", "ok")]


def test_migration_0007_keeps_keys_and_frees_revoked_names(registry: Registry) -> None:
    from alembic import command
    from alembic.config import Config

    from berth.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    def migrate(action: Any, target: str) -> None:
        with registry.db.engine.begin() as connection:
            config.attributes["connection"] = connection
            action(config, target)

    keys = KeyService(registry.db, SECRET)
    migrate(command.downgrade, "0006")  # names unique again, as before the fix
    first, secret = keys.create("ci", ("admin",))
    keys.revoke("ci")
    with pytest.raises(Conflict):
        keys.create("ci")
    migrate(command.upgrade, "head")
    stored = keys.lookup(first.key_id)
    assert stored is not None
    assert stored.matches(hash_key(SECRET, secret))
    assert stored.info.scopes == ("admin",)
    assert not stored.info.active
    second, _ = keys.create("ci")
    assert [k.key_id for k in keys.list()] == [first.key_id, second.key_id]
    with pytest.raises(Conflict):
        keys.create("ci")


@pytest.mark.parametrize(
    "scopes", [("write",), ("read:churn",), ("admin:churn",), ("predict:bad name",), ("",)]
)
def test_invalid_scope_is_rejected(keys: KeyService, scopes: tuple[str, ...]) -> None:
    with pytest.raises(InvalidInput, match="not valid"):
        keys.create("ci", scopes)
    assert keys.list() == []


def test_scopes_are_checked_and_deduplicated(keys: KeyService) -> None:
    assert check_scopes(("predict:churn", "read", "predict:churn")) == ("predict:churn", "read")
    info, _ = keys.create("ci", ("read", "read", "predict:churn"))
    assert info.scopes == ("read", "predict:churn")
    with pytest.raises(InvalidInput, match="key name"):
        keys.create("bad name")


def test_list_and_revoke(keys: KeyService) -> None:
    keys.create("zeta", ("admin",))
    keys.create("alpha", ("predict:churn",))
    listed = keys.list()
    assert [(k.name, k.scopes, k.active) for k in listed] == [
        ("alpha", ("predict:churn",), True),
        ("zeta", ("admin",), True),
    ]

    revoked = keys.revoke("zeta")
    assert revoked.revoked_at is not None
    assert not revoked.active
    when = revoked.revoked_at
    assert keys.revoke("zeta").revoked_at == when, "revoking twice keeps the first time"
    assert {k.name: k.active for k in keys.list()} == {"alpha": True, "zeta": False}
    with pytest.raises(NotFound, match="no key named 'nope'"):
        keys.revoke("nope")


def test_expiry(keys: KeyService) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    future = datetime.now(UTC) + timedelta(days=1)
    expired, _ = keys.create("old", expires_at=past)
    valid, _ = keys.create("new", expires_at=future)
    assert not expired.active
    assert valid.active
    listed = {k.name: k for k in keys.list()}
    assert not listed["old"].active
    assert listed["new"].active
    # The instant survives the database (SQLite has no time zones).
    stored = listed["new"].expires_at
    assert stored is not None
    assert abs((stored - future).total_seconds()) < 1e-3


def test_expiry_in_another_time_zone(keys: KeyService) -> None:
    """An aware time in another zone means the same instant on every database."""
    west = timezone(timedelta(hours=-5))
    soon = (datetime.now(UTC) + timedelta(hours=1)).astimezone(west)
    info, _ = keys.create("west", expires_at=soon)
    assert info.active
    [listed] = keys.list()
    assert listed.active, "an hour from now in UTC-5 is not four hours ago"
    assert listed.expires_at == soon
    assert listed.expires_at is not None
    assert listed.expires_at.utcoffset() == timedelta(0)


# the verifier --------------------------------------------------------------------------------


@pytest.fixture
def lookups(keys: KeyService) -> CountingLookups:
    return CountingLookups(keys)


class VerifierClock:
    """The verifier's monotonic clock, moved by the test: its refresh interval and early
    re-read then happen when the test says, not when a loaded machine gets round to it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr("berth.security.auth.time", self)

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VerifierClock:
    return VerifierClock(monkeypatch)


def test_verifier_accepts_a_valid_key(keys: KeyService, lookups: CountingLookups) -> None:
    _, key = keys.create("ci", ("predict:churn", "read"))
    verifier = KeyVerifier(keys, refresh_seconds=60)
    principal = verify(verifier, key)
    assert principal == Principal(name="ci", scopes=("predict:churn", "read"))
    assert lookups.calls == [split_key(key)]


@pytest.mark.parametrize(
    "presented",
    [None, "", "garbage", "berth_", "berth__x", "berth_abc", "other_abcdef_secret", "Bearer x"],
)
def test_verifier_rejects_missing_and_garbled_keys(
    keys: KeyService, lookups: CountingLookups, presented: str | None
) -> None:
    verifier = KeyVerifier(keys, refresh_seconds=60)
    with pytest.raises(Unauthenticated):
        verify(verifier, presented)
    assert lookups.calls == [], "a key that cannot be a Berth key costs no lookup"


def test_verifier_rejects_missing_key_with_instructions(keys: KeyService) -> None:
    with pytest.raises(Unauthenticated, match="X-API-Key"):
        verify(KeyVerifier(keys, refresh_seconds=60), None)


def test_verifier_rejects_wrong_secret_and_unknown_id(
    keys: KeyService, lookups: CountingLookups
) -> None:
    _, key = keys.create("ci")
    verifier = KeyVerifier(keys, refresh_seconds=60)
    prefix, key_id, secret = key.split("_", 2)
    wrong = f"{prefix}_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    with pytest.raises(Unauthenticated, match="not valid"):
        verify(verifier, wrong)
    with pytest.raises(Unauthenticated, match="not valid"):
        verify(verifier, f"{key}x")
    # A key hashed under another server secret does not verify either.
    other = KeyVerifier(KeyService(keys.db, b"another secret"), refresh_seconds=60)
    with pytest.raises(Unauthenticated):
        verify(other, key)
    # Unknown key ids are remembered: guessing costs one lookup per id, then none.
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            verify(verifier, "berth_000000000000_guess")
    assert lookups.calls.count("000000000000") == 1
    assert verify(verifier, key).name == "ci"


def test_verifier_rejects_revoked_and_expired_keys(keys: KeyService) -> None:
    _, revoked = keys.create("gone")
    keys.revoke("gone")
    _, expired = keys.create("old", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    verifier = KeyVerifier(keys, refresh_seconds=60)
    with pytest.raises(Unauthenticated, match="'gone' is revoked or expired"):
        verify(verifier, revoked)
    with pytest.raises(Unauthenticated, match="'old' is revoked or expired"):
        verify(verifier, expired)


def test_expiry_needs_no_refresh(keys: KeyService) -> None:
    _, key = keys.create("short", expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    verifier = KeyVerifier(keys, refresh_seconds=60)
    assert verify(verifier, key).name == "short"
    time.sleep(0.35)
    with pytest.raises(Unauthenticated, match="revoked or expired"):
        verify(verifier, key)


def test_cache_avoids_a_lookup_per_call(keys: KeyService, lookups: CountingLookups) -> None:
    _, key = keys.create("ci", ("predict",))
    verifier = KeyVerifier(keys, refresh_seconds=60)

    async def burst() -> list[Principal]:
        return [await verifier.verify(key) for _ in range(50)]

    assert len(asyncio.run(burst())) == 50
    assert len(asyncio.run(burst())) == 50
    assert lookups.calls == [split_key(key)], "one database lookup inside the interval"


class CountingHashes:
    """Counts the verifier's HMACs of presented keys."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        monkeypatch.setattr("berth.security.auth.hash_key", self)

    def __call__(self, secret: bytes, key: str) -> str:
        self.calls += 1
        return hash_key(secret, key)


def test_a_checked_key_is_hashed_once_per_read_of_its_row(
    keys: KeyService, monkeypatch: pytest.MonkeyPatch, clock: VerifierClock
) -> None:
    hashes = CountingHashes(monkeypatch)
    _, key = keys.create("ci", ("predict",))
    verifier = KeyVerifier(keys, refresh_seconds=0.2)
    for _ in range(20):
        assert verify(verifier, key).name == "ci"
    assert hashes.calls == 1
    # Another string with the same key id is hashed and refused, never taken from the memo.
    prefix, key_id, secret = key.split("_", 2)
    with pytest.raises(Unauthenticated, match="not valid"):
        verify(verifier, f"{prefix}_{key_id}_{secret[::-1]}")
    assert hashes.calls == 2
    # A row read again is checked again (a rotation or revocation arrives as a new row).
    clock.advance(0.25)
    assert verify(verifier, key).name == "ci"
    assert hashes.calls == 3


def test_a_previous_secret_in_its_grace_is_checked_every_time_and_stops_on_time(
    keys: KeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, old = keys.create("ci", ("predict",))
    _, new = keys.rotate("ci", timedelta(seconds=0.3))
    hashes = CountingHashes(monkeypatch)
    verifier = KeyVerifier(keys, refresh_seconds=60)
    assert verify(verifier, old).name == "ci"
    assert verify(verifier, old).name == "ci"
    assert hashes.calls == 2, "a match with the previous secret is not remembered"
    assert verify(verifier, new).name == "ci"
    assert verify(verifier, new).name == "ci"
    assert hashes.calls == 3
    time.sleep(0.35)
    # The row is still the one read (no refresh within 60 s), and the grace has ended.
    with pytest.raises(Unauthenticated, match="not valid"):
        verify(verifier, old)
    assert verify(verifier, new).name == "ci"


def test_revocation_is_seen_after_refresh(
    keys: KeyService, lookups: CountingLookups, clock: VerifierClock
) -> None:
    _, key = keys.create("ci", ("predict",))
    verifier = KeyVerifier(keys, refresh_seconds=0.05)
    assert verify(verifier, key).name == "ci"
    keys.revoke("ci")
    clock.advance(0.1)
    with pytest.raises(Unauthenticated, match="revoked"):
        verify(verifier, key)
    assert len(lookups.calls) == 2


def test_concurrent_requests_share_one_read_of_an_expired_key(
    keys: KeyService, lookups: CountingLookups, clock: VerifierClock
) -> None:
    _, key = keys.create("ci", ("predict",))
    verifier = KeyVerifier(keys, refresh_seconds=0.05)

    async def burst() -> list[Principal]:
        return await asyncio.gather(*(verifier.verify(key) for _ in range(20)))

    assert {p.name for p in asyncio.run(burst())} == {"ci"}
    assert len(lookups.calls) == 1  # 20 first requests, one read
    clock.advance(0.1)
    asyncio.run(burst())
    assert len(lookups.calls) == 2  # expired: 20 requests, one more read


def test_a_key_is_re_read_in_the_background_before_it_expires(
    keys: KeyService, lookups: CountingLookups, clock: VerifierClock
) -> None:
    _, key = keys.create("ci", ("predict",))
    verifier = KeyVerifier(keys, refresh_seconds=1.0)

    async def scenario() -> None:
        await verifier.verify(key)
        clock.advance(0.8)  # past REFRESH_EARLY of the interval, not past it
        keys.revoke("ci")
        # Answered from the cache at once, while one read starts in the background ...
        assert (await verifier.verify(key)).name == "ci"
        for _ in range(100):
            if len(lookups.calls) == 2 and not verifier._pending:
                break
            await asyncio.sleep(0.01)
        # ... and the requests after it see the revocation, inside the 1 s interval.
        with pytest.raises(Unauthenticated, match="revoked"):
            await verifier.verify(key)

    asyncio.run(scenario())
    assert len(lookups.calls) == 2


def test_cached_key_is_served_until_refresh(keys: KeyService, lookups: CountingLookups) -> None:
    _, key = keys.create("ci", ("predict",))
    verifier = KeyVerifier(keys, refresh_seconds=60)
    verify(verifier, key)
    keys.revoke("ci")
    # Within the interval the verifier does not go back to the database.
    assert verify(verifier, key).name == "ci"
    assert len(lookups.calls) == 1


def test_last_used_is_written_on_refresh(keys: KeyService, clock: VerifierClock) -> None:
    _, key = keys.create("ci")
    keys.create("idle")
    verifier = KeyVerifier(keys, refresh_seconds=0.05)
    before = datetime.now(UTC)
    verify(verifier, key)
    assert keys.list()[0].last_used_at is None, "no write per request"
    clock.advance(0.1)
    verify(verifier, key)
    used = {k.name: k.last_used_at for k in keys.list()}
    assert used["idle"] is None, "keys that were not presented are not touched"
    last = used["ci"]
    assert last is not None
    assert before - timedelta(seconds=1) <= last <= datetime.now(UTC)
    # The use that triggered that refresh is written by the next refresh, whichever key it is for.
    clock.advance(0.1)
    with pytest.raises(Unauthenticated):
        verify(verifier, "berth_000000000000_unknown")
    used = {k.name: k.last_used_at for k in keys.list()}
    assert used["idle"] is None
    later = used["ci"]
    assert later is not None
    assert later > last


# scopes -------------------------------------------------------------------------------------


def test_principal_scope_rules() -> None:
    predict = Principal("p", ("predict",))
    assert predict.may_predict("churn")
    assert predict.may_predict("iris")
    assert predict.may_read("churn")
    assert predict.may_read()

    churn_only = Principal("c", ("predict:churn",))
    assert churn_only.may_predict("churn")
    assert not churn_only.may_predict("iris")
    assert not churn_only.may_predict("churn2")
    assert churn_only.may_read("churn")
    assert not churn_only.may_read("iris")
    assert not churn_only.may_read(), "no listing of every model"
    churn_only.require_predict("churn")
    churn_only.require_read("churn")
    with pytest.raises(Forbidden, match="--scope predict:iris"):
        churn_only.require_predict("iris")
    with pytest.raises(Forbidden, match="read scope"):
        churn_only.require_read("iris")
    with pytest.raises(Forbidden):
        churn_only.require_read()

    read = Principal("r", ("read",))
    assert not read.may_predict("churn")
    assert read.may_read("churn")
    assert read.may_read()
    with pytest.raises(Forbidden, match="may not predict"):
        read.require_predict("churn")

    admin = Principal("a", ("admin",))
    assert admin.may_predict("anything")
    assert admin.may_read("anything")
    assert admin.may_read()
    assert DEV_PRINCIPAL.scopes == ("admin",)

    nothing = Principal("n", ())
    assert not nothing.may_predict("churn")
    assert not nothing.may_read("churn")


# the server secret --------------------------------------------------------------------------


def test_server_secret_file_is_private_and_reused(settings: Settings) -> None:
    path = settings.home / "secret.key"
    assert not path.exists()
    first = server_secret(KeyConfig.from_settings(settings))
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert server_secret(KeyConfig.from_settings(settings)) == first
    assert path.read_text().strip().encode() == first
    # Another process on the same data directory gets the same secret.
    assert server_secret(KeyConfig.from_settings(Settings())) == first


def test_server_secret_is_private_under_a_loose_umask(settings: Settings) -> None:
    old = os.umask(0)
    try:
        server_secret(KeyConfig.from_settings(settings))
    finally:
        os.umask(old)
    assert stat.S_IMODE((settings.home / "secret.key").stat().st_mode) == 0o600


def test_server_secret_from_environment_wins(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_secret(KeyConfig.from_settings(settings))  # a file exists too
    monkeypatch.setenv("BERTH_SECRET_KEY", "from-the-environment")
    assert server_secret(KeyConfig.from_settings(Settings())) == b"from-the-environment"


def test_server_secret_from_environment_writes_no_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BERTH_SECRET_KEY", "from-the-environment")
    assert server_secret(KeyConfig.from_settings(Settings())) == b"from-the-environment"
    assert not (settings.home / "secret.key").exists()


def test_server_secret_created_concurrently(settings: Settings) -> None:
    """Workers of a first server start all create the secret at once and must agree."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    barrier = Barrier(8)

    def create(_: int) -> bytes:
        barrier.wait()
        return server_secret(KeyConfig.from_settings(settings))

    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(create, range(8)))
    assert len(secrets) == 1
    assert len(secrets.pop()) >= 32
    assert sorted(p.name for p in (settings.home).iterdir()) == ["secret.key"]


def test_keys_with_a_file_secret_verify_across_instances(
    settings: Settings, sqlite_registry: Registry
) -> None:
    _, key = KeyService(
        sqlite_registry.db, server_secret(KeyConfig.from_settings(settings))
    ).create("ci")
    again = KeyService(sqlite_registry.db, server_secret(KeyConfig.from_settings(Settings())))
    assert verify(KeyVerifier(again, refresh_seconds=60), key).name == "ci"


def test_server_secret_in_a_new_nested_home(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "a dir" / "nested"
    monkeypatch.setenv("BERTH_HOME", str(home))
    assert (
        server_secret(KeyConfig.from_settings(Settings()))
        == (home / "secret.key").read_text().strip().encode()
    )


def test_registry_outage_keeps_known_keys_and_refuses_unknown_with_503(
    sqlite_registry: Registry, settings: Settings
) -> None:
    from sqlalchemy.exc import OperationalError

    keys = KeyService(sqlite_registry.db, server_secret(KeyConfig.from_settings(settings)))
    _, secret = keys.create("known")
    verifier = KeyVerifier(keys, refresh_seconds=0.0)
    assert asyncio.run(verifier.verify(secret)).name == "known"

    def down(*_args: object) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    keys.lookup = down  # type: ignore[method-assign]
    assert asyncio.run(verifier.verify(secret)).name == "known"
    _, other = KeyService(
        sqlite_registry.db, server_secret(KeyConfig.from_settings(settings))
    ).create("other")
    with pytest.raises(NotReady, match="unreachable"):
        asyncio.run(verifier.verify(other))
