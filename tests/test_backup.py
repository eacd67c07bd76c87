"""`berth backup`: snapshots to several folders, verify, restore across SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth.config import Settings
from berth.registry.service import Registry
from tests.conftest import Run, register_churn, register_iris

IRIS_ROW = '{"features": [5.1, 3.5, 1.4, 0.2]}'


def _source(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
) -> None:
    """A registry at `database_url` with two models, aliases, an endpoint and a key."""
    monkeypatch.setenv("BERTH_DATABASE_URL", database_url)
    found = Registry.from_settings(settings.model_copy(update={"database_url": database_url}))
    try:
        register_iris(found, iris_files, aliases=("production", "staging"))
        register_iris(found, iris_files)
        register_churn(found, churn_files)
    finally:
        found.db.dispose()
    assert run("endpoints", "create", "flowers", "--model", "iris@production").code == 0
    assert run("keys", "create", "web", "--scope", "predict").code == 0


def _backup(run: Run, *destinations: Path) -> dict[str, object]:
    to = [arg for d in destinations for arg in ("--to", str(d))]
    outcome = run("backup", "create", *to, "--json")
    assert outcome.code == 0, outcome.err
    report: dict[str, object] = json.loads(outcome.out)
    return report


def _without_id(document: dict[str, object]) -> dict[str, object]:
    """A prediction's document but its id (new for every prediction)."""
    return {k: v for k, v in document.items() if k != "prediction_id"}


def _state(run: Run) -> tuple[str, str, object, object]:
    """What the registry shows and serves: `models show`, the endpoint, a prediction."""
    shown = run("models", "show", "iris")
    assert shown.code == 0, shown.err
    churn = run("models", "show", "churn")
    assert churn.code == 0, churn.err
    endpoint = run("endpoints", "show", "flowers", "--json")
    assert endpoint.code == 0, endpoint.err
    predicted = run("predict", "iris@production", "--input", IRIS_ROW)
    assert predicted.code == 0, predicted.err
    return shown.out, churn.out, json.loads(endpoint.out), _without_id(json.loads(predicted.out))


