"""OpenAPI schemas of the Open Inference Protocol (v2) routes."""

from __future__ import annotations

from typing import Any

from berth.api.openapi.common import (
    BOOLEAN,
    INTEGER,
    STRING,
    STRINGS,
    Responses,
    Schema,
    object_schema,
)
from berth.api.v2_codec import DATATYPES, HEADER_LENGTH

# ---------------------------------------------------------------------------- v2 (OIP)

V2_LIVE: Schema = object_schema({"live": BOOLEAN})
V2_READY: Schema = object_schema({"ready": BOOLEAN})
V2_MODEL_READY: Schema = object_schema({"name": STRING, "ready": BOOLEAN})
V2_SERVER_METADATA: Schema = object_schema(
    {"name": STRING, "version": STRING, "extensions": STRINGS}
)
_V2_TENSOR_METADATA = object_schema(
    {
        "name": STRING,
        "datatype": {"enum": list(DATATYPES)},
        "shape": {"type": "array", "items": INTEGER},
    }
)
V2_MODEL_METADATA: Schema = object_schema(
    {
        "name": STRING,
        "versions": STRINGS,
        "platform": STRING,
        "inputs": {"type": "array", "items": _V2_TENSOR_METADATA},
        "outputs": {"type": "array", "items": _V2_TENSOR_METADATA},
    }
)
_SCALAR: Schema = {"type": ["number", "string", "boolean", "null"]}
_TENSOR_DATA: Schema = {
    "type": "array",
    "description": "Values in row-major order, flat or nested as the shape; null is NaN.",
    "items": {"anyOf": [_SCALAR, {"type": "array"}]},
}
_PARAMETERS: Schema = {"type": "object", "description": "Free-form parameters."}
V2_INFER_REQUEST: Schema = object_schema(
    {
        "id": STRING,
        "parameters": {
            **_PARAMETERS,
            "properties": {
                "binary_data_output": {
                    "type": "boolean",
                    "description": "Send every output as binary data after the JSON part.",
                }
            },
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": object_schema(
                {
                    "name": STRING,
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"enum": list(DATATYPES)},
                    "parameters": {
                        **_PARAMETERS,
                        "properties": {
                            "binary_data_size": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "Bytes of this input in the binary part "
                                "(instead of data).",
                            }
                        },
                    },
                    "data": _TENSOR_DATA,
                },
                optional=("parameters", "data"),
            ),
        },
        "outputs": {
            "type": "array",
            "items": object_schema(
                {
                    "name": {"enum": ["predict", "predict_proba"]},
                    "parameters": {
                        **_PARAMETERS,
                        "properties": {
                            "binary_data": {
                                "type": "boolean",
                                "description": "Send this output as binary data.",
                            }
                        },
                    },
                },
                optional=("parameters",),
            ),
        },
    },
    optional=("id", "parameters", "outputs"),
)
V2_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol inference request. With the binary tensor "
        f"data extension, the JSON is followed by raw tensor bytes and {HEADER_LENGTH} gives "
        "its length.",
        "content": {
            "application/json": {
                "schema": V2_INFER_REQUEST,
                "example": {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": [1, 4],
                            "datatype": "FP32",
                            "data": [5.1, 3.5, 1.4, 0.2],
                        }
                    ]
                },
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": f"The JSON request, then binary tensor data; needs the "
                    f"{HEADER_LENGTH} header.",
                }
            },
        },
    }
}
V2_INFER_RESPONSE: Schema = object_schema(
    {
        "model_name": STRING,
        "model_version": STRING,
        "id": STRING,
        "parameters": _PARAMETERS,
        "outputs": {
            "type": "array",
            "items": object_schema(
                {
                    "name": STRING,
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"enum": list(DATATYPES)},
                    "parameters": _PARAMETERS,
                    "data": {**_TENSOR_DATA, "description": "Flat, row-major; null is NaN."},
                },
                optional=("parameters", "data"),
            ),
        },
    },
    optional=("model_version", "id", "parameters"),
)
V2_INFER_OK: Responses = {
    200: {
        "description": "The outputs: JSON, or JSON followed by binary outputs (then "
        f"Content-Type is application/octet-stream and {HEADER_LENGTH} gives the JSON length).",
        "content": {
            "application/json": {"schema": V2_INFER_RESPONSE},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
