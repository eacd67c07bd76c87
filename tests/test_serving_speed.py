"""Serving speed through the real app: adaptive batching, the prediction cache, predicting on
the event loop or in worker threads, and the hot path past FastAPI's router.

Whatever makes a prediction faster must not change it: batched answers equal the model's own,
a cache hit equals the miss, a request the model fails on fails alone, and the hot path answers
exactly as the FastAPI routes would.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import orjson
import pytest
import redis
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sklearn.datasets import load_iris
from starlette.testclient import TestClient

from berth.api import hot_path
from berth.config import ModelServing, Settings
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.runtimes.base import ModelInput, Prediction
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.serving.cache import KEY_PREFIX
from berth.serving.cache_keys import cache_key
from berth.serving.dataplane import DataPlane, LoadedVersion
from berth.serving.warm_up import WARM_UP_ROUNDS
from tests.conftest import register_iris, require_service

REDIS_URL = "redis://127.0.0.1:6379/0"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS_ROWS = load_iris().data[::7].astype(np.float32).tolist()  # 22 rows of every class

POISON_MODEL = """
import numpy as np


class Poison:
    def load(self):
        self.calls = []

    def predict(self, inputs):
        self.calls.append(inputs[:, 0].tolist())
        if (inputs[:, 0] == 666).any():
            raise ValueError("row 666 is poison")
        if (inputs[:, 0] == 777).any():
            raise RuntimeError("row 777 breaks the model")
        return inputs[:, 0] * 2 + inputs[:, 1]
"""


def scaled_model(factor: float) -> str:
    return f"""
class Scaled:
    def load(self):
        pass

    def predict(self, inputs):
        return inputs.sum(axis=1) * {factor}
