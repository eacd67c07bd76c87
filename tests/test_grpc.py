"""The Open Inference Protocol over gRPC, against a real `berth serve --grpc-port --workers 2`.

Unmodified tritonclient.grpc (sync and asyncio, default settings) reads metadata and gets the
models' own predictions for a tensor model, a tabular model and an endpoint with a canary;
errors arrive with the protocol's status codes; the health service, metrics with a `protocol`
label, request ids and message limits are checked on the same server. TLS has a server of its
own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier
from skops.io import get_untrusted_types
from skops.io import load as skops_load
from tritonclient.utils import InferenceServerException

from berth.api.v2_codec import DATATYPES
from berth.config import Settings
from berth.grpc.generated import health_pb2
from berth.grpc.generated import open_inference_grpc_pb2 as pb
from berth.registry.endpoints import EndpointService, RouteSpec
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.certificates import self_signed
from tests.conftest import (
    BERTH,
    berth,
    register_churn,
    register_iris,
    require_service,
    wait_ready,
)
from tests.ports import free_port

IRIS = load_iris().data.astype(np.float32)
MAX_MESSAGE = 1024 * 1024


@dataclass(frozen=True)
class Server:
    base: str
    grpc: str
    key: str
    read_key: str
    env: dict[str, str]
    iris: dict[int, Any]
    """The models behind iris:1 and iris:2, loaded here."""
    churn: Any
    churn_rows: pd.DataFrame

    def metadata(self, key: str | None = None) -> list[tuple[str, str]]:
        return [("x-api-key", key or self.key)]


def _start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], str, int]:
    port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [*BERTH, "serve", "--port", str(port), "--grpc-port", str(grpc_port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"127.0.0.1:{port}", grpc_port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("grpc-home")
    # iris:2 answers differently (a shallow tree), so a canary's answers show who gave them.
    tree = home / "tree.joblib"
    joblib.dump(DecisionTreeClassifier(max_depth=1).fit(IRIS, load_iris().target), tree)
    settings = Settings(home=home)
    registry = Registry.from_settings(settings)
    try:
        register_iris(registry, iris_files, aliases=("production",))
        register_iris(registry, (tree, iris_files[1]))
        register_churn(registry, churn_files)
        endpoints = EndpointService(registry)
        endpoints.create("flowers", "iris:1", sticky="header:x-user")
        halves = [
            RouteSpec("stable", "stable", "iris", 1, 50),
            RouteSpec("canary", "canary", "iris", 2, 50),
        ]
        endpoints.set_routes("flowers", halves, "half to v2, as a canary step would")
        keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
        _, key = keys.create("grpc-tester", ("predict", "read"))
        _, read_key = keys.create("grpc-reader", ("read",))
    finally:
        registry.db.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {"BERTH_HOME": str(home), "BERTH_GRPC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)}
    process, base, grpc_port = _start(env, "--workers", "2")
    churn_model = skops_load(churn_files[0], trusted=get_untrusted_types(file=churn_files[0]))
    try:
        wait_ready(f"http://{base}", process, seconds=90)
        yield Server(
            base=f"http://{base}",
            grpc=f"127.0.0.1:{grpc_port}",
            key=key,
            read_key=read_key,
            env=env,
            iris={1: joblib.load(iris_files[0]), 2: joblib.load(tree)},
            churn=churn_model,
            churn_rows=pd.read_csv(churn_files[1]).head(16),
        )
    finally:
        _stop(process)


def _iris_input(rows: np.ndarray[Any, Any]) -> triton.InferInput:
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def _client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.grpc)


def _refused(call: Any, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as raised:
        call()
    assert raised.value.status() == f"StatusCode.{code.name}", raised.value
    assert fragment in raised.value.message(), raised.value.message()


# server and model metadata -----------------------------------------------------------------


def test_health_and_server_metadata_need_no_key(server: Server) -> None:
    client = _client(server)
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "berth"
    assert metadata["version"]


def test_model_metadata_of_a_tensor_model_a_tabular_model_and_an_endpoint(server: Server) -> None:
    client = _client(server)
    headers = {"x-api-key": server.key}
    iris = client.get_model_metadata("iris", headers=headers, as_json=True)
    assert iris["name"] == "iris"
    assert iris["versions"] == ["1"]
    assert iris["platform"] == "sklearn"
    assert iris["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in iris["outputs"]] == ["predict", "predict_proba"]
    second = client.get_model_metadata("iris", "2", headers=headers, as_json=True)
    assert second["versions"] == ["2"]
    churn = client.get_model_metadata("churn", headers=headers, as_json=True)
    assert [i["name"] for i in churn["inputs"]] == list(server.churn_rows.columns)
    assert churn["inputs"][2]["datatype"] == "BYTES"
    flowers = client.get_model_metadata("flowers", headers=headers, as_json=True)
    assert flowers["name"] == "flowers"
    assert flowers["versions"] == ["1"]  # the stable route's version
    assert client.is_model_ready("iris", headers=headers)
    assert client.is_model_ready("flowers", headers=headers)
    assert client.is_model_ready("iris", "2", headers=headers)  # loaded as the canary
    _refused(
        lambda: client.is_model_ready("iris", "9", headers=headers),
        grpc.StatusCode.NOT_FOUND,
        "9",
    )


# predictions equal the models' own -----------------------------------------------------------


def test_tensor_model_answers_as_the_model_does(server: Server) -> None:
    client = _client(server)
    rows = IRIS[::7]
    result = client.infer(
        "iris", [_iris_input(rows)], headers={"x-api-key": server.key}, request_id="req-1"
    )
    np.testing.assert_array_equal(result.as_numpy("predict"), server.iris[1].predict(rows))
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), server.iris[1].predict_proba(rows), rtol=1e-6
    )
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("iris", "1", "req-1")
    # a version by number, and only the output asked for
    second = client.infer(
        "iris",
        [_iris_input(rows)],
        model_version="2",
        outputs=[triton.InferRequestedOutput("predict")],
        headers={"x-api-key": server.key},
    )
    np.testing.assert_array_equal(second.as_numpy("predict"), server.iris[2].predict(rows))
    assert second.as_numpy("predict_proba") is None


def test_asyncio_client_answers_the_same(server: Server) -> None:
    rows = IRIS[:5]

    async def calls() -> list[np.ndarray[Any, Any]]:
        client = triton_aio.InferenceServerClient(server.grpc)
        try:
            assert await client.is_server_ready()
            replies = await asyncio.gather(
                *(
                    client.infer("iris", [_iris_input(rows)], headers={"x-api-key": server.key})
                    for _ in range(20)
                )
            )
        finally:
            await client.close()
        return [reply.as_numpy("predict") for reply in replies]

    for answer in asyncio.run(calls()):
        np.testing.assert_array_equal(answer, server.iris[1].predict(rows))


def test_tabular_model_takes_one_tensor_per_column(server: Server) -> None:
    frame = server.churn_rows
    inputs = []
    for column in frame.columns:
        values = frame[column].to_numpy().reshape(-1, 1)
        if values.dtype == object:
            tensor = triton.InferInput(column, list(values.shape), "BYTES")
            tensor.set_data_from_numpy(values.astype(np.object_))
        else:
            datatype = "INT64" if values.dtype.kind == "i" else "FP64"
            tensor = triton.InferInput(column, list(values.shape), datatype)
            tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    result = _client(server).infer("churn", inputs, headers={"x-api-key": server.key})
    np.testing.assert_array_equal(result.as_numpy("predict"), server.churn.predict(frame))
    np.testing.assert_allclose(
        result.as_numpy("predict_proba"), server.churn.predict_proba(frame), rtol=1e-6
    )


def test_endpoint_with_a_canary_routes_and_answers_with_the_routes_model(server: Server) -> None:
    client = _client(server)
    rows = IRIS[::5]
    seen = set()
    for user in range(40):
        reply = client.infer(
            "flowers",
            [_iris_input(rows)],
            headers={"x-api-key": server.key, "x-user": f"user-{user}"},
        )
        response = reply.get_response()
        assert response.model_name == "flowers"
        version = int(response.model_version)
        seen.add(version)
        np.testing.assert_array_equal(reply.as_numpy("predict"), server.iris[version].predict(rows))
    assert seen == {1, 2}
    # a sticky key keeps its route; a forced route wins
    first = [
        client.infer(
            "flowers", [_iris_input(rows)], headers={"x-api-key": server.key, "x-user": "ann"}
        )
        .get_response()
        .model_version
        for _ in range(5)
    ]
    assert len(set(first)) == 1
    forced = client.infer(
        "flowers",
        [_iris_input(rows)],
        headers={"x-api-key": server.key, "x-berth-route": "canary"},
    )
    assert forced.get_response().model_version == "2"


def test_predictions_are_counted_with_the_grpc_protocol_label(server: Server) -> None:
    _client(server).infer("iris", [_iris_input(IRIS[:1])], headers={"x-api-key": server.key})
    text = httpx.get(f"{server.base}/metrics", headers={"x-api-key": server.key}).text
    assert 'model="iris",protocol="grpc",status="ok",version="1"' in text


# errors -----------------------------------------------------------------------------------


def test_errors_arrive_with_the_protocols_status_codes(server: Server) -> None:
    client = _client(server)
    key = {"x-api-key": server.key}
    rows = IRIS[:2]
    _refused(
        lambda: client.infer("iris", [_iris_input(rows)]), grpc.StatusCode.UNAUTHENTICATED, "key"
    )
    _refused(
        lambda: client.infer("iris", [_iris_input(rows)], headers={"x-api-key": "nope"}),
        grpc.StatusCode.UNAUTHENTICATED,
        "",
    )
    _refused(
        lambda: client.infer("iris", [_iris_input(rows)], headers={"x-api-key": server.read_key}),
        grpc.StatusCode.PERMISSION_DENIED,
        "predict",
    )
    _refused(
        lambda: client.infer("lilies", [_iris_input(rows)], headers=key),
        grpc.StatusCode.NOT_FOUND,
        "lilies",
    )
    _refused(
        lambda: client.infer("iris", [_iris_input(rows)], model_version="9", headers=key),
        grpc.StatusCode.NOT_FOUND,
        "9",
    )
    wide = triton.InferInput("input", [2, 5], "FP32")
    wide.set_data_from_numpy(np.zeros((2, 5), dtype=np.float32))
    _refused(
        lambda: client.infer("iris", [wide], headers=key),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input",
    )
    _refused(
        lambda: client.infer(
            "iris", [_iris_input(rows)], outputs=[triton.InferRequestedOutput("nope")], headers=key
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "nope",
    )
    _refused(
        lambda: client.get_model_metadata("lilies", headers=key),
        grpc.StatusCode.NOT_FOUND,
        "lilies",
    )
    # Triton's own calls beyond the protocol
    _refused(
        lambda: client.get_model_config("iris", headers=key), grpc.StatusCode.UNIMPLEMENTED, ""
    )
    _refused(
        lambda: client.get_model_repository_index(headers=key),
        grpc.StatusCode.UNIMPLEMENTED,
        "",
    )


def test_a_shape_that_does_not_match_its_raw_contents_names_the_tensor(server: Server) -> None:
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(np.zeros(7, dtype="<f4").tobytes())
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            infer(request, metadata=server.metadata())
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input'" in raised.value.details()
    assert "28 bytes" in raised.value.details()


def test_a_message_beyond_the_limit_is_resource_exhausted(server: Server) -> None:
    rows = np.zeros((MAX_MESSAGE // 16 + 1, 4), dtype=np.float32)
    _refused(
        lambda: _client(server).infer(
            "iris", [_iris_input(rows)], headers={"x-api-key": server.key}
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    )


def test_typed_contents_are_decoded_like_raw_ones(server: Server) -> None:
    rows = IRIS[:3]
    request = pb.ModelInferRequest(model_name="iris", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 4])
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    request.outputs.add(name="predict")
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response, call = infer.with_call(
            request, metadata=[*server.metadata(), ("x-request-id", "abc-123")]
        )
    assert response.id == "typed"
    assert [o.name for o in response.outputs] == ["predict"]
    assert not response.outputs[0].HasField("contents")  # always raw, as tritonclient reads
    labels = np.frombuffer(response.raw_output_contents[0], dtype="<i8")
    np.testing.assert_array_equal(labels, server.iris[1].predict(rows))
    trailers = dict(call.trailing_metadata())
    assert trailers["x-request-id"] == "abc-123"
    assert trailers["x-berth-model-version"] == "iris:1"


def test_health_service_says_serving(server: Server) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        serving = health_pb2.HealthCheckResponse.SERVING
        assert check(health_pb2.HealthCheckRequest()).status == serving
        named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert check(named).status == serving
        with pytest.raises(grpc.RpcError) as raised:
            check(health_pb2.HealthCheckRequest(service="nope"))
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        stream = watch(health_pb2.HealthCheckRequest(), timeout=5)
        assert next(stream).status == serving
        stream.cancel()


# the process -------------------------------------------------------------------------------


def test_tls_with_the_servers_certificate(tmp_path: Path, server: Server) -> None:
    cert, key = self_signed(tmp_path)
    process, _base, grpc_port = _start(server.env, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        client = triton.InferenceServerClient(
            f"localhost:{grpc_port}", ssl=True, root_certificates=str(cert)
        )
        _wait_live(client, process)
        result = client.infer("iris", [_iris_input(IRIS[:2])], headers={"x-api-key": server.key})
        np.testing.assert_array_equal(result.as_numpy("predict"), server.iris[1].predict(IRIS[:2]))
        plain = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
    finally:
        _stop(process)


def _wait_live(client: triton.InferenceServerClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            if client.is_server_ready(client_timeout=2):
                return
        except InferenceServerException:
            pass
        time.sleep(0.2)
    raise AssertionError("the gRPC server did not become ready in time")


def test_berth_serve_refuses_a_grpc_port_in_use(server: Server) -> None:
    port = int(server.grpc.rsplit(":", 1)[1])
    done = berth(server.env, "serve", "--port", str(free_port()), "--grpc-port", str(port))
    assert done.returncode != 0
    assert f"port {port}" in done.stderr
    assert "--grpc-port" in done.stderr
    assert "Traceback" not in done.stderr


# fuzzing ModelInfer ------------------------------------------------------------------------

_NAMES = st.sampled_from(
    ["input", "x", "", "tenure_months", "monthly_charges", "plan", "support_calls", "é"]
)
_DATATYPES = st.sampled_from([*DATATYPES, "FP8", "", "fp32", "STRING"])
_CONTENT_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}


@st.composite
def _infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["iris", "churn", "flowers", "nope", "", "iris@x", "a/b"])),
        model_version=draw(st.sampled_from(["", "1", "2", "0", "x", "-1", "9" * 30])),
        id=draw(st.text(max_size=8)),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        tensor = request.inputs.add(
            name=draw(_NAMES),
            datatype=draw(_DATATYPES),
            shape=draw(st.lists(st.integers(-2, 6), max_size=4)),
        )
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=96)))
        else:
            field = draw(st.sampled_from(sorted(_CONTENT_FIELDS)))
            values = draw(st.lists(_CONTENT_FIELDS[field], max_size=24))
            getattr(tensor.contents, field).extend(values)
        if draw(st.booleans()):
            tensor.parameters["p"].CopyFrom(_parameter(draw))
    if raw and draw(st.booleans()):
        request.raw_input_contents.append(b"\x00")  # one entry too many
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["predict", "predict_proba", "x", ""])))
    if draw(st.booleans()):
        request.parameters["p"].CopyFrom(_parameter(draw))
    return request


def _parameter(draw: st.DrawFn) -> pb.InferParameter:
    kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "none"]))
    parameter = pb.InferParameter()
    if kind == "bool_param":
        parameter.bool_param = draw(st.booleans())
    elif kind == "int64_param":
        parameter.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "string_param":
        parameter.string_param = draw(st.text(max_size=8))
    return parameter


@pytest.fixture(scope="module")
def raw_infer(server: Server) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")


def _outcome(raw_infer: Any, server: Server, data: bytes) -> grpc.StatusCode:
    try:
        raw_infer(data, metadata=server.metadata(), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_infer_requests())
def test_fuzzed_infer_requests_never_fail_inside_the_server(
    server: Server, raw_infer: Any, request: pb.ModelInferRequest
) -> None:
    code = _outcome(raw_infer, server, request.SerializeToString())
    assert code in {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }, request


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_bytes_that_are_no_message_are_invalid_argument(
    server: Server, raw_infer: Any, data: bytes
) -> None:
    code = _outcome(raw_infer, server, data)
    assert code in {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }


# KServe's client -------------------------------------------------------------------------------

KSERVE_PYTHON = Path(__file__).resolve().parent.parent / ".tools" / "kserve" / "bin" / "python"


def test_kserves_grpc_client_unmodified(server: Server) -> None:
    if not KSERVE_PYTHON.exists():
        require_service("KServe's Python client", "run `make kserve-client`")
    rows = IRIS[::9]
    script = Path(__file__).resolve().parent / "clients" / "kserve_grpc.py"
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(script), server.grpc, server.key, json.dumps(rows.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    assert seen["server"]["name"] == "berth"
    assert seen["model"] == {
        "name": "iris",
        "platform": "sklearn",
        "inputs": [["input", "FP32", [-1, 4]]],
    }
    model = server.iris[1]
    for form in ("raw", "typed"):
        answer = seen[form]
        assert (answer["id"], answer["version"]) == (form, "1")
        np.testing.assert_array_equal(answer["outputs"]["predict"], model.predict(rows))
        np.testing.assert_allclose(
            answer["outputs"]["predict_proba"], model.predict_proba(rows), rtol=1e-6
        )
    assert seen["canary"]["model"] == "flowers"
    assert seen["canary"]["version"] == "2"
    np.testing.assert_array_equal(seen["canary"]["predict"], server.iris[2].predict(rows))
    assert seen["missing"] == "NOT_FOUND"
    assert seen["no_key"] == "UNAUTHENTICATED"


# berth bench --protocol grpc ---------------------------------------------------------------


def test_berth_bench_loads_a_model_over_grpc(server: Server) -> None:
    port = server.grpc.rsplit(":", 1)[1]
    common = ("bench", "iris", "--protocol", "grpc", "--grpc-port", port, "--server", server.base)
    done = berth(server.env, *common, "--requests", "300", "--concurrency", "4",
                 "--warmup", "0", "--api-key", server.key, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["method"] == "gRPC"
    assert report["target"] == f"grpc://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"
    assert (report["requests"], report["ok"], report["errors"]) == (300, 300, 0)
    assert report["status_codes"] == {"200": 300}
    assert report["latency_ms"]["p50"] > 0
    refused = berth(server.env, *common, "--requests", "5", "--api-key", server.read_key)
    assert refused.returncode == 1
    assert "403" in refused.stderr
    assert "predict scope" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    nobody = berth(server.env, *common[:-4], "--grpc-port", str(free_port()),
                   "--server", server.base, "--requests", "5", "--api-key", server.key)  # fmt: skip
    assert nobody.returncode == 1
    assert "nothing answers gRPC" in nobody.stderr
