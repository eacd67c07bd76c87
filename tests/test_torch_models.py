"""Deep-learning models end to end: networks trained here, registered as class file + state_dict
through the CLI, optimized into their ONNX, int8, pruned and TorchScript forms, all served by one
real `berth serve` process and called over v1 and the Open Inference Protocol (REST).

A lossless form must answer as its source does, within the tolerance its lineage records; a lossy
one (int8, pruned), checked on labelled rows, must have kept its accuracy within the limit its
lineage records, and give that recorded accuracy when served the same rows.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.testing import assert_allclose

from berth.optimize import speed
from tests.conftest import in_process_cli, isolate, serving

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.torch_networks import Network, accuracy

# torch 2.13 deprecates TorchScript and its ONNX exporter (still supported), which Berth uses.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Array = np.ndarray[Any, Any]

MAX_ACCURACY_DROP = "0.05"
"""The lossy forms' limit: int8 kernels differ between CPUs, so the test leaves some room (what
it checks is that the recorded drop is within the recorded limit, and reproducible)."""

FORMS: dict[int, tuple[str, list[str]]] = {
    2: ("onnx", ["--to", "onnx"]),
    3: ("int8", ["--quantize", "int8", "--max-accuracy-drop", MAX_ACCURACY_DROP]),
    4: ("pruned", ["--prune", "0.3", "--max-accuracy-drop", MAX_ACCURACY_DROP]),
    5: ("torchscript", ["--torchscript"]),
}
"""The versions `models optimize NAME:1 FLAGS` registers, in order; lossy forms get --data."""
LOSSY = ("int8", "pruned")
VERSIONS = [1, *FORMS]


@dataclass(frozen=True)
class Served:
    base: str
    """The server's URL."""
    networks: dict[str, Network]
    shown: dict[str, dict[int, dict[str, Any]]]
    """`models show NAME:VERSION --json` of every version, by network and version."""
    reports: dict[str, dict[int, dict[str, Any]]]
    """`models optimize --json` of every optimized version."""


@pytest.fixture(scope="module")
def networks(trained_mlp: Network, trained_cnn: Network) -> dict[str, Network]:
    return {"mlp": trained_mlp, "cnn": trained_cnn}


def _register_and_optimize(
    folder: Path, networks: dict[str, Network]
) -> tuple[dict[str, dict[int, Any]], dict[str, dict[int, Any]], dict[str, str]]:
    """Every network and its forms registered through the `berth` command (in process); the
    versions as `models show` gives them, the optimize reports, and the environment to serve."""
    out, err = io.StringIO(), io.StringIO()

    def read() -> tuple[str, str]:
        printed = out.getvalue(), err.getvalue()
        for buffer in (out, err):
            buffer.seek(0)
            buffer.truncate()
        return printed

    shown: dict[str, dict[int, Any]] = {}
    reports: dict[str, dict[int, Any]] = {}
    with pytest.MonkeyPatch.context() as patch:
        isolate(patch, folder)
        patch.setattr(speed, "BUDGET_SECONDS", 0.005)  # speed is reported, not asserted here
        run = in_process_cli(patch, read)
        with redirect_stdout(out), redirect_stderr(err):
            for name, network in networks.items():
                registered = run(
                    "models", "register", name, str(network.code),
                    "--weights", str(network.weights), "--sample", str(network.sample),
                )  # fmt: skip
                assert registered.code == 0, registered.err
                reports[name] = {}
                for number, (form, flags) in FORMS.items():
                    data = ["--data", str(network.data)] if form in LOSSY else []
                    done = run("models", "optimize", f"{name}:1", *flags, *data, "--json")
                    assert done.code == 0, f"{name} {form}: {done.err}"
                    reports[name][number] = json.loads(done.out)
                shown[name] = {
                    number: json.loads(run("models", "show", f"{name}:{number}", "--json").out)
                    for number in VERSIONS
                }
        environment = dict(os.environ)
    from berth.cli import context

    context.settings.cache_clear()
    context.registry.cache_clear()
    return shown, reports, environment


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, networks: dict[str, Network]
) -> Iterator[Served]:
    """One server for every version: it serves the networks by name, so NAME:VERSION (v1) and
    /v2/models/NAME/versions/VERSION reach each registered version."""
    shown, reports, environment = _register_and_optimize(tmp_path_factory.mktemp("berth"), networks)
    with serving(environment, *networks, "--dev") as (base, _port):
        yield Served(base, networks, shown, reports)