"""


# ---------------------------------------------------------------------------- apps


@dataclass(frozen=True)
class Served:
    app: FastAPI
    registry: Registry
    key: str
    home: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    @property
    def dataplane(self) -> DataPlane:
        found: DataPlane = self.app.state.services.dataplane
        return found

    def loaded(self, model: str = "iris", number: int = 1) -> LoadedVersion:
        return self.dataplane._loaded[(model, number)]


Serve = Callable[..., Served]


def register_python(registry: Registry, folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(source)
    np.save(folder / "sample.npy", np.ones((2, 2)))
    register(
        registry,
        RegisterRequest(
            name=name, path=folder, sample=folder / "sample.npy", aliases=("production",)
        ),
    )


@pytest.fixture
def serve(settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path) -> Iterator[Serve]:
    """Builds apps serving iris@production (and Python models) with settings overrides.

    Each app has its own data directory and registry, except with `replica_of`: then it shares
    the registry (and key) of an earlier app, like a second replica. `models` takes plain dicts,
    as BERTH_MODELS would.
    """
    from berth.api.app import build_services, create_app

    registries: list[Registry] = []

    def build(
        *,
        models: dict[str, dict[str, Any]] | None = None,
        python: dict[str, str] | None = None,
        replica_of: Served | None = None,
        **overrides: Any,
    ) -> Served:
        serving = {k: ModelServing.model_validate(v) for k, v in (models or {}).items()}
        home = replica_of.home if replica_of is not None else tmp_path / f"home-{len(registries)}"
        configured = settings.model_copy(update={"home": home, "models": serving, **overrides})
        registry = Registry.from_settings(configured)
        registries.append(registry)
        if replica_of is not None:
            key = replica_of.key
        else:
            register_iris(registry, iris_files, aliases=("production",))
            for name, source in (python or {}).items():
                register_python(registry, tmp_path / f"{name}-{uuid.uuid4().hex[:6]}", name, source)
            key = KeyService(
                registry.db, server_secret(KeyConfig.from_settings(configured))
            ).create(f"tester-{uuid.uuid4().hex[:6]}", ("predict", "read"))[1]
        app = create_app(configured, build_services(configured, registry))
        return Served(app=app, registry=registry, key=key, home=home)

    yield build
    for registry in registries:
        registry.db.dispose()


@asynccontextmanager
async def running(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    """The app started on the current event loop, with a client that calls it in process."""
    async with served.app.router.lifespan_context(served.app):
        transport = httpx.ASGITransport(app=served.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://berth", headers=served.headers
        ) as http:
            yield http


@pytest.fixture(scope="module")
def iris_model(iris_files: tuple[Path, Path]) -> Any:
    """The registered sklearn model itself, to compare served answers with."""
    return joblib.load(iris_files[0])


def without_ids(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ("prediction_id", "prediction_ids")}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def count_calls(monkeypatch: pytest.MonkeyPatch, loaded: LoadedVersion) -> list[int]:
    """Record the thread of every model call of `loaded` (the list's length: the calls)."""
    threads: list[int] = []
    predict = loaded.runtime.predict

    def recorded(inputs: ModelInput) -> Prediction:
        threads.append(threading.get_ident())
        return predict(inputs)

    monkeypatch.setattr(loaded.runtime, "predict", recorded)
    return threads


def unique_row() -> list[float]:
    """An iris-like row no earlier run has sent (the shared Redis outlives test runs)."""
    return [5.1, 3.5, 1.4, round(0.1 + (uuid.uuid4().int % 10**6) / 10**7, 7)]


# ---------------------------------------------------------------------------- batching


BATCHED = {"iris": {"max_batch_size": 8, "max_latency_ms": 50}}


def test_concurrent_requests_are_batched_and_each_gets_the_models_own_answer(
    serve: Serve, iris_model: Any
) -> None:
    served = serve(models=BATCHED)
    counts = [1, 3, 2, 1, 2, 1]
    requests: list[list[list[float]]] = []
    start = 0
    for count in counts:
        requests.append(IRIS_ROWS[start : start + count])
        start += count

    async def post(http: httpx.AsyncClient, rows: list[list[float]]) -> httpx.Response:
        if len(rows) == 1:  # one-row requests use the single-row route
            return await http.post("/api/v1/models/iris/predict", json={"features": rows[0]})
        return await http.post("/api/v1/models/iris/batch-predict", json={"instances": rows})

    async def scenario() -> list[httpx.Response]:
        async with running(served) as http:
            await post(http, [IRIS_ROW])  # keys and routes warm: the burst arrives at once
            before.update(read_metrics())
            return list(await asyncio.gather(*(post(http, rows) for rows in requests)))

    def read_metrics() -> dict[str, float]:
        labels = {"model": "iris", "version": "1"}
        return {
            "calls": sample("berth_batch_size_count", **labels),
            "rows": sample("berth_batch_size_sum", **labels),
            "small calls": sample("berth_batch_size_bucket", le="4.0", **labels),
            "waits": sample("berth_batch_queue_wait_seconds_count", **labels),
        }

    before: dict[str, float] = {}
    responses = asyncio.run(scenario())
    after = read_metrics()

    for rows, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.headers["X-Berth-Model-Version"] == "iris:1"
        body = response.json()
        features = np.array(rows, dtype=np.float32)
        labels = iris_model.predict(features).tolist()
        probabilities = iris_model.predict_proba(features)
        if len(rows) == 1:
            assert body["prediction"] == labels[0]
            got = np.array([body["probabilities"]])
        else:
            assert body["predictions"] == labels
            assert len(body["prediction_ids"]) == len(rows)
            got = np.array(body["probabilities"])
        # float32 BLAS may round a 1-row product differently from a many-row one (last ulp)
        np.testing.assert_allclose(got, probabilities, rtol=1e-5, atol=1e-9)
        assert body["classes"] == [0, 1, 2]
    assert after["waits"] - before["waits"] == len(counts)  # every request went through it
    assert after["rows"] - before["rows"] == sum(counts)
    assert after["calls"] - before["calls"] < len(counts)
    # some call held more than 4 rows: more than any one request (at most 3)
    assert (after["calls"] - after["small calls"]) - (before["calls"] - before["small calls"]) >= 1


def test_a_request_of_max_batch_size_rows_goes_past_the_batcher(serve: Serve) -> None:
    served = serve(models=BATCHED)
    labels = {"model": "iris", "version": "1"}
    with TestClient(served.app) as client:
        waits = sample("berth_batch_queue_wait_seconds_count", **labels)
        rows = sample("berth_batch_size_sum", **labels)
        response = client.post(
            "/api/v1/models/iris/batch-predict",
            json={"instances": IRIS_ROWS[:8]},
            headers=served.headers,
        )
        assert response.status_code == 200
        assert sample("berth_batch_queue_wait_seconds_count", **labels) == waits
        assert sample("berth_batch_size_sum", **labels) == rows + 8  # one call of 8 rows
        small = client.post(
            "/api/v1/models/iris/predict", json={"features": IRIS_ROW}, headers=served.headers
        )
        assert small.status_code == 200
        assert sample("berth_batch_queue_wait_seconds_count", **labels) == waits + 1


def test_a_request_the_model_fails_on_fails_alone_in_its_batch(serve: Serve) -> None:
    served = serve(
        models={"poison": {"max_batch_size": 32, "max_latency_ms": 200}},
        python={"poison": POISON_MODEL},
    )
    rows = {
        "good": [[1.0, 0.5]],
        "poison": [[2.0, 0.0], [666.0, 1.0]],  # ValueError: the input is refused (400)
        "other": [[3.0, 1.0], [4.0, 2.0], [5.0, 3.0]],
        "broken": [[777.0, 0.0]],  # RuntimeError: a bug in the model (500)
        "last": [[6.0, 0.25]],
    }

    async def scenario() -> dict[str, httpx.Response]:
        async with running(served) as http:
            answers = await asyncio.gather(
                *(
                    http.post("/api/v1/models/poison/batch-predict", json={"instances": r})
                    for r in rows.values()
                )
            )
        return dict(zip(rows, answers, strict=True))

    responses = asyncio.run(scenario())

    for name in ("good", "other", "last"):
        assert responses[name].status_code == 200, responses[name].text
        expected = [row[0] * 2 + row[1] for row in rows[name]]
        assert responses[name].json()["predictions"] == expected
    assert responses["poison"].status_code == 400
    assert "row 666 is poison" in responses["poison"].json()["error"]
    assert responses["broken"].status_code == 500
    assert "internal error" in responses["broken"].json()["error"]
    assert "breaks the model" not in responses["broken"].text  # no detail of the bug leaks
    # The model saw the requests joined first (so the failures really shared a batch).
    calls = served.loaded("poison").runtime.model.calls  # type: ignore[attr-defined]
    warm_up = 1 + WARM_UP_ROUNDS
    joined = calls[warm_up]
    assert sorted(joined) == sorted(row[0] for r in rows.values() for row in r)


def test_batching_options_come_from_berth_models_with_a_default(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv(
        "BERTH_MODELS",
        '{"rf": {"max_batch_size": 32, "max_latency_ms": 5}, "iris": {"cache": true},'
        ' "*": {"max_batch_size": 4}}',
    )
    configured = Settings()
    assert configured.serving("rf") == ModelServing(max_batch_size=32, max_latency_ms=5)
    assert configured.serving("rf").batching
    assert configured.serving("iris").cache
    assert not configured.serving("iris").batching  # its own entry, not merged with "*"
    assert configured.serving("other") == ModelServing(max_batch_size=4)
    monkeypatch.setenv("BERTH_MODELS", "{}")
    assert not Settings().serving("rf").batching


# ---------------------------------------------------------------------------- the cache


CACHED = {"iris": {"cache": True}}


def test_v1_cache_hit_is_the_miss_without_calling_the_model(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve(models=CACHED)
    path = "/api/v1/models/iris/predict"
    with TestClient(served.app, headers=served.headers) as client:
        calls = count_calls(monkeypatch, served.loaded())
        hits = sample("berth_cache_lookups_total", model="iris", result="hit")
        misses = sample("berth_cache_lookups_total", model="iris", result="miss")
        miss = client.post(path, content=b'{"features": [5.0, 3.5, 1.4, 0.2]}')
        same = client.post(path, content=b'{"features": [5.0, 3.5, 1.4, 0.2]}')
        spelled = client.post(path, content=b'{ "features" :[5, 3.50,1.4 , 2e-1 ] }')
        batch = client.post("/api/v1/models/iris/batch-predict", json={"instances": IRIS_ROWS[:3]})
        batch_again = client.post(
            "/api/v1/models/iris/batch-predict", json={"instances": IRIS_ROWS[:3]}
        )
    assert [r.status_code for r in (miss, same, spelled, batch, batch_again)] == [200] * 5
    assert miss.headers["X-Berth-Cache"] == "miss"
    assert same.headers["X-Berth-Cache"] == "hit"
    assert spelled.headers["X-Berth-Cache"] == "hit"  # decodes to the same float32 row
    assert batch.headers["X-Berth-Cache"] == "miss"
    assert batch_again.headers["X-Berth-Cache"] == "hit"
    assert len(calls) == 2  # the two misses
    for hit in (same, spelled):
        assert hit.headers["X-Berth-Model-Version"] == "iris:1"
        assert hit.json()["prediction_id"] != miss.json()["prediction_id"]
        assert without_ids(hit.json()) == without_ids(miss.json())
        assert hit.content.replace(hit.json()["prediction_id"].encode(), b"") == (
            miss.content.replace(miss.json()["prediction_id"].encode(), b"")
        )
    assert without_ids(batch_again.json()) == without_ids(batch.json())
    assert batch_again.json()["prediction_ids"] != batch.json()["prediction_ids"]
    assert sample("berth_cache_lookups_total", model="iris", result="hit") == hits + 3
    assert sample("berth_cache_lookups_total", model="iris", result="miss") == misses + 2


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_cache_hit_is_byte_identical_to_the_miss(serve: Serve, binary: bool) -> None:
    served = serve(models=CACHED)
    body: dict[str, Any] = {
        "id": "request-1",
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": IRIS_ROWS[3:5]}],
    }
    if binary:
        body["parameters"] = {"binary_data_output": True}
    with TestClient(served.app, headers=served.headers) as client:
        miss = client.post("/v2/models/iris/infer", json=body)
        hit = client.post("/v2/models/iris/infer", content=orjson.dumps(body) + b"  ")
    assert miss.status_code == 200, miss.text
    assert hit.status_code == 200, hit.text
    assert (miss.headers["X-Berth-Cache"], hit.headers["X-Berth-Cache"]) == ("miss", "hit")
    assert hit.content == miss.content
    assert hit.headers["content-type"] == miss.headers["content-type"]
    assert hit.headers.get("Inference-Header-Content-Length") == miss.headers.get(
        "Inference-Header-Content-Length"
    )
    assert ("Inference-Header-Content-Length" in hit.headers) == binary


def test_only_models_with_a_cache_say_hit_or_miss(serve: Serve) -> None:
    cached = serve(models=CACHED, python={"poison": POISON_MODEL})
    with TestClient(cached.app, headers=cached.headers) as client:
        for _ in range(2):
            other = client.post("/api/v1/models/poison/predict", json={"features": [1.0, 2.0]})
            assert other.status_code == 200
            assert "X-Berth-Cache" not in other.headers
        assert (
            "X-Berth-Cache"
            in client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW}).headers
        )


def test_without_any_cache_there_is_no_cache_header(serve: Serve) -> None:
    served = serve()
    assert served.dataplane.cache is None
    with TestClient(served.app, headers=served.headers) as client:
        responses = [
            client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
            for _ in range(2)
        ]
    assert [r.status_code for r in responses] == [200, 200]
    assert all("X-Berth-Cache" not in r.headers for r in responses)
    assert all(r.headers["X-Berth-Model-Version"] == "iris:1" for r in responses)


def test_a_default_cache_entry_applies_to_every_model(serve: Serve) -> None:
    served = serve(models={"*": {"cache": True}})
    with TestClient(served.app, headers=served.headers) as client:
        answers = [
            client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
            for _ in range(2)
        ]
    assert [a.headers["X-Berth-Cache"] for a in answers] == ["miss", "hit"]


def test_another_version_does_not_meet_the_cached_answer(
    serve: Serve, iris_files: tuple[Path, Path]
) -> None:
    served = serve(models=CACHED)
    register_iris(served.registry, iris_files)  # iris:2, the same artifact
    with TestClient(served.app, headers=served.headers) as client:
        answers = [
            client.post(f"/api/v1/models/{ref}/predict", json={"features": IRIS_ROW})
            for ref in ("iris:1", "iris:1", "iris:2", "iris:2", "iris@production")
        ]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.headers["X-Berth-Cache"] for a in answers] == ["miss", "hit", "miss", "hit", "hit"]
    assert [a.headers["X-Berth-Model-Version"] for a in answers] == [
        "iris:1",
        "iris:1",
        "iris:2",
        "iris:2",
        "iris:1",
    ]
    assert [a.json()["model_version"] for a in answers] == [1, 1, 2, 2, 1]


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        require_service("Redis at 127.0.0.1:6379", str(exc))
    yield client
    client.close()


