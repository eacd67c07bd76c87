"""Accelerated twins: made at registration, checked, stored, backed up, served in the version's
place with the version's answers; refused with a reason; opted out of per model."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from starlette.testclient import TestClient

from berth.backup.snapshot import read_tables
from berth.config import ModelServing, Settings
from berth.optimize import speed
from berth.optimize.twin import accelerate, accelerate_registered
from berth.registry.service import Registry
from berth.runtimes.loading import load_served, load_version
from berth.store.audit import AuditLog
from tests.conftest import Run, register_churn, register_iris

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

IRIS_X = load_iris(return_X_y=True)[0].astype(np.float32)


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed is measured, not asserted: a short budget keeps the suite fast."""
    monkeypatch.setattr(speed, "BUDGET_SECONDS", 0.005)


@pytest.fixture
def local(settings: Settings) -> Iterator[Registry]:
    found = Registry.from_settings(settings)
    yield found
    found.db.dispose()


def test_registering_makes_a_checked_twin_that_answers_as_the_version(
    local: Registry, iris_files: tuple[Path, Path]
) -> None:
    version = accelerate_registered(local, register_iris(local, iris_files))
    twin = version.accelerated
    assert twin is not None
    assert twin.usable
    assert twin.artifact is not None
    assert twin.flavor == "onnx"
    assert twin.detail["check"]["agreeing"] == twin.detail["check"]["rows"] >= 1000
    assert twin.detail["check"]["max_probability_diff"] <= 1e-4
    # Stored: a fresh read of the version has it, and its bytes are in the store.
    assert local.get_version("iris", 1).accelerated == twin
    assert local.store.fetch(twin.artifact).is_file()
    served = load_served(local, local.get_version("iris", 1))
    own = load_version(local, version)
    assert served.flavor == "onnx"
    assert own.flavor == "sklearn"
    expected, actual = own.predict(IRIS_X), served.predict(IRIS_X)
    assert_array_equal(actual.predictions, expected.predictions)
    assert actual.classes == expected.classes
    assert_allclose(actual.probabilities, expected.probabilities, atol=1e-4)
    # Nothing about the version itself changed.
    assert version.artifact == own_artifact(local)
    (event,) = AuditLog(local.db).list(action="model.accelerate")
    assert (event.target, event.detail) == ("iris:1", {"served": True})


def own_artifact(registry: Registry) -> object:
    return registry.get_version("iris", 1).artifact


def test_a_version_with_nothing_to_check_on_keeps_the_reason_and_serves_as_it_is(
    local: Registry, tmp_path: Path
) -> None:
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "bare.joblib")
    from berth.registration.service import RegisterRequest, register

    # No sample: the signature comes from the estimator, and there are no example rows.
    bare = register(
        local, RegisterRequest(name="bare", path=tmp_path / "bare.joblib", trust_pickle=True)
    )
    version = accelerate(local, bare)
    assert version.accelerated is not None
    assert not version.accelerated.usable
    assert "no example rows" in version.accelerated.reason
    assert load_served(local, version).flavor == "sklearn"
    assert version.to_dict()["accelerated"]["served"] is False


