"""Berth v1 REST API, in process: predictions, metadata, auth and error codes."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import ApiSetup

CHURN_ROW = {"tenure_months": 5, "monthly_charges": 80.5, "plan": "basic", "support_calls": 3}
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def test_predict_one_tabular_row(api: ApiSetup) -> None:
    response = api.client.post(
        "/api/v1/models/churn/predict", json={"features": CHURN_ROW}, headers=api.auth()
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "churn"
    assert body["model_version"] == 1
    assert body["prediction"] in (0, 1)
    assert body["classes"] == [0, 1]
    assert body["probabilities"][body["prediction"]] == pytest.approx(body["probability"])
    assert sum(body["probabilities"]) == pytest.approx(1.0)
    assert len(body["prediction_id"]) == 32
    assert response.headers["X-Berth-Model-Version"] == "churn:1"
    assert response.headers["X-Request-ID"]


def test_predict_one_row_in_column_order(api: ApiSetup) -> None:
    as_object = api.client.post(
        "/api/v1/models/churn/predict", json={"features": CHURN_ROW}, headers=api.auth()
    ).json()
    as_list = api.client.post(
        "/api/v1/models/churn/predict",
        json={"features": list(CHURN_ROW.values())},
        headers=api.auth(),
    ).json()
    assert as_list["probabilities"] == as_object["probabilities"]


def test_batch_predict_tensor_model(api: ApiSetup) -> None:
    rows = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    response = api.client.post(
        "/api/v1/models/iris:1/batch-predict", json={"instances": rows}, headers=api.auth()
    )
    assert response.status_code == 200
    body = response.json()
    assert body["predictions"] == [0, 2, 1]
    assert len(body["probabilities"]) == 3
    assert len(set(body["prediction_ids"])) == 3
    assert body["model_version"] == 1


def test_default_model_routes(api: ApiSetup) -> None:
    # The first served reference is the default: iris sorts before churn? No: order of aliases.
    response = api.client.post("/api/v1/predict", json={"features": CHURN_ROW}, headers=api.auth())
    batch = api.client.post(
        "/api/v1/batch-predict", json={"instances": [CHURN_ROW]}, headers=api.auth()
    )
    assert response.status_code == 200, response.text
    assert batch.status_code == 200
    assert response.json()["model"] == "churn"


def test_alias_reference_and_move(api: ApiSetup) -> None:
    response = api.client.post(
        "/api/v1/models/churn@production/predict", json={"features": CHURN_ROW}, headers=api.auth()
    )
    assert response.status_code == 200
    assert response.json()["model_version"] == 1


def test_list_and_show_models(api: ApiSetup) -> None:
    listing = api.client.get("/api/v1/models", headers=api.auth(api.read_key)).json()
    assert [m["name"] for m in listing["models"]] == ["churn", "iris"]
    model = api.client.get("/api/v1/models/iris", headers=api.auth()).json()
    assert model["aliases"] == {"production": 1}
    version = api.client.get("/api/v1/models/iris/versions/1", headers=api.auth()).json()
    assert len(version["sha256"]) == 64
    assert version["signature"]["inputs"][0]["shape"] == [-1, 4]
    assert version["aliases"] == ["production"]


@pytest.mark.parametrize(
    ("features", "fragment"),
    [
        ({**CHURN_ROW, "tenure_months": -1}, "outside the allowed range"),
        ({**CHURN_ROW, "tenure_months": "ten"}, "expected integers, got a string"),
        ({k: v for k, v in CHURN_ROW.items() if k != "plan"}, "missing column 'plan'"),
        ({**CHURN_ROW, "extra": 1}, "unknown column 'extra'"),
        ({**CHURN_ROW, "monthly_charges": None}, "not nullable"),
        ({**CHURN_ROW, "plan": 3}, "expected strings"),
        ([1, 2], "expected 4 values"),
        ("text", "expected a list or an object"),
    ],
)
def test_invalid_tabular_input_is_400_naming_the_field(
    api: ApiSetup, features: Any, fragment: str
) -> None:
    response = api.client.post(
        "/api/v1/models/churn/predict", json={"features": features}, headers=api.auth()
    )
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("features", "fragment"),
    [
        ([1.0, 2.0, 3.0], "expected 4 values per row, got 3"),
        ([1.0, 2.0, "x", 4.0], "expected numbers, got strings"),
        ([1.0, 2.0, True, 4.0], "expected numbers"),
        ([[1.0], [2.0]], "expected 2-dimensional"),
    ],
)
def test_invalid_tensor_input_is_400(api: ApiSetup, features: Any, fragment: str) -> None:
    response = api.client.post(
        "/api/v1/models/iris/predict", json={"features": features}, headers=api.auth()
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_overflowing_number_is_400(api: ApiSetup) -> None:
    response = api.client.post(
        "/api/v1/models/iris/predict", content=b'{"features": [1e400, 1, 1, 1]}', headers=api.auth()
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_ragged_batch_is_400(api: ApiSetup) -> None:
    response = api.client.post(
        "/api/v1/models/iris/batch-predict",
        json={"instances": [IRIS_ROW, [1.0, 2.0]]},
        headers=api.auth(),
    )
    assert response.status_code == 400
    assert "different lengths" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "body is empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"instances": [[1,2,3,4]]}', "no 'features' field"),
        (b'{"features": [NaN, 1, 1, 1]}', "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400(api: ApiSetup, body: bytes, fragment: str) -> None:
    response = api.client.post("/api/v1/models/iris/predict", content=body, headers=api.auth())
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_unknown_model_version_and_route_are_404(api: ApiSetup) -> None:
    headers = api.auth()
    unknown_model = api.client.post(
        "/api/v1/models/nope/predict", json={"features": [1]}, headers=headers
    )
    unknown_version = api.client.post(
        "/api/v1/models/iris:9/predict", json={"features": IRIS_ROW}, headers=headers
    )
    unknown_alias = api.client.post(
        "/api/v1/models/iris@staging/predict", json={"features": IRIS_ROW}, headers=headers
    )
    unknown_route = api.client.get("/api/v1/nothing-here", headers=headers)
    missing_version = api.client.get("/api/v1/models/iris/versions/7", headers=headers)
    for response in (unknown_model, unknown_version, unknown_alias, unknown_route, missing_version):
        assert response.status_code == 404, response.text
        assert response.json()["error"]
    assert "no version 9" in unknown_version.json()["error"]
    assert "no alias 'staging'" in unknown_alias.json()["error"]


def test_bad_reference_is_400(api: ApiSetup) -> None:
    response = api.client.post(
        "/api/v1/models/iris:x/predict", json={"features": IRIS_ROW}, headers=api.auth()
    )
    assert response.status_code == 400
    assert "not a model reference" in response.json()["error"]


def test_missing_and_wrong_keys_are_401(api: ApiSetup) -> None:
    missing = api.client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
    wrong = api.client.post(
        "/api/v1/models/iris/predict",
        json={"features": IRIS_ROW},
        headers={"X-API-Key": "berth_abc_def"},
    )
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "X-API-Key" in missing.json()["error"]
    listing = api.client.get("/api/v1/models")
    assert listing.status_code == 401


def test_bearer_token_works(api: ApiSetup) -> None:
    response = api.client.post(
        "/api/v1/models/iris/predict",
        json={"features": IRIS_ROW},
        headers={"Authorization": f"Bearer {api.key}"},
    )
    assert response.status_code == 200


def test_read_only_key_cannot_predict_403(api: ApiSetup) -> None:
    response = api.client.post(
        "/api/v1/models/iris/predict", json={"features": IRIS_ROW}, headers=api.auth(api.read_key)
    )
    assert response.status_code == 403
    assert "--scope predict" in response.json()["error"]


def test_body_over_limit_is_413(api: ApiSetup) -> None:
    limit = api.client.app.state.services.settings.max_body_bytes  # type: ignore[attr-defined]
    response = api.client.post(
        "/api/v1/models/iris/batch-predict",
        content=b'{"instances": [' + b"1," * (limit // 2) + b"1]}",
        headers=api.auth(),
    )
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["error"]


def test_too_many_rows_is_413(api: ApiSetup) -> None:
    limit = api.client.app.state.services.settings.max_batch_rows  # type: ignore[attr-defined]
    response = api.client.post(
        "/api/v1/models/iris/batch-predict",
        json={"instances": [IRIS_ROW] * (limit + 1)},
        headers=api.auth(),
    )
    assert response.status_code == 413
    assert str(limit) in response.json()["error"]


def test_open_routes_need_no_key(api: ApiSetup) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}
    ready = api.client.get("/ready").json()
    assert ready["status"] == "ready"
    assert sorted(ready["models"]) == ["churn:1", "iris:1"]
    metrics = api.client.get("/metrics").text
    assert "berth_predictions_total" in metrics
    assert api.client.get("/docs").status_code == 200
    # The OpenAPI document itself needs credentials (BERTH_DOCS=authenticated, the default).
    assert api.client.get("/openapi.json").status_code == 401
    document = api.client.get("/openapi.json", headers=api.auth(api.read_key)).json()
    assert "/api/v1/models/{ref}/predict" in document["paths"]


def test_metrics_count_predictions_by_model_version_status(api: ApiSetup) -> None:
    api.client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW}, headers=api.auth())
    api.client.post("/api/v1/models/iris/predict", json={"features": [1]}, headers=api.auth())
    text = api.client.get("/metrics").text
    labels = 'endpoint="",model="iris",protocol="rest"'
    assert f'berth_predictions_total{{{labels},status="ok",version="1"}}' in text
    assert f'berth_predictions_total{{{labels},status="error",version="1"}}' in text
    bucket = 'endpoint="",le="0.0001",model="iris",protocol="rest",version="1"'
    assert f"berth_prediction_duration_seconds_bucket{{{bucket}}}" in text


def test_request_id_is_echoed(api: ApiSetup) -> None:
    response = api.client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


def test_unexpected_error_is_500_with_id_and_no_trace(
    api: ApiSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = api.client.app
    loaded = next(
        v for v in app.state.services.dataplane._loaded.values() if v.info.model == "iris"
    )  # type: ignore[attr-defined]

    def explode(_inputs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(loaded.runtime, "predict", explode)
    quiet = TestClient(app, raise_server_exceptions=False)
    response = quiet.post(
        "/api/v1/models/iris/predict", json={"features": IRIS_ROW}, headers=api.auth()
    )
    assert response.status_code == 500
    error = response.json()["error"]
    assert "internal error" in error
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
