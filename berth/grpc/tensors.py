"""ModelInferRequest in, ModelInferResponse out: the gRPC form of the v2 codec's requests.

Pure functions over protocol messages and numpy arrays; the checks and error messages are the
REST codec's (`berth.api.v2_codec`) wherever the two forms agree.

Inputs carry their values either all in `raw_input_contents` (one entry per input, in input
order, the layout of REST's binary extension: little-endian, BOOL one byte 0/1, BYTES each a
4-byte little-endian length then the bytes) or each in its tensor's typed `contents` field
(INT8/16/32 in `int_contents`, UINT8/16/32 in `uint_contents`, FP16 and BF16 only raw).
Outputs always go back in `raw_output_contents`, the only form tritonclient reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import Message

from berth.api import v2_codec
from berth.api.v2_codec import InferRequest, RequestedOutput, RequestInput, ResponseOutput
from berth.errors import InvalidInput
from berth.grpc.generated import open_inference_grpc_pb2 as pb

NDArray = np.ndarray[Any, Any]

# The typed contents field of each datatype, and the range its values must fit.
_CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_infer_request(
    message: pb.ModelInferRequest, check_shapes: v2_codec.ShapeCheck | None = None
) -> InferRequest:
    """Validate and decode a ModelInferRequest; raises `InvalidInput` on any flaw.

    `check_shapes` sees every input's declared shape before any value is decoded.
    """
    if not message.inputs:
        raise InvalidInput("request inputs: expected at least one input tensor, got none")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "send one entry per input, in input order (or none, with typed contents)"
        )
    names: list[str] = []
    for index, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise InvalidInput(f"request inputs[{index}].name: expected a name, got none")
        if tensor.name in names:
            raise InvalidInput(f"input '{tensor.name}' appears more than once; send each once")
        names.append(tensor.name)
    shapes = {t.name: v2_codec.parse_shape(t.name, list(t.shape)) for t in message.inputs}
    datatypes = {t.name: v2_codec.parse_datatype(t.name, t.datatype) for t in message.inputs}
    if check_shapes is not None:
        check_shapes(shapes)
    inputs = []
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        parameters = parameters_of(tensor.parameters, f"input '{name}'")
        shape, datatype = shapes[name], datatypes[name]
        if raw:
            _refuse_both(tensor)
            array = _decode_raw(name, datatype, shape, raw[index])
        else:
            array = _decode_typed(name, datatype, shape, tensor.contents)
        inputs.append(RequestInput(name, shape, datatype, parameters, array))
    return InferRequest(
        id=message.id or None,
        parameters=parameters_of(message.parameters, "request"),
        inputs=inputs,
        outputs=[
            RequestedOutput(o.name, None, parameters_of(o.parameters, f"output '{o.name}'"))
            for o in message.outputs
        ],
        binary_output=True,
    )


def encode_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: Sequence[ResponseOutput]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id or ""
    )
    for output in outputs:
        datatype = output.datatype or v2_codec.datatype_of(output.array)
        wire = v2_codec.to_wire(output.name, output.array, datatype)
        response.outputs.add(name=output.name, datatype=datatype, shape=output.array.shape)
        response.raw_output_contents.append(v2_codec.pack(datatype, wire))
    return response


def parameters_of(parameters: Mapping[str, pb.InferParameter], where: str) -> dict[str, Any]:
    """A parameters map as plain values (bool, int, float or str)."""
    found: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidInput(f"{where}: parameter '{key}' has no value; set one of its fields")
        found[key] = getattr(parameter, kind)
    return found


def _refuse_both(tensor: pb.ModelInferRequest.InferInputTensor) -> None:
    if tensor.HasField("contents") and _set_fields(tensor.contents):
        raise InvalidInput(
            f"input '{tensor.name}': has both typed contents and raw_input_contents; when "
            "raw_input_contents is used, every input's values must be there"
        )


def _decode_raw(name: str, datatype: str, shape: tuple[int, ...], chunk: bytes) -> NDArray:
    count = math.prod(shape)
    view = memoryview(chunk)
    if datatype == "BYTES":
        return v2_codec.unpack_bytes(name, view, count).reshape(shape)
    expected = count * v2_codec.WIRE_ITEMSIZE[datatype]
    if len(chunk) != expected:
        raise InvalidInput(
            f"input '{name}': raw_input_contents holds {len(chunk)} bytes but shape "
            f"{list(shape)} of {datatype} needs {expected} ({count} x "
            f"{v2_codec.WIRE_ITEMSIZE[datatype]}); check the shape, the datatype and the data"
        )
    return v2_codec.unpack_fixed(name, datatype, view).reshape(shape)


def _decode_typed(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> NDArray:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send its values in "
            "raw_input_contents (little-endian, 2 bytes per value)"
        )
    others = [f for f in _set_fields(contents) if f != field]
    if others:
        raise InvalidInput(
            f"input '{name}': a {datatype} input carries its values in contents.{field}, "
            f"not contents.{others[0]}"
        )
    values: Sequence[Any] = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': contents.{field} has {len(values)} values but shape "
            f"{list(shape)} needs {count}; check the shape and the data"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = v2_codec.numpy_dtype(datatype)
    wide = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else None)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(
                f"input '{name}': value {bad} is out of range for {datatype} "
                f"({info.min} to {info.max})"
            )
    return wide.astype(dtype).reshape(shape)


def _set_fields(message: Message) -> list[str]:
    return [descriptor.name for descriptor, _value in message.ListFields()]


def encode_infer_request(
    model_name: str, model_version: str | None, request: InferRequest
) -> pb.ModelInferRequest:
    """A client's ModelInferRequest for `request`'s inputs, each in raw contents (what
    tritonclient sends), its requested outputs and id kept."""
    message = pb.ModelInferRequest(
        model_name=model_name, model_version=model_version or "", id=request.id or ""
    )
    for tensor in request.inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        wire = v2_codec.to_wire(tensor.name, tensor.array, tensor.datatype)
        message.raw_input_contents.append(v2_codec.pack(tensor.datatype, wire))
    for output in request.outputs:
        message.outputs.add(name=output.name)
    return message