def test_round_trip_postgres_to_sqlite_and_postgres(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    _source(settings, monkeypatch, postgres_url, iris_files, churn_files, run)
    before = _state(run)
    first, second = tmp_path / "dest-a", tmp_path / "dest-b"

    report = _backup(run, first, second)
    destinations = report["destinations"]
    assert isinstance(destinations, list)
    assert [d["complete"] for d in destinations] == [True, True]
    assert all(d["bytes_copied"] == report["artifact_bytes"] for d in destinations)
    assert report["artifacts"] == 2  # both iris versions share one artifact
    rows = report["rows"]
    assert isinstance(rows, dict)
    assert rows["versions"] == 3
    assert rows["aliases"] == 3
    assert rows["api_keys"] == 1
    snapshot = report["snapshot"]
    assert (first / "snapshots" / str(snapshot) / "manifest.json").is_file()
    manifest = json.loads((first / "snapshots" / str(snapshot) / "manifest.json").read_text())
    assert manifest["secrets"]["server_secret"] == "not included"
    assert "secret" not in json.dumps(manifest["tables"])

    # Nothing changed: the second backup copies no artifact bytes anywhere.
    again = _backup(run, first, second)
    assert again["snapshot"] != snapshot
    again_destinations = again["destinations"]
    assert isinstance(again_destinations, list)
    assert [d["bytes_copied"] for d in again_destinations] == [0, 0]
    assert [d["objects_present"] for d in again_destinations] == [2, 2]

    listed = run("backup", "list", str(first), "--json")
    assert [b["id"] for b in json.loads(listed.out)] == sorted([snapshot, again["snapshot"]])
    assert run("backup", "verify", f"{second}/{snapshot}", "--deep").code == 0

    # Restore into SQLite (from one destination) and into a fresh PostgreSQL schema (from the
    # other); each serves what the source did.
    target_sqlite = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = run(
        "backup", "restore", str(first), "--snapshot", str(snapshot),
        "--database", target_sqlite, "--artifacts", str(tmp_path / "artifacts-sqlite"),
    )  # fmt: skip
    assert restored.code == 0, restored.err
    assert "keys" in restored.out
    monkeypatch.setenv("BERTH_DATABASE_URL", target_sqlite)
    monkeypatch.setenv("BERTH_ARTIFACT_URL", str(tmp_path / "artifacts-sqlite"))
    assert _state(run) == before
    # Ids and sequences carry on: a new version gets the next number.
    assert run("endpoints", "create", "flowers2", "--model", "iris:2").code == 0

    from tests.conftest import postgres_schema

    with postgres_schema() as target_postgres:
        restored = run(
            "backup", "restore", str(second), "--database", target_postgres,
            "--artifacts", str(tmp_path / "artifacts-pg"),
        )  # fmt: skip
        assert restored.code == 0, restored.err
        monkeypatch.setenv("BERTH_DATABASE_URL", target_postgres)
        monkeypatch.setenv("BERTH_ARTIFACT_URL", str(tmp_path / "artifacts-pg"))
        assert _state(run) == before
        # PostgreSQL's sequences were moved past the restored ids.
        assert run("endpoints", "create", "flowers2", "--model", "iris:2").code == 0
        assert run("keys", "create", "another").code == 0

        # A registry with rows is refused unless --force.
        refused = run("backup", "restore", str(second), "--database", target_postgres)
        assert refused.code == 1
        assert refused.err.startswith("error: ")
        assert "--force" in refused.err
        forced = run("backup", "restore", str(second), "--database", target_postgres, "--force")
        assert forced.code == 0, forced.err
        assert _state(run) == before


def test_verify_deep_names_a_corrupted_object(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    folder = tmp_path / "dest"
    report = _backup(run, folder)
    manifest = json.loads(
        (folder / "snapshots" / str(report["snapshot"]) / "manifest.json").read_text()
    )
    digest = manifest["artifacts"][0]["files"][0]["sha256"]
    stored = folder / "objects" / digest[:2] / digest
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only re-hashing finds it
    stored.write_bytes(bytes(data))

    assert run("backup", "verify", str(folder)).code == 0
    deep = run("backup", "verify", str(folder), "--deep")
    assert deep.code == 1
    assert deep.err.startswith("error: ")
    assert f"object {digest} is corrupted" in deep.err

    stored.unlink()
    shallow = run("backup", "verify", str(folder))
    assert shallow.code == 1
    assert f"object {digest} is missing" in shallow.err


def test_failing_destination_leaves_no_manifest_and_others_complete(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    good = tmp_path / "good"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    outcome = run("backup", "create", "--to", str(blocked), "--to", str(good))
    assert outcome.code == 1
    assert outcome.err.startswith("error: ")
    assert str(blocked) in outcome.err
    assert str(good) in outcome.out
    assert "complete" in outcome.out
    assert blocked.read_text() == "a file where a folder should be"
    assert len(list(good.glob("snapshots/*/manifest.json"))) == 1
    assert run("backup", "verify", str(good), "--deep").code == 0

    # A destination that fails after it took some objects: the folder of the last object is
    # a file (a permission change would not stop a test run as root).
    manifest = json.loads(next(good.glob("snapshots/*/manifest.json")).read_text())
    digests = sorted(f["sha256"] for a in manifest["artifacts"] for f in a["files"])
    partial = tmp_path / "partial"
    (partial / "objects").mkdir(parents=True)
    (partial / "objects" / digests[-1][:2]).write_text("in the way")
    outcome = run("backup", "create", "--to", str(partial), "--to", str(good))
    assert outcome.code == 1
    assert not list(partial.glob("snapshots/*/manifest.json"))
    assert not list(partial.rglob("*.partial"))
    assert (partial / "objects" / digests[0][:2] / digests[0]).is_file()
    assert len(list(good.glob("snapshots/*/manifest.json"))) == 2
    assert run("backup", "list", str(partial)).out.startswith("No complete backups")


def test_restore_refuses_a_newer_schema_revision(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    folder = tmp_path / "dest"
    report = _backup(run, folder)
    path = folder / "snapshots" / str(report["snapshot"]) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["schema_revision"] = "9999_from_the_future"
    path.write_text(json.dumps(manifest))
    target = tmp_path / "target.db"
    refused = run("backup", "restore", str(folder), "--database", f"sqlite:///{target}")
    assert refused.code == 1
    assert refused.err.startswith("error: backup ")
    assert "newer Berth" in refused.err
    assert len(refused.err.strip().splitlines()) == 1


def test_directory_artifact_and_sqlite_to_sqlite(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    run: Run,
    tmp_path: Path,
) -> None:
    """A directory artifact is backed up file by file and restored whole (its digest, over
    its files, checks out when it is loaded)."""
    import numpy as np

    from berth.registration.service import RegisterRequest, register
    from tests.test_registry import DIRECTORY_MODEL

    folder = tmp_path / "scaled"
    folder.mkdir()
    (folder / "model.py").write_text(DIRECTORY_MODEL)
    (folder / "weights.txt").write_text("1\n10\n100\n")
    sample = tmp_path / "sample.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0]]))
    found = Registry.from_settings(settings)
    try:
        register(found, RegisterRequest(name="scaled", path=folder, sample=sample))
    finally:
        found.db.dispose()
    row = '{"features": [1.0, 2.0, 3.0]}'
    before = run("predict", "scaled", "--input", row)
    assert before.code == 0, before.err

    report = _backup(run, tmp_path / "dest")
    assert report["artifacts"] == 1
    verified = run("backup", "verify", str(tmp_path / "dest"), "--json")
    assert json.loads(verified.out)["objects"] == 2  # model.py and weights.txt

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = run(
        "backup", "restore", str(tmp_path / "dest"), "--database", target,
        "--artifacts", str(tmp_path / "restored-artifacts"),
    )  # fmt: skip
    assert restored.code == 0, restored.err
    monkeypatch.setenv("BERTH_DATABASE_URL", target)
    monkeypatch.setenv("BERTH_ARTIFACT_URL", str(tmp_path / "restored-artifacts"))
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "other-home"))  # an empty download cache
    after = run("predict", "scaled", "--input", row)
    assert after.code == 0, after.err
    assert _without_id(json.loads(after.out)) == _without_id(json.loads(before.out))


def test_restore_migrates_a_backup_from_an_older_schema(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    """A backup taken at revision 0007 (before jobs had a summary column) restores at 0007,
    then the migrations bring the registry to the newest revision."""
    import gzip
    import hashlib

    from berth.store.db import head_revision

    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    before = _state(run)
    folder = tmp_path / "dest"
    report = _backup(run, folder)
    snapshot = folder / "snapshots" / str(report["snapshot"])
    manifest = json.loads((snapshot / "manifest.json").read_text())
    # The columns added after 0007: jobs.summary (0008), schedules.kind (0009),
    # versions.accelerated (0010; null here: these versions were registered without a twin).
    for table, column in (("jobs", "summary"), ("schedules", "kind"), ("versions", "accelerated")):
        path = snapshot / manifest["tables"][table]["file"]
        header, *rows = gzip.decompress(path.read_bytes()).decode().splitlines()
        columns = json.loads(header)
        index = [c["name"] for c in columns["columns"]].index(column)
        del columns["columns"][index]
        values = [json.loads(row) for row in rows]
        assert all(row[index] is None for row in values)
        lines = [json.dumps(columns)] + [
            json.dumps(row[:index] + row[index + 1 :]) for row in values
        ]
        older = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
        path.write_bytes(older)
        entry = manifest["tables"][table]
        entry.update(sha256=hashlib.sha256(older).hexdigest(), size=len(older))
    manifest["schema_revision"] = "0007"
    (snapshot / "manifest.json").write_text(json.dumps(manifest))

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = run("backup", "restore", str(folder), "--database", target)
    assert restored.code == 0, restored.err
    monkeypatch.setenv("BERTH_DATABASE_URL", target)
    assert _state(run) == before
    import sqlite3

    with sqlite3.connect(tmp_path / "restored.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (head_revision(),)
        ]
        assert "summary" in [c[1] for c in connection.execute("PRAGMA table_info(jobs)")]


def test_jobs_in_flight_at_the_backup_are_closed_by_the_restore(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> None:
    """A job queued when the snapshot was read has no process after a restore: it is recorded
    failed with the reason, not left queued (or running) forever."""
    from berth.jobs.records import JobService

    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    found = Registry.from_settings(settings)
    try:
        job = JobService(found.db).create(
            job_key="k" * 32, model="iris@production", source="rows.csv", sink="out.csv",
            args=["iris@production", "--input", "rows.csv", "--output", "out.csv"],
        )  # fmt: skip
    finally:
        found.db.dispose()
    report = _backup(run, tmp_path / "dest")
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = run("backup", "restore", str(tmp_path / "dest"), "--database", target)
    assert restored.code == 0, restored.err
    assert "1 job queued or running at the backup marked failed (interrupted)" in restored.out
    monkeypatch.setenv("BERTH_DATABASE_URL", target)
    shown = json.loads(run("jobs", "show", str(job.id), "--json").out)
    assert shown["status"] == "failed"
    assert shown["message"].startswith(
        f"interrupted: the registry was restored from backup {report['snapshot']}"
    )
