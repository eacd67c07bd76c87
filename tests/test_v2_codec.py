"""The Open Inference Protocol v2 codec, alone and against tritonclient's own encoder/decoder."""

from __future__ import annotations

import struct
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from berth.api.v2_codec import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    ResponseOutput,
    bf16_bits_to_float32,
    datatype_of,
    encode_error,
    encode_infer_response,
    float32_to_bf16_bits,
    numpy_dtype,
    parse_header_length,
    parse_infer_request,
)
from berth.errors import InvalidInput, ModelLoadError

NDArray = np.ndarray[Any, Any]

# One sample per datatype, with the extremes of each range. BF16 samples are exactly
# representable in bfloat16; BYTES samples are valid UTF-8 so they also travel as JSON.
SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True],
    "UINT8": [0, 7, 255],
    "UINT16": [0, 7, 65535],
    "UINT32": [0, 7, 2**32 - 1],
    "UINT64": [0, 7, 2**64 - 1],
    "INT8": [-128, 0, 127],
    "INT16": [-(2**15), 0, 2**15 - 1],
    "INT32": [-(2**31), 0, 2**31 - 1],
    "INT64": [-(2**63), 0, 2**63 - 1],
    "FP16": [0.1, -65504.0, 6e-8, -0.0],
    "FP32": [0.1, 3.4e38, -1e-45, -0.0],
    "FP64": [0.1, 1.7976931348623157e308, 5e-324, -0.0],
    "BF16": [1.5, -2.25, 2.0**127, -0.0],
    "BYTES": ["", "abc", "h\u00e9llo \u2603"],
}


def sample_array(datatype: str, shape: tuple[int, ...] | None = None) -> NDArray:
    values = SAMPLES[datatype]
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = [v.encode("utf-8") for v in values]
    else:
        array = np.array(values, dtype=numpy_dtype(datatype))
    return array if shape is None else array.reshape(shape)