def test_replicas_share_hits_through_redis(serve: Serve, shared_redis: redis.Redis) -> None:
    row = unique_row()
    options = {
        "models": CACHED,
        "cache_backend": "redis",
        "redis_url": REDIS_URL,
        "cache_ttl_seconds": 30.0,  # whatever a failed run leaves behind goes soon
    }
    first = serve(**options)
    second = serve(replica_of=first, **options)
    try:
        with TestClient(first.app, headers=first.headers) as one:
            miss = one.post("/api/v1/models/iris/predict", json={"features": row})
        # (stopping waits for the store, which runs after the answer)
        with TestClient(second.app, headers=second.headers) as two:
            hit = two.post("/api/v1/models/iris/predict", json={"features": row})
            again = two.post("/api/v1/models/iris/predict", json={"features": row})
    finally:
        shared_redis.delete(KEY_PREFIX + cache_key("iris", 1, np.array([row], np.float32)))
    assert [r.headers["X-Berth-Cache"] for r in (miss, hit, again)] == ["miss", "hit", "hit"]
    assert without_ids(hit.json()) == without_ids(miss.json())
    assert second.dataplane.cache is not None
    assert second.dataplane.cache.name == "redis"


def test_a_recreated_version_with_the_same_number_does_not_get_old_answers_from_redis(
    serve: Serve, shared_redis: redis.Redis, tmp_path: Path
) -> None:
    row = [float(uuid.uuid4().int % 1000), 1.0]
    options = {
        "models": {"scaled": {"cache": True}},
        "cache_backend": "redis",
        "redis_url": REDIS_URL,
        "cache_ttl_seconds": 30.0,
    }
    before = serve(python={"scaled": scaled_model(1)}, **options)
    try:
        with TestClient(before.app, headers=before.headers) as client:
            old = client.post("/api/v1/models/scaled/predict", json={"features": row})
        assert old.json()["prediction"] == sum(row)
        assert old.headers["X-Berth-Cache"] == "miss"
        # The model is deleted and registered again: its new version is scaled:1 again.
        before.registry.remove_alias("scaled", "production")
        before.registry.delete_model("scaled")
        register_python(before.registry, tmp_path / "scaled-again", "scaled", scaled_model(10))
        assert before.registry.get_version("scaled", 1).flavor == "python"
        after = serve(replica_of=before, **options)  # a restarted server
        with TestClient(after.app, headers=after.headers) as client:
            new = client.post("/api/v1/models/scaled/predict", json={"features": row})
    finally:
        shared_redis.delete(KEY_PREFIX + cache_key("scaled", 1, np.array([row])))
    assert new.status_code == 200
    assert new.json()["prediction"] == 10 * sum(row)
    assert new.headers["X-Berth-Cache"] == "miss"


