"""`berth export REF --format onnx --out DIR`: a folder that runs with onnxruntime and numpy only.

The folder's runner is run as a user would (`python run.py INPUT`, in a subprocess) under an
import guard that refuses everything but the standard library, numpy and onnxruntime
(`tests.edge_checks`), and its answers are compared with Berth's: expected.json, a real
`berth serve` process, and the scikit-learn model itself. Torch versions:
`test_edge_export_torch.py`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.datasets import load_iris, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from berth.config import Settings
from berth.deploy.edge import export_edge
from berth.deploy.source import RegistrySource
from berth.optimize import speed
from berth.optimize.equivalence import NotEquivalent
from berth.optimize.service import optimize
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.runtimes.loading import artifact_path
from tests.conftest import Run, register_churn, register_iris, serving
from tests.edge_checks import expected, guarded, own_test, runner_answer, sample_rows
from tests.local_twin import local_twin

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

IrisFiles = tuple[Path, Path]
ChurnFiles = tuple[Path, Path, Path]


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """optimize (used to make ONNX versions) measures speed; a short budget keeps this fast."""
    monkeypatch.setattr(speed, "BUDGET_SECONDS", 0.005)


def assert_same_answer(actual: dict[str, Any], berth: dict[str, Any], tolerance: float) -> None:
    """Labels exactly, probabilities within the tolerance (both Berth v1 shaped)."""
    assert actual["predictions"] == berth["predictions"]
    assert actual.get("classes") == berth["classes"]
    if berth["probabilities"] is None:
        assert actual.get("probabilities") is None
    else:
        assert_allclose(actual["probabilities"], berth["probabilities"], rtol=0, atol=tolerance)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def register_network(registry: Registry, folder: Path) -> Path:
    """A small MLP (it has weights to quantize); returns holdout rows to check it on.

    int8 moves its probabilities by about 0.06 on the holdout rows, labels unchanged: beyond
    the default int8 tolerance (0.01), within 0.1.
    """
    features, target = make_blobs(
        n_samples=600, centers=3, n_features=6, cluster_std=3.0, random_state=0
    )
    features = features.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier((16,), max_iter=1000, random_state=0).fit(
            features[:400], target[:400]
        )
    joblib.dump(model, folder / "network.joblib")
    np.save(folder / "network.npy", features[:20])
    np.save(folder / "holdout.npy", features[400:])
    register(
        registry,
        RegisterRequest(
            name="network",
            path=folder / "network.joblib",
            sample=folder / "network.npy",
            trust_pickle=True,
        ),
    )
    return folder / "holdout.npy"


# the folder --------------------------------------------------------------------------------


def test_iris_export_is_a_self_contained_folder_that_tests_itself(
    run_both: Run, sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    run = run_both
    version = register_iris(sqlite_registry, iris_files)
    out = tmp_path / "iris-edge"
    np.save(tmp_path / "iris.npy", load_iris(return_X_y=True)[0].astype(np.float32))

    done = run(
        "export",
        "iris:1",
        "--format",
        "onnx",
        "--out",
        str(out),
        "--data",
        str(tmp_path / "iris.npy"),
    )

    assert done.code == 0, done.err
    assert "label agreement" in done.out
    assert "150/150" in done.out
    assert str(out) in done.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "README.md",
            "expected.json",
            "model.onnx",
            "requirements.txt",
            "run.py",
            "sample.json",
            "signature.json",
            "test_run.py",
        ]
    )
    assert json.loads((out / "signature.json").read_text()) == version.signature.to_dict()
    import onnxruntime

    assert (out / "requirements.txt").read_text().split() == [
        f"onnxruntime=={onnxruntime.__version__}",
        f"numpy=={np.__version__}",
    ]
    readme = (out / "README.md").read_text()
    assert "python run.py sample.json" in readme
    assert "python -m unittest" in readme
    assert "probabilities may differ by at most 0.0001" in readme

    # expected.json holds the source model's answers (what the server gives), not the graph's
    berth = expected(out)
    assert berth["source"] == "iris:1"
    assert berth["tolerance"] == 1e-4
    rows = np.asarray(sample_rows(out), dtype=np.float32)
    assert len(rows) == 20
    model = joblib.load(iris_files[0])
    assert berth["predictions"] == model.predict(rows).tolist()
    assert_allclose(berth["probabilities"], model.predict_proba(rows), rtol=1e-6)
    assert berth["classes"] == [0, 1, 2]
    assert set(berth["predictions"]) == {0, 1, 2}  # the sample covers every class

    answer = runner_answer(out, out / "sample.json", cwd=tmp_path)
    assert_same_answer(answer, berth, 1e-4)

    passed = own_test(out)
    assert passed.returncode == 0, passed.stderr
    assert "Ran 2 tests" in passed.stderr


@pytest.mark.parametrize("tamper", ["label", "probability"])
def test_the_shipped_test_fails_when_the_answers_differ(
    sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path, tamper: str
) -> None:
    register_iris(sqlite_registry, iris_files)
    out = export_edge(RegistrySource(sqlite_registry), "iris:1", tmp_path / "edge").folder
    berth = expected(out)
    if tamper == "label":
        berth["predictions"][0] = (berth["predictions"][0] + 1) % 3
    else:
        berth["probabilities"][0][0] += 10 * berth["tolerance"]  # beyond the stated tolerance
    (out / "expected.json").write_text(json.dumps(berth))

    failed = own_test(out)

    assert failed.returncode != 0
    assert "FAILED" in failed.stderr
    assert ("labels differ" if tamper == "label" else "value 0:") in failed.stderr


def test_churn_runner_takes_json_and_csv_with_only_numpy_and_onnxruntime(
    sqlite_registry: Registry, churn_files: ChurnFiles, tmp_path: Path
) -> None:
    register_churn(sqlite_registry, churn_files)

    report = export_edge(
        RegistrySource(sqlite_registry), "churn@production", tmp_path / "churn-edge"
    )

    out = report.folder
    assert report.check.label_agreement == 1.0
    berth = expected(out)
    assert berth["source"] == "churn:1"
    rows = sample_rows(out)
    assert len({row["plan"] for row in rows}) > 1  # the string column is exercised
    from_json = runner_answer(out, out / "sample.json", cwd=tmp_path)
    from_csv = runner_answer(out, write_csv(rows, tmp_path / "rows.csv"), cwd=tmp_path)
    assert_same_answer(from_json, berth, 1e-4)
    assert_same_answer(from_csv, berth, 1e-4)
    # the v1 forms: a list of rows in column order, and one row as `features`
    columns = [c.name for c in report.source.signature.columns]
    (tmp_path / "lists.json").write_text(json.dumps([[r[c] for c in columns] for r in rows]))
    assert_same_answer(runner_answer(out, tmp_path / "lists.json", cwd=tmp_path), berth, 1e-4)
    (tmp_path / "one.json").write_text(json.dumps({"features": rows[2]}))
    one = runner_answer(out, tmp_path / "one.json", cwd=tmp_path)
    assert one["predictions"] == berth["predictions"][2:3]


def test_runner_refuses_rows_the_signature_refuses(
    sqlite_registry: Registry, churn_files: ChurnFiles, tmp_path: Path
) -> None:
    register_churn(sqlite_registry, churn_files)
    out = export_edge(RegistrySource(sqlite_registry), "churn:1", tmp_path / "churn-edge").folder
    row = sample_rows(out)[0]
    cases = {
        "missing.json": ({k: v for k, v in row.items() if k != "plan"}, "missing: ['plan']"),
        "range.json": ({**row, "tenure_months": 601}, "outside the allowed range"),
        "type.json": ({**row, "plan": 3}, "expected a string"),
    }
    for name, (bad, message) in cases.items():
        (tmp_path / name).write_text(json.dumps({"instances": [bad]}))

        done = guarded(out / "run.py", str(tmp_path / name), cwd=tmp_path)

        assert done.returncode == 2, name
        assert message in done.stderr, done.stderr


def test_the_guard_refuses_other_packages(tmp_path: Path) -> None:
    """The guard can fail: a script importing pandas (installed here) dies under it."""
    script = tmp_path / "uses_pandas.py"
    script.write_text("import numpy\nimport pandas\nprint('imported')\n")

    done = guarded(script, cwd=tmp_path)

    assert done.returncode != 0
    assert "guard refused: pandas" in done.stderr
    assert "imported" not in done.stdout
    berth_import = tmp_path / "uses_berth.py"
    berth_import.write_text("import berth\n")
    assert "guard refused: berth" in guarded(berth_import, cwd=tmp_path).stderr


# ONNX versions and int8 --------------------------------------------------------------------


def test_onnx_versions_are_exported_as_registered(
    sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    register_iris(sqlite_registry, iris_files)
    optimized = optimize(sqlite_registry, "iris:1").version  # iris:2, onnx
    # and an ONNX file from skl2onnx's defaults: probabilities as a ZipMap, no class metadata
    from skl2onnx import to_onnx

    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), target)
    (tmp_path / "zipmap.onnx").write_bytes(
        to_onnx(model, features[:1].astype(np.float32)).SerializeToString()
    )
    np.save(tmp_path / "zipmap.npy", features[:20].astype(np.float32))
    zipmap = register(
        sqlite_registry,
        RegisterRequest(
            name="zipmap", path=tmp_path / "zipmap.onnx", sample=tmp_path / "zipmap.npy"
        ),
    )

    for version in (optimized, zipmap):
        report = export_edge(RegistrySource(sqlite_registry), version.ref, tmp_path / version.model)

        out = report.folder
        assert report.converted is None
        assert report.how == "the registered ONNX graph"
        assert (out / "model.onnx").read_bytes() == artifact_path(
            sqlite_registry, version
        ).read_bytes()
        berth = expected(out)
        assert berth["source"] == version.ref
        assert berth["classes"] == [0, 1, 2]
        assert_same_answer(runner_answer(out, out / "sample.json", cwd=tmp_path), berth, 1e-4)


def test_int8_exports_of_a_network_and_of_its_onnx_version(
    run_both: Run, sqlite_registry: Registry, tmp_path: Path
) -> None:
    run = run_both
    holdout = register_network(sqlite_registry, tmp_path)
    optimize(sqlite_registry, "network:1")  # network:2, its float ONNX form
    for ref in ("network:1", "network:2"):
        out = tmp_path / f"edge-{ref[-1]}"

        done = run(
            "export",
            ref,
            "--format",
            "onnx",
            "--out",
            str(out),
            "--quantize",
            "int8",
            "--tolerance",
            "0.1",
            "--data",
            str(holdout),
        )

        assert done.code == 0, done.err
        assert "int8-quantized" in done.out
        graph = onnx.load(str(out / "model.onnx"))
        assert "MatMulInteger" in {node.op_type for node in graph.graph.node}
        berth = expected(out)
        assert berth["tolerance"] == 0.1
        assert "probabilities may differ by at most 0.1" in (out / "README.md").read_text()
        answer = runner_answer(out, out / "sample.json", cwd=tmp_path)
        assert_same_answer(answer, berth, 0.1)
        # quantization moved the probabilities, within the tolerance
        assert not np.array_equal(answer["probabilities"], berth["probabilities"])


def test_int8_beyond_its_default_tolerance_is_refused_with_the_measurements(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    holdout = register_network(sqlite_registry, tmp_path)
    out = tmp_path / "edge"

    with pytest.raises(NotEquivalent) as refused:
        export_edge(
            RegistrySource(sqlite_registry), "network:1", out, quantize="int8", data=holdout
        )

    message = refused.value.message
    assert message.startswith("export refused: the int8-quantized ONNX form of network:1")
    assert "max probability difference" in message
    assert "above the tolerance 0.01" in message
    assert "Nothing was written; raise --tolerance" in message
    assert refused.value.report.max_probability_diff is not None
    assert refused.value.report.max_probability_diff > 0.01
    assert not out.exists()


# against a real server ---------------------------------------------------------------------


@pytest.mark.server
def test_runner_answers_equal_a_real_berth_server(
    settings: Settings,
    sqlite_registry: Registry,
    iris_files: IrisFiles,
    churn_files: ChurnFiles,
    tmp_path: Path,
) -> None:
    register_iris(sqlite_registry, iris_files)
    register_churn(sqlite_registry, churn_files)
    optimize(sqlite_registry, "iris:1")
    folders = {
        ref: export_edge(
            RegistrySource(sqlite_registry), ref, tmp_path / ref.replace(":", "-")
        ).folder
        for ref in ("iris:1", "iris:2", "churn:1")
    }
    env = dict(os.environ)  # BERTH_HOME: the registry above

    with serving(env, "iris", "churn", "--dev") as (base, _port):
        for ref, folder in folders.items():
            response = httpx.post(
                f"{base}/api/v1/models/{ref}/batch-predict",
                json={"instances": sample_rows(folder)},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            server = response.json()
            assert server["model"] == ref.split(":")[0]
            assert server["model_version"] == int(ref[-1])

            answer = runner_answer(folder, folder / "sample.json", cwd=tmp_path)

            assert_same_answer(answer, server, 1e-4)
            assert_same_answer(expected(folder), server, 0)  # expected.json is the server's answer


# refusals ----------------------------------------------------------------------------------


def test_unknown_reference_and_format_are_refused(
    run_both: Run, sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    run = run_both
    register_iris(sqlite_registry, iris_files)

    unknown = run("export", "nope", "--format", "onnx", "--out", str(tmp_path / "a"))
    tflite = run("export", "iris:1", "--format", "tflite", "--out", str(tmp_path / "b"))
    version = run("export", "iris:7", "--format", "onnx", "--out", str(tmp_path / "c"))

    assert unknown.code == 1
    assert "model 'nope'" in unknown.err
    assert tflite.code == 1
    assert "unknown export format 'tflite'; use one of onnx" in tflite.err
    assert version.code == 1
    assert "model 'iris' has no version 7 (versions: 1)" in version.err
    assert not any((tmp_path / name).exists() for name in "abc")


def test_python_flavor_is_refused_with_what_to_do(
    run_both: Run, sqlite_registry: Registry, tmp_path: Path
) -> None:
    run = run_both
    folder = tmp_path / "doubler"
    folder.mkdir()
    (folder / "model.py").write_text(
        "import numpy as np\n"
        "class Doubler:\n"
        "    def load(self):\n"
        "        pass\n"
        "    def predict(self, inputs):\n"
        "        return (np.asarray(inputs).sum(axis=1) * 2).tolist()\n"
    )
    np.save(tmp_path / "sample.npy", np.ones((3, 2), dtype=np.float32))
    register(
        sqlite_registry,
        RegisterRequest(name="doubler", path=folder, sample=tmp_path / "sample.npy"),
    )

    done = run("export", "doubler:1", "--format", "onnx", "--out", str(tmp_path / "out"))

    assert done.code == 1
    assert "doubler:1 cannot be exported" in done.err
    assert "python-flavor version runs your own class" in done.err
    assert "berth models register NAME model.onnx" in done.err
    assert not (tmp_path / "out").exists()


def test_non_empty_directory_needs_force(
    run_both: Run, sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    run = run_both
    register_iris(sqlite_registry, iris_files)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ("export", "iris:1", "--format", "onnx", "--out", str(out))

    refused = run(*args)

    assert refused.code == 1
    assert "is not empty" in refused.err
    assert "--force" in refused.err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    forced = run(*args, "--force")

    assert forced.code == 0, forced.err
    assert (out / "notes.txt").read_text() == "mine"  # only the export's files are written
    assert (out / "run.py").is_file()


def test_a_graph_without_weights_is_not_quantized(
    run_both: Run, sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    run = run_both
    register_iris(sqlite_registry, iris_files)

    done = run(
        "export", "iris:1", "--format", "onnx", "--out", str(tmp_path / "o"), "--quantize", "int8"
    )

    assert done.code == 1
    assert "LinearClassifier" in done.err
    assert not (tmp_path / "o").exists()


def test_json_report(
    run_both: Run, sqlite_registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    run = run_both
    register_iris(sqlite_registry, iris_files)

    done = run("export", "iris:1", "--format", "onnx", "--out", str(tmp_path / "o"), "--json")

    assert done.code == 0, done.err
    report = json.loads(done.out)
    assert report["source"] == "iris:1"
    assert report["check"]["passed"] is True
    assert report["check"]["rows"] == 1000
    assert report["sample_rows"] == 20
    assert report["folder"] == str(tmp_path / "o")


# remote mode: the same folder --------------------------------------------------------------

_EXPORT_DATE = re.compile(rb"(Exported by Berth \S+ on )\d{4}-\d{2}-\d{2}")


def _folder_files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of an export folder: its bytes (the README's export date aside), its mode."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if path.name == "README.md":
            content, dated = _EXPORT_DATE.subn(rb"\1DATE", content)
            assert dated == 1
        found[path.relative_to(root).as_posix()] = (content, path.stat().st_mode & 0o777)
    return found


@pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)
def test_remote_export_writes_the_folder_local_mode_writes(
    run_both: Run,
    sqlite_registry: Registry,
    iris_files: IrisFiles,
    churn_files: ChurnFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From a server reached with a key only (the database URL is unusable): the record and
    the artifact come through the API, and the folder, file by file, and the output are local
    mode's. A scikit-learn file (a trusted pickle), a table with strings (with --data and a
    tighter --tolerance), an ONNX version (--json), and an ONNX directory artifact (it travels
    as a tar)."""
    run = run_both
    register_iris(sqlite_registry, iris_files)
    register_churn(sqlite_registry, churn_files)
    optimize(sqlite_registry, "iris:1")  # iris:2, onnx
    folder = tmp_path / "iris-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("an ONNX graph with its notes\n")
    optimized = artifact_path(sqlite_registry, sqlite_registry.resolve("iris:2"))
    (folder / "iris.onnx").write_bytes(optimized.read_bytes())
    register(
        sqlite_registry,
        RegisterRequest(name="folder", path=folder, sample=iris_files[1]),
    )
    exports = {
        "iris:1": [],
        "churn@production": ["--data", str(churn_files[1]), "--tolerance", "1e-5"],
        "iris:2": ["--json"],
        "folder": [],
    }
    out = tmp_path / "edge"
    for reference, options in exports.items():
        command = ("export", reference, "--format", "onnx", "--out", str(out), "--force")
        local = local_twin(run, monkeypatch, None, *command, *options)
        assert local.code == 0, local.err
        local_files = _folder_files(out)
        remote = run(*command, *options)
        assert (remote.code, remote.out) == (local.code, local.out), reference
        assert _folder_files(out) == local_files, reference
    assert sqlite_registry.resolve("folder").artifact.is_directory
    assert expected(out)["source"] == "folder:1"
