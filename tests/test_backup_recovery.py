"""Disaster recovery end to end: a PostgreSQL registry in use (three models, aliases, endpoints,
a finished rollout, keys, feedback) is backed up, encrypted, to three destinations at once; each
is restored into SQLite and into PostgreSQL, and each restored registry shows and serves exactly
what the source did, with the API keys made before the backup still accepted by a real server."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import insert

from berth.config import Settings
from berth.monitoring.feedback import store_feedback
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.security.auth import Principal
from berth.store.tables import PredictionRow
from tests.conftest import Run, postgres_schema, register_churn, register_iris, serving
from tests.storage_servers import ObjectStore
from tests.test_registry import DIRECTORY_MODEL

ROWS = {
    "iris@production": {"features": [5.1, 3.5, 1.4, 0.2]},
    "iris:2": {"features": [6.7, 3.0, 5.2, 2.3]},
    "flowers": {"features": [5.9, 3.0, 4.2, 1.5]},
    "scaled@production": {"features": [1.0, 2.0, 3.0]},
}
ADMIN = Principal(name="admin", scopes=("admin",))


def _registry_in_use(
    settings: Settings,
    database_url: str,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
) -> str:
    """Fill the registry at `database_url`; the secret of a `predict` key made on it."""
    folder = tmp_path / "scaled"
    folder.mkdir()
    (folder / "model.py").write_text(DIRECTORY_MODEL)
    (folder / "weights.txt").write_text("1\n10\n100\n")
    sample = tmp_path / "scaled-sample.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0]]))
    found = Registry.from_settings(settings.model_copy(update={"database_url": database_url}))
    try:
        register_iris(found, iris_files, aliases=("production",))
        register_iris(found, iris_files, aliases=("staging",))
        register_churn(found, churn_files)
        register(
            found,
            RegisterRequest(name="scaled", path=folder, sample=sample, aliases=("production",)),
        )
        _feedback(found)
    finally:
        found.db.dispose()
    assert run("endpoints", "create", "flowers", "--model", "iris:1").code == 0
    started = run("rollout", "start", "flowers", "--to", "iris:2", "--steps", "50,100")
    assert started.code == 0, started.err
    promoted = run("rollout", "promote", "flowers")
    assert promoted.code == 0, promoted.err
    created = run("keys", "create", "web", "--scope", "predict")
    assert created.code == 0, created.err
    return created.out.strip().splitlines()[-1]


def _feedback(found: Registry) -> None:
    """Logged predictions of churn with ground truth for some of them."""
    now = datetime.now(UTC)
    with found.db.session() as session:
        session.execute(
            insert(PredictionRow),
            [
                {
                    "id": f"p{i}",
                    "model": "churn",
                    "version": 1,
                    "endpoint": "",
                    "created_at": now,
                    "prediction": i % 2,
                    "score": 0.1 + i / 10,
                    "latency_ms": 1.0,
                }
                for i in range(8)
            ],
        )
    assert store_feedback(found.db, {f"p{i}": int(i < 4) for i in range(6)}, ADMIN) == (6, [])


def _shown(run: Run) -> dict[str, Any]:
    """Everything the CLI shows about the registry, as the operator would compare it."""
    shown: dict[str, Any] = {}
    for model in ("iris", "churn", "scaled"):
        outcome = run("models", "show", model)
        assert outcome.code == 0, outcome.err
        shown[f"models show {model}"] = outcome.out
    for command in (
        ("models", "list", "--json"),
        ("endpoints", "show", "flowers", "--json"),
        ("rollout", "list", "--json"),
        ("feedback", "performance", "churn", "--json"),
    ):
        outcome = run(*command)
        assert outcome.code == 0, outcome.err
        shown[" ".join(command)] = json.loads(outcome.out)
    keys = run("keys", "list")
    assert keys.code == 0, keys.err
    shown["keys list"] = keys.out
    return shown


def _served(env: dict[str, str], key: str) -> dict[str, Any]:
    """What a real `berth serve` on the registry of `env` answers the key (bodies, ids out)."""
    answers: dict[str, Any] = {}
    with serving(env, "--workers", "1") as (base, _port):
        for reference, body in ROWS.items():
            route = "endpoints" if reference == "flowers" else "models"
            response = httpx.post(
                f"{base}/api/v1/{route}/{reference}/predict",
                json=body,
                headers={"X-API-Key": key},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            answer.pop("prediction_id", None)
            answers[reference] = answer
        refused = httpx.post(
            f"{base}/api/v1/models/iris@production/predict",
            json=ROWS["iris@production"],
            headers={"X-API-Key": "berth_unknown_key"},
            timeout=30,
        )
        assert refused.status_code == 401
    return answers


def _environment(home: Path, database_url: str, artifacts: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(
        BERTH_HOME=str(home),
        BERTH_DATABASE_URL=database_url,
        BERTH_ARTIFACT_URL=artifacts,
        BERTH_SERVED=json.dumps(["iris@production", "iris:2", "scaled@production"]),
    )
    return env


@pytest.fixture
def three_destinations(
    s3_store: ObjectStore, azure_store: ObjectStore, gcs_store: ObjectStore
) -> dict[str, str]:
    """S3 (SeaweedFS), Azure Blob (Azurite) and GCS (fake-gcs-server), on loopback."""
    return {store.scheme: store.url("berth") for store in (s3_store, azure_store, gcs_store)}


def test_a_registry_in_use_restored_from_each_of_three_destinations_into_sqlite_and_postgres(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    run: Run,
    tmp_path: Path,
    three_destinations: dict[str, str],
) -> None:
    monkeypatch.setenv("BERTH_DATABASE_URL", postgres_url)
    api_key = _registry_in_use(settings, postgres_url, iris_files, churn_files, run, tmp_path)
    source_env = _environment(settings.home, postgres_url, str(settings.resolved_artifact_url))
    served = _served(source_env, api_key)
    before = _shown(run)  # after serving: the keys' last use and the routes' traffic are in it

    key_file = tmp_path / "backup.key"
    made = run("backup", "key", "new")
    assert made.code == 0, made.err
    key_file.write_text(made.out)
    to = [arg for url in three_destinations.values() for arg in ("--to", url)]
    created = run("backup", "create", *to, "--encryption-key-file", str(key_file), "--json")
    assert created.code == 0, created.err
    report = json.loads(created.out)
    assert [d["complete"] for d in report["destinations"]] == [True, True, True]
    assert report["rows"]["rollouts"] == 1
    assert report["rows"]["feedback"] == 6

    for number, (name, url) in enumerate(three_destinations.items()):
        verified = run("backup", "verify", url, "--deep", "--encryption-key-file", str(key_file))
        assert verified.code == 0, f"{name}: {verified.err}"
        with ExitStack() as stack:
            targets = {
                "sqlite": f"sqlite:///{tmp_path / f'restored-{number}.db'}",
                "postgresql": stack.enter_context(postgres_schema()),
            }
            for engine, database in targets.items():
                home = tmp_path / f"home-{number}-{engine}"
                artifacts = str(tmp_path / f"artifacts-{number}-{engine}")
                monkeypatch.setenv("BERTH_HOME", str(home))
                monkeypatch.setenv("BERTH_DATABASE_URL", database)
                monkeypatch.setenv("BERTH_ARTIFACT_URL", artifacts)
                restored = run(
                    "backup", "restore", url, "--database", database, "--artifacts", artifacts,
                    "--encryption-key-file", str(key_file),
                )  # fmt: skip
                assert restored.code == 0, f"{name} -> {engine}: {restored.err}"
                assert _shown(run) == before, f"{name} -> {engine}"
                # A real server on the restored registry: same answers, and the key made
                # before the backup is accepted (the secret came back with the backup).
                if number == 0 or (engine == "postgresql" and number == 1):
                    env = _environment(home, database, artifacts)
                    assert _served(env, api_key) == served, f"{name} -> {engine}"
