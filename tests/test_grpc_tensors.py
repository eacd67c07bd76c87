"""ModelInferRequest to arrays and arrays to ModelInferResponse, for every datatype.

Requests are built by tritonclient.grpc (an independent implementation of the protocol) where
it can: its raw contents for every datatype it sends, then typed contents by hand.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb

from berth.api.v2_codec import InferRequest, ResponseOutput
from berth.errors import (
    ArtifactIntegrityError,
    BerthError,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    ModelLoadError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RateLimited,
    TimedOut,
    Unauthenticated,
)
from berth.grpc import tensors
from berth.grpc.generated import open_inference_grpc_pb2 as pb
from berth.grpc.rpc import StatusCode
from berth.grpc.status import status_of

ARRAYS: dict[str, np.ndarray[Any, Any]] = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -65504.0]], dtype=np.float16),
    "FP32": np.array([[1.5, np.inf], [np.nan, -0.0]], dtype=np.float32),
    "FP64": np.array([[1e300, -1e-300]], dtype=np.float64),
    "BYTES": np.array([[b"a", b""], [b"\xff\x00", "é".encode()]], dtype=object),
}


def _from_triton(datatype: str, array: np.ndarray[Any, Any]) -> pb.ModelInferRequest:
    """tritonclient's own request for `array` (raw contents), read as Berth's message."""
    tensor = triton.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    request = triton_pb.ModelInferRequest(model_name="m")
    request.inputs.extend([tensor._get_tensor()])
    request.raw_input_contents.extend([tensor._get_content()])
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def _decoded(request: pb.ModelInferRequest) -> np.ndarray[Any, Any]:
    parsed: InferRequest = tensors.parse_infer_request(request)
    return parsed.inputs[0].array


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_raw_contents_of_every_datatype_decode_to_the_same_array(datatype: str) -> None:
    array = ARRAYS[datatype]
    decoded = _decoded(_from_triton(datatype, array))
    assert decoded.shape == array.shape
    if datatype == "BYTES":
        assert decoded.tolist() == array.tolist()
    else:
        assert decoded.dtype == array.dtype
        np.testing.assert_array_equal(decoded, array)


def test_bf16_raw_contents_widen_to_float32() -> None:
    values = np.array([[1.0, -2.5, 3.140625]], dtype=ml_dtypes.bfloat16)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="BF16", shape=[1, 3])
    request.raw_input_contents.append(values.view(np.uint16).astype("<u2").tobytes())
    decoded = _decoded(request)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values.astype(np.float32))


TYPED = {
    "BOOL": ("bool_contents", [True, False]),
    "INT8": ("int_contents", [-128, 127]),
    "INT16": ("int_contents", [-(2**15), 5]),
    "INT32": ("int_contents", [-(2**31), 2**31 - 1]),
    "INT64": ("int64_contents", [-(2**63), 2**63 - 1]),
    "UINT8": ("uint_contents", [0, 255]),
    "UINT16": ("uint_contents", [0, 65535]),
    "UINT32": ("uint_contents", [0, 2**32 - 1]),
    "UINT64": ("uint64_contents", [0, 2**64 - 1]),
    "FP32": ("fp32_contents", [1.5, -0.25]),
    "FP64": ("fp64_contents", [1e300, -1e-300]),
    "BYTES": ("bytes_contents", [b"a", b"\xff"]),
}


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_of_every_datatype_decode(datatype: str) -> None:
    field, values = TYPED[datatype]
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, 2])
    getattr(tensor.contents, field).extend(values)
    decoded = _decoded(request)
    assert decoded.shape == (1, 2)
    assert decoded.reshape(-1).tolist() == values


def _typed(datatype: str, field: str, values: list[Any], shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (_typed("INT8", "int_contents", [128], [1]), "out of range for INT8"),
        (_typed("UINT16", "uint_contents", [70000], [1]), "out of range for UINT16"),
        (_typed("FP32", "fp32_contents", [1.0], [2]), "has 1 values but shape [2] needs 2"),
        (_typed("INT64", "fp32_contents", [1.0], [1]), "contents.int64_contents"),
        (_typed("FP16", "fp32_contents", [1.0], [1]), "raw_input_contents"),
        (_typed("FP32", "fp32_contents", [1.0], [-1]), "shape must be a list of non-negative"),
        (_typed("FP8", "fp32_contents", [1.0], [1]), 'datatype "FP8"'),
        (pb.ModelInferRequest(model_name="m"), "at least one input"),
    ],
    ids=["int8-range", "uint16-range", "count", "field", "fp16-typed", "shape", "type", "none"],
)
def test_flawed_typed_requests_say_what_is_wrong(
    request_: pb.ModelInferRequest, fragment: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        tensors.parse_infer_request(request_)
    assert fragment in raised.value.message
    assert "'x'" in raised.value.message or "input" in raised.value.message


def test_flawed_raw_requests_name_the_tensor() -> None:
    request = _from_triton("FP32", ARRAYS["FP32"])
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    with pytest.raises(InvalidInput, match="input 'x': raw_input_contents holds 15 bytes"):
        tensors.parse_infer_request(request)
    bools = _from_triton("BOOL", ARRAYS["BOOL"])
    bools.raw_input_contents[0] = b"\x00\x02\x01\x00"
    with pytest.raises(InvalidInput, match="input 'x': BOOL binary data"):
        tensors.parse_infer_request(bools)
    both = _from_triton("FP32", ARRAYS["FP32"])
    both.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="both typed contents and raw_input_contents"):
        tensors.parse_infer_request(both)
    extra = _from_triton("FP32", ARRAYS["FP32"])
    extra.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match="2 entries for 1 inputs"):
        tensors.parse_infer_request(extra)
    twice = _from_triton("FP32", ARRAYS["FP32"])
    twice.inputs.append(twice.inputs[0])
    twice.raw_input_contents.append(twice.raw_input_contents[0])
    with pytest.raises(InvalidInput, match="appears more than once"):
        tensors.parse_infer_request(twice)


def test_the_shape_check_sees_every_input_before_any_value_is_decoded() -> None:
    seen: list[dict[str, tuple[int, ...]]] = []

    def refuse(shapes: Any) -> None:
        seen.append(dict(shapes))
        raise InvalidInput("too big")

    request = _from_triton("FP32", ARRAYS["FP32"])
    request.raw_input_contents[0] = b"short"  # never looked at
    with pytest.raises(InvalidInput, match="too big"):
        tensors.parse_infer_request(request, refuse)
    assert seen == [{"x": (2, 2)}]


def test_parameters_and_id_come_through() -> None:
    request = _from_triton("FP32", ARRAYS["FP32"])
    request.id = "r-1"
    request.parameters["user"].string_param = "ann"
    request.parameters["n"].int64_param = 3
    request.outputs.add(name="predict")
    parsed = tensors.parse_infer_request(request)
    assert parsed.id == "r-1"
    assert parsed.parameters == {"user": "ann", "n": 3}
    assert [o.name for o in parsed.outputs] == ["predict"]
    request.parameters["empty"].CopyFrom(pb.InferParameter())
    with pytest.raises(InvalidInput, match="parameter 'empty' has no value"):
        tensors.parse_infer_request(request)


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_every_output_goes_back_raw_and_tritonclient_reads_it(datatype: str) -> None:
    array = ARRAYS[datatype]
    response = tensors.encode_infer_response("m", "3", "r-1", [ResponseOutput("y", array)])
    assert not response.outputs[0].HasField("contents")
    read = triton.InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    back = read.as_numpy("y")
    assert back.shape == array.shape
    if datatype == "BYTES":
        assert back.tolist() == array.tolist()
    else:
        np.testing.assert_array_equal(back, array)
    got = read.get_response()
    assert (got.model_name, got.model_version, got.id, got.outputs[0].datatype) == (
        "m",
        "3",
        "r-1",
        datatype,
    )


def test_strings_from_the_model_go_back_as_utf8_bytes() -> None:
    response = tensors.encode_infer_response(
        "m", "1", None, [ResponseOutput("label", np.array(["setosa", "é"]))]
    )
    read = triton.InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    assert read.as_numpy("label").tolist() == [b"setosa", "é".encode()]
    assert response.id == ""


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("x"), StatusCode.INVALID_ARGUMENT),
        (Unauthenticated("x"), StatusCode.UNAUTHENTICATED),
        (Forbidden("x"), StatusCode.PERMISSION_DENIED),
        (NotFound("x"), StatusCode.NOT_FOUND),
        (Conflict("x"), StatusCode.FAILED_PRECONDITION),
        (PayloadTooLarge("x"), StatusCode.RESOURCE_EXHAUSTED),
        (RateLimited("x", retry_after=2.5, limit=5, reset=3), StatusCode.RESOURCE_EXHAUSTED),
        (TimedOut("x"), StatusCode.DEADLINE_EXCEEDED),
        (NotReady("x"), StatusCode.UNAVAILABLE),
        (DatabaseUnavailable("x"), StatusCode.UNAVAILABLE),
        (ArtifactIntegrityError("x"), StatusCode.UNAVAILABLE),
        (ModelLoadError("x"), StatusCode.UNAVAILABLE),
    ],
)
def test_domain_errors_map_to_status_codes(error: BerthError, code: StatusCode) -> None:
    found, details, _trailers = status_of(error)
    assert (found, details) == (code, "x")


def test_every_domain_error_has_a_code_and_retries_are_timed() -> None:
    def subclasses(kind: type[BerthError]) -> list[type[BerthError]]:
        return [kind, *(s for sub in kind.__subclasses__() for s in subclasses(sub))]

    from berth.grpc.status import CODES

    for kind in subclasses(BerthError)[1:]:
        if kind.__module__ == "berth.errors":  # the domain's own; others never leave their tool
            assert any(issubclass(kind, mapped) for mapped in CODES), kind
    _, _, trailers = status_of(RateLimited("slow down", retry_after=2.5, limit=5, reset=3))
    assert trailers == (("retry-after", "3"),)


def test_anything_else_is_internal_with_an_error_id_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    code, details, _ = status_of(ZeroDivisionError("secret detail"))
    assert code is StatusCode.INTERNAL
    assert "secret detail" not in details
    error_id = details.split("id ")[1].split(",")[0]
    assert error_id in caplog.text
