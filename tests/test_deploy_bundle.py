"""Baked models: `bake` writes a version's artifact and manifest, `install_bundle` (what
`berth serve --bundle` runs at container start) verifies, registers once and serves it.

On SQLite and PostgreSQL: install into a fresh registry, install again (one version), several
replicas installing at once (one version), a registry that already has other versions, one
tampered byte (refused, nothing registered), a pickle model's trust carried over, predictions
through the app, and a real `berth serve --bundle` process answering the image's HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from berth.api.app import build_services, create_app
from berth.config import Settings
from berth.deploy.bundle import ARTIFACT, MANIFEST, Manifest, bake, install_bundle
from berth.deploy.dockerfile import healthcheck_command
from berth.deploy.source import RegistrySource
from berth.errors import ArtifactIntegrityError, InvalidInput, NotFound
from berth.registration.service import RegisterRequest, register
from berth.registry.artifacts import artifact_sha256
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes.loading import load_version
from tests.conftest import berth, register_churn, register_iris, serving

CHURN_ROW = {"tenure_months": 5, "monthly_charges": 80.5, "plan": "basic", "support_calls": 3}
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def source_registry(tmp_path: Path) -> Registry:
    """The registry `berth build` bakes from (not the one the bundle is installed into)."""
    home = tmp_path / "source"
    return Registry.from_settings(
        Settings(
            home=home,
            database_url=f"sqlite:///{home / 'registry.db'}",
            artifact_url=str(home / "artifacts"),
        )
    )


@pytest.fixture
def churn_bundle(tmp_path: Path, churn_files: tuple[Path, Path, Path]) -> tuple[Path, VersionInfo]:
    source = source_registry(tmp_path)
    version = register_churn(source, churn_files)
    folder = tmp_path / "bundle" / "model"
    bake(RegistrySource(source), version, folder, "churn@production")
    source.db.dispose()
    return folder, version


def test_bake_writes_the_artifact_as_stored_and_a_manifest(
    churn_bundle: tuple[Path, VersionInfo],
) -> None:
    folder, version = churn_bundle
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        f"{ARTIFACT}/{version.artifact.entry}",
        MANIFEST,
    ]
    assert artifact_sha256(folder / ARTIFACT / version.artifact.entry) == version.artifact.sha256
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["model"] == "churn"
    assert manifest["version"] == version.number
    assert manifest["flavor"] == "sklearn"
    assert manifest["sha256"] == version.artifact.sha256
    assert manifest["signature"] == version.signature.to_dict()
    assert manifest["example"] == version.example
    assert manifest["built_from"] == "churn@production"


def test_install_registers_once_and_the_app_serves_it(
    registry: Registry, settings: Settings, churn_bundle: tuple[Path, VersionInfo]
) -> None:
    folder, source = churn_bundle
    ref = install_bundle(registry, folder)
    assert ref == "churn:1"
    assert install_bundle(registry, folder) == ref  # a restart, or a second replica
    (version,) = registry.get_model("churn").versions
    assert version.artifact.sha256 == source.artifact.sha256
    assert version.flavor == source.flavor
    assert version.signature == source.signature
    assert version.example == source.example  # kept for warm-up
    assert version.tags["bundle"] == "churn:1"
    assert version.aliases == ()  # a bundle never moves the aliases of a shared registry
    served = settings.model_copy(update={"served": [ref], "dev": True})
    app = create_app(served, build_services(served, registry))
    with TestClient(app) as client:
        response = client.post(f"/api/v1/models/{ref}/predict", json={"features": CHURN_ROW})
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == 1
        assert response.json()["prediction"] in (0, 1)
        assert client.get("/ready").json()["models"] == [ref]


def test_a_registry_with_other_versions_gets_the_next_number_once(
    registry: Registry, churn_bundle: tuple[Path, VersionInfo], iris_files: tuple[Path, Path]
) -> None:
    folder, _ = churn_bundle
    model, sample = iris_files
    # churn:1 exists already, with other bytes (the iris model registered under that name)
    register(registry, RegisterRequest(name="churn", path=model, sample=sample, trust_pickle=True))
    assert install_bundle(registry, folder) == "churn:2"
    assert install_bundle(registry, folder) == "churn:2"
    assert [v.number for v in registry.get_model("churn").versions] == [1, 2]


def test_replicas_starting_together_register_it_once(
    registry: Registry, settings: Settings, churn_bundle: tuple[Path, VersionInfo]
) -> None:
    folder, _ = churn_bundle
    url = str(registry.db.engine.url.render_as_string(hide_password=False))
    homes = [settings.home / f"replica-{i}" for i in range(4)]

    # Each replica: a registry handle of its own (its own connections) and its own local
    # artifact store. Opened one by one: Alembic's migration context is per process, as
    # replicas are; the installs then race.
    replicas = [
        Registry.from_settings(
            settings.model_copy(update={"home": home, "database_url": url, "artifact_url": None})
        )
        for home in homes
    ]
    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            refs = list(pool.map(lambda own: install_bundle(own, folder), replicas))
    finally:
        for own in replicas:
            own.db.dispose()
    assert refs == ["churn:1"] * len(homes)
    assert len(registry.get_model("churn").versions) == 1
    # every replica can load it from its own store, whichever of them registered it
    version = registry.resolve("churn:1")
    for home in homes:
        assert (home / "artifacts" / "sha256" / version.artifact.sha256).is_dir()


def test_a_tampered_bundle_is_refused_and_nothing_is_registered(
    registry: Registry, churn_bundle: tuple[Path, VersionInfo]
) -> None:
    folder, version = churn_bundle
    artifact = folder / ARTIFACT / version.artifact.entry
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="fails its sha256 check") as refused:
        install_bundle(registry, folder)
    assert version.artifact.sha256 in refused.value.message
    assert registry.list_models() == []


def test_a_folder_without_manifest_or_of_another_format_is_refused(
    registry: Registry, churn_bundle: tuple[Path, VersionInfo], tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="not a model bundle"):
        install_bundle(registry, tmp_path / "empty")
    folder, _ = churn_bundle
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(InvalidInput, match="bundle format 99"):
        install_bundle(registry, folder)


def test_a_pickle_models_trust_travels_with_its_verified_bytes(
    registry: Registry, tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    source = source_registry(tmp_path)
    version = register_iris(source, iris_files)
    assert version.pickle_trusted
    folder = tmp_path / "model"
    manifest = bake(RegistrySource(source), version, folder, "iris:1")
    source.db.dispose()
    assert Manifest.read(folder) == manifest
    # The manifest cannot vouch for itself: the operator's --trust-pickle must.
    with pytest.raises(InvalidInput, match="--trust-pickle"):
        install_bundle(registry, folder)
    with pytest.raises(NotFound):
        registry.get_model("iris")
    ref = install_bundle(registry, folder, trust_pickle=True)
    installed = registry.resolve(ref)
    assert installed.pickle_trusted
    assert installed.example == version.example  # tensor examples survive as .npy
    prediction = load_version(registry, installed).predict(np.array([IRIS_ROW], dtype=np.float32))
    assert list(prediction.predictions) == [0]


def test_berth_serve_bundle_serves_it_and_answers_the_healthcheck(
    tmp_path: Path, churn_bundle: tuple[Path, VersionInfo]
) -> None:
    folder, _ = churn_bundle
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(tmp_path / "server-home")
    with serving(env, "--bundle", str(folder), "--dev") as (base, port):
        response = httpx.post(f"{base}/api/v1/models/churn:1/predict", json={"features": CHURN_ROW})
        assert response.status_code == 200, response.text
        health = subprocess.run(
            [sys.executable, *healthcheck_command(port)[1:]], capture_output=True, timeout=30
        )
        assert health.returncode == 0, health.stderr
    home = Path(env["BERTH_HOME"])
    registry = Registry.from_settings(
        Settings(home=home, database_url=f"sqlite:///{home / 'registry.db'}")
    )
    assert [v.ref for v in registry.get_model("churn").versions] == ["churn:1"]
    registry.db.dispose()
    # the image's command refuses a bundle whose bytes changed, before serving anything
    artifact = next((folder / ARTIFACT).iterdir())
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    refused = berth(env, "serve", "--bundle", str(folder), "--port", "1")
    assert refused.returncode == 1
    assert "fails its sha256 check" in refused.stderr
