"""Encrypted backups: nothing leaves in clear, a restore with the key brings back rows,
artifacts and working API keys; tampering, a missing or a wrong key are caught in one line.
And an unencrypted backup leaves the server secret out and says keys must be re-created."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from berth.config import Settings
from berth.errors import Unauthenticated
from berth.registry.service import Registry
from tests.conftest import Run
from tests.test_backup import _backup, _source, _state


def _key_file(run: Run, path: Path) -> Path:
    made = run("backup", "key", "new")
    assert made.code == 0, made.err
    path.write_text(made.out)
    assert "keep it safe" in made.err
    return path


def _api_key(run: Run) -> str:
    created = run("keys", "create", "restored-check", "--scope", "predict")
    assert created.code == 0, created.err
    return created.out.strip().splitlines()[-1]


def _authenticates(settings: Settings, key: str) -> bool:
    """Whether `key` passes the server's own check, under the current BERTH_* settings."""
    from berth.security.auth import KeyVerifier
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    current = Settings()
    found = Registry.from_settings(current)
    try:
        keys = KeyService(found.db, server_secret(KeyConfig.from_settings(current)))
        try:
            asyncio.run(KeyVerifier(keys, 30).verify(key))
        except Unauthenticated:
            return False
        return True
    finally:
        found.db.dispose()


def _stored_bytes(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in folder.rglob("*") if path.is_file()]