def test_a_twin_missing_from_the_store_leaves_the_version_serving(
    local: Registry, iris_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    version = accelerate_registered(local, register_iris(local, iris_files))
    assert version.accelerated is not None
    assert version.accelerated.artifact is not None
    cached = local.store.fetch(version.accelerated.artifact)
    cached.unlink()
    stored = Path(version.accelerated.artifact.uri.removeprefix("file://"))
    shutil.rmtree(stored) if stored.is_dir() else stored.unlink()
    runtime = load_served(local, version)
    assert runtime.flavor == "sklearn"
    assert "its onnx twin did not load" in caplog.text
    assert_array_equal(
        runtime.predict(IRIS_X[:5]).predictions,
        load_version(local, version).predict(IRIS_X[:5]).predictions,
    )


def test_the_server_serves_the_twin_unless_the_model_opts_out(
    local: Registry, iris_files: tuple[Path, Path], settings: Settings
) -> None:
    from berth.api.app import build_services, create_app

    accelerate_registered(local, register_iris(local, iris_files, aliases=("production",)))
    answers = {}
    for opt in (True, False):
        configured = settings.model_copy(
            update={"served": ["iris@production"], "dev": True,
                    "models": {"iris": ModelServing(accelerate=opt)}}
        )  # fmt: skip
        app = create_app(configured, build_services(configured, local))
        with TestClient(app) as client:
            loaded = app.state.services.dataplane._loaded[("iris", 1)]
            assert loaded.runtime.flavor == ("onnx" if opt else "sklearn")
            answer = client.post(
                "/api/v1/models/iris/batch-predict", json={"instances": IRIS_X[:30].tolist()}
            )
            assert answer.status_code == 200, answer.text
            answers[opt] = answer.json()
    twin, own = answers[True], answers[False]
    assert twin["predictions"] == own["predictions"]
    assert_allclose(twin["probabilities"], own["probabilities"], atol=1e-4)
    assert twin["model_version"] == own["model_version"] == 1
    assert twin["classes"] == own["classes"]


def test_the_cli_makes_the_twin_and_no_accelerate_skips_it(
    run: Run, iris_files: tuple[Path, Path]
) -> None:
    model, sample = iris_files
    made = run("models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle")
    assert made.code == 0, made.err
    said = " ".join(made.out.split())
    assert "Accelerated: serves as its ONNX twin" in said
    assert """BERTH_MODELS='{"iris": {"accelerate": false}}'""" in said
    skipped = run(
        "models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle",
        "--no-accelerate",
    )  # fmt: skip
    assert skipped.code == 0, skipped.err
    assert "Accelerated" not in skipped.out
    shown = {n: run("models", "show", f"iris:{n}", "--json") for n in (1, 2)}
    assert all(s.code == 0 for s in shown.values()), [s.err for s in shown.values()]
    assert json.loads(shown[1].out)["accelerated"]["served"] is True
    assert json.loads(shown[2].out)["accelerated"] is None


def test_a_backup_carries_the_twin(local: Registry, iris_files: tuple[Path, Path]) -> None:
    version = accelerate_registered(local, register_iris(local, iris_files))
    _tables, artifacts = read_tables(local.db)
    assert version.accelerated is not None
    assert version.accelerated.artifact is not None
    assert {a.sha256 for a in artifacts} == {
        version.artifact.sha256,
        version.accelerated.artifact.sha256,
    }


def test_a_pipeline_on_columns_gets_a_twin_that_answers_as_it_does(
    local: Registry, churn_files: tuple[Path, Path, Path]
) -> None:
    version = accelerate_registered(local, register_churn(local, churn_files))
    twin = version.accelerated
    assert twin is not None
    assert twin.usable, twin.reason  # the demo's ColumnTransformer pipeline converts
    from berth.optimize.data import check_data

    rows = check_data(version)
    own, served = load_version(local, version), load_served(local, version)
    expected, actual = own.predict(rows.inputs), served.predict(rows.inputs)
    assert served.flavor == "onnx"
    assert_array_equal(actual.predictions, expected.predictions)
    assert_allclose(actual.probabilities, expected.probabilities, atol=1e-4)


def test_accelerate_makes_the_twin_of_a_version_registered_without_one(
    run_both: Run, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Locally and through the admin API alike; a flavor without twins is one line, exit 1."""
    run = run_both
    model, sample = iris_files
    registered = run(
        "models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle",
        "--no-accelerate",
    )  # fmt: skip
    assert registered.code == 0, registered.err
    made = run("models", "accelerate", "iris:1")
    assert made.code == 0, made.err
    assert "iris:1: Accelerated: serves as its ONNX twin" in " ".join(made.out.split())
    shown = run("models", "show", "iris:1", "--json")
    assert json.loads(shown.out)["accelerated"]["served"] is True
    as_json = run("models", "accelerate", "iris:1", "--json")
    assert json.loads(as_json.out)["accelerated"]["check"]["agreeing"] == 1000
    folder = tmp_path / "summer"
    folder.mkdir()
    (folder / "model.py").write_text(
        "class Summer:\n"
        "    def load(self):\n"
        "        pass\n\n"
        "    def predict(self, inputs):\n"
        "        return inputs.sum(axis=1)\n"
    )
    np.save(folder / "sample.npy", np.ones((2, 3)))
    python = run(
        "models", "register", "summer", str(folder), "--sample", str(folder / "sample.npy")
    )  # fmt: skip
    assert python.code == 0, python.err
    refused = run("models", "accelerate", "summer")
    assert refused.code == 1
    assert "summer:1 is a python version" in refused.err
    assert len(refused.err.strip().splitlines()) == 1


def test_a_running_server_serves_a_twin_made_after_it_loaded_the_version(
    local: Registry, iris_files: tuple[Path, Path]
) -> None:
    from berth.serving.dataplane import DataPlane

    register_iris(local, iris_files, aliases=("production",))

    async def scenario() -> tuple[str, str, str]:
        served = DataPlane(local, ["iris@production"])
        await served.start()
        try:
            before = served._loaded[("iris", 1)].runtime.flavor
            accelerate(local, local.get_version("iris", 1))
            await served.refresh()
            after = served._loaded[("iris", 1)].runtime.flavor
            answer = await served.predict("iris@production", lambda _s: IRIS_X[:3])
            return before, after, str(answer.version.ref)
        finally:
            await served.stop()

    assert asyncio.run(scenario()) == ("sklearn", "onnx", "iris:1")
