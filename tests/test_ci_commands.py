"""`berth ci version` and `berth ci smoke`, in local and remote mode."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from berth.config import Settings
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.cli_modes import UNUSABLE_DATABASE
from tests.conftest import Run, berth, register_iris, serving

CONFIG = """
[model]
name = "iris"
candidate = "model.joblib"
sample = "sample.npy"

[gates]
data = "holdout.csv"
min_accuracy = 0.9
"""


def _iris_versions(settings: Settings, iris_files: tuple[Path, Path]) -> None:
    registry = Registry.from_settings(settings)
    try:
        for sha, aliases in (("abc", ("production",)), ("def", ()), ("abc", ("staging",))):
            register_iris(registry, iris_files, tags={"git_sha": sha}, aliases=aliases)
    finally:
        registry.db.dispose()


def test_version_finds_the_newest_version_with_the_tags(
    run_both: Run, settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    _iris_versions(settings, iris_files)
    (tmp_path / "berth-ci.toml").write_text(CONFIG)
    assert run_both("ci", "version", "--tag", "git_sha=abc").out == "3\n"
    assert run_both("ci", "version", "--model", "iris", "--tag", "git_sha=def").out == "2\n"
    missing = run_both("ci", "version", "--tag", "git_sha=abc", "--tag", "run=1")
    assert missing.code == 1
    assert missing.err.strip() == (
        "error: no version of 'iris' carries git_sha=abc, run=1; see `berth models show iris`"
    )
    bad = run_both("ci", "version", "--tag", "nothing")
    assert bad.code == 1
    assert "--tag 'nothing' is not KEY=VALUE" in bad.err


def test_smoke_needs_a_server(run: Run, tmp_path: Path) -> None:
    (tmp_path / "berth-ci.toml").write_text(CONFIG)
    done = run("ci", "smoke")
    assert done.code == 1
    assert done.err.startswith("error: berth ci smoke checks a running server: set BERTH_SERVER")


@pytest.mark.server
def test_smoke_checks_staging_through_both_protocols(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    _iris_versions(settings, iris_files)
    registry = Registry.from_settings(settings)
    try:
        keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
        _, key = keys.create("ci", ("admin",))
    finally:
        registry.db.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(home)
    sample = iris_files[1]
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "berth-ci.toml").write_text(CONFIG)
    np.save(repo / "sample.npy", np.load(sample)[:4])
    with serving(env) as (url, _port):
        client = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        client.update(
            BERTH_SERVER=url,
            BERTH_API_KEY=key,
            BERTH_DATABASE_URL=UNUSABLE_DATABASE,
            BERTH_HOME=str(tmp_path / "client"),
            BERTH_CI_CONFIG=str(repo / "berth-ci.toml"),
            COLUMNS="200",
        )
        staged = berth(client, "ci", "smoke")
        production = berth(client, "ci", "smoke", "--alias", "production")
        unknown = berth(client, "ci", "smoke", "--alias", "nightly")
    assert staged.returncode == 0, staged.stdout + staged.stderr
    lines = staged.stdout.splitlines()
    assert lines[0].startswith("PASS server ready: GET /v2/health/ready: ready (")
    assert lines[1].startswith("PASS metadata: version 3, platform sklearn, inputs ")
    assert lines[2].startswith(
        "PASS v2 inference: 4 rows, outputs predict, predict_proba, model_version 3"
    )
    assert lines[3].startswith("PASS v1 prediction: prediction ")
    assert lines[4] == "PASS iris@staging serves version 3: 4 checks passed"
    assert production.returncode == 0, production.stdout
    assert "PASS iris@production serves version 1" in production.stdout
    assert unknown.returncode == 1
    assert unknown.stderr.startswith(f"error: iris@nightly does not exist on {url}")
