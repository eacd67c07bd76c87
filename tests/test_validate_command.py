"""`berth validate` on a model file that is not registered, in local and remote mode.

A CI pipeline validates its candidate before registering it: the file is loaded as
registration loads it (a pickle only with --trust-pickle), gated on held-out rows, compared
with the production version, and nothing is registered. In remote mode the gates run on the
server (`POST /api/v1/validate`), reached with only BERTH_SERVER and BERTH_API_KEY.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from berth.cli.model_argument import model_argument
from berth.config import Settings
from berth.errors import InvalidInput
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from tests.cli_modes import UNUSABLE_DATABASE, Mode, threaded_server
from tests.conftest import Run

FEATURES = ["f0", "f1", "f2", "f3"]


@dataclass(frozen=True)
class Files:
    folder: Path
    good: Path
    """A logistic regression that learned (accuracy 0.93 on the holdout)."""
    noise: Path
    """The same model fitted on shuffled labels (accuracy 0.66)."""
    pickled: Path
    """`good` as a joblib pickle."""
    holdout: Path
    """100 test rows: the features and the outcome y."""
    with_id: Path
    """The holdout with an id column first, which the model does not take."""
    sample: Path
    """A few feature rows (no outcome)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("candidates")
    x, y = make_classification(
        n_samples=400, n_features=4, n_informative=3, n_redundant=0, class_sep=2.0, random_state=3
    )
    frame = pd.DataFrame(x, columns=FEATURES).assign(y=y)
    train, test = frame.iloc[:300], frame.iloc[300:]
    good = LogisticRegression().fit(train[FEATURES].to_numpy(), train["y"])
    shuffled = np.random.default_rng(1).permutation(train["y"].to_numpy())
    noise = LogisticRegression().fit(train[FEATURES].to_numpy(), shuffled)
    sio.dump(good, folder / "good.skops")
    sio.dump(noise, folder / "noise.skops")
    joblib.dump(good, folder / "good.joblib")
    test.to_csv(folder / "holdout.csv", index=False)
    test.assign(id=range(len(test)))[["id", *FEATURES, "y"]].to_csv(
        folder / "with-id.csv", index=False
    )
    train[FEATURES].head(20).to_csv(folder / "sample.csv", index=False)
    return Files(
        folder,
        folder / "good.skops",
        folder / "noise.skops",
        folder / "good.joblib",
        folder / "holdout.csv",
        folder / "with-id.csv",
        folder / "sample.csv",
    )


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings of every mode, with a folder of test data on the "server"."""
    folder = tmp_path / "server-data"
    folder.mkdir()
    monkeypatch.setenv("BERTH_VALIDATION_DATA_DIR", str(folder))
    return settings.model_copy(update={"validation_data_dir": folder})


def _gates(files: Files, *more: str) -> list[str]:
    return ["--data", str(files.holdout), "--target", "y", *more]


def _nothing_registered(registry: Registry, settings: Settings, models: int = 0) -> None:
    assert len(registry.list_models()) == models
    stored = settings.home / "artifacts"
    assert len([p for p in stored.rglob("*") if p.is_file()] if stored.exists() else []) == models


def _validations(registry: Registry, mode: Mode) -> list[tuple[str, str, dict[str, object]]]:
    events = AuditLog(registry.db).list(actor=mode.actor)
    return [
        (e.target, e.outcome, e.detail or {})
        for e in reversed(events)
        if e.action == "model.validate"
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- a candidate file


def test_a_candidate_file_is_gated_and_nothing_is_registered(
    run_both: Run,
    cli_mode: Mode,
    files: Files,
    sqlite_registry: Registry,
    settings: Settings,
) -> None:
    passed = run_both(
        "validate", str(files.good), *_gates(files, "--min-accuracy", "0.9", "--no-nan")
    )
    assert passed.code == 0, passed.err
    assert "good.skops: 100 rows of holdout.csv" in passed.out
    assert "93 of 100 rows predicted right" in passed.out
    assert "PASS all 2 checks passed" in passed.out

    failed = run_both("validate", str(files.noise), *_gates(files, "--min-accuracy", "0.9"))
    assert failed.code == 1, failed.err
    assert "noise.skops: 100 rows of holdout.csv" in failed.out
    assert "FAIL 1 of 1 checks failed: accuracy (0.66)" in failed.out
    assert failed.err == ""

    as_json = run_both(
        "validate", str(files.noise), *_gates(files, "--min-accuracy", "0.9", "--json")
    )
    assert as_json.code == 1
    assert json.loads(as_json.out) == {
        "reference": "noise.skops",
        "rows": 100,
        "passed": False,
        "checks": [
            {
                "name": "accuracy",
                "passed": False,
                "value": 0.66,
                "threshold": ">= 0.9",
                "detail": "66 of 100 rows predicted right",
            }
        ],
    }

    _nothing_registered(sqlite_registry, settings)
    good, noise = _sha256(files.good), _sha256(files.noise)
    assert [
        (t, o, d["sha256"], d["passed"]) for t, o, d in _validations(sqlite_registry, cli_mode)
    ] == [
        ("good.skops", "ok", good, True),
        ("noise.skops", "ok", noise, False),
        ("noise.skops", "ok", noise, False),
    ]


def test_no_regression_against_the_production_version(
    run_both: Run, files: Files, sqlite_registry: Registry, settings: Settings
) -> None:
    register(
        sqlite_registry,
        RegisterRequest(
            name="churn", path=files.good, sample=files.sample, aliases=("production",)
        ),
    )
    worse = run_both(
        "validate", str(files.noise), *_gates(files, "--no-regression-vs", "churn@production")
    )
    assert worse.code == 1, worse.err
    assert "accuracy 0.6600 on noise.skops vs 0.9300 on churn:1" in worse.out
    assert (
        "FAIL 2 of 2 checks failed: no_regression.accuracy (0.66), no_regression.auc" in worse.out
    )

    same = run_both(
        "validate",
        str(files.good),
        *_gates(files, "--min-accuracy", "0.9", "--no-regression-vs", "churn@production"),
    )
    assert same.code == 0, same.err
    assert "PASS all 2 checks passed" in same.out  # accuracy, and no regression of it

    missing = run_both(
        "validate", str(files.good), *_gates(files, "--no-regression-vs", "churn@staging")
    )
    assert missing.code == 1
    assert "error: model 'churn' has no alias 'staging'" in missing.err
    _nothing_registered(sqlite_registry, settings, models=1)
    assert [v.number for v in sqlite_registry.get_model("churn").versions] == [1]


def test_a_pickle_is_loaded_only_with_trust(
    run_both: Run, cli_mode: Mode, files: Files, sqlite_registry: Registry, settings: Settings
) -> None:
    refused = run_both("validate", str(files.pickled), *_gates(files, "--min-accuracy", "0.9"))
    assert refused.code == 1
    assert refused.err.startswith("error: good.joblib is a pickle (joblib/pickle) file")
    assert refused.out == ""

    trusted = run_both(
        "validate", str(files.pickled), *_gates(files, "--min-accuracy", "0.9", "--trust-pickle")
    )
    assert trusted.code == 0, trusted.err
    assert "good.joblib: 100 rows of holdout.csv" in trusted.out

    _nothing_registered(sqlite_registry, settings)
    (first, outcome, detail), (_, then, trusting) = _validations(sqlite_registry, cli_mode)
    assert (first, outcome, detail["trust_pickle"]) == ("good.joblib", "refused", False)
    assert "is a pickle" in str(detail["error"])
    assert (then, trusting["trust_pickle"], trusting["passed"]) == ("ok", True, True)


def test_the_signature_comes_from_the_sample_else_the_data(
    run_both: Run, files: Files, tmp_path: Path
) -> None:
    # The model was fitted on an array: from the data it takes every column but the target.
    shifted = run_both(
        "validate", str(files.good), "--data", str(files.with_id), "--target", "y", "--no-nan"
    )
    assert shifted.code == 1
    assert shifted.err == (
        "error: the model rejected the input: X has 5 features, but LogisticRegression is "
        "expecting 4 features as input.\n"
    )
    # --sample names the model's inputs, so the id column is left out.
    named = run_both(
        "validate",
        str(files.good),
        "--data",
        str(files.with_id),
        "--target",
        "y",
        "--min-accuracy",
        "0.9",
        "--sample",
        str(files.sample),
    )
    assert named.code == 0, named.err
    assert "93 of 100 rows predicted right" in named.out
    # A folder holding the model file is a candidate too (sent as an archive when remote).
    folder = tmp_path / "candidate"
    folder.mkdir()
    shutil.copy(files.good, folder / "model.skops")
    packed = run_both("validate", str(folder), *_gates(files, "--min-accuracy", "0.9"))
    assert packed.code == 0, packed.err
    assert "candidate: 100 rows of holdout.csv" in packed.out


def test_test_rows_on_the_server_are_read_from_its_data_folder_only(
    run_both: Run, files: Files, settings: Settings, tmp_path: Path
) -> None:
    folder = settings.validation_data_dir
    assert folder is not None
    (folder / "churn").mkdir()
    shutil.copy(files.holdout, folder / "churn" / "holdout.csv")
    (tmp_path / "secret.csv").write_text("f0,f1,f2,f3,y\n1,2,3,4,1\n")
    (folder / "link.csv").symlink_to(tmp_path / "secret.csv")
    gates = ["--target", "y", "--min-accuracy", "0.9"]

    found = run_both("validate", str(files.good), "--server-data", "churn/holdout.csv", *gates)
    assert found.code == 0, found.err
    assert "good.skops: 100 rows of churn/holdout.csv" in found.out

    for name, message in (
        ("../secret.csv", "is not a path inside BERTH_VALIDATION_DATA_DIR"),
        (str(tmp_path / "secret.csv"), "is not a path inside BERTH_VALIDATION_DATA_DIR"),
        ("link.csv", "leads out of BERTH_VALIDATION_DATA_DIR"),
        ("churn/other.csv", "there is no file 'churn/other.csv'"),
    ):
        refused = run_both("validate", str(files.good), "--server-data", name, *gates)
        assert refused.code == 1, name
        assert refused.err.startswith("error: "), (name, refused.err)
        assert message in refused.err, (name, refused.err)
        assert str(folder) not in refused.err  # the server's folder is not shown

    both = run_both(
        "validate", str(files.good), "--server-data", "x.csv", "--data", str(files.holdout), *gates
    )
    assert both.code == 1
    assert "either --data or --server-data" in both.err


def test_loading_flags_are_refused_for_a_registered_version(
    run_both: Run, files: Files, sqlite_registry: Registry
) -> None:
    register(sqlite_registry, RegisterRequest(name="churn", path=files.good, sample=files.sample))
    refused = run_both("validate", "churn:1", *_gates(files, "--no-nan", "--trust-pickle"))
    assert refused.code == 1
    assert refused.err.strip() == (
        "error: --trust-pickle describes a model file; churn:1 is a registered version, which "
        "loads as it was registered, so leave it out"
    )


# ---------------------------------------------------------------------------- MODEL: file or version


def test_a_model_argument_is_a_file_or_a_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.skops").write_bytes(b"x")
    (tmp_path / "churn").mkdir()
    assert model_argument("model.skops") == Path("model.skops")
    assert model_argument("./churn") == Path("./churn")
    assert model_argument("build/missing.onnx") == Path("build/missing.onnx")
    assert model_argument("model v2.skops") == Path("model v2.skops")
    assert model_argument("churn:3") == "churn:3"
    assert model_argument("churn@production") == "churn@production"
    assert model_argument("iris") == "iris"
    assert model_argument("iris.v2") == "iris.v2"
    with pytest.raises(
        InvalidInput,
        match=r"'churn' is both a folder here and a model name; "
        r"write \./churn to validate the folder, or churn@production",
    ):
        model_argument("churn")
    with pytest.raises(InvalidInput, match=r"there is no file candidate\.tar\.gz here"):
        model_argument("candidate.tar.gz")


def test_a_bare_file_name_in_the_current_folder(
    run_both: Run, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files.folder)
    passed = run_both(
        "validate", "good.skops", "--data", "holdout.csv", "--target", "y", "--min-auc", "0.9"
    )
    assert passed.code == 0, passed.err
    assert "good.skops: 100 rows of holdout.csv" in passed.out
    missing = run_both("validate", "gone.skops", "--data", "holdout.csv", "--no-nan")
    assert missing.code == 1
    assert "error: there is no file gone.skops here" in missing.err


# ---------------------------------------------------------------------------- the same output


def test_both_modes_print_the_same_report(
    run: Run,
    files: Files,
    settings: Settings,
    sqlite_registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(
        sqlite_registry,
        RegisterRequest(
            name="churn", path=files.good, sample=files.sample, aliases=("production",)
        ),
    )
    keys = KeyService(sqlite_registry.db, server_secret(KeyConfig.from_settings(settings)))
    _, secret = keys.create("ci", ("admin",))
    commands = [
        [
            str(files.noise),
            *_gates(files, "--min-auc", "0.7", "--no-regression-vs", "churn@production"),
        ],
        [str(files.good), *_gates(files, "--no-nan", "--output-range", "0,1")],
        ["churn", *_gates(files, "--min-accuracy", "0.95")],
        [str(files.good), *_gates(files, "--min-accuracy", "0.9", "--json")],
        [str(files.good), "--data", str(files.holdout), "--target", "label", "--min-auc", "0.5"],
    ]
    local = [run("validate", *command) for command in commands]
    with threaded_server(settings) as url:
        monkeypatch.setenv("BERTH_SERVER", url)
        monkeypatch.setenv("BERTH_API_KEY", secret)
        monkeypatch.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
        remote = [run("validate", *command) for command in commands]
    assert [o.code for o in local] == [1, 0, 1, 0, 1]
    assert remote == local


def test_a_command_without_a_gate_uploads_nothing(run_both: Run, files: Files) -> None:
    refused = run_both("validate", str(files.good), "--data", str(files.holdout))
    assert refused.code == 1
    assert refused.err.startswith("error: no gate to run; give at least one of --min-accuracy")
    missing = run_both("validate", str(files.folder / "gone.onnx"), *_gates(files, "--no-nan"))
    assert missing.code == 1
    assert missing.err.strip() == (
        f"error: {files.folder / 'gone.onnx'} does not exist; pass the path of a model file, "
        "directory or archive"
    )
