"""Open Inference Protocol v2 over REST, in process: metadata, readiness, JSON and binary infer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import ApiSetup, register_iris

IRIS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def _json_infer(api: ApiSetup, path: str, body: dict[str, Any], key: str | None = None) -> Any:
    return api.client.post(path, json=body, headers=api.auth(key))


def test_health_and_server_metadata_are_open(api: ApiSetup) -> None:
    assert api.client.get("/v2/health/live").status_code == 200
    assert api.client.get("/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/"):
        metadata = api.client.get(path).json()
        assert metadata["name"] == "berth"
        assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_tensor_and_tabular(api: ApiSetup) -> None:
    iris = api.client.get("/v2/models/iris", headers=api.auth()).json()
    assert iris["name"] == "iris"
    assert iris["versions"] == ["1"]
    assert iris["platform"] == "sklearn"
    assert iris["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in iris["outputs"]] == ["predict", "predict_proba"]
    churn = api.client.get("/v2/models/churn/versions/1", headers=api.auth()).json()
    assert [i["name"] for i in churn["inputs"]] == [
        "tenure_months",
        "monthly_charges",
        "plan",
        "support_calls",
    ]
    assert churn["inputs"][2]["datatype"] == "BYTES"


def test_model_ready(api: ApiSetup, iris_files: tuple[Path, Path]) -> None:
    assert api.client.get("/v2/models/iris/ready", headers=api.auth()).status_code == 200
    assert api.client.get("/v2/models/iris/versions/1/ready", headers=api.auth()).status_code == 200
    missing = api.client.get("/v2/models/iris/versions/9/ready", headers=api.auth())
    assert missing.status_code == 404
    assert "error" in missing.json()
    register_iris(api.registry, iris_files)
    not_loaded = api.client.get("/v2/models/iris/versions/2/ready", headers=api.auth())
    assert not_loaded.status_code == 503
    assert "error" in not_loaded.json()


def test_json_infer_tensor(api: ApiSetup) -> None:
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": IRIS.ravel().tolist()}
        ],
    }
    response = _json_infer(api, "/v2/models/iris/infer", body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model_name"] == "iris"
    assert result["model_version"] == "1"
    assert result["id"] == "req-1"
    outputs = {o["name"]: o for o in result["outputs"]}
    assert outputs["predict"]["data"] == [0, 2]
    assert outputs["predict"]["shape"] == [2]
    assert outputs["predict_proba"]["shape"] == [2, 3]
    assert response.headers["X-Berth-Model-Version"] == "iris:1"


def test_json_infer_tabular_columns_and_requested_output(api: ApiSetup) -> None:
    body = {
        "inputs": [
            {"name": "tenure_months", "shape": [2], "datatype": "INT64", "data": [2, 60]},
            {
                "name": "monthly_charges",
                "shape": [2, 1],
                "datatype": "FP64",
                "data": [[99.0], [30.0]],
            },
            {"name": "plan", "shape": [2], "datatype": "BYTES", "data": ["basic", "enterprise"]},
            {"name": "support_calls", "shape": [2], "datatype": "INT32", "data": [5, 0]},
        ],
        "outputs": [{"name": "predict_proba"}],
    }
    response = _json_infer(api, "/v2/models/churn/versions/1/infer", body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["predict_proba"]
    probabilities = np.asarray(outputs[0]["data"]).reshape(2, 2)
    assert probabilities[0, 1] > probabilities[1, 1]  # short tenure, many calls: likelier churn


def test_binary_request_and_response_via_triton_codec(api: ApiSetup) -> None:
    data = triton.InferInput("input__0", list(IRIS.shape), "FP32")
    data.set_data_from_numpy(IRIS, binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([data])
    headers = {**api.auth(), "Inference-Header-Content-Length": str(json_size)}
    response = api.client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    assert length is not None
    result = triton.InferResult.from_response_body(response.content, header_length=int(length))
    assert result.as_numpy("predict").tolist() == [0, 2]
    assert result.as_numpy("predict_proba").shape == (2, 3)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}, "x"),
        (
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            "expected 4",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 4],
                        "datatype": "BYTES",
                        "data": ["a", "b", "c", "d"],
                    }
                ]
            },
            "expected numbers",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP99", "data": [1, 2, 3, 4]}]},
            "FP99",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, None, 4]}
                ]
            },
            "NaN",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ],
                "outputs": [{"name": "nope"}],
            },
            "nope",
        ),
    ],
)
def test_bad_infer_requests_are_400_with_error_field(
    api: ApiSetup, body: Any, fragment: str
) -> None:
    response = _json_infer(api, "/v2/models/iris/infer", body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert fragment in response.json()["error"]


def test_bad_binary_length_is_400(api: ApiSetup) -> None:
    headers = {**api.auth(), "Inference-Header-Content-Length": "9999"}
    response = api.client.post("/v2/models/iris/infer", content=b'{"inputs": []}', headers=headers)
    assert response.status_code == 400
    assert "error" in response.json()


def test_unknown_model_and_version_are_404(api: ApiSetup) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert _json_infer(api, "/v2/models/nope/infer", body).status_code == 404
    assert _json_infer(api, "/v2/models/iris/versions/7/infer", body).status_code == 404
    assert api.client.get("/v2/models/nope", headers=api.auth()).status_code == 404
    bad_version = _json_infer(api, "/v2/models/iris/versions/x/infer", body)
    assert bad_version.status_code == 400


def test_v2_model_routes_need_a_key(api: ApiSetup) -> None:
    assert api.client.get("/v2/models/iris").status_code == 401
    assert api.client.get("/v2/models/iris/ready").status_code == 401
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert api.client.post("/v2/models/iris/infer", json=body).status_code == 401
    read_only = _json_infer(api, "/v2/models/iris/infer", body, key=api.read_key)
    assert read_only.status_code == 403
