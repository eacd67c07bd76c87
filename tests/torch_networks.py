"""Small PyTorch networks the tests train and register as users do: the Python file defining the
nn.Module class (written here from its source), the state_dict, a sample batch and a labelled
held-out set (.npz with `inputs` and `labels`).

- `MLP_SOURCE`: a multilayer perceptron on rows of 8 float32 features drawn around 3 centres;
- `CNN_SOURCE`: Conv2d → ReLU → max pool → Linear on 1x16x16 images of a horizontal bar, a
  vertical bar or a blob, in noise.

Training takes about a second each on one CPU thread (a few hundred Adam steps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from berth.runtimes.user_code import import_file

Array = np.ndarray[Any, Any]
Generator = Callable[[int, int], tuple[Array, Array]]

MLP_SOURCE = '''"""A classifier of tabular rows."""

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
'''

CNN_SOURCE = '''"""A classifier of 1x16x16 images."""

import torch
from torch import nn


class CNN(nn.Module):
    def __init__(self, channels: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.head = nn.Linear(channels * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))
'''

_CENTRES = np.random.default_rng(1234).normal(size=(3, 8))


def tabular(rows: int, seed: int) -> tuple[Array, Array]:
    """Rows of 8 float32 features around one of 3 centres, and the centre's index."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, rows)
    inputs = (_CENTRES[labels] + rng.normal(size=(rows, 8))).astype(np.float32)
    return inputs, labels


def images(rows: int, seed: int) -> tuple[Array, Array]:
    """1x16x16 float32 images in noise: a horizontal bar (0), a vertical bar (1), a blob (2)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, rows)
    inputs = rng.normal(0, 0.5, size=(rows, 1, 16, 16)).astype(np.float32)
    for image, label in zip(inputs, labels, strict=True):
        at = int(rng.integers(2, 14))
        if label == 0:
            image[0, at - 1 : at + 1, :] += 1.0
        elif label == 1:
            image[0, :, at - 1 : at + 1] += 1.0
        else:
            row, column = rng.integers(4, 12, 2)
            image[0, row - 2 : row + 2, column - 2 : column + 2] += 1.5
    return inputs, labels


@dataclass(frozen=True)
class Network:
    """A trained network and the files registration takes."""

    name: str
    module: nn.Module
    """The trained network (from the class file), in eval mode."""
    code: Path
    """net.py: the class file."""
    weights: Path
    """net.pt: torch.save(module.state_dict(), path)."""
    sample: Path
    """sample.npy: a batch of inputs, for the signature."""
    inputs: Array
    """Held-out inputs (not trained on)."""
    labels: Array
    data: Path
    """holdout.npz: the held-out inputs and labels, as --data takes them."""

    def scores(self, inputs: Array) -> Array:
        """What the trained network computes for `inputs` (one score per class)."""
        with torch.inference_mode():
            output: Array = self.module(torch.from_numpy(inputs)).numpy()
        return output


def accuracy(scores: Array, labels: Array) -> float:
    """The share of rows whose highest score is their label's."""
    return float(np.mean(np.asarray(scores).argmax(axis=1) == labels))


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny networks train several times faster on one thread than on two contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_class(code: Path, class_name: str) -> type[nn.Module]:
    """The class `code` defines, imported as Berth imports it."""
    cls: type[nn.Module] = getattr(import_file(code), class_name)
    return cls


def train(
    folder: Path,
    name: str,
    source: str,
    class_name: str,
    generate: Generator,
    *,
    steps: int = 300,
    holdout: int = 300,
) -> Network:
    """Write the class file, train the class on generated rows, save the weights and the data."""
    folder.mkdir(parents=True, exist_ok=True)
    code = folder / "net.py"
    code.write_text(source)
    torch.manual_seed(0)
    module = load_class(code, class_name)()
    inputs, labels = generate(2000, 1)
    features, targets = torch.from_numpy(inputs), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    with one_thread():
        for _ in range(steps):
            batch = torch.randint(0, len(features), (64,))
            loss = nn.functional.cross_entropy(module(features[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()
    torch.save(module.state_dict(), folder / "net.pt")
    np.save(folder / "sample.npy", inputs[:20])
    held_out, held_labels = generate(holdout, 2)
    np.savez(folder / "holdout.npz", inputs=held_out, labels=held_labels)
    return Network(
        name=name,
        module=module,
        code=code,
        weights=folder / "net.pt",
        sample=folder / "sample.npy",
        inputs=held_out,
        labels=held_labels,
        data=folder / "holdout.npz",
    )


def mlp(folder: Path) -> Network:
    return train(folder, "mlp", MLP_SOURCE, "MLP", tabular)


def cnn(folder: Path) -> Network:
    return train(folder, "cnn", CNN_SOURCE, "CNN", images)