# ---------------------------------------------------------------------------- inline or thread


def _thread_of_predictions(
    served: Served, monkeypatch: pytest.MonkeyPatch, model: str, features: list[float]
) -> tuple[list[httpx.Response], list[int], int]:
    """Two predictions on an app run by this thread's loop: responses, model threads, loop thread."""

    async def scenario() -> tuple[list[httpx.Response], list[int]]:
        async with running(served) as http:
            threads = count_calls(monkeypatch, served.loaded(model))
            answers = [
                await http.post(f"/api/v1/models/{model}/predict", json={"features": features})
                for _ in range(2)
            ]
        return answers, threads

    answers, threads = asyncio.run(scenario())
    return answers, threads, threading.get_ident()


def test_fast_sklearn_models_predict_on_the_event_loop_and_answer_the_same(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop = serve(inline_predict_ms=1000.0)
    in_thread = serve(replica_of=on_loop, inline_predict_ms=0.0)

    inline_answers, inline_threads, loop = _thread_of_predictions(
        on_loop, monkeypatch, "iris", IRIS_ROW
    )
    thread_answers, worker_threads, loop_again = _thread_of_predictions(
        in_thread, monkeypatch, "iris", IRIS_ROW
    )

    assert on_loop.loaded().inline is True
    assert on_loop.loaded().row_seconds < 1.0
    assert in_thread.loaded().inline is False
    assert inline_threads == [loop, loop]
    assert len(worker_threads) == 2
    assert loop_again not in worker_threads
    assert [r.status_code for r in inline_answers + thread_answers] == [200] * 4
    assert without_ids(inline_answers[0].json()) == without_ids(thread_answers[0].json())
    assert inline_answers[0].content.replace(
        inline_answers[0].json()["prediction_id"].encode(), b""
    ) == thread_answers[0].content.replace(thread_answers[0].json()["prediction_id"].encode(), b"")


def test_python_models_never_predict_on_the_event_loop(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve(inline_predict_ms=1000.0, python={"poison": POISON_MODEL})
    answers, threads, loop = _thread_of_predictions(served, monkeypatch, "poison", [1.0, 2.0])
    assert served.loaded("poison").inline is False
    assert served.loaded("poison").row_seconds < 1.0  # fast enough, but a user's code
    assert served.loaded().inline is True  # iris on the same server
    assert len(threads) == 2
    assert loop not in threads
    assert [a.json()["prediction"] for a in answers] == [4.0, 4.0]


def _slow_down(monkeypatch: pytest.MonkeyPatch, loaded: LoadedVersion, seconds: float) -> None:
    predict = loaded.runtime.predict

    def slow(inputs: ModelInput) -> Prediction:
        time.sleep(seconds)
        return predict(inputs)

    monkeypatch.setattr(loaded.runtime, "predict", slow)


def test_a_model_slow_on_the_event_loop_moves_to_worker_threads(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve(inline_predict_ms=1000.0, request_timeout_seconds=0.2)
    with TestClient(served.app, headers=served.headers) as client:
        loaded = served.loaded()
        assert loaded.inline is True
        _slow_down(monkeypatch, loaded, 0.3)
        first = client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
        assert loaded.inline is False  # one slow call on the loop was enough
        second = client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
    assert first.status_code == 200  # on the loop nothing can interrupt it
    assert second.status_code == 504  # in a thread, the request timeout applies again


def test_a_batched_model_slow_on_the_event_loop_moves_to_worker_threads(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve(
        models={"iris": {"max_batch_size": 8, "max_latency_ms": 1}},
        inline_predict_ms=1000.0,
        request_timeout_seconds=0.2,
    )
    with TestClient(served.app, headers=served.headers) as client:
        loaded = served.loaded()
        assert loaded.inline is True
        assert loaded.batcher is not None
        _slow_down(monkeypatch, loaded, 0.3)
        first = client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
        gave_up = loaded.inline
        second = client.post("/api/v1/models/iris/predict", json={"features": IRIS_ROW})
    assert first.status_code == 200
    assert gave_up is False
    assert second.status_code == 504


# ---------------------------------------------------------------------------- the hot path


V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}]}

# (method, path, body: a JSON document or raw bytes, sent with the key, expected status)
HOT_CASES: list[tuple[str, str, Any, bool, int]] = [
    ("POST", "/api/v1/models/iris/predict", {"features": IRIS_ROW}, True, 200),
    ("POST", "/api/v1/models/iris/batch-predict", {"instances": IRIS_ROWS[:3]}, True, 200),
    ("POST", "/api/v1/predict", {"features": IRIS_ROW}, True, 200),
    ("POST", "/api/v1/batch-predict", {"instances": [IRIS_ROW]}, True, 200),
    ("POST", "/api/v1/models/iris/predict", b"{not json", True, 400),
    ("POST", "/api/v1/models/iris/predict", b"", True, 400),
    ("POST", "/api/v1/models/iris/predict", {"instances": [IRIS_ROW]}, True, 400),
    ("POST", "/api/v1/models/iris/batch-predict", {"features": IRIS_ROW}, True, 400),
    ("POST", "/api/v1/models/iris/predict", {"features": [1.0, 2.0]}, True, 400),
    ("POST", "/api/v1/models/nope/predict", {"features": IRIS_ROW}, True, 404),
    ("POST", "/api/v1/models/iris:9/predict", {"features": IRIS_ROW}, True, 404),
    ("POST", "/api/v1/models/iris:x/predict", {"features": IRIS_ROW}, True, 400),
    ("POST", "/api/v1/models/iris%40production/predict", {"features": IRIS_ROW}, True, 200),
    ("POST", "/api/v1/models/iris%3A1/batch-predict", {"instances": [IRIS_ROW]}, True, 200),
    ("POST", "/api/v1/models/ir%20is/predict", {"features": IRIS_ROW}, True, 400),
    ("POST", "/api/v1/models/iris%2F1/predict", {"features": IRIS_ROW}, True, 404),
    ("POST", "/api/v1/models/iris/predict", {"features": IRIS_ROW}, False, 401),
    ("GET", "/api/v1/models/iris/predict", None, True, 405),
    ("PUT", "/api/v1/models/iris/batch-predict", {"instances": [IRIS_ROW]}, True, 405),
    ("POST", "/v2/models/iris/infer", V2_BODY, True, 200),
    ("POST", "/v2/models/iris/versions/1/infer", V2_BODY, True, 200),
    ("POST", "/v2/models/iris/versions/x/infer", V2_BODY, True, 400),
    ("POST", "/v2/models/iris/versions/9/infer", V2_BODY, True, 404),
    ("POST", "/v2/models/nope/infer", V2_BODY, True, 404),
    ("POST", "/v2/models/iris/infer", b"[1, 2", True, 400),
    ("POST", "/v2/models/iris/infer", {"inputs": []}, True, 400),
    ("POST", "/v2/models/iris%40production/infer", V2_BODY, True, 200),
    ("POST", "/v2/models/iris/infer", V2_BODY, False, 401),
    ("GET", "/v2/models/iris/infer", None, True, 405),
]
COMPARED_HEADERS = (
    "content-type",
    "x-berth-model-version",
    "www-authenticate",
    "ratelimit-limit",
    "allow",
)


def _call(client: TestClient, case: tuple[str, str, Any, bool, int], key: str) -> httpx.Response:
    method, path, body, with_key, _status = case
    headers = {"X-API-Key": key} if with_key else {}
    sent: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    response: httpx.Response = client.request(method, path, headers=headers, **sent)
    return response


def _comparable(response: httpx.Response) -> tuple[Any, ...]:
    try:
        body: Any = without_ids(response.json())
    except ValueError:
        body = response.content
    headers = {name: response.headers.get(name) for name in COMPARED_HEADERS}
    return response.status_code, body, headers


def test_the_hot_path_answers_exactly_as_the_fastapi_routes(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve(model_rates={"iris": "100000/m"})
    taken: list[str] = []
    match = hot_path.match

    def spy(path: str) -> Any:
        found = match(path)
        if found is not None:
            taken.append(path)
        return found

    with TestClient(served.app) as client:
        monkeypatch.setattr(hot_path, "match", spy)
        fast = [_call(client, case, served.key) for case in HOT_CASES]
        monkeypatch.setattr(hot_path, "match", lambda _path: None)  # every request to FastAPI
        routed = [_call(client, case, served.key) for case in HOT_CASES]

    for case, one, other in zip(HOT_CASES, fast, routed, strict=True):
        assert _comparable(one) == _comparable(other), (case, one.text, other.text)
        assert one.headers["X-Request-ID"], case
    assert [r.status_code for r in fast] == [c[4] for c in HOT_CASES]
    # the hot path served every POST to a prediction route (a %2F makes it another route)
    assert taken == [
        c[1].replace("%40", "@").replace("%3A", ":").replace("%20", " ")
        for c in HOT_CASES
        if c[0] == "POST" and "%2F" not in c[1]
    ]
    for case, response in zip(HOT_CASES, fast, strict=True):
        if response.status_code == 200:
            assert response.headers["RateLimit-Limit"] == "100000", case
            assert int(response.headers["RateLimit-Remaining"]) < 100000
            assert "RateLimit-Reset" in response.headers
        if response.status_code == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), case
        if response.status_code >= 400:
            assert set(response.json()) == {"error"}, case


def test_the_hot_path_keeps_the_callers_request_id(serve: Serve) -> None:
    served = serve()
    with TestClient(served.app, headers=served.headers) as client:
        ok = client.post(
            "/api/v1/models/iris/predict",
            json={"features": IRIS_ROW},
            headers={"X-Request-ID": "caller-42"},
        )
        failed = client.post(
            "/v2/models/nope/infer", json=V2_BODY, headers={"X-Request-ID": "caller-43"}
        )
    assert (ok.status_code, ok.headers["X-Request-ID"]) == (200, "caller-42")
    assert (failed.status_code, failed.headers["X-Request-ID"]) == (404, "caller-43")
    assert set(failed.json()) == {"error"}


def test_v2_names_holding_a_reference_are_limited_as_their_model(serve: Serve) -> None:
    served = serve(model_rates={"iris": "2/m"})
    with TestClient(served.app, headers=served.headers) as client:
        statuses = [
            client.post(path, json=V2_BODY).status_code
            for path in (
                "/v2/models/iris/infer",
                "/v2/models/iris/infer",
                "/v2/models/iris/infer",
                "/v2/models/iris:1/infer",
                "/v2/models/iris%40production/infer",
            )
        ]
    assert statuses[:3] == [200, 200, 429]
    assert statuses[3:] == [429, 429]  # the same model, the same limit
