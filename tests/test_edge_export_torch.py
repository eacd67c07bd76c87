"""`berth export` of torch versions: an nn.Module (class file + state_dict) and TorchScript.

The network is exported to ONNX by the function `berth models optimize --to onnx` uses, checked
against the served network by the same rules (relative differences within 1e-4, 1e-2 with int8),
and written as the same folder a scikit-learn export gets. The folder's runner is run under the
import guard of `tests.edge_checks` (standard library, numpy and onnxruntime only: no torch),
and its answers are compared with Berth's: expected.json, the network itself, and a real
`berth serve` process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.datasets import make_blobs

from berth.deploy.edge import export_edge
from berth.deploy.source import RegistrySource
from berth.optimize import speed
from berth.optimize.equivalence import NotEquivalent
from berth.optimize.service import optimize
from berth.registration.service import RegisterRequest, register
from berth.registration.torch_folder import torch_module_folder
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes.loading import artifact_path
from tests.conftest import Run, serving
from tests.edge_checks import expected, guarded, own_test, runner_answer, sample_rows
from tests.local_twin import local_twin

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

# torch 2.13 deprecates TorchScript (still supported); the tests use it to build a version.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")

NET = '''"""A small MLP classifier: 6 features in, the probabilities of 3 classes out."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.layers(x), dim=1)
'''

UNEXPORTABLE = """import torch
from torch import nn


class LogGamma(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(self.linear(x).abs() + 1)  # no ONNX operator at opset 17
"""

BATCH_SCALED = """import torch
from torch import nn


class BatchScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A Python number taken from the batch: tracing records the example rows' value.
        scale = float(x.abs().max())
        return self.linear(x / scale)
"""


class NetFiles:
    """The network's files: its class file and state_dict, the same network as TorchScript,
    20 sample rows and 200 holdout rows (.npy)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.code = folder / "net.py"
        self.weights = folder / "net.pt"
        self.scripted = folder / "scripted" / "net.pt"
        self.sample = folder / "sample.npy"
        self.holdout = folder / "holdout.npy"


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """optimize measures speed; a short budget keeps this fast."""
    monkeypatch.setattr(speed, "BUDGET_SECONDS", 0.005)


@pytest.fixture(scope="module")
def net_files(tmp_path_factory: pytest.TempPathFactory) -> NetFiles:
    """The MLP trained a little on three blobs (97% holdout accuracy): int8 moves its
    probabilities by about 0.06 on the holdout rows, beyond the default int8 tolerance (0.01),
    within 0.1."""
    files = NetFiles(tmp_path_factory.mktemp("net"))
    files.code.write_text(NET)
    features, target = make_blobs(
        n_samples=600, centers=3, n_features=6, cluster_std=3.0, random_state=0
    )
    features = features.astype(np.float32)
    torch.manual_seed(0)
    network = network_class(files.code, "Net")()
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    rows, labels = torch.from_numpy(features[:400]), torch.from_numpy(target[:400])
    for _ in range(50):
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(network(rows)), labels)
        loss.backward()
        optimizer.step()
    network.eval()
    torch.save(network.state_dict(), files.weights)
    files.scripted.parent.mkdir()
    torch.jit.script(network).save(str(files.scripted))
    np.save(files.sample, features[:20])
    np.save(files.holdout, features[400:])
    return files


def network_class(code: Path, name: str) -> Any:
    """The nn.Module class `name` of a class file, imported as Berth will import it."""
    spec = importlib.util.spec_from_file_location(f"edge_torch_{code.stem}", code)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def register_module(
    registry: Registry, name: str, code: Path, weights: Path, sample: Path
) -> VersionInfo:
    """An nn.Module version, as `berth models register NAME code --weights weights` makes it."""
    with torch_module_folder(code, weights) as folder:
        return register(registry, RegisterRequest(name=name, path=folder, sample=sample))


def network_answer(files: NetFiles, rows: list[Any]) -> np.ndarray:
    """The network's own probabilities for v1 rows, computed here with torch."""
    network = torch.jit.load(str(files.scripted))
    with torch.no_grad():
        answer: np.ndarray = network(torch.tensor(rows, dtype=torch.float32)).numpy()
    return answer


def assert_close(actual: dict[str, Any], berth: dict[str, Any], tolerance: float) -> None:
    """Predictions within the tolerance, relative to max(1, |value|); no labels or classes."""
    got, want = np.asarray(actual["predictions"]), np.asarray(berth["predictions"])
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) / np.maximum(1.0, np.abs(want)) <= tolerance)
    assert actual.get("probabilities") is None
    assert actual.get("classes") is None


# the folder --------------------------------------------------------------------------------


def test_module_and_torchscript_versions_export_to_folders_that_test_themselves(
    run: Run, net_files: NetFiles, tmp_path: Path
) -> None:
    files = net_files
    registered = run(
        "models", "register", "net", str(files.code), "--weights", str(files.weights),
        "--sample", str(files.sample),
    )  # fmt: skip
    scripted = run(
        "models", "register", "scripted", str(files.scripted), "--sample", str(files.sample)
    )
    assert registered.code == 0, registered.err
    assert scripted.code == 0, scripted.err

    for ref in ("net:1", "scripted:1"):
        out = tmp_path / ref.replace(":", "-")

        done = run("export", ref, "--format", "onnx", "--out", str(out), "--json")

        assert done.code == 0, done.err
        report = json.loads(done.out)
        assert report["how"].startswith("exported from torch (torch.onnx (TorchScript-based) ")
        assert report["how"].endswith(", opset 17)")
        assert report["exporter"] == f"torch.onnx (TorchScript-based) {torch.__version__}"
        assert report["opset"] == 17
        assert report["quantized"] is None
        assert report["check"]["passed"] is True
        assert report["check"]["max_value_diff"] <= 1e-4
        assert report["check"]["rows"] == 1000
        assert sorted(report["files"]) == sorted(p.name for p in out.iterdir())
        assert {"model.onnx", "run.py", "test_run.py", "expected.json"} <= set(report["files"])
        graph = onnx.load(str(out / "model.onnx"))
        assert [i.name for i in graph.graph.input] == ["input"]  # as the signature names it
        assert graph.opset_import[0].version == 17
        signature = json.loads((out / "signature.json").read_text())
        assert signature["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 6]}]
        readme = (out / "README.md").read_text()
        assert "exported from torch" in readme
        assert "no Berth, no PyTorch" in readme
        assert "at most 0.0001 relative to max(1, |value|)" in readme

        # expected.json: Berth's answers, the network's probabilities (a float matrix)
        berth = expected(out)
        assert berth["source"] == ref
        assert berth["labels"] is False
        assert berth["tolerance"] == 1e-4
        rows = sample_rows(out)
        assert len(rows) == 20
        assert_allclose(berth["predictions"], network_answer(files, rows), rtol=1e-6, atol=1e-7)
        assert berth["probabilities"] is None
        assert berth["classes"] is None

        # run.py, with no torch to import, answers what Berth answers
        assert_close(runner_answer(out, out / "sample.json", cwd=tmp_path), berth, 1e-4)
        passed = own_test(out)
        assert passed.returncode == 0, passed.stderr
        assert "Ran 2 tests" in passed.stderr

    # the runner checks tensor rows against the signature
    (tmp_path / "short.json").write_text(json.dumps({"instances": [[1.0, 2.0, 3.0]]}))
    (tmp_path / "text.json").write_text(json.dumps({"instances": [[1, 2, 3, 4, 5, "six"]]}))
    for name, message in (
        ("short.json", "expected data of shape [-1, 6] (-1: any size), got [1, 3]"),
        ("text.json", "expected a number, got 'six'"),
    ):
        refused = guarded(tmp_path / "net-1" / "run.py", str(tmp_path / name), cwd=tmp_path)
        assert refused.returncode == 2, name
        assert message in refused.stderr, refused.stderr


def folder_files(root: Path) -> dict[str, bytes]:
    """The export's files, the README's export date aside."""
    found = {p.name: p.read_bytes() for p in root.iterdir()}
    found["README.md"], dated = re.subn(
        rb" on \d{4}-\d{2}-\d{2}\.", b" on DATE.", found["README.md"]
    )
    assert dated == 1
    return found


@pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)
def test_remote_export_of_a_module_writes_the_folder_local_mode_writes(
    run_both: Run,
    sqlite_registry: Registry,
    net_files: NetFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nn.Module folder travels from the server as an archive; the export is the same."""
    run = run_both
    register_module(sqlite_registry, "net", net_files.code, net_files.weights, net_files.sample)
    out = tmp_path / "edge"
    command = ("export", "net:1", "--format", "onnx", "--out", str(out), "--force", "--json")

    local = local_twin(run, monkeypatch, None, *command)
    assert local.code == 0, local.err
    local_files = folder_files(out)
    remote = run(*command)

    assert remote.code == 0, remote.err
    assert remote.out == local.out
    assert folder_files(out) == local_files


# int8, and the graph optimize makes --------------------------------------------------------


def test_int8_export_of_an_mlp_is_the_graph_optimize_registers(
    run: Run, sqlite_registry: Registry, net_files: NetFiles, tmp_path: Path
) -> None:
    files = net_files
    register_module(sqlite_registry, "net", files.code, files.weights, files.sample)
    out = tmp_path / "edge"
    options = ("--quantize", "int8", "--tolerance", "0.1", "--data", str(files.holdout))

    done = run("export", "net:1", "--format", "onnx", "--out", str(out), *options, "--json")

    assert done.code == 0, done.err
    report = json.loads(done.out)
    assert report["quantized"] == "int8"
    assert report["how"].endswith(", opset 17), int8-quantized")
    assert 0.01 < report["check"]["max_value_diff"] <= 0.1
    graph = onnx.load(str(out / "model.onnx"))
    assert "MatMulInteger" in {node.op_type for node in graph.graph.node}
    berth = expected(out)
    assert berth["tolerance"] == 0.1
    answer = runner_answer(out, out / "sample.json", cwd=tmp_path)
    assert_close(answer, berth, 0.1)
    assert not np.array_equal(answer["predictions"], berth["predictions"])  # int8 moved them
    assert own_test(out).returncode == 0

    # optimize makes its ONNX form with the same function: the same bytes, the same detail
    optimized = optimize(
        sqlite_registry, "net:1", quantize="int8", tolerance=0.1, data=files.holdout
    ).version
    assert (out / "model.onnx").read_bytes() == artifact_path(
        sqlite_registry, optimized
    ).read_bytes()
    assert optimized.lineage is not None
    detail = optimized.lineage.detail
    assert (detail["exporter"], detail["opset"]) == (report["exporter"], report["opset"])
    assert detail["quantized_with"] == "onnxruntime"


def test_optimize_exports_a_torchscript_version_and_still_checks_it(
    sqlite_registry: Registry, net_files: NetFiles, tmp_path: Path
) -> None:
    """The exporter runs the network; run with grad enabled, a TorchScript module then failed
    the check that predicts with it under inference_mode (the export runs without grad)."""
    scripted = tmp_path / "scripted.pt"
    shutil.copyfile(net_files.scripted, scripted)
    register(
        sqlite_registry, RegisterRequest(name="scripted", path=scripted, sample=net_files.sample)
    )

    report = optimize(sqlite_registry, "scripted:1")

    assert report.check.passed
    assert report.version.flavor == "onnx"
    assert report.version.lineage is not None
    assert report.version.lineage.detail["opset"] == 17


def test_int8_beyond_its_default_tolerance_is_refused_with_the_measurements(
    sqlite_registry: Registry, net_files: NetFiles, tmp_path: Path
) -> None:
    files = net_files
    register_module(sqlite_registry, "net", files.code, files.weights, files.sample)
    out = tmp_path / "edge"

    with pytest.raises(NotEquivalent) as refused:
        export_edge(
            RegistrySource(sqlite_registry), "net:1", out, quantize="int8", data=files.holdout
        )

    message = refused.value.message
    assert message.startswith("export refused: the int8-quantized ONNX form of net:1")
    assert "max relative prediction difference" in message
    assert "above the tolerance 0.01" in message
    # export judges by the tolerance its shipped test uses, so labelled rows are no way out
    assert message.endswith(
        "Nothing was written; raise --tolerance if that difference is acceptable"
    )
    assert "\n" not in message
    assert refused.value.report.max_value_diff is not None
    assert refused.value.report.max_value_diff > 0.01
    assert not out.exists()


# refusals ----------------------------------------------------------------------------------


def test_a_network_the_exporter_refuses_fails_in_one_line(
    run_both: Run, sqlite_registry: Registry, net_files: NetFiles, tmp_path: Path
) -> None:
    run = run_both
    code = tmp_path / "loggamma.py"
    code.write_text(UNEXPORTABLE)
    torch.save(network_class(code, "LogGamma")().state_dict(), tmp_path / "loggamma.pt")
    register_module(sqlite_registry, "loggamma", code, tmp_path / "loggamma.pt", net_files.sample)
    out = tmp_path / "out"

    done = run("export", "loggamma:1", "--format", "onnx", "--out", str(out))

    assert done.code == 1
    assert done.err.count("\n") == 1, done.err  # one line, no traceback
    assert done.err.startswith("error: torch.onnx.export could not export the network ")
    assert "'aten::lgamma' to ONNX opset version 17 is not supported" in done.err
    assert "nothing was written; serve loggamma:1 with Berth instead" in done.err
    assert "optimize --to torchscript" not in done.err
    assert not out.exists()


def test_a_graph_that_computes_otherwise_is_refused_with_the_measurements(
    sqlite_registry: Registry, net_files: NetFiles, tmp_path: Path
) -> None:
    """Tracing records the example rows' scale as a constant; the served network rescales
    each batch, so the graph differs from it and nothing is written."""
    code = tmp_path / "scaled.py"
    code.write_text(BATCH_SCALED)
    torch.manual_seed(0)
    torch.save(network_class(code, "BatchScaled")().state_dict(), tmp_path / "scaled.pt")
    register_module(sqlite_registry, "scaled", code, tmp_path / "scaled.pt", net_files.sample)
    out = tmp_path / "out"

    with pytest.raises(NotEquivalent) as refused:
        export_edge(RegistrySource(sqlite_registry), "scaled:1", out)

    message = refused.value.message
    assert message.startswith("export refused: the ONNX conversion of scaled:1 differs from it")
    assert "max relative prediction difference" in message
    assert "above the tolerance 0.0001" in message
    assert "worst rows: " in message
    assert message.endswith("Nothing was written; serve scaled:1 with Berth instead")
    assert not out.exists()


# against a real server ---------------------------------------------------------------------


@pytest.mark.server
def test_runner_answers_equal_a_real_berth_server(
    sqlite_registry: Registry, net_files: NetFiles, tmp_path: Path
) -> None:
    files = net_files
    register_module(sqlite_registry, "net", files.code, files.weights, files.sample)
    scripted = tmp_path / "scripted.pt"
    shutil.copyfile(files.scripted, scripted)
    register(sqlite_registry, RegisterRequest(name="scripted", path=scripted, sample=files.sample))
    folders = {
        ref: export_edge(RegistrySource(sqlite_registry), ref, tmp_path / ref[:-2]).folder
        for ref in ("net:1", "scripted:1")
    }
    env = dict(os.environ)  # BERTH_HOME: the registry above

    with serving(env, "net", "scripted", "--dev") as (base, _port):
        import httpx

        for ref, folder in folders.items():
            response = httpx.post(
                f"{base}/api/v1/models/{ref}/batch-predict",
                json={"instances": sample_rows(folder)},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            server = response.json()

            answer = runner_answer(folder, folder / "sample.json", cwd=tmp_path)

            assert_close(answer, server, 1e-4)
            assert expected(folder)["predictions"] == server["predictions"]
