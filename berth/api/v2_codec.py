"""Open Inference Protocol v2 (REST) codec: request bodies in, response bodies out.

Pure functions over bytes and numpy arrays; no HTTP framework here.

Wire format
-----------
A request body is either one JSON object, or a JSON object followed by raw tensor bytes
(Triton's ``binary_data`` extension). In the second case the ``Inference-Header-Content-Length``
header gives the byte length of the JSON part; everything after it is the binary part::

    {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                 "parameters": {"binary_data_size": 16}}]}<16 bytes of little-endian float32>

Each input carries its values either as JSON ``data`` (nested or flat, read in row-major
order) or as ``parameters.binary_data_size`` bytes taken from the binary part, consecutively,
in input order. Binary layouts: fixed-size types are packed little-endian; BOOL is one byte
per element (0 or 1); BF16 is the upper 16 bits of a float32; BYTES is, per element, a 4-byte
little-endian length followed by that many bytes.

A response is JSON, or JSON plus binary outputs: an output is sent binary when it is asked
for with ``outputs[].parameters.binary_data: true``, or, for outputs without that setting,
when the request sets ``parameters.binary_data_output: true``. A binary output has
``parameters.binary_data_size`` and no ``data``; its bytes follow the JSON in output order,
and the response carries ``Inference-Header-Content-Length``.

Decisions
---------
- INT/UINT values in JSON must be JSON integers in the datatype's range: ``1.5`` and ``2.0``
  are both refused (no float ever becomes an integer), as are ``true``/``false``.
- BOOL values in JSON must be ``true``/``false``; binary BOOL bytes must be 0 or 1.
- FP16/FP32/FP64/BF16 values in JSON are numbers, or ``null`` meaning NaN; a finite number
  that overflows the datatype is refused. BF16 inputs are decoded to float32.
- BYTES values in JSON are strings, stored UTF-8 encoded; BYTES arrays hold ``bytes``.
- Output floats in JSON: NaN is written as ``null`` (tritonclient reads it back as NaN);
  +/-inf cannot be written as JSON and raises `InvalidInput` telling the caller to ask for
  the output in binary. BYTES outputs in JSON must be UTF-8; other bytes raise the same way.
- Model outputs that cannot be put on the wire at all (a complex dtype, say) raise
  `ModelLoadError`: the request was fine, the model's result was not.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from berth.errors import InvalidInput, ModelLoadError
from berth.serving.json_preview import preview

NDArray = np.ndarray[Any, Any]

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

_FIXED_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPES: tuple[str, ...] = (*_FIXED_DTYPES, "BF16", "BYTES")
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
WIRE_ITEMSIZE = {**{k: v.itemsize for k, v in _FIXED_DTYPES.items()}, "BF16": 2}
_KIND_PREFIX = {"b": "BOOL", "u": "UINT", "i": "INT", "f": "FP"}
_LENGTH = struct.Struct("<I")
_MAX_RANK = 32  # numpy 1.x's limit (2.x allows 64)
_MAX_BYTES = int(np.iinfo(np.intp).max)


# ---------------------------------------------------------------------------- datatypes


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype Berth uses for an OIP datatype (BF16 -> float32, BYTES -> object)."""
    if datatype in _FIXED_DTYPES:
        return _FIXED_DTYPES[datatype]
    if datatype == "BF16":
        return np.dtype(np.float32)
    if datatype == "BYTES":
        return np.dtype(object)
    raise InvalidInput(
        f"datatype '{datatype}' is not an Open Inference Protocol datatype; "
        f"use one of {', '.join(DATATYPES)}"
    )