def _samples(data: bytes) -> list[bytes]:
    """Slices of a file spread over it: each must be absent from every encrypted byte."""
    return [data[offset : offset + 32] for offset in range(0, len(data) - 32, len(data) // 8)]


def _table_rows(database_url: str) -> dict[str, list[Any]]:
    """Every table's rows (versions without the store-specific artifact URI)."""
    from berth.backup.rows import decode
    from berth.backup.snapshot import read_tables
    from berth.store.db import Database

    db = Database(database_url)
    try:
        dumps, _ = read_tables(db)
    finally:
        db.dispose()
    found = {}
    for dump in dumps:
        _, rows = decode(dump.data, "postgresql")
        found[dump.name] = [{k: v for k, v in row.items() if k != "artifact_uri"} for row in rows]
    return found


def _no_tables(path: Path) -> bool:
    """Nothing was restored into the SQLite file at `path` (opening it may have created it)."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        return not connection.execute("SELECT name FROM sqlite_master").fetchall()


def _with_source(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
) -> str:
    """The source registry (SQLite in the test's home) and an API key made before backups."""
    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    return _api_key(run)


def test_encrypted_round_trip_brings_back_rows_artifacts_and_working_keys(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    api_key = _with_source(settings, monkeypatch, iris_files, churn_files, run)
    assert _authenticates(settings, api_key)
    before = _state(run)
    rows_before = _table_rows(settings.resolved_database_url)
    secret = (settings.home / "secret.key").read_bytes().strip()
    key_file = _key_file(run, tmp_path / "backup.key")
    folder = tmp_path / "dest"

    created = run("backup", "create", "--to", str(folder),
                  "--encryption-key-file", str(key_file), "--json")  # fmt: skip
    assert created.code == 0, created.err
    report = json.loads(created.out)
    key_id = report["encryption"]["key_id"]
    assert report["encryption"]["algorithm"] == "AES-256-GCM"
    assert report["secrets"]["server_secret"] == "encrypted"
    manifest = json.loads((folder / "snapshots" / report["snapshot"] / "manifest.json").read_text())
    assert manifest["format"] == 2
    assert manifest["encryption"]["key_id"] == key_id
    assert all(f["stored_size"] > f["size"] for a in manifest["artifacts"] for f in a["files"])
    assert (folder / "objects-enc" / key_id).is_dir()
    assert not (folder / "objects").exists()

    # No byte of a model file, nor the server secret, is stored in clear.
    stored = _stored_bytes(folder)
    model_file, _sample = iris_files
    for needle in [*_samples(model_file.read_bytes()), secret]:
        assert not any(needle in blob for blob in stored)

    # An unchanged registry: the second encrypted backup copies nothing.
    again = run("backup", "create", "--to", str(folder),
                "--encryption-key-file", str(key_file), "--json")  # fmt: skip
    assert again.code == 0, again.err
    [destination] = json.loads(again.out)["destinations"]
    assert destination["bytes_copied"] == 0
    assert destination["objects_present"] == 2

    # Sizes check without the key; re-hashing needs it.
    assert run("backup", "verify", str(folder)).code == 0
    keyless = run("backup", "verify", str(folder), "--deep")
    assert keyless.code == 1
    assert keyless.err.strip().splitlines() == [keyless.err.strip()]
    assert f"is encrypted (key {key_id})" in keyless.err
    deep = run("backup", "verify", str(folder), "--deep", "--encryption-key-file", str(key_file))
    assert deep.code == 0, deep.err

    # Restore into a new home (no secret yet), with the key from the environment.
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    home = tmp_path / "restored-home"
    monkeypatch.setenv("BERTH_HOME", str(home))
    refused = run("backup", "restore", str(folder), "--database", target)
    assert refused.code == 1
    assert refused.err.startswith("error: backup ")
    assert "--encryption-key-file" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    monkeypatch.setenv("BERTH_BACKUP_KEY", key_file.read_text().strip())
    # The first backup: the second holds the first one's job record, which the source's
    # rows read before any backup do not.
    restored = run("backup", "restore", str(folder), "--database", target,
                   "--snapshot", report["snapshot"],
                   "--artifacts", str(tmp_path / "restored-artifacts"))  # fmt: skip
    assert restored.code == 0, restored.err
    assert f"restored the server secret to {home / 'secret.key'}" in restored.out
    assert (home / "secret.key").read_bytes() == secret
    assert (home / "secret.key").stat().st_mode & 0o777 == 0o600
    assert _table_rows(target) == rows_before
    monkeypatch.setenv("BERTH_DATABASE_URL", target)
    monkeypatch.setenv("BERTH_ARTIFACT_URL", str(tmp_path / "restored-artifacts"))
    assert _state(run) == before
    restored_files = [p for p in (tmp_path / "restored-artifacts").rglob("*") if p.is_file()]
    assert model_file.read_bytes() in [p.read_bytes() for p in restored_files]
    # The key made before the backup passes the server's check against the restored registry.
    assert _authenticates(settings, api_key)


def test_unencrypted_backup_leaves_the_secret_out_and_says_keys_need_re_creating(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    api_key = _with_source(settings, monkeypatch, iris_files, churn_files, run)
    secret = (settings.home / "secret.key").read_bytes().strip()
    folder = tmp_path / "dest"
    report = _backup(run, folder)
    assert report["encryption"] is None
    secrets = report["secrets"]
    assert isinstance(secrets, dict)
    assert secrets["server_secret"] == "not included"
    stored = _stored_bytes(folder)
    assert not any(secret in blob for blob in stored)
    # The check above means something: unencrypted objects hold the model's bytes.
    model_file, _sample = iris_files
    assert any(_samples(model_file.read_bytes())[0] in blob for blob in stored)

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    home = tmp_path / "new-home"
    monkeypatch.setenv("BERTH_HOME", str(home))
    restored = run("backup", "restore", str(folder), "--database", target)
    assert restored.code == 0, restored.err
    assert "the server secret is not in this backup" in restored.out
    assert "re-create them with `berth keys create`" in restored.out
    assert not (home / "secret.key").exists()
    monkeypatch.setenv("BERTH_DATABASE_URL", target)
    # The new home gets a secret of its own: the old key does not pass.
    assert not _authenticates(settings, api_key)
    assert (home / "secret.key").read_bytes().strip() != secret


def test_tampering_is_named_by_verify_deep_and_restore(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    _with_source(settings, monkeypatch, iris_files, churn_files, run)
    key_file = _key_file(run, tmp_path / "backup.key")
    folder = tmp_path / "dest"
    created = run("backup", "create", "--to", str(folder),
                  "--encryption-key-file", str(key_file), "--json")  # fmt: skip
    assert created.code == 0, created.err
    snapshot = json.loads(created.out)["snapshot"]
    manifest = json.loads((folder / "snapshots" / snapshot / "manifest.json").read_text())
    key_id = manifest["encryption"]["key_id"]
    digest = manifest["artifacts"][0]["files"][0]["sha256"]
    stored = folder / "objects-enc" / key_id / digest[:2] / digest
    original = stored.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01  # same size: only opening it finds it
    stored.write_bytes(bytes(data))

    assert run("backup", "verify", str(folder)).code == 0
    deep = run("backup", "verify", str(folder), "--deep", "--encryption-key-file", str(key_file))
    assert deep.code == 1
    assert f"object {digest} is corrupted (it fails its authentication check" in deep.err
    assert len(deep.err.strip().splitlines()) == 1

    target = tmp_path / "restored.db"
    restored = run("backup", "restore", str(folder), "--database", f"sqlite:///{target}",
                   "--artifacts", str(tmp_path / "restored-artifacts"),
                   "--encryption-key-file", str(key_file))  # fmt: skip
    assert restored.code == 1
    assert restored.err.startswith(f"error: object {digest} fails its authentication check")
    assert len(restored.err.strip().splitlines()) == 1
    assert not list((tmp_path / "restored-artifacts").rglob("*.partial"))

    # A table file changed instead: named too.
    stored.write_bytes(original)
    table = folder / "snapshots" / snapshot / manifest["tables"]["models"]["file"]
    table.write_bytes(table.read_bytes()[:-1] + bytes([table.read_bytes()[-1] ^ 0x01]))
    deep = run("backup", "verify", str(folder), "--deep", "--encryption-key-file", str(key_file))
    assert deep.code == 1
    assert "table file models is corrupted" in deep.err
    assert f"object {digest}" not in deep.err


def test_a_wrong_or_malformed_key_is_refused_in_one_line(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    _with_source(settings, monkeypatch, iris_files, churn_files, run)
    right = _key_file(run, tmp_path / "right.key")
    wrong = _key_file(run, tmp_path / "wrong.key")
    folder = tmp_path / "dest"
    created = run("backup", "create", "--to", str(folder),
                  "--encryption-key-file", str(right), "--json")  # fmt: skip
    assert created.code == 0, created.err
    right_id = json.loads(created.out)["encryption"]["key_id"]
    from berth.backup.crypto import parse_key

    wrong_id = parse_key(wrong.read_text(), "test").key_id
    for command in (
        ["verify", str(folder), "--deep"],
        ["restore", str(folder), "--database", f"sqlite:///{tmp_path / 'r.db'}"],
    ):
        refused = run("backup", *command, "--encryption-key-file", str(wrong))
        assert refused.code == 1
        assert len(refused.err.strip().splitlines()) == 1
        assert f"was encrypted with key {right_id}, the key given is {wrong_id}" in refused.err
    assert _no_tables(tmp_path / "r.db")

    # A passphrase, or a key of the wrong length, is not a key.
    for bad in ("correct horse battery staple", "ab" * 16):
        monkeypatch.setenv("BERTH_BACKUP_KEY", bad)
        outcome = run("backup", "create", "--to", str(tmp_path / "other"))
        assert outcome.code == 1
        assert outcome.err.startswith("error: the backup key in BERTH_BACKUP_KEY is not a key")
        assert len(outcome.err.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()
    missing = run("backup", "create", "--to", str(tmp_path / "other"),
                  "--encryption-key-file", str(tmp_path / "absent.key"))  # fmt: skip
    assert missing.code == 1
    assert missing.err.startswith("error: cannot read the backup key file")
    # 64 hex digits are a key too; this one is the right key written another way.
    monkeypatch.setenv("BERTH_BACKUP_KEY", parse_key(right.read_text(), "t").material.hex())
    assert run("backup", "verify", str(folder), "--deep").code == 0


def test_clear_and_encrypted_objects_never_stand_in_for_each_other(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    _with_source(settings, monkeypatch, iris_files, churn_files, run)
    folder = tmp_path / "dest"
    plain = _backup(run, folder)
    total = plain["artifact_bytes"]
    first, second = _key_file(run, tmp_path / "a.key"), _key_file(run, tmp_path / "b.key")
    for key_file in (first, second):
        created = run("backup", "create", "--to", str(folder),
                      "--encryption-key-file", str(key_file), "--json")  # fmt: skip
        assert created.code == 0, created.err
        [destination] = json.loads(created.out)["destinations"]
        assert destination["objects_present"] == 0
        assert destination["bytes_copied"] > total  # every object again, sealed
    again = _backup(run, folder)
    again_destinations = again["destinations"]
    assert isinstance(again_destinations, list)
    assert again_destinations[0]["bytes_copied"] == 0
    listed = json.loads(run("backup", "list", str(folder), "--json").out)
    assert [item["encrypted"] for item in listed] == [False, True, True, False]


def test_restoring_the_secret_over_a_different_one(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    """A different secret file is replaced only with --force (the old one kept); a different
    BERTH_SECRET_KEY is refused before anything is restored, or the secret goes to a file."""
    api_key = _with_source(settings, monkeypatch, iris_files, churn_files, run)
    secret = (settings.home / "secret.key").read_bytes().strip()
    key_file = _key_file(run, tmp_path / "backup.key")
    folder = tmp_path / "dest"
    created = run("backup", "create", "--to", str(folder), "--encryption-key-file", str(key_file))
    assert created.code == 0, created.err
    home = tmp_path / "other-home"
    home.mkdir()
    (home / "secret.key").write_text("another-secret\n")
    monkeypatch.setenv("BERTH_HOME", str(home))
    target = tmp_path / "restored.db"
    restore = ["backup", "restore", str(folder), "--database", f"sqlite:///{target}",
               "--encryption-key-file", str(key_file)]  # fmt: skip

    refused = run(*restore)
    assert refused.code == 1
    assert refused.err.startswith(f"error: {home / 'secret.key'} holds another server secret")
    assert "--force" in refused.err
    assert (home / "secret.key").read_text() == "another-secret\n"
    assert _no_tables(target)

    monkeypatch.setenv("BERTH_SECRET_KEY", "yet-another-secret")
    refused = run(*restore)
    assert refused.code == 1
    assert "differs from BERTH_SECRET_KEY" in refused.err
    elsewhere = tmp_path / "restored-secret.key"
    written = run(*restore, "--secret-file", str(elsewhere))
    assert written.code == 0, written.err
    assert "set BERTH_SECRET_KEY to its contents" in written.out
    assert elsewhere.read_bytes() == secret
    monkeypatch.setenv("BERTH_SECRET_KEY", secret.decode())
    monkeypatch.setenv("BERTH_DATABASE_URL", f"sqlite:///{target}")
    assert _authenticates(settings, api_key)

    monkeypatch.delenv("BERTH_SECRET_KEY")
    assert not _authenticates(settings, api_key)  # the home's own, other secret
    forced = run(*restore, "--force")
    assert forced.code == 0, forced.err
    assert "replaced the server secret" in forced.out
    assert (home / "secret.key").read_bytes() == secret
    [kept] = home.glob("secret.key.replaced-*")
    assert kept.read_text() == "another-secret\n"
    assert _authenticates(settings, api_key)


def test_sealed_files_open_to_what_was_sealed() -> None:
    from berth.backup.crypto import CHUNK, Sealed, new_key_text, parse_key, seal, unseal

    codec = Sealed(parse_key(new_key_text(), "test"))
    for size in (0, 1, CHUNK, CHUNK + 1, 3 * CHUNK):
        data = os.urandom(size)
        sealed = seal(codec, data, "object a")
        assert len(sealed) == codec.stored_size(size)
        assert unseal(codec, io.BytesIO(sealed), "object a") == data


# How a three-chunk file (header, chunks 0 1 2) is rearranged: each must fail to open.
REARRANGED = {
    "reordered": ["header", 1, 0, 2],
    "truncated-at-a-chunk-boundary": ["header", 0, 1],
    "a-chunk-appended": ["header", 0, 1, 2, 2],
    "a-chunk-dropped": ["header", 0, 2],
}


@pytest.mark.parametrize("parts", REARRANGED.values(), ids=REARRANGED.keys())
def test_rearranged_chunks_fail_to_open(parts: list[Any]) -> None:
    from berth.backup.crypto import (
        CHUNK,
        HEADER,
        Sealed,
        Unreadable,
        new_key_text,
        parse_key,
        seal,
        unseal,
    )

    codec = Sealed(parse_key(new_key_text(), "test"))
    sealed = seal(codec, os.urandom(3 * CHUNK), "object a")
    step = CHUNK + 16
    pieces: dict[Any, bytes] = {"header": sealed[:HEADER]}
    pieces.update({i: sealed[HEADER + i * step : HEADER + (i + 1) * step] for i in range(3)})
    with pytest.raises(Unreadable, match="fails its authentication check"):
        unseal(codec, io.BytesIO(b"".join(pieces[p] for p in parts)), "object a")


def test_a_file_opens_only_as_what_it_was_sealed_as_and_with_its_key() -> None:
    from berth.backup.crypto import Sealed, Unreadable, new_key_text, parse_key, seal, unseal

    codec = Sealed(parse_key(new_key_text(), "test"))
    sealed = seal(codec, b"model bytes", "object a")
    with pytest.raises(Unreadable, match="object b fails its authentication check at chunk 0"):
        unseal(codec, io.BytesIO(sealed), "object b")  # swapped for another object's file
    other = Sealed(parse_key(new_key_text(), "test"))
    with pytest.raises(Unreadable):
        unseal(other, io.BytesIO(sealed), "object a")
    with pytest.raises(Unreadable, match="not a sealed backup file"):
        unseal(codec, io.BytesIO(b"model bytes in clear"), "object a")
