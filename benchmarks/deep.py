"""Deep-learning networks in each optimized form: size, latency and how far the answers move.

Two networks are trained here on generated data (a few seconds each on CPU):
- an MLP on tabular rows: 32 float features, 3 classes, two hidden layers of 256;
- a CNN on 1x28x28 images of bars and blobs: two 3x3 convolutions (16 and 32 channels), a
  64-unit layer, 3 classes.
Each is registered as its class file plus state_dict, then `berth.optimize.service.optimize`
(what `berth models optimize` runs) makes every form, checked on 2,000 labelled rows: ONNX,
int8 (ONNX, onnxruntime dynamic quantization), int8 (TorchScript, torch.ao), pruned 30% (the
network's own form) and TorchScript. For the source and every form the table gives the
artifact's size, the p50 latency of one in-process `predict` call at batch 1 and 64 (the
runtime a server loads, so no HTTP in the figure), the largest absolute difference of its
scores from the source's on 2,000 held-out rows, and its accuracy on them.

Usage: .venv/bin/python benchmarks/deep.py   (make bench-deep; env SECONDS_PER_CASE=1.0)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from berth.config import Settings
from berth.optimize.service import optimize
from berth.registration.service import RegisterRequest, register
from berth.registration.torch_folder import torch_module_folder
from berth.registry.service import Registry
from berth.runtimes.base import Runtime
from berth.runtimes.loading import load_version

SECONDS_PER_CASE = float(os.environ.get("SECONDS_PER_CASE", "1.0"))
HELD_OUT = 2_000
CHECK_ROWS = 2_000
BATCHES = (1, 64)

NETWORKS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Mlp(nn.Module):
        def __init__(self, features: int = 32, hidden: int = 256, classes: int = 3) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(features, hidden), nn.ReLU(),
                nn.Linear(hidden, hidden), nn.ReLU(),
                nn.Linear(hidden, classes),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.layers(x), dim=1)


    class Cnn(nn.Module):
        def __init__(self, classes: int = 3) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, classes)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.head(self.features(x)), dim=1)
    """
)

FORMS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ONNX", {"to": "onnx"}),
    ("int8 (ONNX)", {"to": "onnx", "quantize": "int8"}),
    ("int8 (TorchScript)", {"to": "torchscript", "quantize": "int8"}),
    ("pruned 30%", {"prune": 0.3}),
    ("TorchScript", {"to": "torchscript"}),
)

Array = np.ndarray[Any, Any]


CENTERS = np.random.default_rng(42).normal(scale=0.5, size=(3, 32))
"""The class centers of the tabular rows: one set for training, check and held-out rows."""


def tabular(rows: int, rng: np.random.Generator) -> tuple[Array, Array]:
    labels = rng.integers(0, 3, rows)
    return (CENTERS[labels] + rng.normal(size=(rows, 32))).astype(np.float32), labels


def images(rows: int, rng: np.random.Generator) -> tuple[Array, Array]:
    """Horizontal bars, vertical bars or a blob, at random places, in noise."""
    labels = rng.integers(0, 3, rows)
    x = rng.normal(scale=0.3, size=(rows, 1, 28, 28)).astype(np.float32)
    for i, label in enumerate(labels):
        at = rng.integers(4, 24)
        if label == 0:
            x[i, 0, at - 1 : at + 2, :] += 1.0
        elif label == 1:
            x[i, 0, :, at - 1 : at + 2] += 1.0
        else:
            x[i, 0, at - 4 : at + 4, at - 4 : at + 4] += 1.0
    return x, labels


def train(module: nn.Module, x: Array, y: Array, epochs: int) -> nn.Module:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    module.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(128):
            optimizer.zero_grad()
            scores = module(inputs[batch])
            loss = nn.functional.nll_loss(torch.log(scores + 1e-9), targets[batch])
            loss.backward()
            optimizer.step()
    return module.eval()


def p50_ms(runtime: Runtime, batch: Array) -> float:
    for _ in range(5):
        runtime.predict(batch)
    durations = []
    deadline = time.perf_counter() + SECONDS_PER_CASE
    while len(durations) < 20 or time.perf_counter() < deadline:
        started = time.perf_counter()
        runtime.predict(batch)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1000


def scores(runtime: Runtime, x: Array) -> Array:
    return np.asarray(runtime.predict(x).predictions, dtype=np.float64)


def measure(
    registry: Registry,
    name: str,
    make: Callable[[], nn.Module],
    data: Callable[[int, np.random.Generator], tuple[Array, Array]],
    epochs: int,
    folder: Path,
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    x, y = data(4_000, rng)
    started = time.perf_counter()
    network = train(make(), x, y, epochs)
    trained_s = time.perf_counter() - started
    code, weights, sample = folder / "networks.py", folder / f"{name}.pt", folder / f"{name}.npy"
    torch.save(network.state_dict(), weights)
    np.save(sample, x[:8])
    check, held_out = folder / f"{name}-check.npz", data(HELD_OUT, np.random.default_rng(1))
    check_x, check_y = data(CHECK_ROWS, np.random.default_rng(2))
    np.savez(check, inputs=check_x, labels=check_y)
    with torch_module_folder(code, weights, module_class=make().__class__.__name__) as bundle:
        source = register(registry, RegisterRequest(name=name, path=bundle, sample=sample))
    versions = [("source (nn.Module)", source, None)]
    for label, options in FORMS:
        report = optimize(registry, source.ref, data=check, **options)
        versions.append((label, report.version, report))
    source_scores = scores(load_version(registry, source), held_out[0])
    rows = []
    for label, version, report in versions:
        runtime = load_version(registry, version)
        answers = scores(runtime, held_out[0])
        rows.append(
            {
                "network": name,
                "form": label,
                "version": version.ref,
                "flavor": version.flavor,
                "size_bytes": version.artifact.size_bytes,
                **{f"p50_ms_batch_{b}": p50_ms(runtime, held_out[0][:b]) for b in BATCHES},
                "max_abs_diff": float(np.abs(answers - source_scores).max()),
                "accuracy": float(np.mean(answers.argmax(axis=1) == held_out[1])),
                "check": None if report is None else report.check.judged_by,
                "trained_s": round(trained_s, 1) if report is None else None,
            }
        )
    return rows


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="berth-bench-deep-") as work:
        folder = Path(work)
        (folder / "networks.py").write_text(NETWORKS)
        sys.path.insert(0, str(folder))
        import networks  # type: ignore[import-not-found]

        registry = Registry.from_settings(Settings(home=folder / "home"))
        rows = measure(registry, "mlp", networks.Mlp, tabular, 5, folder)
        rows += measure(registry, "cnn", networks.Cnn, images, 3, folder)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; p50 of in-process "
          f"predict calls over {SECONDS_PER_CASE:g} s per case; {HELD_OUT} held-out rows")  # fmt: skip
    header = (
        f"{'network':8}{'form':22}{'flavor':7}{'size':>11}{'p50 b=1':>10}{'p50 b=64':>10}"
        f"{'max |diff|':>12}{'accuracy':>10}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['network']:8}{row['form']:22}{row['flavor']:7}"
            f"{row['size_bytes'] / 1024:>8.1f} KiB"
            f"{row['p50_ms_batch_1']:>8.3f}ms{row['p50_ms_batch_64']:>8.3f}ms"
            f"{row['max_abs_diff']:>12.2e}{row['accuracy']:>10.2%}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