def datatype_of(array: NDArray) -> str:
    """The OIP datatype for a numpy array; str, bytes and object arrays are BYTES.

    An ``ml_dtypes.bfloat16`` array is BF16. Raises `ModelLoadError` for dtypes the
    protocol cannot carry (complex, datetime, ...).
    """
    dtype = array.dtype
    if dtype.kind in "OUS":
        return "BYTES"
    if dtype.name == "bfloat16" and dtype.itemsize == 2:
        return "BF16"
    prefix = _KIND_PREFIX.get(dtype.kind)
    if prefix is not None:  # by kind and size, so byte order does not matter
        datatype = prefix if prefix == "BOOL" else f"{prefix}{dtype.itemsize * 8}"
        if datatype in _FIXED_DTYPES:
            return datatype
    raise ModelLoadError(
        f"numpy dtype {dtype} has no Open Inference Protocol datatype; "
        "have the model return bool, int, uint, float16/32/64 or string arrays"
    )


# ---------------------------------------------------------------------------- bfloat16


def float32_to_bf16_bits(values: NDArray) -> NDArray:
    """Round float32 values to bfloat16 (nearest, ties to even); returns the uint16 bits.

    NaN stays a (quiet) NaN with its sign.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan_bits = (bits >> 16) | 0x0040
    out = np.where(np.isnan(np.asarray(values, dtype=np.float32)), nan_bits, rounded)
    return out.astype(np.uint16)


def bf16_bits_to_float32(bits: NDArray) -> NDArray:
    """Widen bfloat16 bits (uint16) to float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class RequestInput:
    name: str
    shape: tuple[int, ...]
    datatype: str
    parameters: dict[str, Any]
    array: NDArray
    """Values shaped as `shape`, dtype `numpy_dtype(datatype)`; writable, native byte order."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """`parameters.binary_data` as sent; None when the request did not say."""
    parameters: dict[str, Any]


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[RequestInput]
    outputs: list[RequestedOutput]
    binary_output: bool
    """Top-level `parameters.binary_data_output` (default False)."""

    def output_binary(self, name: str) -> bool:
        """Whether output `name` goes back binary: its own `binary_data`, else the default."""
        for requested in self.outputs:
            if requested.name == name and requested.binary is not None:
                return requested.binary
        return self.binary_output


@dataclass(frozen=True)
class ResponseOutput:
    name: str
    array: NDArray
    datatype: str | None = None
    """None: `datatype_of(array)`. Given: the array is converted to it (float32 -> BF16 too)."""
    parameters: dict[str, Any] | None = None
    binary: bool = False
    """Send the values as binary data after the JSON (see `InferRequest.output_binary`)."""


@dataclass
class _BinaryPart:
    """The bytes after the JSON header, handed out to inputs in order."""

    data: memoryview
    offset: int = 0

    def take(self, name: str, size: int) -> memoryview:
        available = len(self.data) - self.offset
        if size > available:
            raise InvalidInput(
                f"input '{name}': parameters.binary_data_size is {size} but only {available} "
                "bytes of binary data are left after the JSON header; check "
                f"binary_data_size and the {HEADER_LENGTH} header"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def check_consumed(self) -> None:
        left = len(self.data) - self.offset
        if left:
            raise InvalidInput(
                f"request body: {left} bytes of binary data follow the JSON header but no "
                f"input claims them; the inputs' binary_data_size values must add up to the "
                f"body length minus {HEADER_LENGTH}"
            )


# ---------------------------------------------------------------------------- request


def parse_header_length(value: str | None) -> int | None:
    """Parse the Inference-Header-Content-Length header value (None when absent)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidInput(
            f"header {HEADER_LENGTH}: expected a non-negative integer (the byte length of "
            f"the JSON part of the body), got '{value}'"
        )
    return int(text)


ShapeCheck = Callable[[Mapping[str, tuple[int, ...]]], None]
"""Called with every input's declared shape before any data is decoded; raises to refuse."""