def _v1(base: str, name: str, version: int, inputs: Array) -> Array:
    answer = httpx.post(
        f"{base}/api/v1/models/{name}:{version}/batch-predict",
        json={"instances": inputs.tolist()},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["model_version"]) == (name, version)
    return np.asarray(body["predictions"], dtype=np.float64)


def _v2(base: str, name: str, version: int, inputs: Array, input_name: str) -> Array:
    request = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(inputs.shape),
                "datatype": "FP32",
                "data": inputs.ravel().tolist(),
            }
        ]
    }
    answer = httpx.post(
        f"{base}/v2/models/{name}/versions/{version}/infer", json=request, timeout=60
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"]) == (name, str(version))
    (output,) = body["outputs"]
    assert output["shape"] == [len(inputs), 3]
    return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


def _answers(served: Served, name: str, version: int) -> dict[str, Array]:
    """The version's answers for the held-out rows, by protocol."""
    network = served.networks[name]
    input_name = served.shown[name][1]["signature"]["inputs"][0]["name"]
    return {
        "v1": _v1(served.base, name, version, network.inputs),
        "v2": _v2(served.base, name, version, network.inputs, input_name),
    }


def _relative(expected: Array, actual: Array) -> float:
    """The largest difference as the check measures it: relative to max(1, |expected|)."""
    return float((np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))).max())


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_networks_learned(networks: dict[str, Network], name: str) -> None:
    network = networks[name]

    assert accuracy(network.scores(network.inputs), network.labels) > 0.9


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_form_is_registered_with_its_lineage(served: Served, name: str) -> None:
    shown = served.shown[name]

    assert [shown[n]["flavor"] for n in VERSIONS] == ["torch", "onnx", "onnx", "torch", "torch"]
    assert shown[1]["lineage"] is None
    for number, (form, _flags) in FORMS.items():
        lineage = shown[number]["lineage"]
        assert lineage["source"] == f"{name}:1", form
        assert shown[number]["signature"] == shown[1]["signature"], form
        assert lineage["check"]["judged_by"] == ("accuracy" if form in LOSSY else "tolerance")
        assert served.reports[name][number]["version"]["version"] == number
    assert shown[2]["lineage"]["opset"] == 17
    assert shown[3]["lineage"]["quantized"] == "int8"
    assert shown[3]["description"] == f"int8-quantized ONNX form of {name}:1"
    pruned = served.reports[name][4]["pruned"]
    assert pruned["amount"] == 0.3
    assert pruned["sparsity"] >= 0.29  # each layer rounds its share of weights to zero
    assert pruned["layers"] == 2
    assert shown[5]["lineage"]["compiled"] == "script"
    int8 = served.reports[name][3]["size"]
    assert int8["optimized_bytes"] < int8["source_bytes"]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_served_source_is_the_trained_network(served: Served, name: str) -> None:
    network = served.networks[name]
    expected = network.scores(network.inputs)

    for protocol, answer in _answers(served, name, 1).items():
        assert_allclose(answer, expected, rtol=1e-5, atol=1e-6, err_msg=protocol)


@pytest.mark.parametrize("version", list(FORMS), ids=[form for form, _ in FORMS.values()])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_served_form_answers_as_its_lineage_says(served: Served, name: str, version: int) -> None:
    form = FORMS[version][0]
    check = served.shown[name][version]["lineage"]["check"]
    labels = served.networks[name].labels
    source = _answers(served, name, 1)["v1"]

    for protocol, answer in _answers(served, name, version).items():
        assert answer.shape == source.shape, protocol
        if form not in LOSSY:
            assert check["tolerance"] <= 1e-4
            assert _relative(source, answer) <= check["tolerance"], protocol
            continue
        # Checked on these very rows (holdout.npz), in one batch as the check ran them.
        assert check["rows"] == len(labels)
        assert check["max_accuracy_drop"] == float(MAX_ACCURACY_DROP)
        assert check["source_accuracy"] - check["optimized_accuracy"] <= check["max_accuracy_drop"]
        assert check["source_accuracy"] == accuracy(source, labels)
        assert accuracy(answer, labels) == check["optimized_accuracy"], protocol
        assert _relative(source, answer) <= check["max_value_diff"] + 1e-6, protocol
        assert accuracy(answer, labels) > 0.85, protocol  # still a working classifier