def wire_bytes(datatype: str, array: NDArray) -> bytes:
    """Binary encoding written out by hand (independent of the codec)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    if datatype == "BF16":
        return array.astype(ml_dtypes.bfloat16).tobytes()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def assert_same(got: NDArray, expected: NDArray) -> None:
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    if expected.dtype == object:
        assert got.tolist() == expected.tolist()
    else:
        assert got.tobytes() == expected.tobytes()  # bitwise: keeps -0.0 and NaN honest


def json_request(*inputs: dict[str, Any], **top: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **top})


def binary_request(*inputs: tuple[dict[str, Any], bytes], **top: Any) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": [spec for spec, _ in inputs], **top})
    return header + b"".join(raw for _, raw in inputs), len(header)


def binary_spec(shape: list[int], datatype: str, size: int, name: str = "x") -> dict[str, Any]:
    return {
        "name": name,
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


def parse_one(body: bytes, json_length: int | None = None) -> NDArray:
    request = parse_infer_request(body, json_length)
    assert len(request.inputs) == 1
    return request.inputs[0].array


def client_result(body: bytes, headers: dict[str, str]) -> Any:
    length = headers.get(HEADER_LENGTH)
    return th.InferResult.from_response_body(
        body, verbose=False, header_length=None if length is None else int(length)
    )


def invalid(body: bytes, json_length: int | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_infer_request(body, json_length)
    return caught.value.message


# ---------------------------------------------------------------------------- datatypes


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        (np.bool_, "BOOL"),
        (np.uint8, "UINT8"),
        (np.uint16, "UINT16"),
        (np.uint32, "UINT32"),
        (np.uint64, "UINT64"),
        (np.int8, "INT8"),
        (np.int16, "INT16"),
        (np.int32, "INT32"),
        (np.int64, "INT64"),
        (np.float16, "FP16"),
        (np.float32, "FP32"),
        (np.float64, "FP64"),
        (object, "BYTES"),
        (np.str_, "BYTES"),
        (np.bytes_, "BYTES"),
        (ml_dtypes.bfloat16, "BF16"),
        (">f8", "FP64"),
        (">u2", "UINT16"),
    ],
)
def test_datatype_of(dtype: Any, datatype: str) -> None:
    assert datatype_of(np.zeros(2, dtype=dtype)) == datatype


@pytest.mark.parametrize("dtype", [np.complex128, "datetime64[s]", np.void])
def test_datatype_of_unsupported_dtype(dtype: Any) -> None:
    with pytest.raises(ModelLoadError, match="has no Open Inference Protocol datatype"):
        datatype_of(np.zeros(2, dtype=dtype))


@pytest.mark.parametrize("datatype", DATATYPES)
def test_numpy_dtype_matches_samples(datatype: str) -> None:
    expected = {"BF16": np.dtype(np.float32), "BYTES": np.dtype(object)}
    assert numpy_dtype(datatype) == expected.get(datatype, sample_array(datatype).dtype)


def test_numpy_dtype_unknown() -> None:
    with pytest.raises(InvalidInput, match="FP8"):
        numpy_dtype("FP8")


def test_bf16_rounding_is_nearest_even() -> None:
    bits = np.array([0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF], np.uint32)
    rounded = float32_to_bf16_bits(bits.view(np.float32))
    assert rounded.tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F81]


def test_bf16_rounding_matches_ml_dtypes() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(10_000).astype(np.float32) * np.float32(1e3)
    values = np.concatenate([values, np.array([np.inf, -np.inf, 0.0, -0.0], np.float32)])
    expected = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert float32_to_bf16_bits(values).tolist() == expected.tolist()


def test_bf16_special_values() -> None:
    values = np.array([np.nan, -np.nan, np.finfo(np.float32).max], np.float32)
    decoded = bf16_bits_to_float32(float32_to_bf16_bits(values))
    assert np.isnan(decoded[:2]).all()
    assert np.signbit(decoded[1])
    assert decoded[2] == np.inf  # float32 max rounds up past the largest bfloat16


# ---------------------------------------------------------------------------- JSON in


@pytest.mark.parametrize("datatype", DATATYPES)
def test_json_input_every_datatype(datatype: str) -> None:
    values = SAMPLES[datatype]
    body = json_request({"name": "x", "shape": [len(values)], "datatype": datatype, "data": values})
    request = parse_infer_request(body, None)
    (item,) = request.inputs
    assert (item.name, item.shape, item.datatype) == ("x", (len(values),), datatype)
    assert_same(item.array, sample_array(datatype))


def test_json_input_nested_and_flat_give_same_array() -> None:
    spec = {"name": "x", "shape": [2, 3], "datatype": "INT32"}
    flat = parse_one(json_request({**spec, "data": [1, 2, 3, 4, 5, 6]}))
    nested = parse_one(json_request({**spec, "data": [[1, 2, 3], [4, 5, 6]]}))
    assert_same(flat, np.arange(1, 7, dtype=np.int32).reshape(2, 3))
    assert_same(nested, flat)


def test_json_input_deep_nesting_does_not_recurse() -> None:
    depth = 1020  # orjson allows 1024 levels, more than Python's recursion limit
    data = b"[" * depth + b"7" + b"]" * depth
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": ' + data + b"}]}"
    assert parse_one(body).tolist() == [7]


@pytest.mark.parametrize(
    ("shape", "data"),
    [([1], [5]), ([], [5]), ([0], []), ([2, 0], [[], []]), ([1, 1, 1], [[[5]]])],
)
def test_json_input_shapes(shape: list[int], data: list[Any]) -> None:
    array = parse_one(
        json_request({"name": "x", "shape": shape, "datatype": "INT64", "data": data})
    )
    assert array.shape == tuple(shape)
    assert array.dtype == np.int64


def test_json_input_null_is_nan_for_floats() -> None:
    body = json_request({"name": "x", "shape": [2], "datatype": "FP32", "data": [None, 1]})
    array = parse_one(body)
    assert np.isnan(array[0])
    assert array[1] == 1.0


def test_json_input_bf16_rounds_to_bfloat16() -> None:
    body = json_request({"name": "x", "shape": [1], "datatype": "BF16", "data": [0.1]})
    assert_same(
        parse_one(body), np.array([0.1], np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    )


def test_request_fields_and_outputs() -> None:
    body = json_request(
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"k": 1}},
        id="42",
        parameters={"binary_data_output": True, "priority": 2},
        outputs=[
            {"name": "a"},
            {"name": "b", "parameters": {"binary_data": False}},
            {"name": "c", "parameters": {"binary_data": True, "classification": 3}},
        ],
    )
    request = parse_infer_request(body, None)
    assert request.id == "42"
    assert request.parameters == {"binary_data_output": True, "priority": 2}
    assert request.binary_output is True
    assert request.inputs[0].parameters == {"k": 1}
    assert request.outputs == [
        RequestedOutput("a", None, {}),
        RequestedOutput("b", False, {"binary_data": False}),
        RequestedOutput("c", True, {"binary_data": True, "classification": 3}),
    ]
    assert [request.output_binary(n) for n in ("a", "b", "c", "other")] == [True, False, True, True]


def test_request_defaults() -> None:
    request = parse_infer_request(
        json_request({"name": "x", "shape": [1], "datatype": "BOOL", "data": [True]}), None
    )
    assert request == InferRequest(None, {}, request.inputs, [], False)
    assert request.output_binary("y") is False


def test_spec_example_request() -> None:
    body = json_request(
        {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
        {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
        id="42",
        outputs=[{"name": "output0"}],
    )
    request = parse_infer_request(body, None)
    assert_same(request.inputs[0].array, np.array([[1, 2], [3, 4]], np.uint32))
    assert request.inputs[1].array.tolist() == [True, False, True]


# ---------------------------------------------------------------------------- binary in


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_input_every_datatype(datatype: str) -> None:
    expected = sample_array(datatype)
    raw = wire_bytes(datatype, expected)
    body, length = binary_request((binary_spec(list(expected.shape), datatype, len(raw)), raw))
    array = parse_one(body, length)
    assert_same(array, expected)
    if datatype != "BYTES":
        assert array.flags.writeable
        assert array.dtype.isnative


def test_binary_bytes_keeps_arbitrary_bytes() -> None:
    raw = struct.pack("<I", 3) + b"\x00\xff\x80" + struct.pack("<I", 0)
    spec = binary_spec([2], "BYTES", len(raw))
    assert parse_one(*binary_request((spec, raw))).tolist() == [b"\x00\xff\x80", b""]


def test_binary_inputs_are_taken_in_order_with_json_inputs_between() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, -1], dtype=np.int64)
    body, length = binary_request(
        (binary_spec([2, 3], "FP32", 24, name="a"), a.tobytes()),
        ({"name": "j", "shape": [1], "datatype": "INT8", "data": [3]}, b""),
        (binary_spec([2], "INT64", 16, name="b"), b.tobytes()),
    )
    request = parse_infer_request(body, length)
    assert_same(request.inputs[0].array, a)
    assert request.inputs[1].array.tolist() == [3]
    assert_same(request.inputs[2].array, b)


@pytest.mark.parametrize("shape", [[0], [2, 0], [0, 5]])
@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "BOOL"])
def test_binary_input_empty(shape: list[int], datatype: str) -> None:
    array = parse_one(*binary_request((binary_spec(shape, datatype, 0), b"")))
    assert array.shape == tuple(shape)
    assert array.dtype == numpy_dtype(datatype)


def test_binary_size_zero_without_header_is_fine() -> None:
    assert parse_one(json_request(binary_spec([0], "FP32", 0)), None).shape == (0,)


# ---------------------------------------------------------------------------- errors in


def x_input(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not None}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (x_input(data=[1, 2, 3]), "has 3 values but shape [2] needs 2"),
        (x_input(data=[[1], [2], [3]]), "has 3 values"),
        (x_input(data=[1.5, 2]), "JSON integers"),
        (x_input(data=[2.0, 2]), "JSON integers"),
        (x_input(data=[True, 2]), "JSON integers"),
        (x_input(data=["1", 2]), "JSON integers"),
        (x_input(data=[1, 2**31]), "out of range for INT32"),
        (x_input(datatype="UINT8", data=[-1, 2]), "out of range for UINT8"),
        (x_input(datatype="INT8", data=[128, 0]), "out of range for INT8"),
        (x_input(datatype="BOOL", data=[1, 0]), "true or false"),
        (x_input(datatype="FP32", data=[1, "2"]), "numbers"),
        (x_input(datatype="FP32", data=[1, True]), "numbers"),
        (x_input(datatype="FP16", data=[1, 70000]), "too large for FP16"),
        (x_input(datatype="FP32", data=[1, 1e39]), "too large for FP32"),
        (x_input(datatype="BF16", data=[1, 3.4e38]), "too large for BF16"),
        (x_input(datatype="BYTES", data=["a", 1]), "strings"),
        (x_input(data=[1, {"a": 1}]), "JSON integers"),
        (x_input(data=5), "must be a list"),
        (x_input(datatype="FP8"), 'datatype "FP8" is not'),
        (x_input(datatype="fp32"), "is not an Open Inference Protocol datatype"),
        (x_input(datatype=None), "datatype null"),
        (x_input(data=None), "no values"),
        (x_input(shape=None), "shape must be"),
        (x_input(shape=[-1]), "shape must be"),
        (x_input(shape=[2.0]), "shape must be"),
        (x_input(shape=2), "shape must be"),
        (x_input(shape=[1] * 33, data=[1]), "at most 32"),
        (x_input(shape=[0, 2**62, 2**62], data=[]), "too large"),
        (x_input(shape=[0, 2**62], data=None, parameters={"binary_data_size": 0}), "too large"),
        (x_input(parameters=[1]), "'parameters' must be a JSON object"),
        (x_input(parameters={"binary_data_size": 8}), "both 'data' and"),
        (x_input(data=None, parameters={"binary_data_size": -1}), "non-negative integer"),
        (x_input(data=None, parameters={"binary_data_size": "8"}), "non-negative integer"),
        (x_input(data=None, parameters={"shared_memory_region": "r"}), "shared memory"),
    ],
)
def test_invalid_input(spec: dict[str, Any], expected: str) -> None:
    message = invalid(json_request(spec))
    assert expected in message
    assert "'x'" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[1]", "expected a JSON object"),
        (b"{}", "non-empty list"),
        (orjson.dumps({"inputs": []}), "non-empty list"),
        (orjson.dumps({"inputs": {"name": "x"}}), "non-empty list"),
        (orjson.dumps({"inputs": [1]}), "inputs[0]"),
        (orjson.dumps({"inputs": [{"shape": [1]}]}), "inputs[0].name"),
        (json_request(x_input(), id=42), "request id"),
        (json_request(x_input(), parameters=[]), "must be a JSON object"),
        (json_request(x_input(), parameters={"binary_data_output": 1}), "binary_data_output"),
        (json_request(x_input(), outputs={"name": "y"}), "request outputs"),
        (json_request(x_input(), outputs=[{"name": 1}]), "outputs[0]"),
        (json_request(x_input(), outputs=[{"name": "y"}, {"name": "y"}]), "more than once"),
        (
            json_request(x_input(), outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
            "binary_data must be true or false",
        ),
        (json_request(x_input(), x_input()), "input 'x' appears more than once"),
    ],
)
def test_invalid_request(body: bytes, expected: str) -> None:
    assert expected in invalid(body)


def test_integer_beyond_64_bits_is_refused() -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT64", '
    body += b'"data": [18446744073709551616]}]}'
    assert "JSON integers" in invalid(body)  # orjson reads it as a float


def test_trailing_binary_without_header_hints_at_header() -> None:
    body = json_request(x_input()) + b"\x00\x01"
    assert HEADER_LENGTH in invalid(body, None)


def fp32_binary(size: int) -> dict[str, Any]:
    return binary_spec([2], "FP32", size)


def test_binary_size_not_matching_shape() -> None:
    body, length = binary_request((fp32_binary(4), b"\x00" * 4))
    message = invalid(body, length)
    assert "'x'" in message
    assert "needs 8" in message


def test_binary_size_beyond_body() -> None:
    body, length = binary_request((fp32_binary(8), b"\x00" * 4))
    assert "only 4 bytes" in invalid(body, length)


def test_binary_data_without_header() -> None:
    body, _ = binary_request((fp32_binary(8), b""))
    assert "only 0 bytes" in invalid(body, None)


def test_leftover_binary_bytes() -> None:
    body, length = binary_request((fp32_binary(8), b"\x00" * 12))
    assert "4 bytes of binary data" in invalid(body, length)


@pytest.mark.parametrize("json_length", [-1, 10_000])
def test_bad_header_length(json_length: int) -> None:
    body, _ = binary_request((fp32_binary(8), b"\x00" * 8))
    assert HEADER_LENGTH in invalid(body, json_length)


def test_header_length_cutting_the_json() -> None:
    body, length = binary_request((fp32_binary(8), b"\x00" * 8))
    assert "not valid JSON" in invalid(body, length - 1)


def test_bool_binary_must_be_zero_or_one() -> None:
    assert "0 or 1" in invalid(*binary_request((binary_spec([2], "BOOL", 2), b"\x01\x02")))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (struct.pack("<I", 3) + b"ab", "ends inside element 0 of 2"),
        (struct.pack("<I", 1) + b"a" + b"\x00\x00", "ends inside element 1 of 2"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"bc", "1 bytes left"),
    ],
)
def test_bytes_binary_malformed(raw: bytes, expected: str) -> None:
    message = invalid(*binary_request((binary_spec([2], "BYTES", len(raw)), raw)))
    assert expected in message
    assert "'x'" in message


def test_parse_header_length() -> None:
    assert parse_header_length(None) is None
    assert parse_header_length("123") == 123
    assert parse_header_length(" 0 ") == 0
    for bad in ("", "-1", "1.5", "abc"):
        with pytest.raises(InvalidInput, match=HEADER_LENGTH):
            parse_header_length(bad)


# ---------------------------------------------------------------------------- response


def decode_response(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    length = int(headers.get(HEADER_LENGTH, len(body)))
    return orjson.loads(body[:length]), body[length:]


def test_json_response_shape_and_headers() -> None:
    body, headers = encode_infer_response(
        "m", "3", "42", [ResponseOutput("y", np.array([[1, 2], [3, 4]], np.int32))], {"p": 1}
    )
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "3",
        "id": "42",
        "parameters": {"p": 1},
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]}],
    }


def test_response_omits_missing_version_and_id() -> None:
    body, _ = encode_infer_response("m", None, None, [])
    assert orjson.loads(body) == {"model_name": "m", "outputs": []}


def test_binary_response_layout() -> None:
    y = np.array([1.0, 2.0], np.float32)
    body, headers = encode_infer_response(
        "m", "1", None, [ResponseOutput("y", y, parameters={"k": "v"}, binary=True)]
    )
    assert headers["Content-Type"] == "application/octet-stream"
    document, tail = decode_response(body, headers)
    assert document["outputs"] == [
        {
            "name": "y",
            "datatype": "FP32",
            "shape": [2],
            "parameters": {"k": "v", "binary_data_size": 8},
        }
    ]
    assert tail == y.tobytes()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_every_datatype_through_tritonclient(datatype: str, binary: bool) -> None:
    array = sample_array(datatype)
    shape = (1, len(array))
    body, headers = encode_infer_response(
        "m", "1", None, [ResponseOutput("y", array.reshape(shape), datatype, binary=binary)]
    )
    got = client_result(body, headers).as_numpy("y")
    if datatype == "BYTES":
        expected = array if binary else np.array([v.decode() for v in array], dtype=object)
        assert got.shape == shape
        assert got.reshape(-1).tolist() == expected.tolist()
    elif datatype == "BF16":
        assert_same(got, array.astype(ml_dtypes.bfloat16).reshape(shape))
    else:
        assert_same(got, array.reshape(shape))


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_every_datatype_own_round_trip(datatype: str, binary: bool) -> None:
    """What we send comes back identical through our own request parser."""
    array = sample_array(datatype, (len(SAMPLES[datatype]), 1))
    body, headers = encode_infer_response(
        "m", None, None, [ResponseOutput("x", array, datatype, binary=binary)]
    )
    document, tail = decode_response(body, headers)
    spec = document["outputs"][0]
    if not binary:
        assert len(spec["data"]) == array.size  # flat, row-major
    header = orjson.dumps({"inputs": [spec]})
    assert_same(parse_one(header + tail, len(header)), array)


def test_mixed_binary_and_json_outputs_through_tritonclient() -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    s = np.array([b"x", b"\xff\x00", b""], dtype=object)
    f = np.array([[0.5, -1.25]], np.float16)
    flags = np.array([True, False])
    body, headers = encode_infer_response(
        "m",
        "1",
        "r",
        [
            ResponseOutput("a", a, binary=True),
            ResponseOutput("flags", flags),
            ResponseOutput("s", s, binary=True),
            ResponseOutput("f", f),
        ],
    )
    result = client_result(body, headers)
    assert_same(result.as_numpy("a"), a)
    assert_same(result.as_numpy("flags"), flags)
    assert result.as_numpy("s").tolist() == s.tolist()
    assert_same(result.as_numpy("f"), f)
    assert result.get_response()["id"] == "r"


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("shape", [(0,), (2, 0), ()])
def test_response_empty_and_scalar_through_tritonclient(
    shape: tuple[int, ...], binary: bool
) -> None:
    array = np.zeros(shape, np.float32)
    strings = np.full(shape, b"s", dtype=object)
    body, headers = encode_infer_response(
        "m",
        None,
        None,
        [ResponseOutput("y", array, binary=binary), ResponseOutput("s", strings, binary=binary)],
    )
    result = client_result(body, headers)
    assert_same(result.as_numpy("y"), array)
    assert result.as_numpy("s").shape == shape


def test_response_converts_to_declared_datatype() -> None:
    outputs = [
        ResponseOutput("f", np.array([1.5, 2.5], np.float64), "FP32"),
        ResponseOutput("i", np.array([1, 2], np.int64), "FP32"),
        ResponseOutput("b", np.array([0.1, 1.0], np.float32), "BF16", binary=True),
        ResponseOutput("u", np.array(["a", "\u00e9"]), None),
        ResponseOutput("o", np.array([1, "z"], dtype=object), "BYTES", binary=True),
    ]
    result = client_result(*encode_infer_response("m", None, None, outputs))
    assert_same(result.as_numpy("f"), np.array([1.5, 2.5], np.float32))
    assert_same(result.as_numpy("i"), np.array([1, 2], np.float32))
    assert_same(result.as_numpy("b"), np.array([0.1, 1.0], np.float32).astype(ml_dtypes.bfloat16))
    assert result.as_numpy("u").tolist() == ["a", "\u00e9"]
    assert result.as_numpy("o").tolist() == [b"1", b"z"]


def test_response_json_data_is_row_major_for_any_memory_layout() -> None:
    array = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    body, _ = encode_infer_response("m", None, None, [ResponseOutput("y", array[:, ::-1])])
    assert orjson.loads(body)["outputs"][0]["data"] == [2, 1, 0, 5, 4, 3]


def test_response_numpy_bytes_array() -> None:
    array = np.array([b"a", b"bc"])  # dtype S2
    outputs = [ResponseOutput("j", array), ResponseOutput("b", array, binary=True)]
    result = client_result(*encode_infer_response("m", None, None, outputs))
    assert result.as_numpy("j").tolist() == ["a", "bc"]
    assert result.as_numpy("b").tolist() == [b"a", b"bc"]


def test_response_big_endian_array() -> None:
    array = np.array([1, -2], dtype=">i4")
    for binary in (False, True):
        body, headers = encode_infer_response(
            "m", None, None, [ResponseOutput("y", array, binary=binary)]
        )
        assert client_result(body, headers).as_numpy("y").tolist() == [1, -2]


def test_response_bfloat16_array_is_sent_as_is() -> None:
    array = np.array([0.1, -3.0], dtype=ml_dtypes.bfloat16)
    body, headers = encode_infer_response(
        "m", None, None, [ResponseOutput("y", array, binary=True)]
    )
    assert_same(client_result(body, headers).as_numpy("y"), array)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (ResponseOutput("y", np.array([1.5]), "INT32"), "cannot send a float64 array as INT32"),
        (ResponseOutput("y", np.array(["a"]), "FP32"), "cannot send"),
        (ResponseOutput("y", np.array([1.0]), "FP8"), "'FP8'"),
        (ResponseOutput("y", np.array([1j])), "complex128"),
    ],
)
def test_response_output_that_cannot_be_sent(output: ResponseOutput, expected: str) -> None:
    with pytest.raises(ModelLoadError, match=expected):
        encode_infer_response("m", None, None, [output])


def test_nan_becomes_null_in_json_and_nan_in_tritonclient() -> None:
    array = np.array([1.0, np.nan], np.float32)
    body, headers = encode_infer_response("m", None, None, [ResponseOutput("y", array)])
    assert orjson.loads(body)["outputs"][0]["data"] == [1.0, None]
    got = client_result(body, headers).as_numpy("y")
    assert got[0] == 1.0
    assert np.isnan(got[1])


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "BF16"])
def test_inf_in_json_asks_for_binary(datatype: str) -> None:
    array = np.array([1.0, -np.inf], np.float32)
    with pytest.raises(InvalidInput, match="binary_data"):
        encode_infer_response("m", None, None, [ResponseOutput("y", array, datatype)])
    body, headers = encode_infer_response(
        "m", None, None, [ResponseOutput("y", array, datatype, binary=True)]
    )
    assert client_result(body, headers).as_numpy("y").tolist() == [1.0, -np.inf]


def test_non_utf8_bytes_in_json_asks_for_binary() -> None:
    array = np.array([b"\xff"], dtype=object)
    with pytest.raises(InvalidInput, match="not UTF-8"):
        encode_infer_response("m", None, None, [ResponseOutput("y", array)])


def test_encode_error() -> None:
    assert orjson.loads(encode_error("boom")) == {"error": "boom"}


# ---------------------------------------------------------------------------- tritonclient requests


def client_input(name: str, array: NDArray, datatype: str, binary: bool) -> Any:
    return th.InferInput(name, list(array.shape), datatype).set_data_from_numpy(
        array, binary_data=binary
    )


def client_array(datatype: str) -> NDArray:
    array = sample_array(datatype, (1, len(SAMPLES[datatype])))
    return array.astype(ml_dtypes.bfloat16) if datatype == "BF16" else array


@pytest.mark.parametrize(
    ("datatype", "binary"),
    # tritonclient refuses to send BF16 as JSON (see the test below)
    [(d, b) for d in DATATYPES for b in (False, True) if (d, b) != ("BF16", False)],
)
def test_tritonclient_request_every_datatype(datatype: str, binary: bool) -> None:
    array = client_array(datatype)
    body, length = th.InferenceServerClient.generate_request_body(
        [client_input("x", array, datatype, binary)]
    )
    assert (length is not None) == binary
    request = parse_infer_request(body, length)
    expected = array.astype(np.float32) if datatype == "BF16" else array
    assert_same(request.inputs[0].array, expected)
    assert request.inputs[0].datatype == datatype


def test_tritonclient_sends_bf16_only_as_binary() -> None:
    with pytest.raises(InferenceServerException, match="binary_data=True"):
        client_input("x", client_array("BF16"), "BF16", False)


def test_tritonclient_default_request() -> None:
    """infer() with no outputs asks for every output in binary."""
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    s = np.array([[b"\x00\xff", b"ok"]], dtype=object)
    inputs = [client_input("a", a, "FP32", True), client_input("s", s, "BYTES", True)]
    body, length = th.InferenceServerClient.generate_request_body(inputs, request_id="7")
    request = parse_infer_request(body, length)
    assert request.id == "7"
    assert request.binary_output is True
    assert request.outputs == []
    assert request.output_binary("anything") is True
    assert_same(request.inputs[0].array, a)
    assert request.inputs[1].array.tolist() == s.tolist()


def test_tritonclient_mixed_inputs_requested_outputs_and_parameters() -> None:
    inputs = [
        client_input("j", np.array([[1, 2]], np.int64), "INT64", False),
        client_input("b", np.array([True, False]), "BOOL", True),
        client_input("t", np.array(["h\u00e9"], dtype=object), "BYTES", False),
        client_input("h", np.array([0.5, -0.0], np.float16), "FP16", True),
    ]
    outputs = [
        th.InferRequestedOutput("y", binary_data=False),
        th.InferRequestedOutput("z", class_count=2),
    ]
    body, length = th.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, priority=1, timeout=100, parameters={"custom": "v"}
    )
    request = parse_infer_request(body, length)
    assert [i.name for i in request.inputs] == ["j", "b", "t", "h"]
    assert_same(request.inputs[0].array, np.array([[1, 2]], np.int64))
    assert_same(request.inputs[1].array, np.array([True, False]))
    assert request.inputs[2].array.tolist() == ["h\u00e9".encode()]
    assert_same(request.inputs[3].array, np.array([0.5, -0.0], np.float16))
    assert request.parameters == {"priority": 1, "timeout": 100, "custom": "v"}
    assert request.binary_output is False
    assert request.output_binary("y") is False
    assert request.output_binary("z") is True
    assert request.outputs[1].parameters == {"classification": 2, "binary_data": True}


def test_tritonclient_end_to_end_echo() -> None:
    """Client request -> our parser -> our encoder -> client result, values unchanged."""
    arrays = {
        "bytes": (np.array([[b"a", b"\xff\xfe"], [b"", b"z"]], dtype=object), "BYTES"),
        "bool": (np.array([[True], [False]]), "BOOL"),
        "fp16": (np.array([0.1, 65504, -6e-8], np.float16), "FP16"),
        "int64": (np.array([-(2**63), 2**63 - 1], np.int64), "INT64"),
        "fp32": (np.array([[0.1, -3.4e38, 1e-45]], np.float32), "FP32"),
    }
    inputs = [client_input(n, a, dt, True) for n, (a, dt) in arrays.items()]
    body, length = th.InferenceServerClient.generate_request_body(inputs)
    request = parse_infer_request(body, length)
    outputs = [
        ResponseOutput(i.name, i.array, i.datatype, binary=request.output_binary(i.name))
        for i in request.inputs
    ]
    result = client_result(*encode_infer_response("echo", "1", request.id, outputs))
    for name, (array, _) in arrays.items():
        got = result.as_numpy(name)
        if array.dtype == object:
            assert got.tolist() == array.tolist()
        else:
            assert_same(got, array)
