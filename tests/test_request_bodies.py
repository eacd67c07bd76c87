"""Hostile and unusual request bodies, in process: every prediction route answers 4xx, never 500.

Chunked bodies over the limit, JSON nested to the parser's limit, compressed bodies (and zip
bombs), unknown models with broken bodies, declared shapes refused before their values are
decoded, and large bodies decoded off the event loop.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from berth.api import hot_path
from berth.config import Settings
from berth.registry.endpoints import EndpointService
from tests.conftest import ApiSetup
from tests.test_metrics import scrape, value

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
CHURN_ROW = {"tenure_months": 5, "monthly_charges": 80.5, "plan": "basic", "support_calls": 3}
V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}]}

# Every prediction route, with a path and a body it accepts.
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "/api/v1/models/(?P<ref>[^/]+)/predict": (
        "/api/v1/models/iris/predict",
        {"features": IRIS_ROW},
    ),
    "/api/v1/models/(?P<ref>[^/]+)/batch-predict": (
        "/api/v1/models/iris/batch-predict",
        {"instances": [IRIS_ROW]},
    ),
    "/api/v1/endpoints/(?P<name>[^/]+)/predict": (
        "/api/v1/endpoints/iris/predict",
        {"features": IRIS_ROW},
    ),
    "/api/v1/endpoints/(?P<name>[^/]+)/batch-predict": (
        "/api/v1/endpoints/iris/batch-predict",
        {"instances": [IRIS_ROW]},
    ),
    # the default model: the first served, churn
    "/api/v1/predict": ("/api/v1/predict", {"features": CHURN_ROW}),
    "/api/v1/batch-predict": ("/api/v1/batch-predict", {"instances": [CHURN_ROW]}),
    "/v2/models/(?P<name>[^/]+)/infer": ("/v2/models/iris/infer", V2_BODY),
    "/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/infer": (
        "/v2/models/iris/versions/1/infer",
        V2_BODY,
    ),
}


def test_every_prediction_route_is_covered() -> None:
    assert sorted(p.pattern for p, _ in hot_path.ROUTES) == sorted(ROUTES)


@pytest.fixture
def iris_api(api: ApiSetup) -> ApiSetup:
    """The api fixture with an endpoint `iris`, served, so every route reaches iris."""
    EndpointService(api.registry).create("iris", "iris@production")
    dataplane = api.client.app.state.services.dataplane  # type: ignore[attr-defined]
    api.client.portal.call(dataplane.refresh_endpoints)  # type: ignore[union-attr]
    return api


PATHS = [path for path, _ in ROUTES.values()]


def _nested(depth: int) -> str:
    """JSON text of a value nested `depth` lists deep (orjson.dumps refuses past 255)."""
    return "[" * depth + "1.0" + "]" * depth


def _deep_bodies(path: str, depth: int) -> list[bytes]:
    deep = _nested(depth)
    if path.startswith("/v2/"):
        tensor = '"name": "x", "shape": [1, 4], "datatype": "FP32"'
        bodies = [
            f'{{"inputs": [{{{tensor}, "data": {deep}}}]}}',
            f'{{"inputs": [{{{tensor}, "data": [1, 2, 3, 4], "parameters": {deep}}}]}}',
            f'{{"inputs": [{{"name": "x", "shape": {deep}, "datatype": "FP32", "data": [1]}}]}}',
            f'{{"inputs": {deep}}}',
        ]
    else:
        field = "features" if path.endswith("/predict") else "instances"
        bodies = [
            f'{{"{field}": {deep}}}',
            f'{{"{field}": [{deep}]}}',
            f'{{"{field}": [{{"a": {deep}}}]}}',
            f'{{"{field}": {{"a": {deep}}}}}',
        ]
    return [body.encode() for body in bodies]


@pytest.mark.parametrize("depth", [500, 955, 1000, 1023])
def test_deeply_nested_json_is_400_on_every_route(iris_api: ApiSetup, depth: int) -> None:
    """orjson accepts 1,024 levels; rendering such a value for the error message recursed."""
    for path in PATHS:
        for body in _deep_bodies(path, depth):
            response = iris_api.client.post(path, content=body, headers=iris_api.auth())
            assert response.status_code == 400, (path, depth, response.text[:300])
            assert len(response.json()["error"]) < 1000


def test_json_past_the_parsers_depth_limit_is_400(iris_api: ApiSetup) -> None:
    body = f'{{"features": {_nested(1100)}}}'.encode()
    response = iris_api.client.post(PATHS[0], content=body, headers=iris_api.auth())
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


# ---------------------------------------------------------------------------- body size


@pytest.fixture
def small_limit(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BERTH_MAX_BODY_BYTES", "2000")
    return Settings()


def _chunks(body: bytes, size: int = 300) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_over_the_limit_is_413_on_every_route(
    small_limit: Settings, api_factory: Any
) -> None:
    client, key = api_factory(small_limit)
    big = orjson.dumps({"instances": [IRIS_ROW] * 200})
    assert len(big) > 2000
    for path in PATHS:
        response = client.post(path, content=_chunks(big), headers={"X-API-Key": key})
        assert response.status_code == 413, (path, response.text)
        assert "limit of 2000 bytes" in response.json()["error"]
        small = orjson.dumps(ROUTES[_pattern(path)][1])
        response = client.post(path, content=_chunks(small, 10), headers={"X-API-Key": key})
        assert response.status_code == 200, (path, response.text)


def _pattern(path: str) -> str:
    return next(p for p, (concrete, _) in ROUTES.items() if concrete == path)


@pytest.fixture
def api_factory(iris_files: Any, churn_files: Any) -> Iterator[Any]:
    """Apps built from given settings, serving what the api fixture serves (iris and churn at
    production) and an endpoint `iris`."""
    from starlette.testclient import TestClient

    from berth.api.app import build_services, create_app
    from berth.registry.service import Registry
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret
    from tests.conftest import register_churn, register_iris

    opened: list[tuple[TestClient, Registry]] = []

    def build(settings: Settings) -> tuple[TestClient, str]:
        registry = Registry.from_settings(settings)
        register_iris(registry, iris_files, aliases=("production",))
        register_churn(registry, churn_files)
        EndpointService(registry).create("iris", "iris@production")
        _, key = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings))).create(
            "t", ("predict", "read")
        )
        client = TestClient(create_app(settings, build_services(settings, registry)))
        client.__enter__()
        opened.append((client, registry))
        return client, key

    yield build
    for client, registry in opened:
        client.__exit__(None, None, None)
        registry.db.dispose()


# ---------------------------------------------------------------------------- encodings


def test_gzip_and_deflate_bodies_are_decompressed_on_every_route(iris_api: ApiSetup) -> None:
    for path in PATHS:
        plain = orjson.dumps(ROUTES[_pattern(path)][1])
        for encoding, packed in (
            ("gzip", gzip.compress(plain)),
            ("deflate", zlib.compress(plain)),
            ("deflate", zlib.compress(plain, wbits=-zlib.MAX_WBITS)),  # raw deflate, as some send
        ):
            headers = {**iris_api.auth(), "Content-Encoding": encoding}
            response = iris_api.client.post(path, content=packed, headers=headers)
            assert response.status_code == 200, (path, encoding, response.text)


def test_a_zip_bomb_is_413_and_other_encodings_are_415(
    small_limit: Settings, api_factory: Any
) -> None:
    client, key = api_factory(small_limit)
    bomb = gzip.compress(b"[" + b"1," * 800_000 + b"1]")  # 1.6 MB from about 1.6 kB
    assert len(bomb) < 2000
    path = "/api/v1/models/iris/batch-predict"
    headers = {"X-API-Key": key, "Content-Encoding": "gzip"}
    response = client.post(path, content=bomb, headers=headers)
    assert response.status_code == 413
    assert "decompressed request body is larger than the limit of 2000 bytes" in response.text
    for encoding in ("br", "zstd", "compress", "gzip, br"):
        response = client.post(
            path, content=b"{}", headers={"X-API-Key": key, "Content-Encoding": encoding}
        )
        assert response.status_code == 415, encoding
        assert "gzip or deflate" in response.json()["error"]
    corrupt = client.post(path, content=b"not gzip at all", headers=headers)
    assert corrupt.status_code == 400
    assert "not valid gzip" in corrupt.json()["error"]
    cut = client.post(path, content=gzip.compress(b'{"instances": []}')[:-12], headers=headers)
    assert cut.status_code == 400
    assert "ends early" in cut.json()["error"]


def test_large_responses_are_gzipped_for_clients_that_accept_it(iris_api: ApiSetup) -> None:
    body = {"instances": [IRIS_ROW] * 300}
    path = "/api/v1/models/iris/batch-predict"
    plain = iris_api.client.post(
        path, json=body, headers={**iris_api.auth(), "Accept-Encoding": "identity"}
    )
    assert plain.status_code == 200
    assert "content-encoding" not in plain.headers
    packed = iris_api.client.post(
        path, json=body, headers={**iris_api.auth(), "Accept-Encoding": "gzip"}
    )
    assert packed.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["vary"]
    assert int(packed.headers["content-length"]) < len(plain.content) / 3
    unpacked, expected = packed.json(), plain.json()
    assert unpacked["predictions"] == expected["predictions"]
    assert unpacked["probabilities"] == expected["probabilities"]
    refused = iris_api.client.post(
        path, json=body, headers={**iris_api.auth(), "Accept-Encoding": "gzip;q=0"}
    )
    assert "content-encoding" not in refused.headers
    small = iris_api.client.post(
        "/api/v1/models/iris/predict",
        json={"features": IRIS_ROW},
        headers={**iris_api.auth(), "Accept-Encoding": "gzip"},
    )
    assert "content-encoding" not in small.headers  # below BERTH_COMPRESS_MIN_BYTES


# ---------------------------------------------------------------------------- order of checks


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/nope/predict",
        "/api/v1/models/nope/batch-predict",
        "/api/v1/endpoints/nope/predict",
        "/api/v1/endpoints/nope/batch-predict",
        "/v2/models/nope/infer",
        "/v2/models/nope/versions/1/infer",
        "/v2/models/iris/versions/99/infer",
        "/api/v1/models/iris:99/predict",
    ],
)
def test_an_unknown_model_is_404_whatever_the_body(api: ApiSetup, path: str) -> None:
    for body in (b"", b"{not json", b"[1, 2]", b'{"features": "x", "inputs": 7}'):
        response = api.client.post(path, content=body, headers=api.auth())
        assert response.status_code == 404, (path, body, response.text)


def test_declared_rows_over_the_limit_are_413_before_the_data_is_read(api: ApiSetup) -> None:
    """The shape alone says 4,000,000 rows: refused without decoding the (truncated) data."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [4_000_000, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 12},
                }
            ]
        }
    )
    response = api.client.post(
        "/v2/models/iris/infer",
        content=header + b"\x05\x00\x00\x00abc",  # not even one whole element
        headers={**api.auth(), "Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 413
    assert "4000000 rows, more than the limit of 10000" in response.json()["error"]


def test_a_declared_shape_the_model_cannot_take_is_400_before_the_data_is_read(
    api: ApiSetup,
) -> None:
    tensor = {"name": "x", "shape": [1, 7_900_000], "datatype": "FP32", "data": [0.5]}
    response = api.client.post(
        "/v2/models/iris/infer", json={"inputs": [tensor]}, headers=api.auth()
    )
    assert response.status_code == 400
    # The signature's complaint, not the data's ("data has 1 values but shape ... needs ...").
    assert "expected 4 values per row, got 7900000" in response.json()["error"]


def test_v1_rows_over_the_limit_are_413_even_if_later_rows_are_malformed(api: ApiSetup) -> None:
    rows: list[Any] = [IRIS_ROW] * 10_001
    rows[-1] = "not a row"
    before = scrape(api.client)
    response = api.client.post(
        "/api/v1/models/iris/batch-predict", json={"instances": rows}, headers=api.auth()
    )
    assert response.status_code == 413
    assert "10001 rows, more than the limit of 10000" in response.json()["error"]
    # The client's fault: counted with invalid input, never as a server-side failure.
    after = scrape(api.client)
    errors = "berth_prediction_errors_total"
    assert value(after, errors, model="iris", kind="invalid_input") == (
        value(before, errors, model="iris", kind="invalid_input") + 1
    )
    # (the process's metrics are shared with the tests before this one: compare, not zero)
    assert value(after, errors, model="iris", kind="rejected") == value(
        before, errors, model="iris", kind="rejected"
    )


def test_large_bodies_are_decoded_in_the_helper_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, api_factory: Any
) -> None:
    """Parsing holds the GIL: only another process keeps the event loop free meanwhile."""
    monkeypatch.setenv("BERTH_DECODE_PROCESS_BYTES", "100000")
    client, key = api_factory(Settings())
    rows = [IRIS_ROW] * 8000  # about 160 kB
    paths = ("/api/v1/models/iris/batch-predict", "/v2/models/iris/infer")
    bodies = (
        {"instances": rows},
        {"inputs": [{"name": "x", "shape": [8000, 4], "datatype": "FP32", "data": rows}]},
    )

    def decodes(where: str) -> float:
        return value(scrape(client), "berth_request_decodes_total", where=where)

    first = client.post(paths[0], json=bodies[0], headers={"X-API-Key": key})
    assert first.status_code == 200  # the helper is starting: this one went to a thread
    deadline = time.monotonic() + 60
    while decodes("process") == 0 and time.monotonic() < deadline:
        for path, body in zip(paths, bodies, strict=True):
            response = client.post(path, json=body, headers={"X-API-Key": key})
            assert response.status_code == 200, response.text
        time.sleep(0.2)
    before = decodes("process")
    assert before > 0
    for path, body in zip(paths, bodies, strict=True):
        response = client.post(path, json=body, headers={"X-API-Key": key})
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions" if "v1" in path else "outputs"]) > 0
    assert decodes("process") == before + 2
    bad = [*rows[:-1], [1.0, "x", 2.0, 3.0]]
    refused = client.post(paths[0], json={"instances": bad}, headers={"X-API-Key": key})
    assert refused.status_code == 400  # the helper's InvalidInput comes back as itself
    assert "instances" in refused.json()["error"]