def parse_infer_request(
    body: bytes, json_length: int | None, check_shapes: ShapeCheck | None = None
) -> InferRequest:
    """Parse and validate an inference request body; raises `InvalidInput` on any flaw.

    `json_length` is the Inference-Header-Content-Length value, None when absent (then the
    whole body is JSON and there is no binary part). `check_shapes` sees the declared shapes
    first, so a request too large or of the wrong shape is refused before its (possibly
    millions of) values are decoded.
    """
    header, binary = _split_body(body, json_length)
    document = _load_json(header, json_length)
    parameters = _optional_object(document, "parameters", "request")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInput(
            "request parameters.binary_data_output: expected true or false, "
            f"got {_show(binary_output)}"
        )
    inputs = _parse_inputs(document.get("inputs"), _BinaryPart(binary), check_shapes)
    return InferRequest(
        id=_request_id(document),
        parameters=parameters,
        inputs=inputs,
        outputs=_parse_outputs(document.get("outputs")),
        binary_output=binary_output,
    )


def _split_body(body: bytes, json_length: int | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if json_length is None:
        return view, view[len(view) :]
    if json_length < 0:
        raise InvalidInput(
            f"header {HEADER_LENGTH}: expected a non-negative byte length, got {json_length}"
        )
    if json_length > len(view):
        raise InvalidInput(
            f"header {HEADER_LENGTH} is {json_length} but the body has only {len(view)} "
            "bytes; set it to the byte length of the JSON part"
        )
    return view[:json_length], view[json_length:]


def _load_json(header: memoryview, json_length: int | None) -> dict[str, Any]:
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = (
            f"; if binary tensor data follows the JSON, send the {HEADER_LENGTH} header"
            if json_length is None
            else f"; check that {HEADER_LENGTH} is the byte length of the JSON part"
        )
        raise InvalidInput(f"request body: not valid JSON ({exc}){hint}") from None
    if not isinstance(document, dict):
        raise InvalidInput(
            f"request body: expected a JSON object with 'inputs', got {_json_kind(document)}"
        )
    return document


def _request_id(document: dict[str, Any]) -> str | None:
    request_id = document.get("id")
    if request_id is None or isinstance(request_id, str):
        return request_id
    raise InvalidInput(f"request id: expected a string, got {_show(request_id)}")


def _parse_inputs(
    raw: Any, binary: _BinaryPart, check_shapes: ShapeCheck | None
) -> list[RequestInput]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(
            f"request inputs: expected a non-empty list of input tensors, got {_show(raw)}"
        )
    headers: list[_InputHeader] = []
    for index, item in enumerate(raw):
        header = _parse_header(index, item)
        if any(h.name == header.name for h in headers):
            raise InvalidInput(
                f"input '{header.name}' appears more than once; send each input once"
            )
        headers.append(header)
    if check_shapes is not None:
        check_shapes({h.name: h.shape for h in headers})
    inputs = [_decode_input(h, binary) for h in headers]
    binary.check_consumed()
    return inputs


@dataclass(frozen=True)
class _InputHeader:
    """An input as declared, before its values are decoded."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    parameters: dict[str, Any]
    item: dict[str, Any]


def _parse_header(index: int, item: Any) -> _InputHeader:
    if not isinstance(item, dict):
        raise InvalidInput(
            f"request inputs[{index}]: expected an object with name, shape, datatype and "
            f"data, got {_json_kind(item)}"
        )
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"request inputs[{index}].name: expected a string, got {_show(name)}")
    shape = parse_shape(name, item.get("shape"))
    datatype = parse_datatype(name, item.get("datatype"))
    parameters = _optional_object(item, "parameters", f"input '{name}'")
    if "shared_memory_region" in parameters:
        raise InvalidInput(
            f"input '{name}': shared memory is not supported; send the data as JSON 'data' "
            "or as binary data after the JSON header"
        )
    if "data" in item and parameters.get("binary_data_size") is not None:
        raise InvalidInput(
            f"input '{name}': has both 'data' and parameters.binary_data_size; send one"
        )
    return _InputHeader(name, shape, datatype, parameters, item)


def _decode_input(header: _InputHeader, binary: _BinaryPart) -> RequestInput:
    name, shape, datatype = header.name, header.shape, header.datatype
    size = header.parameters.get("binary_data_size")
    if "data" in header.item:
        array = _decode_json_data(name, datatype, shape, header.item["data"])
    elif size is not None:
        array = _decode_binary_data(name, datatype, shape, size, binary)
    else:
        raise InvalidInput(
            f"input '{name}': no values; send them as 'data' or as binary data with "
            "parameters.binary_data_size"
        )
    return RequestInput(name, shape, datatype, header.parameters, array)


def parse_shape(name: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise InvalidInput(
            f"input '{name}': shape must be a list of non-negative integers, got {_show(raw)}"
        )
    if len(raw) > _MAX_RANK:
        raise InvalidInput(
            f"input '{name}': shape has {len(raw)} dimensions; at most {_MAX_RANK} are supported"
        )
    # Even a zero-size array must have a shape numpy can represent.
    if math.prod(max(d, 1) for d in raw) * 8 > _MAX_BYTES:
        raise InvalidInput(
            f"input '{name}': shape {_show(raw)} is too large for any array; check the shape"
        )
    return tuple(raw)


def parse_datatype(name: str, raw: Any) -> str:
    if isinstance(raw, str) and raw in DATATYPES:
        return raw
    raise InvalidInput(
        f"input '{name}': datatype {_show(raw)} is not an Open Inference Protocol datatype; "
        f"use one of {', '.join(DATATYPES)}"
    )


def _parse_outputs(raw: Any) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(f"request outputs: expected a list of objects, got {_show(raw)}")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(
                f"request outputs[{index}]: expected an object with a string 'name', "
                f"got {_show(item)}"
            )
        name: str = item["name"]
        if name in seen:
            raise InvalidInput(f"output '{name}' is requested more than once; request it once")
        seen.add(name)
        parameters = _optional_object(item, "parameters", f"output '{name}'")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(
                f"output '{name}': parameters.binary_data must be true or false, "
                f"got {_show(binary)}"
            )
        outputs.append(RequestedOutput(name, binary, parameters))
    return outputs


def _optional_object(container: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: '{key}' must be a JSON object, got {_show(value)}")
    return value


# ---------------------------------------------------------------------------- JSON data in


def _decode_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> NDArray:
    if not isinstance(data, list):
        raise InvalidInput(
            f"input '{name}': data must be a list of values, got {_json_kind(data)}; "
            f"wrap a single value in a list"
        )
    flat = _flatten(data)
    expected = math.prod(shape)
    if len(flat) != expected:
        raise InvalidInput(
            f"input '{name}': data has {len(flat)} values but shape {list(shape)} needs "
            f"{expected}; send prod(shape) values in row-major order"
        )
    if datatype == "BOOL":
        array = _json_bools(name, flat)
    elif datatype == "BYTES":
        array = _json_strings(name, flat)
    elif datatype in _FLOAT_TYPES:
        array = _json_floats(name, datatype, flat)
    else:
        array = _json_ints(name, datatype, flat)
    return array.reshape(shape)


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major values of a nested list, without recursion (nesting depth is untrusted)."""
    if not any(type(v) is list for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if type(value) is list:
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _json_bools(name: str, flat: list[Any]) -> NDArray:
    bad = next((v for v in flat if type(v) is not bool), _NONE)
    if bad is not _NONE:
        raise _wrong_value(name, "BOOL", "true or false", bad)
    return np.array(flat, dtype=np.bool_)


def _json_strings(name: str, flat: list[Any]) -> NDArray:
    bad = next((v for v in flat if type(v) is not str), _NONE)
    if bad is not _NONE:
        raise _wrong_value(name, "BYTES", "strings", bad)
    return _object_array([v.encode("utf-8") for v in flat])


def _json_ints(name: str, datatype: str, flat: list[Any]) -> NDArray:
    bad = next((v for v in flat if type(v) is not int), _NONE)
    if bad is not _NONE:
        raise _wrong_value(name, datatype, "JSON integers (no decimal point)", bad)
    dtype = _FIXED_DTYPES[datatype]
    info = np.iinfo(dtype)
    if flat and (min(flat) < info.min or max(flat) > info.max):
        bad = next(v for v in flat if not info.min <= v <= info.max)
        raise InvalidInput(
            f"input '{name}': value {bad} is out of range for {datatype} "
            f"({info.min}..{info.max}); send values in range or use a wider datatype"
        )
    return np.array(flat, dtype=dtype)


def _json_floats(name: str, datatype: str, flat: list[Any]) -> NDArray:
    bad = next((v for v in flat if type(v) not in (int, float) and v is not None), _NONE)
    if bad is not _NONE:
        raise _wrong_value(name, datatype, "numbers (or null for NaN)", bad)
    try:
        wide = np.array([math.nan if v is None else v for v in flat], dtype=np.float64)
    except OverflowError:
        raise _float_overflow(name, datatype) from None
    narrow_type = np.float32 if datatype == "BF16" else _FIXED_DTYPES[datatype].type
    with np.errstate(over="ignore"):
        narrow = wide.astype(narrow_type)
        if datatype == "BF16":
            narrow = bf16_bits_to_float32(float32_to_bf16_bits(narrow))
    if np.any(np.isinf(narrow) & np.isfinite(wide)):
        raise _float_overflow(name, datatype)
    return narrow


def _float_overflow(name: str, datatype: str) -> InvalidInput:
    return InvalidInput(
        f"input '{name}': a value is too large for {datatype} and would become infinity; "
        "send values in range or use a wider datatype"
    )


def _wrong_value(name: str, datatype: str, expected: str, got: Any) -> InvalidInput:
    return InvalidInput(
        f"input '{name}': {datatype} data must be {expected}, got {_show(got)}; "
        "fix the value or the datatype"
    )


# ---------------------------------------------------------------------------- binary data in


def _decode_binary_data(
    name: str, datatype: str, shape: tuple[int, ...], size: Any, binary: _BinaryPart
) -> NDArray:
    if type(size) is not int or size < 0:
        raise InvalidInput(
            f"input '{name}': parameters.binary_data_size must be a non-negative integer, "
            f"got {_show(size)}"
        )
    chunk = binary.take(name, size)
    count = math.prod(shape)
    if datatype == "BYTES":
        return unpack_bytes(name, chunk, count).reshape(shape)
    expected = count * WIRE_ITEMSIZE[datatype]
    if size != expected:
        raise InvalidInput(
            f"input '{name}': binary_data_size is {size} bytes but shape {list(shape)} of "
            f"{datatype} needs {expected} ({count} x {WIRE_ITEMSIZE[datatype]}); "
            "check the shape, the datatype and the data"
        )
    return unpack_fixed(name, datatype, chunk).reshape(shape)


def unpack_fixed(name: str, datatype: str, chunk: memoryview) -> NDArray:
    if datatype == "BF16":
        return bf16_bits_to_float32(np.frombuffer(chunk, dtype="<u2"))
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if np.any(raw > 1):
            raise InvalidInput(
                f"input '{name}': BOOL binary data must be one byte per value, 0 or 1; "
                f"got a byte {int(raw.max())}"
            )
        return raw.astype(np.bool_)
    dtype = _FIXED_DTYPES[datatype]
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)


def unpack_bytes(name: str, chunk: memoryview, count: int) -> NDArray:
    items: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(chunk):
            raise _truncated_bytes(name, index, count)
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise _truncated_bytes(name, index, count)
        items.append(bytes(chunk[offset : offset + length]))
        offset += length
    if offset != len(chunk):
        raise InvalidInput(
            f"input '{name}': BYTES binary data has {len(chunk) - offset} bytes left after "
            f"the {count} elements the shape asks for; check the shape and binary_data_size"
        )
    return _object_array(items)


def _truncated_bytes(name: str, index: int, count: int) -> InvalidInput:
    return InvalidInput(
        f"input '{name}': BYTES binary data ends inside element {index} of {count}; each "
        "element is a 4-byte little-endian length then that many bytes, and "
        "binary_data_size must cover them all"
    )


# ---------------------------------------------------------------------------- response


def encode_infer_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[ResponseOutput],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference response; returns (body, headers).

    Outputs with `binary=True` go after the JSON; then the headers carry
    Inference-Header-Content-Length and Content-Type application/octet-stream,
    otherwise Content-Type is application/json.
    """
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = dict(parameters)
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in outputs:
        tensor, chunk = _encode_output(output)
        tensors.append(tensor)
        if chunk is not None:
            chunks.append(chunk)
    document["outputs"] = tensors
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not any(output.binary for output in outputs):
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def encode_error(message: str) -> bytes:
    """The protocol's error body: {"error": message}."""
    return orjson.dumps({"error": message})


def _encode_output(output: ResponseOutput) -> tuple[dict[str, Any], bytes | None]:
    datatype = output.datatype or datatype_of(output.array)
    wire = to_wire(output.name, output.array, datatype)
    tensor: dict[str, Any] = {
        "name": output.name,
        "datatype": datatype,
        "shape": list(output.array.shape),
    }
    parameters = dict(output.parameters or {})
    if output.binary:
        chunk = pack(datatype, wire)
        parameters["binary_data_size"] = len(chunk)
        tensor["parameters"] = parameters
        return tensor, chunk
    if parameters:
        tensor["parameters"] = parameters
    tensor["data"] = _json_values(output.name, datatype, wire)
    return tensor, None


def to_wire(name: str, array: NDArray, datatype: str) -> NDArray:
    """Flat row-major array in wire form: bytes objects for BYTES, uint16 bits for BF16."""
    flat = np.asarray(array).reshape(-1)
    if datatype == "BYTES":
        return _object_array([_as_bytes(v) for v in flat.tolist()])
    if datatype == "BF16":
        if flat.dtype.name == "bfloat16" and flat.dtype.itemsize == 2:
            return np.ascontiguousarray(flat).view(np.uint16)
        return float32_to_bf16_bits(_cast(name, flat, np.dtype(np.float32), datatype))
    return _cast(name, flat, _output_dtype(name, datatype), datatype)


def _output_dtype(name: str, datatype: str) -> np.dtype[Any]:
    """Like `numpy_dtype`, but an unknown datatype is the server's fault (`ModelLoadError`)."""
    if datatype in _FIXED_DTYPES:
        return _FIXED_DTYPES[datatype]
    raise ModelLoadError(
        f"output '{name}': datatype '{datatype}' is not an Open Inference Protocol "
        f"datatype; use one of {', '.join(DATATYPES)}"
    )


def _cast(name: str, flat: NDArray, dtype: np.dtype[Any], datatype: str) -> NDArray:
    try:
        return np.ascontiguousarray(flat.astype(dtype, casting="same_kind", copy=False))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"output '{name}': cannot send a {flat.dtype} array as {datatype} ({exc}); "
            "declare the output with a matching datatype"
        ) from None


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def pack(datatype: str, wire: NDArray) -> bytes:
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in wire.tolist())
    return wire.astype(wire.dtype.newbyteorder("<"), copy=False).tobytes()


def _json_values(name: str, datatype: str, wire: NDArray) -> Any:
    if datatype == "BYTES":
        try:
            return [item.decode("utf-8") for item in wire.tolist()]
        except UnicodeDecodeError:
            raise _needs_binary(name, "holds bytes that are not UTF-8") from None
    if datatype == "BF16":
        wire = bf16_bits_to_float32(wire)
    if datatype in _FLOAT_TYPES and np.any(np.isinf(wire)):
        raise _needs_binary(name, "holds inf or -inf")
    return wire


def _needs_binary(name: str, problem: str) -> InvalidInput:
    return InvalidInput(
        f"output '{name}' {problem}, which JSON cannot carry; request it as binary data "
        "(outputs[].parameters.binary_data: true, or parameters.binary_data_output: true)"
    )


# ---------------------------------------------------------------------------- helpers


_NONE = object()


def _object_array(items: list[bytes]) -> NDArray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _json_kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A short rendering of a JSON value for error messages (bounded at any nesting depth)."""
    return preview(value, 60)
