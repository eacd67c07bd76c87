"""Optimizing torch networks, piece by piece: the Gemm rewrite that lets int8 quantize Linear
layers, accuracy on labelled rows, pruning, TorchScript sources, the admin API; and every way of
registering or optimizing a network wrongly, each refused in one line that says what to do.

The served, end-to-end view of the same features is tests/test_torch_models.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from berth.optimize import speed
from berth.optimize.equivalence import EquivalenceReport, accuracy
from berth.registry.service import Registry
from berth.registry.signature import infer_from_array
from berth.runtimes.base import Prediction
from berth.runtimes.loading import artifact_path, load_version
from tests.conftest import Run, one_line_error

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from berth.optimize import torch_forms  # noqa: E402  (imports torch)
from berth.optimize.quantize import _gemms_as_matmuls, quantize_int8  # noqa: E402
from berth.runtimes.torch import TorchRuntime  # noqa: E402
from berth.runtimes.torch_module import is_torchscript  # noqa: E402
from tests.torch_networks import (  # noqa: E402
    Network,
    load_class,
    tabular,
    train,
)

# torch 2.13 deprecates TorchScript and its ONNX exporter (still supported), which Berth uses.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Array = np.ndarray[Any, Any]


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """optimize measures speed; a short budget keeps this fast."""
    monkeypatch.setattr(speed, "BUDGET_SECONDS", 0.005)


def _register(run: Run, name: str, network: Network, *extra: str) -> None:
    registered = run(
        "models", "register", name, str(network.code), "--weights", str(network.weights),
        "--sample", str(network.sample), *extra,
    )  # fmt: skip
    assert registered.code == 0, registered.err


def _versions(registry: Registry, name: str) -> list[int]:
    return [v.number for v in registry.get_model(name).versions]


def _run_onnx(graph: bytes, inputs: Array) -> Array:
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs})
    result: Array = output
    return result


def _op_types(graph: bytes) -> list[str]:
    return [node.op_type for node in onnx.load_from_string(graph).graph.node]


def _zeros(weight: Any) -> int:
    return int((weight == 0).sum())


# the Gemm → MatMul + Add rewrite -----------------------------------------------------------


def test_an_exported_mlp_keeps_its_outputs_as_matmuls_and_quantizes(trained_mlp: Network) -> None:
    inputs = trained_mlp.inputs
    example = (torch.from_numpy(inputs[:4]),)
    graph, how = torch_forms.to_onnx(trained_mlp.module, infer_from_array(inputs), example)
    model = onnx.load_from_string(graph)

    rewritten = _gemms_as_matmuls(onnx, model)

    assert how["opset"] == 17
    assert rewritten == 2
    assert _op_types(graph).count("Gemm") == 2
    assert "Gemm" not in _op_types(model.SerializeToString())
    assert _op_types(model.SerializeToString()).count("MatMul") == 2
    used = {name for node in model.graph.node for name in node.input}
    assert all(tensor.name in used for tensor in model.graph.initializer)  # none left behind
    before = _run_onnx(graph, inputs)
    assert_allclose(before, trained_mlp.scores(inputs), rtol=1e-5, atol=1e-5)
    assert_allclose(_run_onnx(model.SerializeToString(), inputs), before, rtol=1e-6, atol=1e-6)

    quantized = quantize_int8(graph)

    assert "MatMulInteger" in _op_types(quantized)
    answers = _run_onnx(quantized, inputs)
    assert answers.shape == before.shape
    assert np.mean(answers.argmax(axis=1) == before.argmax(axis=1)) > 0.95


def test_only_plain_gemms_with_constant_weights_are_rewritten() -> None:
    """transB=0 and no bias are rewritten too; alpha != 1 or weights given as an input are not."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    weights = {
        "w_transposed": rng.normal(size=(4, 3)).astype(np.float32),  # (out, in): transB=1
        "bias": rng.normal(size=(4,)).astype(np.float32),
        "w_plain": rng.normal(size=(4, 5)).astype(np.float32),  # (in, out): transB=0
        "w_scaled": rng.normal(size=(5, 2)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w_transposed", "bias"], ["a"], transB=1),
        helper.make_node("Gemm", ["a", "w_plain"], ["b"]),
        helper.make_node("Gemm", ["b", "w_scaled"], ["c"], alpha=2.0),
        helper.make_node("Gemm", ["c", "w_input"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gemms",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("w_input", onnx.TensorProto.FLOAT, [2, 2]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    original = model.SerializeToString()

    assert _gemms_as_matmuls(onnx, model) == 2

    assert _op_types(model.SerializeToString()) == ["MatMul", "Add", "MatMul", "Gemm", "Gemm"]
    feeds = {
        "x": rng.normal(size=(6, 3)).astype(np.float32),
        "w_input": rng.normal(size=(2, 2)).astype(np.float32),
    }
    outputs = [
        onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for graph in (original, model.SerializeToString())
    ]
    assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)


def test_gemms_sharing_weights_share_one_copy() -> None:
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    weight = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["a"], transB=1),
        helper.make_node("Gemm", ["a", "w"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    original = model.SerializeToString()

    assert _gemms_as_matmuls(onnx, model) == 2

    onnx.checker.check_model(model)  # one definition per name
    assert [tensor.name for tensor in model.graph.initializer] == ["w_matmul"]
    rows = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    assert_allclose(
        _run_onnx(model.SerializeToString(), rows), _run_onnx(original, rows), rtol=1e-5, atol=1e-6
    )


# accuracy on labelled rows -----------------------------------------------------------------


def test_accuracy_of_score_matrices_scores_and_labels() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [3.0, -1.0, 9.0]])
    assert accuracy(Prediction(scores), np.array([1, 0, 1, 2])) == 0.75
    assert accuracy(Prediction(scores), np.array([1.0, 0.0, 2.0, 2.0])) == 1.0  # float labels

    one_score = np.array([0.2, 0.7, 0.5, 0.49], dtype=np.float32)
    assert accuracy(Prediction(one_score), np.array([0, 1, 1, 1])) == 0.75  # 1 from 0.5 up
    assert accuracy(Prediction(one_score[:, None]), np.array([0, 1, 1, 0])) == 1.0

    names = np.array(["cat", "dog", "cat"], dtype=object)
    assert accuracy(Prediction(names), np.array(["cat", "cat", "cat"])) == pytest.approx(2 / 3)
    assert accuracy(Prediction(np.array([1, 2, 0])), np.array([1, 2, 2])) == pytest.approx(2 / 3)


def test_an_accuracy_drop_of_exactly_the_limit_passes() -> None:
    """5 rows of 500 against a one-point limit: 0.952 - 0.942 is 0.010000000000000009 in floats."""
    at_limit = EquivalenceReport(
        500, 0.01, source_accuracy=0.952, optimized_accuracy=0.942, max_accuracy_drop=0.01
    )
    beyond = EquivalenceReport(
        500, 0.01, source_accuracy=0.952, optimized_accuracy=0.940, max_accuracy_drop=0.01
    )

    assert at_limit.passed, at_limit.failures()
    assert not beyond.passed
    assert "1.20% lower, above the allowed 1.00%" in beyond.failures()[0]


# pruning -----------------------------------------------------------------------------------


def test_pruning_zeroes_each_layers_share_and_leaves_no_masks(trained_cnn: Network) -> None:
    module = trained_cnn.module
    before = {key: value.clone() for key, value in module.state_dict().items()}

    pruned = torch_forms.prune(module, 0.3)

    state = pruned.module.state_dict()
    assert set(state) == set(before)  # no weight_orig, weight_mask
    assert not any(key.endswith(("_orig", "_mask")) for key in state)
    layers = [
        m for m in pruned.module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    assert len(layers) == pruned.layers == 2
    for layer in layers:
        assert not layer._forward_pre_hooks  # no pruning hook recomputes the weight
        assert _zeros(layer.weight) >= round(0.3 * layer.weight.numel())
        assert _zeros(layer.bias) == 0  # biases are not pruned
    total = sum(layer.weight.numel() for layer in layers)
    assert pruned.sparsity == pytest.approx(sum(_zeros(m.weight) for m in layers) / total)
    assert pruned.to_dict()["method"] == "l1_unstructured"
    for key, value in module.state_dict().items():  # the source network is left as it was
        assert torch.equal(value, before[key]), key


def test_pruning_reaches_subclasses_of_linear() -> None:
    """nn.MultiheadAttention's out_proj is a Linear subclass; its weights are Linear weights."""

    class Projection(torch.nn.Linear):
        pass

    torch.manual_seed(0)
    network = torch.nn.Sequential(Projection(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    pruned = torch_forms.prune(network, 0.5)

    assert pruned.layers == 2
    assert _zeros(pruned.module[0].weight) == 32


def test_a_network_without_linear_or_conv_layers_cannot_be_pruned() -> None:
    with pytest.raises(torch_forms.TorchConversionError, match="has none"):
        torch_forms.prune(torch.nn.Sequential(torch.nn.ReLU()), 0.3)


def test_a_torchscript_source_is_pruned_as_torchscript_and_exported_to_onnx(
    run: Run, sqlite_registry: Registry, trained_mlp: Network, tmp_path: Path
) -> None:
    scripted = tmp_path / "mlp.pt"
    torch.jit.script(trained_mlp.module).save(str(scripted))
    registered = run("models", "register", "ts", str(scripted), "--sample", str(trained_mlp.sample))
    assert registered.code == 0, registered.err
    inputs = trained_mlp.inputs

    pruned = run(
        "models", "optimize", "ts:1", "--prune", "0.3", "--to", "torch",
        "--data", str(trained_mlp.data), "--max-accuracy-drop", "0.05", "--json",
    )  # fmt: skip
    exported = run("models", "optimize", "ts:1", "--to", "onnx", "--json")
    pruned_exported = run("models", "optimize", "ts:2", "--to", "onnx", "--json")
    refused = run("models", "optimize", "ts:1", "--torchscript", "--quantize", "int8")

    assert pruned.code == 0, pruned.err
    report = json.loads(pruned.out)
    assert report["target"] == "torch"
    assert report["check"]["judged_by"] == "accuracy"
    assert report["pruned"]["layers"] == 2
    source = load_version(sqlite_registry, sqlite_registry.resolve("ts:1"))
    version = sqlite_registry.resolve("ts:2")
    assert version.flavor == "torch"
    assert is_torchscript(artifact_path(sqlite_registry, version))
    runtime = load_version(sqlite_registry, version)
    assert isinstance(runtime, TorchRuntime)
    assert isinstance(source, TorchRuntime)
    assert runtime.scripted
    weights = {n: w for n, w in runtime.module.named_parameters() if n.endswith("weight")}
    assert len(weights) == 2
    for name, weight in weights.items():
        assert _zeros(weight) >= round(0.3 * weight.numel()), name
    assert all(_zeros(w) == 0 for n, w in source.module.named_parameters())  # ts:1 unpruned
    for outcome, number, expected in ((exported, 3, source), (pruned_exported, 4, runtime)):
        assert outcome.code == 0, outcome.err
        onnx_report = json.loads(outcome.out)
        assert onnx_report["version"]["version"] == number
        assert onnx_report["version"]["flavor"] == "onnx"
        assert onnx_report["check"]["max_value_diff"] <= 1e-4
        graph = load_version(sqlite_registry, sqlite_registry.resolve(f"ts:{number}"))
        assert_allclose(
            graph.predict(inputs).predictions,
            expected.predict(inputs).predictions,
            rtol=1e-4,
            atol=1e-5,
        )
    one_line_error(refused, "quantize its ONNX form instead: --to onnx --quantize int8")
    assert _versions(sqlite_registry, "ts") == [1, 2, 3, 4]


def test_an_int8_torchscript_form_quantizes_the_linear_layers(
    run: Run, sqlite_registry: Registry, trained_mlp: Network
) -> None:
    _register(run, "mlp", trained_mlp)

    done = run(
        "models", "optimize", "mlp:1", "--torchscript", "--quantize", "int8",
        "--data", str(trained_mlp.data), "--max-accuracy-drop", "0.05", "--json",
    )  # fmt: skip

    assert done.code == 0, done.err
    report = json.loads(done.out)
    lineage = report["version"]["lineage"]
    assert (lineage["quantized_with"], lineage["compiled"]) == ("torch.ao", "trace")
    check = report["check"]
    assert check["source_accuracy"] - check["optimized_accuracy"] <= 0.05
    version = sqlite_registry.resolve("mlp:2")
    assert is_torchscript(artifact_path(sqlite_registry, version))
    runtime = load_version(sqlite_registry, version)
    assert isinstance(runtime, TorchRuntime)
    names = [m.original_name for m in runtime.module.modules()]
    assert names.count("LinearPackedParams") == 2  # both Linear layers hold int8 weights
    assert "quantized::linear_dynamic" in str(runtime.module.inlined_graph)
    assert list(runtime.module.parameters()) == []  # no float weights left
    assert runtime.predict(trained_mlp.inputs).predictions.shape == (len(trained_mlp.inputs), 3)


# the admin API -----------------------------------------------------------------------------


def test_optimize_a_torch_network_locally_and_through_the_api(
    run_both: Run, trained_mlp: Network
) -> None:
    """In remote mode the command registers by upload and optimizes through
    POST /api/v1/models/mlp:1/optimize: {"to": "torchscript"} as JSON, then with the labelled
    .npz as a multipart body."""
    run = run_both
    _register(run, "mlp", trained_mlp)

    scripted = run("models", "optimize", "mlp:1", "--torchscript", "--json")
    pruned = run(
        "models", "optimize", "mlp:1", "--prune", "0.3", "--data", str(trained_mlp.data),
        "--max-accuracy-drop", "0.05", "--json",
    )  # fmt: skip

    assert scripted.code == 0, scripted.err
    report = json.loads(scripted.out)
    assert report["source_flavor"] == "torch"
    assert report["target"] == "torchscript"
    assert report["version"]["version"] == 2
    assert report["version"]["flavor"] == "torch"
    assert report["version"]["lineage"]["compiled"] == "script"
    assert report["check"]["max_value_diff"] == 0.0
    assert [timing["batch"] for timing in report["speed"]] == [1, 64]
    assert pruned.code == 0, pruned.err
    report = json.loads(pruned.out)
    assert report["target"] == "torch"
    assert report["check"]["data"]["labelled"] is True
    assert report["check"]["data"]["sources"] == {"rows of holdout.npz": len(trained_mlp.labels)}
    assert report["check"]["judged_by"] == "accuracy"
    assert report["pruned"]["amount"] == 0.3
    assert report["version"]["description"] == "pruned (30%) PyTorch form of mlp:1"


# registering networks wrongly ----------------------------------------------------------------

BLOCKS_SOURCE = '''"""A network made of blocks: two nn.Module classes in one file."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x)) + x


class Net(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))
'''

TWIN_SOURCE = (
    BLOCKS_SOURCE
    + '''

class Twin(Net):
    """The same parameters as Net: only the user knows which one the weights are for."""
'''
)


def test_the_class_with_the_state_dicts_parameters_is_picked(
    run: Run, sqlite_registry: Registry, tmp_path: Path
) -> None:
    network = train(tmp_path / "blocks", "blocks", BLOCKS_SOURCE, "Net", tabular, steps=0)

    _register(run, "blocks", network)

    runtime = load_version(sqlite_registry, sqlite_registry.resolve("blocks:1"))
    assert isinstance(runtime, TorchRuntime)
    assert type(runtime.module).__name__ == "Net"
    assert_allclose(runtime.predict(network.inputs).predictions, network.scores(network.inputs))


def test_classes_that_all_fit_the_weights_need_module_class(
    run: Run, sqlite_registry: Registry, tmp_path: Path
) -> None:
    network = train(tmp_path / "twins", "twins", TWIN_SOURCE, "Net", tabular, steps=0)

    ambiguous = run(
        "models", "register", "twins", str(network.code), "--weights", str(network.weights),
        "--sample", str(network.sample),
    )  # fmt: skip
    _register(run, "twins", network, "--module-class", "Twin")

    one_line_error(ambiguous, "defines several nn.Module classes (Block, Net, Twin)")
    assert "name the network's class with --module-class" in ambiguous.err
    runtime = load_version(sqlite_registry, sqlite_registry.resolve("twins:1"))
    assert type(runtime.module).__name__ == "Twin"


def test_registering_a_network_wrongly_is_one_line(
    run: Run, sqlite_registry: Registry, trained_mlp: Network, tmp_path: Path
) -> None:
    code, weights, sample = (
        str(p) for p in (trained_mlp.code, trained_mlp.weights, trained_mlp.sample)
    )
    whole = tmp_path / "whole.pt"
    torch.save(trained_mlp.module, whole)  # the pickled module, not its state_dict
    cases = [
        (
            ["models", "register", "m", weights, "--sample", sample],
            "net.pt is not TorchScript: it looks like a state_dict (or a pickled nn.Module). "
            "Register it with the file that defines the network's class: "
            "berth models register NAME net.py --weights net.pt",
        ),
        (
            ["models", "register", "m", code, "--weights", str(whole), "--sample", sample],
            "whole.pt is not a state_dict that loads safely (it holds Python objects besides "
            "tensors); save the weights with torch.save(model.state_dict(), path)",
        ),
        (
            ["models", "register", "m", code, "--weights", weights, "--sample", sample,
             "--init-args", '{"hidden": 16}'],
            "the weights do not fit MLP from net.py: size mismatch for layers.0.weight",
        ),
        (
            ["models", "register", "m", code, "--weights", weights, "--sample", sample,
             "--init-args", '{"depth": 2}'],
            'MLP() with {"depth": 2} failed (TypeError:',
        ),
        (
            ["models", "register", "m", code, "--weights", weights, "--init-args", "{hidden: 16}"],
            "--init-args is not JSON",
        ),
        (
            ["models", "register", "m", code, "--weights", weights, "--init-args", "[16]"],
            "--init-args must be a JSON object of keyword arguments",
        ),
        (
            ["models", "register", "m", code, "--module-class", "MLP"],
            "--module-class and --init-args describe the nn.Module of --weights; add --weights",
        ),
        (
            ["models", "register", "m", code, "--weights", weights, "--sample", sample,
             "--module-class", "Network"],
            "net.py defines no nn.Module class Network (found: MLP)",
        ),
        (
            ["models", "register", "m", weights, "--weights", weights],
            "the model path is the Python file that defines the network's nn.Module class",
        ),
    ]  # fmt: skip

    for args, fragment in cases:
        one_line_error(run(*args), fragment)

    assert sqlite_registry.list_models() == []


# optimizing wrongly --------------------------------------------------------------------------


def test_optimizing_wrongly_is_one_line(
    run: Run,
    sqlite_registry: Registry,
    trained_mlp: Network,
    iris_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    _register(run, "mlp", trained_mlp)
    assert run("models", "optimize", "mlp:1", "--to", "onnx").code == 0  # mlp:2, ONNX
    iris = run(
        "models", "register", "iris", str(iris_files[0]), "--sample", str(iris_files[1]),
        "--trust-pickle",
    )  # fmt: skip
    assert iris.code == 0, iris.err
    rows, labels = trained_mlp.inputs, trained_mlp.labels
    np.savez(tmp_path / "short.npz", inputs=rows, labels=labels[:-1])
    np.savez(tmp_path / "unnamed.npz", rows=rows)
    prune = ["--prune", "0.3"]
    cases = [
        (["iris:1", *prune], "--prune zeroes the weights of torch networks; iris:1 is not one (flavor sklearn)"),
        (["mlp:1", "--to", "torch"], "--to torch keeps mlp:1's own form, so it needs --prune"),
        (["mlp:2", "--to", "torchscript"], "--to torchscript makes a PyTorch form, and mlp:2 is"),
        (["mlp:1", "--torchscript", "--to", "onnx"], "--torchscript asks for --to torchscript"),
        (["mlp:1", "--to", "keras"], "unknown --to 'keras'; use one of onnx, torchscript, torch"),
        (["mlp:1", "--to", "torch", *prune, "--quantize", "int8"],
         "an int8 network is saved as TorchScript or ONNX"),
        (["mlp:1", "--prune", "1.5"],
         "--prune is the share of each layer's weights to zero, between 0 and 1 (e.g. 0.3), "
         "got 1.5"),
        (["mlp:1", "--prune", "0"], "got 0.0"),
        (["mlp:1", *prune, "--max-accuracy-drop", "2"],
         "--max-accuracy-drop must be a share between 0 and 1 (0.01 is one point), got 2.0"),
        (["mlp:1", *prune, "--data", str(tmp_path / "short.npz")],
         f"--data short.npz has {len(rows)} rows but {len(rows) - 1} labels; give one label "
         "per row"),
        (["mlp:1", *prune, "--data", str(tmp_path / "unnamed.npz")],
         "--data unnamed.npz holds rows; save the rows as 'inputs' (and their labels as "
         "'labels')"),
    ]  # fmt: skip

    for args, fragment in cases:
        one_line_error(run("models", "optimize", *args), fragment)

    assert _versions(sqlite_registry, "mlp") == [1, 2]
    assert _versions(sqlite_registry, "iris") == [1]


SCORES_SOURCE = '''"""Three scores from one Linear layer."""

import torch
from torch import nn


class Scores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
'''


def test_int8_of_a_pruned_form_losing_accuracy_is_refused(
    run: Run, sqlite_registry: Registry, tmp_path: Path
) -> None:
    """One weight of 100 among weights of about 0.01: at int8's one scale per tensor (100/127)
    the small ones round to 0, and the two classes they tell apart become one."""
    network = train(tmp_path / "scores", "scores", SCORES_SOURCE, "Scores", tabular, steps=0)
    weight = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32) * 0.01
    weight[0, 0] = 100.0
    state = {"linear.weight": torch.from_numpy(weight), "linear.bias": torch.zeros(3)}
    torch.save(state, network.weights)
    source = load_class(network.code, "Scores")()
    source.load_state_dict(state)
    with torch.inference_mode():
        labels = source(torch.from_numpy(network.inputs)).argmax(dim=1).numpy()
    np.savez(tmp_path / "labelled.npz", inputs=network.inputs, labels=labels)
    _register(run, "scores", network)
    data = ["--data", str(tmp_path / "labelled.npz")]
    pruned = run(
        "models", "optimize", "scores:1", "--prune", "0.3", *data, "--max-accuracy-drop", "1"
    )
    assert pruned.code == 0, pruned.err

    refused = run(
        "models", "optimize", "scores:2", "--quantize", "int8", *data, "--max-accuracy-drop", "0"
    )

    one_line_error(
        refused, "optimize refused: the int8-quantized ONNX form of scores:2 differs from it"
    )
    assert "lower, above the allowed 0.00%" in refused.err
    assert (
        "Nothing was registered; raise --max-accuracy-drop if that loss is acceptable"
        in refused.err
    )
    assert _versions(sqlite_registry, "scores") == [1, 2]
