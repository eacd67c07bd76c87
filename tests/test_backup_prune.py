"""`berth backup prune`: keep rules over crafted snapshot times, then the objects no remaining
snapshot names; recent partial files are left for a running backup; --dry-run removes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from berth.backup.prune import KeepRules, choose
from berth.config import Settings
from berth.registry.service import Registry
from tests.conftest import Run, register_churn, register_iris


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# 2024-01-01 is the Monday of ISO week 1; the 8th starts week 2, the 15th week 3.
TIMES = {
    "a": "2024-01-01T10:00",
    "b": "2024-01-01T12:00",
    "c": "2024-01-02T09:00",
    "d": "2024-01-03T09:00",
    "e": "2024-01-03T18:00",
    "f": "2024-01-08T09:00",
    "g": "2024-01-15T09:00",
    "h": "2024-01-16T09:00",
}


@pytest.mark.parametrize(
    ("rules", "kept"),
    [
        (KeepRules(last=2), {"h": ["last"], "g": ["last"]}),
        (KeepRules(daily=4), {"h": ["daily"], "g": ["daily"], "f": ["daily"], "e": ["daily"]}),
        (KeepRules(weekly=3), {"h": ["weekly"], "f": ["weekly"], "e": ["weekly"]}),
        (KeepRules(weekly=10), {"h": ["weekly"], "f": ["weekly"], "e": ["weekly"]}),
        (
            KeepRules(last=1, daily=2, weekly=2),
            {"h": ["last", "daily", "weekly"], "g": ["daily"], "f": ["weekly"]},
        ),
        (KeepRules(last=100), {name: ["last"] for name in TIMES}),
    ],
    ids=["last", "daily", "weekly", "weekly-more-than-there-are", "combined", "keep-all"],
)
def test_keep_rules(rules: KeepRules, kept: dict[str, list[str]]) -> None:
    assert choose({name: _at(when) for name, when in TIMES.items()}, rules) == kept


def _backup_at(settings: Settings, folder: Path, when: str, key: Any = None) -> str:
    """A backup whose clock reads `when`, through the library (the CLI's clock is real)."""
    from berth.backup.create import create_backup, take_snapshot

    found = Registry.from_settings(settings)
    try:
        report = create_backup(
            take_snapshot(found.db), found.store, [str(folder)], key=key, now=_at(when)
        )
    finally:
        found.db.dispose()
    assert report.destinations[0].error is None
    return report.snapshot


def _age(folder: Path, days: float = 3) -> None:
    """Every file under `folder` as if written `days` ago."""
    then = time.time() - days * 86400
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _prune(run: Run, folder: Path, *args: str) -> dict[str, Any]:
    outcome = run("backup", "prune", str(folder), *args, "--json")
    assert outcome.code == 0, outcome.err
    report: dict[str, Any] = json.loads(outcome.out)
    return report


def test_prune_removes_old_snapshots_then_unreferenced_objects(
    settings: Settings,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    found = Registry.from_settings(settings)
    try:
        iris = register_iris(found, iris_files, aliases=("production",))
        churn = register_churn(found, churn_files, aliases=())
    finally:
        found.db.dispose()
    folder = tmp_path / "dest"
    first = _backup_at(settings, folder, "2024-01-01T10:00")
    second = _backup_at(settings, folder, "2024-01-02T10:00")
    assert run("models", "delete", "churn", "--yes").code == 0
    third = _backup_at(settings, folder, "2024-01-02T18:00")
    fourth = _backup_at(settings, folder, "2024-01-03T09:00")
    iris_object = folder / "objects" / iris.artifact.sha256[:2] / iris.artifact.sha256
    churn_object = folder / "objects" / churn.artifact.sha256[:2] / churn.artifact.sha256
    assert iris_object.is_file()
    assert churn_object.is_file()
    # Leftovers: an old partial object of a failed backup, an old snapshot folder without a
    # manifest; and what a running backup is writing now: a partial, an object no manifest
    # names yet, a snapshot folder.
    (folder / "objects" / "00").mkdir()
    (folder / "objects" / "00" / "00ab.1234.partial").write_bytes(b"x" * 10)
    failed = folder / "snapshots" / "20231231T100000000Z-abcdef"
    (failed / "tables").mkdir(parents=True)
    (failed / "tables" / "models.jsonl.gz").write_bytes(b"y")
    _age(folder)
    (folder / "objects" / "00" / "00cd.5678.partial").write_bytes(b"z")
    (folder / "objects" / "ff").mkdir()
    (folder / "objects" / "ff" / ("f" * 64)).write_bytes(b"a new object")
    running = folder / "snapshots" / f"{datetime.now(UTC):%Y%m%dT%H%M%S}000Z-012345"
    (running / "tables").mkdir(parents=True)
    (running / "tables" / "models.jsonl.gz.1234.partial").write_bytes(b"w")

    before = _tree(folder)
    dry = _prune(run, folder, "--keep-daily", "2", "--dry-run")
    assert _tree(folder) == before
    assert dry["dry_run"] is True
    assert [k["id"] for k in dry["kept"]] == [fourth, third]
    assert [r["id"] for r in dry["removed"]] == [second, first]
    assert dry["objects_removed"] == 1
    assert dry["bytes_removed"] == churn_object.stat().st_size
    assert dry["partials_removed"] == 1
    assert dry["incomplete_removed"] == [failed.name]
    assert dry["recent_left"] == 3
    text = run("backup", "prune", str(folder), "--keep-daily", "2", "--dry-run")
    assert "would remove 2 backups, 1 object" in text.out
    assert "dry run: nothing was removed" in text.out

    done = _prune(run, folder, "--keep-daily", "2")
    assert {k: v for k, v in done.items() if k != "dry_run"} == {
        k: v for k, v in dry.items() if k != "dry_run"
    }
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == sorted(
        [third, fourth, running.name]
    )
    assert not churn_object.exists()
    assert iris_object.is_file()
    assert not (folder / "objects" / "00" / "00ab.1234.partial").exists()
    assert (folder / "objects" / "00" / "00cd.5678.partial").exists()
    assert (folder / "objects" / "ff" / ("f" * 64)).exists()
    for snapshot in (third, fourth):
        assert run("backup", "verify", f"{folder}/{snapshot}", "--deep").code == 0

    # The iris object stays while a snapshot names it.
    again = _prune(run, folder, "--keep-last", "1")
    assert [r["id"] for r in again["removed"]] == [third]
    assert again["objects_removed"] == 0
    assert iris_object.is_file()
    listed = json.loads(run("backup", "list", str(folder), "--json").out)
    assert [item["id"] for item in listed] == [fourth]


def test_prune_keeps_encrypted_objects_a_remaining_snapshot_names(
    settings: Settings,
    iris_files: tuple[Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    """A prune needs no key: the manifests say which sealed objects each snapshot needs."""
    from berth.backup.crypto import new_key_text, parse_key

    found = Registry.from_settings(settings)
    try:
        iris = register_iris(found, iris_files)
    finally:
        found.db.dispose()
    key = parse_key(new_key_text(), "test")
    folder = tmp_path / "dest"
    _backup_at(settings, folder, "2024-01-01T10:00")
    sealed = _backup_at(settings, folder, "2024-01-02T10:00", key=key)
    _age(folder)
    report = _prune(run, folder, "--keep-last", "1")
    assert [k["id"] for k in report["kept"]] == [sealed]
    assert report["objects_removed"] == 1
    assert not (folder / "objects" / iris.artifact.sha256[:2] / iris.artifact.sha256).exists()
    assert (
        folder / "objects-enc" / key.key_id / iris.artifact.sha256[:2] / iris.artifact.sha256
    ).is_file()
    key_file = tmp_path / "backup.key"
    key_file.write_text(key.material.hex())
    verified = run(
        "backup", "verify", str(folder), "--deep", "--encryption-key-file", str(key_file)
    )
    assert verified.code == 0, verified.err


def test_prune_refusals_are_one_line(settings: Settings, run: Run, tmp_path: Path) -> None:
    for args, fragment in (
        ([], "give at least one rule of what to keep"),
        (["--keep-last", "0"], "give at least one rule of what to keep"),
        (["--keep-daily", "-1"], "take 0 or more"),
        (["--keep-last", "1"], "no complete backup at"),
    ):
        outcome = run("backup", "prune", str(tmp_path / "empty"), *args)
        assert outcome.code == 1, args
        assert outcome.err.startswith("error: "), outcome.err
        assert fragment in outcome.err
        assert len(outcome.err.strip().splitlines()) == 1
    assert not (tmp_path / "empty").exists()
