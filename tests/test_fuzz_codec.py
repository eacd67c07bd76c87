"""Property-based tests of the Open Inference Protocol codec (berth.api.v2_codec).

- Whatever bytes arrive, with whatever Inference-Header-Content-Length, parsing either works
  or raises `InvalidInput` (a 400), never anything else (a 500).
- Arrays of every datatype survive our encoder then our parser, in JSON and in binary.
- Bodies built by tritonclient (an independent implementation) parse to the same arrays, and
  tritonclient reads our responses back to the same arrays.

Generation is seeded (`derandomize=True`, no example database) so CI runs are reproducible.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from berth.api.v2_codec import (
    DATATYPES,
    HEADER_LENGTH,
    ResponseOutput,
    bf16_bits_to_float32,
    encode_infer_response,
    float32_to_bf16_bits,
    numpy_dtype,
    parse_header_length,
    parse_infer_request,
)
from berth.errors import InvalidInput

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = settings(FUZZ, max_examples=300)

NUMERIC = [d for d in DATATYPES if d not in ("BYTES", "BF16")]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)

# ---------------------------------------------------------------------------- strategies


def arrays(datatype: str, *, json: bool = False) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    """Arrays as a model (or a client) would hold them for `datatype`.

    `json`: only values JSON can carry (UTF-8 text; no infinities, which the protocol has no
    JSON spelling for).
    """
    if datatype == "BYTES":
        if json:
            elements: st.SearchStrategy[bytes] = st.text(max_size=12).map(str.encode)
        else:
            elements = st.binary(max_size=12)
        return hnp.arrays(np.dtype(object), SHAPES, elements=elements)
    if datatype == "BF16":
        # in JSON, also no float32 that rounds to a BF16 infinity (beyond about 3.39e38)
        bound = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max) if json else None
        elements = st.floats(width=32, min_value=None if bound is None else -bound, max_value=bound)
        return hnp.arrays(np.float32, SHAPES, elements=elements)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        return hnp.arrays(dtype, SHAPES, elements=_floats(dtype.itemsize * 8, json))
    return hnp.arrays(dtype, SHAPES)


def _floats(width: int, json: bool) -> st.SearchStrategy[float]:
    return st.floats(width=width, allow_infinity=not json)  # type: ignore[arg-type]


_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.text(max_size=8),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
MUTATIONS = ("junk", "shape", "datatype", "value", "size", "tail", "length", "twice", "nan")


@st.composite
def near_requests(draw: st.DrawFn) -> tuple[bytes, int | None, list[str]]:
    """A valid request (JSON and binary inputs of any datatype), then up to three mutations:
    a field set to any JSON, a dimension, datatype, value or binary_data_size changed, binary
    bytes added or cut, a wrong header length, an input sent twice, NaN literals."""
    inputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for index in range(draw(st.integers(min_value=1, max_value=3))):
        datatype = draw(st.sampled_from(DATATYPES))
        binary = draw(st.booleans())
        array = draw(arrays(datatype, json=not binary))
        output = ResponseOutput(f"in{index}", array, datatype=datatype, binary=binary)
        body, headers = encode_infer_response("m", None, None, [output])
        length = int(headers.get(HEADER_LENGTH, len(body)))
        (tensor,) = orjson.loads(body[:length])["outputs"]
        inputs.append(tensor)
        chunks.append(body[length:])
    document: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        document["outputs"] = [{"name": "predict", "parameters": {"binary_data": True}}]
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=3))
    json_length: int | str | None = "right"
    for mutation in mutations:
        tensor = draw(st.sampled_from(inputs)) if inputs else {}
        if mutation == "junk":
            target = draw(st.sampled_from([document, tensor]))
            key = draw(
                st.sampled_from(["inputs", "outputs", "id", "parameters", "name", "shape"])
                | st.sampled_from(["datatype", "data", "parameters"])
            )
            target[key] = draw(_JSON)
        elif mutation == "shape" and isinstance(tensor.get("shape"), list):
            dims = tensor["shape"] or [1]
            at = draw(st.integers(min_value=0, max_value=len(dims) - 1))
            dims[at] = draw(st.sampled_from([0, 1, dims[at] + 1, max(dims[at] - 1, 0), 2**40]))
            tensor["shape"] = dims
        elif mutation == "datatype":
            tensor["datatype"] = draw(st.sampled_from(DATATYPES))
        elif mutation == "value" and isinstance(tensor.get("data"), list) and tensor["data"]:
            at = draw(st.integers(min_value=0, max_value=len(tensor["data"]) - 1))
            tensor["data"][at] = draw(_JSON_SCALARS)
        elif (
            mutation == "size"
            and isinstance(tensor.get("parameters"), dict)
            and isinstance(tensor["parameters"].get("binary_data_size"), int)
        ):
            tensor["parameters"]["binary_data_size"] += draw(st.integers(-5, 5))
        elif mutation == "tail":
            chunks.append(draw(st.binary(min_size=1, max_size=16)))
        elif mutation == "length":
            json_length = draw(st.one_of(st.none(), st.integers(min_value=-3, max_value=3)))
        elif mutation == "twice" and inputs:
            inputs.append(dict(tensor))
        elif mutation == "nan" and isinstance(tensor.get("data"), list) and tensor["data"]:
            tensor["data"][0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    # the standard library writes what orjson refuses to: NaN, Infinity, integers over 64 bits
    header = json.dumps(document, ensure_ascii=draw(st.booleans())).encode()
    binary = b"".join(chunks)
    if json_length == "right":
        length = len(header) if binary else draw(st.sampled_from([None, len(header)]))
    elif isinstance(json_length, int):
        length = len(header) + json_length
    else:
        length = None
    return header + binary, length, mutations


# ---------------------------------------------------------------------------- only InvalidInput


@FUZZ
@given(body=st.binary(max_size=512), json_length=st.one_of(st.none(), st.integers()))
def test_arbitrary_bytes_raise_only_invalid_input(body: bytes, json_length: int | None) -> None:
    with contextlib.suppress(InvalidInput):
        parse_infer_request(body, json_length)


@FUZZ
@given(request=near_requests())
def test_nearly_right_requests_raise_only_invalid_input(
    request: tuple[bytes, int | None, list[str]],
) -> None:
    body, json_length, mutations = request
    try:
        parsed = parse_infer_request(body, json_length)
    except InvalidInput:
        assert mutations, "a request as our encoder writes it must parse"
        return
    for parsed_input in parsed.inputs:  # what parses is what the datatype and shape say
        assert parsed_input.array.shape == parsed_input.shape
        assert parsed_input.array.dtype == numpy_dtype(parsed_input.datatype)


@SMALL
@given(
    value=st.one_of(
        st.none(),
        st.text(),
        st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1),
        st.integers().map(str),
    )
)
def test_header_length_is_a_number_or_invalid_input(value: str | None) -> None:
    try:
        length = parse_header_length(value)
    except InvalidInput:
        return
    assert length is None if value is None else isinstance(length, int) and length >= 0


# ---------------------------------------------------------------------------- round trips


@FUZZ
@given(datatype=st.sampled_from(DATATYPES), binary=st.booleans(), data=st.data())
def test_our_responses_parse_back_to_the_same_arrays(
    datatype: str, binary: bool, data: st.DataObject
) -> None:
    array = data.draw(arrays(datatype, json=not binary), label="array")
    body, headers = encode_infer_response(
        "m", "1", None, [ResponseOutput(name="x", array=array, datatype=datatype, binary=binary)]
    )
    length = int(headers[HEADER_LENGTH]) if binary else len(body)
    response = orjson.loads(body[:length])
    (output,) = response["outputs"]
    assert output["datatype"] == datatype
    assert output["shape"] == list(array.shape)
    # a response's outputs are laid out as a request's inputs: send them back in
    header = orjson.dumps({"inputs": response["outputs"]})
    parsed = parse_infer_request(header + body[length:], len(header) if binary else None)
    (parsed_input,) = parsed.inputs
    assert_same(parsed_input.array, array, datatype, exact=binary)
    # and tritonclient reads our response as we meant it
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=length if binary else None
    )
    assert_same(_from_triton(result.as_numpy("x"), datatype), array, datatype, exact=binary)


@FUZZ
@given(datatype=st.sampled_from(DATATYPES), binary=st.booleans(), data=st.data())
def test_tritonclient_requests_parse_to_the_same_arrays(
    datatype: str, binary: bool, data: st.DataObject
) -> None:
    binary = binary or datatype == "BF16"  # tritonclient sends BF16 only as binary
    array = data.draw(arrays(datatype, json=not binary), label="array")
    sent = array.astype(ml_dtypes.bfloat16) if datatype == "BF16" else array
    tensor = triton.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(sent, binary_data=binary)
    wanted = triton.InferRequestedOutput("predict", binary_data=binary)
    body, json_length = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=[wanted], request_id="r1"
    )
    if not binary and datatype in ("FP16", "FP32", "FP64") and np.isnan(array).any():
        # tritonclient writes NaN as the literal NaN, which is not JSON; we refuse it (400)
        with pytest.raises(InvalidInput, match="not valid JSON"):
            parse_infer_request(body, json_length)
        return
    parsed = parse_infer_request(body, json_length)
    assert parsed.id == "r1"
    assert parsed.output_binary("predict") is binary
    (parsed_input,) = parsed.inputs
    assert parsed_input.shape == array.shape
    expected = sent.astype(np.float32) if datatype == "BF16" else array
    assert_same(parsed_input.array, expected, datatype, exact=binary)


def _from_triton(array: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    """tritonclient's reading in Berth's representation (BYTES as bytes, BF16 as float32)."""
    if datatype == "BYTES":
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out
    if datatype == "BF16":
        return array.astype(np.float32)
    return array


def assert_same(
    got: np.ndarray[Any, Any], sent: np.ndarray[Any, Any], datatype: str, *, exact: bool
) -> None:
    """`got` holds what `sent` held, in Berth's dtype; `exact`: bit for bit (binary data)."""
    assert got.dtype == numpy_dtype(datatype)
    assert got.size == sent.size
    got_flat = got.reshape(-1)
    want = sent.reshape(-1)
    if datatype == "BYTES":
        assert got_flat.tolist() == [bytes(v) for v in want.tolist()]
        return
    if datatype == "BF16":
        want = bf16_bits_to_float32(float32_to_bf16_bits(want.astype(np.float32)))
    else:
        want = want.astype(got.dtype)
    if exact and datatype != "BF16":
        assert got_flat.tobytes() == want.tobytes()
        return
    if got.dtype.kind == "f":
        # JSON keeps values but not NaN payloads or signs; BF16 NaN stays a NaN
        assert np.array_equal(np.isnan(got_flat), np.isnan(want))
        finite = ~np.isnan(want)
        assert np.array_equal(got_flat[finite], want[finite])
        assert np.array_equal(np.signbit(got_flat[finite]), np.signbit(want[finite]))
        return
    assert np.array_equal(got_flat, want)


# ---------------------------------------------------------------------------- edge of the format


@SMALL
@given(
    datatype=st.sampled_from(NUMERIC),
    shape=st.lists(st.integers(min_value=0, max_value=3), max_size=3),
    cut=st.integers(min_value=-4, max_value=4),
)
def test_binary_data_size_must_match_the_shape(datatype: str, shape: list[int], cut: int) -> None:
    itemsize = numpy_dtype(datatype).itemsize
    size = max(0, math.prod(shape) * itemsize + cut)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    body = header + bytes(size)
    if cut == 0 or size == math.prod(shape) * itemsize:
        (parsed,) = parse_infer_request(body, len(header)).inputs
        assert parsed.array.shape == tuple(shape)
        assert not parsed.array.any()
    else:
        with pytest.raises(InvalidInput, match="binary_data_size"):
            parse_infer_request(body, len(header))
