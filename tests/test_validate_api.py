"""`POST /api/v1/validate`: validation gates on the server, on an upload or a registered version.

The command's behaviour in both modes is tested in test_validate_command.py; here, what only
the route does: its parts, the sha256 check, the admin scope, the limits, the private directory
removed afterwards, and the errors of a candidate that does not load (the caller's, so 400).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from berth.config import Settings
from berth.registry.service import Registry
from berth.runtimes import pickle_refusal
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from tests.conftest import register_iris

URL = "/api/v1/validate"
GATES = {"target": "y", "min_accuracy": 0.8}


@dataclass
class Api:
    client: TestClient
    registry: Registry
    admin: dict[str, str]
    user: dict[str, str]
    spool: Path
    """Where the server's private upload directories go (tempfile's directory)."""
    data_dir: Path
    """BERTH_VALIDATION_DATA_DIR."""


@pytest.fixture
def api(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    from berth.api.app import build_services, create_app

    spool = tmp_path / "spool"
    spool.mkdir()
    data_dir = tmp_path / "server-data"
    data_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    settings = settings.model_copy(
        update={"max_upload_bytes": 2 * 1024 * 1024, "validation_data_dir": data_dir}
    )
    registry = Registry.from_settings(settings)
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    admin = keys.create("ci", ("admin",))[1]
    user = keys.create("user", ("predict", "read"))[1]
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app) as client:
        yield Api(client, registry, {"X-API-Key": admin}, {"X-API-Key": user}, spool, data_dir)
    registry.db.dispose()


@pytest.fixture
def iris_test(iris_files: tuple[Path, Path], tmp_path: Path) -> Path:
    """The iris sample rows with the class the model predicts as y (0..2), as a CSV file."""
    import joblib
    import numpy as np
    import pandas as pd

    model, sample = iris_files
    features = np.load(sample)
    rows = pd.DataFrame(features, columns=["a", "b", "c", "d"])
    rows["y"] = joblib.load(model).predict(features)
    path = tmp_path / "iris-test.csv"
    rows.to_csv(path, index=False)
    return path


def _parts(iris_files: tuple[Path, Path], data: Path | None, **request: Any) -> dict[str, Any]:
    model, _sample = iris_files
    request.setdefault("gates", GATES)
    files: dict[str, Any] = {
        "artifact": (model.name, model.read_bytes()),
        "request": (None, json.dumps(request).encode(), "application/json"),
    }
    if data is not None:
        files["data"] = (data.name, data.read_bytes())
    return files


def _nothing_left(api: Api) -> None:
    assert api.registry.list_models() == []
    assert list(api.spool.iterdir()) == []  # the private upload directory is gone


def test_an_uploaded_candidate_is_gated_and_the_report_answered(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path
) -> None:
    model, _ = iris_files
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    files = _parts(iris_files, iris_test, trust_pickle=True, sha256=sha256, label="candidate 7")
    response = api.client.post(URL, files=files, headers=api.admin)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["reference"], report["passed"], report["rows"]) == ("candidate 7", True, 20)
    assert [c["name"] for c in report["checks"]] == ["accuracy"]
    (event,) = AuditLog(api.registry.db).list(actor="ci")
    assert (event.action, event.target, event.outcome) == ("model.validate", "candidate 7", "ok")
    assert event.detail is not None
    assert (event.detail["trust_pickle"], event.detail["sha256"]) == (True, sha256)
    assert event.address == "testclient"
    _nothing_left(api)


def test_a_failed_gate_is_a_report_not_an_error(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path
) -> None:
    gates = {"target": "y", "min_accuracy": 1.0, "max_latency_ms": 1e-9}
    files = _parts(iris_files, iris_test, trust_pickle=True, gates=gates)
    response = api.client.post(URL, files=files, headers=api.admin)
    assert response.status_code == 200, response.text
    assert response.json()["passed"] is False
    assert [c["passed"] for c in response.json()["checks"]] == [True, False]
    _nothing_left(api)


def test_a_registered_version_with_test_rows_on_the_server(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path
) -> None:
    register_iris(api.registry, iris_files)
    (api.data_dir / "iris").mkdir()
    (api.data_dir / "iris" / "test.csv").write_bytes(iris_test.read_bytes())
    body = {"reference": "iris:1", "gates": GATES, "data_file": "iris/test.csv"}
    files = {"request": (None, json.dumps(body).encode(), "application/json")}
    response = api.client.post(URL, files=files, headers=api.admin)
    assert response.status_code == 200, response.text
    assert (response.json()["reference"], response.json()["passed"]) == ("iris:1", True)
    assert AuditLog(api.registry.db).list(actor="ci") == []  # nothing new was loaded

    body["data_file"] = "iris/../../secret.csv"
    response = api.client.post(URL, files=files | _request(body), headers=api.admin)
    assert response.status_code == 400
    assert "not a path inside BERTH_VALIDATION_DATA_DIR" in response.json()["error"]
    body["reference"] = "ghost:1"
    body["data_file"] = "iris/test.csv"
    response = api.client.post(URL, files=_request(body), headers=api.admin)
    assert response.status_code == 404
    assert list(api.spool.iterdir()) == []


def _request(body: dict[str, Any]) -> dict[str, Any]:
    return {"request": (None, json.dumps(body).encode(), "application/json")}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("no request", "no 'request' part"),
        ("request not JSON", "the 'request' part: the request body is not valid JSON"),
        ("no gates", "the 'request' part: the request body has no 'gates' field"),
        ("unknown field", "the 'request' part: unknown field min_accuracy"),
        ("bad threshold", "--min-accuracy must be a number between 0 and 1, got 2"),
        ("no candidate", "name what to validate"),
        ("both candidates", "not both"),
        ("no data", "--min-accuracy needs test rows"),
        ("both data", "either as a 'data' part or as 'data_file'"),
        ("wrong sha256", "the artifact's sha256 is"),
        ("bad reference", "'churn@' is not a model reference"),
    ],
)
def test_a_malformed_validation_is_refused_naming_the_part(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path, change: str, named: str
) -> None:
    request: dict[str, Any] = {"gates": GATES, "trust_pickle": True}
    files = _parts(iris_files, iris_test)
    if change == "no request":
        del files["request"]
    elif change == "request not JSON":
        files["request"] = (None, b"{", "application/json")
    elif change == "no gates":
        request = {"trust_pickle": True}
    elif change == "unknown field":
        request["min_accuracy"] = 0.5
    elif change == "bad threshold":
        request["gates"] = {"target": "y", "min_accuracy": 2}
    elif change == "no candidate":
        del files["artifact"]
        request = {"gates": GATES}
    elif change == "both candidates":
        request["reference"] = "iris:1"
    elif change == "no data":
        del files["data"]
    elif change == "both data":
        request["data_file"] = "x.csv"
    elif change == "wrong sha256":
        request["sha256"] = "0" * 64
    elif change == "bad reference":
        request["gates"] = {**GATES, "no_regression_vs": "churn@"}
    if change not in ("no request", "request not JSON"):
        files.update(_request(request))
    response = api.client.post(URL, files=files, headers=api.admin)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]
    _nothing_left(api)


def test_loading_options_are_refused_for_a_registered_version(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path
) -> None:
    register_iris(api.registry, iris_files)
    body = {"reference": "iris:1", "gates": GATES, "trust_pickle": True, "flavor": "sklearn"}
    files = {**_request(body), "data": (iris_test.name, iris_test.read_bytes())}
    response = api.client.post(URL, files=files, headers=api.admin)
    assert response.status_code == 400
    assert response.json()["error"].startswith(
        "flavor, trust_pickle describe an uploaded candidate"
    )


def test_only_an_admin_may_validate_and_a_pickle_needs_trust(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path
) -> None:
    files = _parts(iris_files, iris_test, trust_pickle=True)
    response = api.client.post(URL, files=files, headers=api.user)
    assert response.status_code == 403
    assert "admin scope" in response.json()["error"]
    untrusted = api.client.post(URL, files=_parts(iris_files, iris_test), headers=api.admin)
    assert untrusted.status_code == 400
    assert untrusted.json()["error"] == pickle_refusal("model.joblib")
    (event,) = AuditLog(api.registry.db).list(actor="ci")
    assert (event.action, event.outcome) == ("model.validate", "refused")
    _nothing_left(api)


def test_a_candidate_that_does_not_load_is_the_callers_error(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path
) -> None:
    files = _parts(iris_files, iris_test)
    files["artifact"] = ("model.skops", b"not a zip file")
    response = api.client.post(URL, files=files, headers=api.admin)
    assert response.status_code == 400, response.text
    assert "model.skops" in response.json()["error"]
    assert str(api.spool) not in response.json()["error"]  # no path of the server's
    _nothing_left(api)


def test_an_upload_over_the_limit_is_refused(
    api: Api, iris_files: tuple[Path, Path], iris_test: Path
) -> None:
    files = _parts(iris_files, iris_test, trust_pickle=True)
    files["data"] = ("big.npy", os.urandom(3 * 1024 * 1024))
    response = api.client.post(URL, files=files, headers=api.admin)
    assert response.status_code == 413
    assert "BERTH_MAX_UPLOAD_BYTES" in response.json()["error"]
    _nothing_left(api)
