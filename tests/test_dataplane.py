"""The dataplane: predictions off the event loop, loads that never block loaded versions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from berth.config import Settings
from berth.errors import NotFound
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.serving.dataplane import DataPlane, Decoder

GATED_MODEL = """
import time
from pathlib import Path


class Model:
    def load(self, path):
        self.gate = Path((Path(path) / "gate.txt").read_text().strip())
        self.offset = float((Path(path) / "offset.txt").read_text())
        if (Path(path) / "slow_load").exists():
            self._wait()

    def _wait(self):
        for _ in range(2000):
            if self.gate.exists():
                return
            time.sleep(0.005)
        raise TimeoutError("gate never opened")

    def predict(self, inputs):
        if inputs[0][0] < 0:
            self._wait()
        return inputs.sum(axis=1) + self.offset
"""


def _gated_model(folder: Path, gate: Path, offset: float, slow_load: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(GATED_MODEL)
    (folder / "gate.txt").write_text(str(gate))
    (folder / "offset.txt").write_text(str(offset))
    if slow_load:
        (folder / "slow_load").write_text("")
    return folder


@pytest.fixture
def gated(sqlite_registry: Registry, tmp_path: Path) -> tuple[Registry, Path]:
    """Model `gated`: v1 (offset 0) at production, v2 (offset 100) whose load waits for the gate."""
    sample = tmp_path / "sample.npy"
    np.save(sample, np.ones((2, 3), dtype=np.float64))
    gate = tmp_path / "gate"
    for number, (offset, slow) in enumerate([(0.0, False), (100.0, True)], start=1):
        folder = _gated_model(tmp_path / f"v{number}", gate, offset, slow)
        gate.touch()  # registration loads the model once: let it through
        register(
            sqlite_registry,
            RegisterRequest(
                name="gated",
                path=folder,
                sample=sample,
                aliases=("production",) if number == 1 else (),
            ),
        )
        gate.unlink()
    return sqlite_registry, gate


def _rows(value: float) -> Decoder:
    return lambda _signature: np.full((1, 3), value)


def test_slow_prediction_does_not_stall_others(gated: tuple[Registry, Path]) -> None:
    registry, gate = gated

    async def scenario() -> list[float]:
        dataplane = DataPlane(registry, ["gated@production"])
        await dataplane.start()
        slow = asyncio.create_task(dataplane.predict("gated", _rows(-1.0)))
        await asyncio.sleep(0.05)
        fast = [await asyncio.wait_for(dataplane.predict("gated", _rows(1.0)), 5) for _ in range(3)]
        assert not slow.done()
        gate.touch()
        await asyncio.wait_for(slow, 10)
        await dataplane.stop()
        return [float(r.prediction.predictions[0]) for r in fast]

    assert asyncio.run(scenario()) == [3.0, 3.0, 3.0]


def test_loading_a_new_version_never_blocks_the_loaded_one(gated: tuple[Registry, Path]) -> None:
    registry, gate = gated

    async def scenario() -> tuple[list[int], int]:
        dataplane = DataPlane(registry, ["gated@production"])
        await dataplane.start()
        registry.set_alias("gated", "production", 2)
        refresh = asyncio.create_task(dataplane.refresh())
        await asyncio.sleep(0.05)
        during = [
            (
                await asyncio.wait_for(dataplane.predict("gated@production", _rows(1.0)), 5)
            ).version.number
            for _ in range(3)
        ]
        assert not refresh.done()
        gate.touch()
        await asyncio.wait_for(refresh, 10)
        after = await dataplane.predict("gated@production", _rows(1.0))
        await dataplane.stop()
        assert float(after.prediction.predictions[0]) == 103.0
        return during, after.version.number

    during, after = asyncio.run(scenario())
    assert during == [1, 1, 1]
    assert after == 2


def test_models_not_served_are_not_found(gated: tuple[Registry, Path]) -> None:
    registry, _gate = gated
    dataplane = DataPlane(registry, ["gated@production"])
    with pytest.raises(NotFound, match="not served here"):
        asyncio.run(dataplane.predict("other", _rows(1.0)))


def test_ready_is_503_until_models_are_loaded(
    settings: Settings, gated: tuple[Registry, Path]
) -> None:
    from berth.api.app import build_services, create_app

    registry, _gate = gated
    app = create_app(settings, build_services(settings, registry))
    not_started = TestClient(app)  # no lifespan: nothing loaded yet
    assert not_started.get("/ready").status_code == 503
    assert not_started.get("/v2/health/ready").status_code == 503
    with TestClient(app) as started:
        assert started.get("/ready").json() == {"status": "ready", "models": ["gated:1"]}


def test_a_refresh_re_resolves_only_when_the_models_revision_moved(
    sqlite_registry: Registry, iris_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One query a refresh while nothing changed; every served reference resolved again after
    a version, alias or twin change; and every FULL_REFRESH_SECONDS regardless."""
    from berth.serving import dataplane as dataplane_module
    from tests.conftest import register_iris

    registry = sqlite_registry
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files)
    resolved: list[str] = []
    resolve = registry.resolve

    def counting(reference: object) -> object:
        resolved.append(str(reference))
        return resolve(reference)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "resolve", counting)

    async def scenario() -> list[tuple[int, int]]:
        served = DataPlane(registry, ["iris@production", "iris"])
        await served.start()
        seen = []
        try:
            await served.refresh()  # the first always reads everything
            resolved.clear()
            for _ in range(3):
                await served.refresh()
            seen.append((len(resolved), (await served.version("iris@production")).number))
            registry.set_alias("iris", "production", 2)
            await served.refresh()
            seen.append((len(resolved), (await served.version("iris@production")).number))
            resolved.clear()
            served._full_refresh_at = 0.0  # FULL_REFRESH_SECONDS have passed
            await served.refresh()  # the fallback, nothing having changed
            await served.refresh()  # and then not again for FULL_REFRESH_SECONDS
            seen.append((len(resolved), (await served.version("iris@production")).number))
        finally:
            await served.stop()
        return seen

    # Nothing resolved while nothing moved; both references after the alias moved; both once
    # more at the fallback.
    assert dataplane_module.FULL_REFRESH_SECONDS >= 10
    assert asyncio.run(scenario()) == [(0, 1), (2, 2), (2, 2)]
