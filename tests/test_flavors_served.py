"""Every flavor end to end: registered from a model trained here, served over v1 and v2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from starlette.testclient import TestClient

from berth.config import Settings
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry

FEATURES, TARGET = load_iris(return_X_y=True)
ROWS = FEATURES[[0, 60, 120]].astype(np.float32)
EXPECTED = [0, 1, 2]


def _onnx(folder: Path) -> Path:
    from skl2onnx import to_onnx

    model = LogisticRegression(max_iter=1000).fit(FEATURES.astype(np.float32), TARGET)
    path = folder / "iris.onnx"
    path.write_bytes(to_onnx(model, FEATURES[:1].astype(np.float32)).SerializeToString())
    return path


def _torch(folder: Path) -> Path:
    import torch

    class Argmax(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            model = LogisticRegression(max_iter=1000).fit(FEATURES, TARGET)
            self.weight = torch.nn.Parameter(torch.tensor(model.coef_, dtype=torch.float32))
            self.bias = torch.nn.Parameter(torch.tensor(model.intercept_, dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.argmax(x @ self.weight.T + self.bias, dim=1)

    path = folder / "iris.pt"
    torch.jit.script(Argmax()).save(str(path))  # type: ignore[no-untyped-call]
    return path


def _python(folder: Path) -> Path:
    model = LogisticRegression(max_iter=1000).fit(FEATURES, TARGET)
    np.save(folder / "weights.npy", np.vstack([model.coef_.T, model.intercept_]))
    (folder / "model.py").write_text(
        "import numpy as np\n"
        "class Iris:\n"
        "    def load(self, path):\n"
        "        self.weights = np.load(f'{path}/weights.npy')\n"
        "    def predict(self, inputs):\n"
        "        return np.argmax(inputs @ self.weights[:-1] + self.weights[-1], axis=1)\n"
    )
    return folder


def _sklearn(folder: Path) -> Path:
    import skops.io

    path = folder / "iris.skops"
    skops.io.dump(LogisticRegression(max_iter=1000).fit(FEATURES, TARGET), path)
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "sklearn": _sklearn,
    "onnx": _onnx,
    "python": _python,
    "torch": _torch,
}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("flavor", list(BUILDERS))
def test_flavor_registers_and_serves(flavor: str, settings: Settings, tmp_path: Path) -> None:
    from berth.api.app import build_services, create_app

    folder = tmp_path / flavor
    folder.mkdir()
    artifact = BUILDERS[flavor](folder)
    sample = tmp_path / "sample.npy"
    np.save(sample, FEATURES[:10].astype(np.float32))
    registry = Registry.from_settings(settings)
    # ONNX declares its own signature; the others infer it from the sample.
    version = register(
        registry,
        RegisterRequest(
            name="iris",
            path=artifact,
            sample=None if flavor == "onnx" else sample,
            aliases=("production",),
        ),
    )
    assert version.flavor == flavor
    app = create_app(
        settings.model_copy(update={"dev": True}),
        build_services(settings.model_copy(update={"dev": True}), registry),
    )
    with TestClient(app) as client:
        v1 = client.post("/api/v1/models/iris/batch-predict", json={"instances": ROWS.tolist()})
        assert v1.status_code == 200, v1.text
        assert v1.json()["predictions"] == EXPECTED
        body = {
            "inputs": [
                {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": ROWS.ravel().tolist()}
            ]
        }
        v2 = client.post("/v2/models/iris/infer", json=body)
        assert v2.status_code == 200, v2.text
        assert v2.json()["outputs"][0]["data"] == EXPECTED
        wrong = client.post("/api/v1/models/iris/predict", json={"features": [1.0, 2.0]})
        assert wrong.status_code == 400
    registry.db.dispose()
