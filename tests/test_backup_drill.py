"""`berth backup verify --drill`: a backup restored into a temporary registry, where every
aliased or routed version loads and predicts; a bad version is named and fails the command."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from berth.config import Settings
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from tests.conftest import Run, register_churn, register_iris

FLAKY_MODEL = """
import os

import numpy as np


class Flaky:
    def load(self, path):
        self.weights = np.loadtxt(path / "weights.txt")

    def predict(self, inputs):
        if os.environ.get("FLAKY_MODEL_BROKEN"):
            raise RuntimeError("feature store unreachable")
        return np.asarray(inputs, dtype=float) @ self.weights
"""


@pytest.fixture
def source(
    settings: Settings,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> Path:
    """A registry with iris (two versions, aliased), churn, a python model and an endpoint,
    backed up to a folder; the folder."""
    found = Registry.from_settings(settings)
    try:
        register_iris(found, iris_files, aliases=("production",))
        register_iris(found, iris_files, aliases=("staging",))
        register_iris(found, iris_files)  # not reachable: no alias, no route
        register_churn(found, churn_files)
        folder = tmp_path / "flaky"
        folder.mkdir()
        (folder / "model.py").write_text(FLAKY_MODEL)
        (folder / "weights.txt").write_text("1\n10\n100\n")
        sample = tmp_path / "sample.npy"
        np.save(sample, np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]))
        register(found, RegisterRequest(name="flaky", path=folder, sample=sample))
    finally:
        found.db.dispose()
    assert run("endpoints", "create", "flowers", "--model", "iris:2").code == 0
    assert run("endpoints", "create", "scaled", "--model", "flaky:1").code == 0
    destination = tmp_path / "dest"
    created = run("backup", "create", "--to", str(destination))
    assert created.code == 0, created.err
    return destination


def _drill(run: Run, destination: Path) -> tuple[int, dict[str, object], str]:
    outcome = run("backup", "verify", str(destination), "--drill", "--json")
    return outcome.code, json.loads(outcome.out), outcome.err


def test_drill_of_a_good_backup_predicts_with_every_reachable_version(
    run: Run, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temporary folder of its own: drills in other test processes must not count here.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    temp_before = set(os.listdir(tempfile.gettempdir()))
    code, report, err = _drill(run, source)
    assert code == 0, err
    drilled = report["drill"]
    assert isinstance(drilled, dict)
    assert drilled["ok"] is True
    versions = {v["version"]: v for v in drilled["versions"]}
    assert sorted(versions) == ["churn:1", "flaky:1", "iris:1", "iris:2"]  # iris:3: unreachable
    assert versions["iris:2"]["reached_by"] == ["iris@staging", "flowers/stable"]
    assert versions["flaky:1"]["reached_by"] == ["scaled/stable"]
    assert versions["churn:1"]["reached_by"] == ["churn@production"]
    for version in versions.values():
        assert version["status"] == "ok"
        assert version["rows"] > 0
        assert version["load_seconds"] >= 0
    leftovers = {n for n in set(os.listdir(tempfile.gettempdir())) - temp_before if "drill" in n}
    assert not leftovers

    # The readable form: one line per version, with its timing.
    shown = run("backup", "verify", str(source), "--drill")
    assert shown.code == 0, shown.err
    assert "4 of 4 reachable versions predict" in shown.out
    assert "ok      iris:2 (iris@staging, flowers/stable)" in shown.out


def test_drill_names_a_version_whose_artifact_is_another_models(
    run: Run, source: Path, settings: Settings
) -> None:
    """The iris artifact in the backup is replaced by churn's bytes, and the manifest fixed up
    to match: every object checks out (verify --deep passes), but the version does not."""
    snapshot = next(source.glob("snapshots/*/manifest.json"))
    manifest = json.loads(snapshot.read_text())
    by_digest = {a["sha256"]: a for a in manifest["artifacts"]}
    found = Registry.from_settings(settings)
    try:
        iris_sha = found.resolve("iris:1").artifact.sha256
        churn_sha = found.resolve("churn:1").artifact.sha256
    finally:
        found.db.dispose()
    by_digest[iris_sha]["files"] = [dict(f) for f in by_digest[churn_sha]["files"]]
    snapshot.write_text(json.dumps(manifest))
    deep = run("backup", "verify", str(source), "--deep")
    assert deep.code == 0, deep.err

    outcome = run("backup", "verify", str(source), "--drill")
    assert outcome.code == 1
    assert outcome.err.startswith("error: the drill of backup ")
    assert len(outcome.err.strip().splitlines()) == 1
    for ref in ("iris:1", "iris:2"):
        assert f"failed  {ref}" in outcome.out
        assert ref in outcome.err
    assert "sha256" in outcome.err
    assert "ok      churn:1" in outcome.out
    assert "ok      flaky:1" in outcome.out


def test_drill_names_a_version_whose_model_raises(
    run: Run, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAKY_MODEL_BROKEN", "1")
    code, report, err = _drill(run, source)
    assert code == 1
    assert err.startswith("error: the drill of backup ")
    assert "flaky:1: RuntimeError: feature store unreachable" in err
    drilled = report["drill"]
    assert isinstance(drilled, dict)
    statuses = {v["version"]: (v["status"], v["reason"]) for v in drilled["versions"]}
    assert statuses["flaky:1"] == ("failed", "RuntimeError: feature store unreachable")
    assert statuses["iris:1"] == ("ok", None)


def test_drill_of_a_damaged_backup_stops_at_verify(run: Run, source: Path) -> None:
    for stored in source.glob("objects/*/*"):
        stored.unlink()
        break
    outcome = run("backup", "verify", str(source), "--drill")
    assert outcome.code == 1
    assert "is damaged" in outcome.err
    assert "reachable versions" not in outcome.out
