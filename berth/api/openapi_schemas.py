"""OpenAPI documentation of the routes: parameters, request bodies, responses and credentials.

The routes read and write JSON themselves (orjson, no pydantic models on the hot path), so
FastAPI cannot infer any of this. It is declared here as plain JSON Schema (OpenAPI 3.1) dicts,
attached with `openapi_extra=` and `responses=`; nothing here runs per request, except two
no-op dependencies on the admin routes that put the credential schemes in the document (see
`PROTECTED`). The `Authenticator` is what checks credentials.

Nothing here may hold a secret or an example key: the document is public.
"""

from __future__ import annotations

from typing import Any

from fastapi import Security
from fastapi.params import Depends
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.requests import HTTPConnection

from berth.api.v2_codec import DATATYPES, HEADER_LENGTH
from berth.registry.references import MAX_VERSION, NAME_PATTERN
from berth.registry.signature import COLUMN_DTYPES, TENSOR_DTYPES

Schema = dict[str, Any]
Responses = dict[int | str, dict[str, Any]]

# ---------------------------------------------------------------------------- credentials


class _ApiKeyScheme(APIKeyHeader):
    """Documents the `X-API-Key` header; checking it is the Authenticator's job."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


class _BearerScheme(HTTPBearer):
    """Documents `Authorization: Bearer`; checking it is the Authenticator's job."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


API_KEY_SCHEME = _ApiKeyScheme(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="An API key, made with `berth keys create NAME` or `POST /api/v1/keys`.",
    auto_error=False,
)
BEARER_SCHEME = _BearerScheme(
    scheme_name="Bearer",
    bearerFormat="JWT or API key",
    description="A JWT from the configured issuer (BERTH_JWT_*), or an API key.",
    auto_error=False,
)
SECURITY: list[dict[str, list[str]]] = [
    {API_KEY_SCHEME.scheme_name: []},
    {BEARER_SCHEME.scheme_name: []},
]
"""An operation's `security`: either scheme will do."""
PROTECTED: list[Depends] = [Security(API_KEY_SCHEME), Security(BEARER_SCHEME)]
"""`dependencies=` that document both schemes, on the admin router only.

FastAPI puts a scheme in `components.securitySchemes` only for a route that depends on it,
and resolving the two no-op dependencies costs about 15 us a request. So the (cold) admin
routes carry them, and the hot routes (predictions, metadata) name the same schemes through
`openapi_extra` with `secured(...)`, for free.
"""


def secured(*parts: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` of a route that needs credentials, with its other fragments."""
    return combined({"security": SECURITY}, *parts)


# ---------------------------------------------------------------------------- building blocks

_STRING: Schema = {"type": "string"}
_INTEGER: Schema = {"type": "integer"}
_NUMBER: Schema = {"type": "number"}
_BOOLEAN: Schema = {"type": "boolean"}
_TIMESTAMP: Schema = {"type": "string", "description": "ISO 8601 date and time"}
_OPTIONAL_TIMESTAMP: Schema = {"type": ["string", "null"], "description": "ISO 8601, or null"}
_STRINGS: Schema = {"type": "array", "items": _STRING}


def _object(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    """An object with these properties, all required but `optional`; others are allowed."""
    required = [name for name in properties if name not in optional]
    return {"type": "object", "required": required, "properties": properties}


def json_body(schema: Schema, example: Any, description: str = "") -> dict[str, Any]:
    """`openapi_extra` for a required JSON request body."""
    body: dict[str, Any] = {
        "required": True,
        "content": {"application/json": {"schema": schema, "example": example}},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def ok(schema: Schema, description: str, status: int = 200) -> Responses:
    """`responses=` entry for a JSON success answer."""
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


# ---------------------------------------------------------------------------- errors

ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong and what to do about it."}
    },
    "additionalProperties": False,
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}
_RATE_HEADERS = {
    name: {"description": description, "schema": {"type": "integer", "minimum": 0}}
    for name, description in {
        "RateLimit-Limit": "Requests allowed in the window.",
        "RateLimit-Remaining": "Requests left in the window.",
        "RateLimit-Reset": "Seconds until the window resets.",
    }.items()
}

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Invalid request: the message names the field, what was expected and what came.", {}),
    401: (
        "No credentials, or credentials that do not verify (unknown, revoked or expired key; "
        "bad or expired JWT).",
        {
            "WWW-Authenticate": {
                "description": 'Bearer challenge, e.g. `Bearer realm="berth", error="invalid_token"`.',
                "required": True,
                "schema": _STRING,
            }
        },
    ),
    403: ("Valid credentials without the scope this route needs.", {}),
    404: ("No such model, version, alias or key.", {}),
    409: ("The change clashes with the current state (e.g. the version has an alias).", {}),
    413: ("The body, or the number of rows, is over the configured limit.", {}),
    429: (
        "A rate limit (per key, per model or per address) is used up.",
        {"Retry-After": {**_RETRY_AFTER, "required": True}, **_RATE_HEADERS},
    ),
    503: (
        "Not ready (models or keys still loading, registry or rate limiter unreachable), at "
        "the concurrency limit, or the model could not be loaded.",
        {"Retry-After": _RETRY_AFTER},
    ),
    504: ("The prediction took longer than the configured timeout.", {}),
}


def error(status: int, description: str | None = None) -> dict[str, Any]:
    """One `{"error": "..."}` response; `description` replaces the generic one."""
    generic, headers = _ERRORS[status]
    response: dict[str, Any] = {
        "description": description or generic,
        "content": {"application/json": {"schema": ERROR}},
    }
    if headers:
        response["headers"] = headers
    return response


def errors(*statuses: int) -> Responses:
    """`responses=` entries for `{"error": "..."}` answers with these statuses."""
    return {status: error(status) for status in statuses}


OPEN_ERRORS = (429, 503)
"""What any route can answer: rate limited per address, or the rate limiter unavailable."""
READ_ERRORS = (401, 403, 429, 503)
"""What any protected route can answer before it does anything."""
PREDICT_ERRORS = (400, 401, 403, 404, 413, 429, 503, 504)

# ---------------------------------------------------------------------------- parameters


def _path(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or _STRING,
    }


_NAME_SCHEMA: Schema = {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
MODEL_REF = _path(
    "ref",
    "A model reference: `NAME` (its production alias, else its latest version), "
    "`NAME:VERSION` or `NAME@ALIAS`.",
)
MODEL_NAME = _path("name", "A model name.", _NAME_SCHEMA)
ENDPOINT_NAME = _path(
    "name",
    "An endpoint's name. Its routes pick the version; send `X-Berth-Route: LABEL` to force one, "
    "and the endpoint's sticky key (a header, cookie or body field) to keep a caller on one.",
    _NAME_SCHEMA,
)
VERSION = _path(
    "version",
    f"A version number (1 to {MAX_VERSION}).",
    {"type": "string", "pattern": "^[0-9]+$"},
)
ALIAS = _path("alias", "An alias name, e.g. `production`.", _NAME_SCHEMA)
KEY_NAME = _path("name", "The name the key was created with.")
INFERENCE_HEADER_LENGTH: Schema = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "description": "With binary tensor data: the byte length of the JSON part of the body "
    "(the binary part follows it). Absent: the whole body is JSON.",
    "schema": {"type": "integer", "minimum": 0},
}


def parameters(*items: Schema) -> dict[str, Any]:
    """`openapi_extra` for parameters the handler reads itself (no FastAPI validation)."""
    return {"parameters": list(items)}


def combined(*parts: dict[str, Any]) -> dict[str, Any]:
    """Several `openapi_extra` fragments in one."""
    merged: dict[str, Any] = {}
    for part in parts:
        assert not merged.keys() & part.keys(), f"fragments overlap: {merged.keys() & part.keys()}"
        merged.update(part)
    return merged


# ---------------------------------------------------------------------------- health

HEALTH: Schema = _object({"status": {"const": "ok"}})
READINESS: Schema = _object(
    {
        "status": {"enum": ["ready", "loading"]},
        "models": {**_STRINGS, "description": "Loaded versions, as NAME:VERSION."},
    }
)

# ---------------------------------------------------------------------------- registry

_TENSOR_SPEC = _object(
    {
        "name": _STRING,
        "dtype": {"enum": list(TENSOR_DTYPES)},
        "shape": {
            "type": "array",
            "items": _INTEGER,
            "description": "-1 is any size; the batch axis comes first.",
        },
    }
)
_COLUMN_SPEC = _object(
    {
        "name": _STRING,
        "dtype": {"enum": list(COLUMN_DTYPES)},
        "nullable": _BOOLEAN,
        "minimum": _NUMBER,
        "maximum": _NUMBER,
    },
    optional=("minimum", "maximum"),
)
SIGNATURE: Schema = _object(
    {
        "kind": {"enum": ["tensor", "tabular"]},
        "inputs": {"type": "array", "items": _TENSOR_SPEC, "description": "Tensor signatures."},
        "columns": {"type": "array", "items": _COLUMN_SPEC, "description": "Tabular ones."},
        "outputs": {"type": "array", "items": _TENSOR_SPEC},
    },
    optional=("inputs", "columns"),
)
VERSION_INFO: Schema = _object(
    {
        "model": _STRING,
        "version": _INTEGER,
        "flavor": _STRING,
        "sha256": _STRING,
        "size_bytes": _INTEGER,
        "signature": SIGNATURE,
        "metrics": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
        "tags": {"type": "object", "additionalProperties": _STRING},
        "description": _STRING,
        "aliases": _STRINGS,
        "created_at": _TIMESTAMP,
        "example": {
            "type": ["array", "null"],
            "description": "A few input rows from the registration sample, as v1 instances.",
        },
        "trusted_types": _STRINGS,
        "pickle_trusted": _BOOLEAN,
    }
)
_MODEL_FIELDS: dict[str, Schema] = {
    "name": _STRING,
    "description": _STRING,
    "created_at": _TIMESTAMP,
    "latest_version": {"type": ["integer", "null"]},
    "aliases": {
        "type": "object",
        "additionalProperties": _INTEGER,
        "description": "Alias name to version number.",
    },
}
MODEL_SUMMARY: Schema = _object({**_MODEL_FIELDS, "versions": {"type": "array", "items": _INTEGER}})
MODEL_DETAIL: Schema = _object(
    {**_MODEL_FIELDS, "versions": {"type": "array", "items": VERSION_INFO}}
)
MODELS: Schema = _object({"models": {"type": "array", "items": MODEL_SUMMARY}})

# ---------------------------------------------------------------------------- v1 predictions

_ANY_VALUES: Schema = {"type": "array", "items": {}}
_OPTIONAL_VALUES: Schema = {"type": ["array", "null"], "items": {}}
SINGLE_PREDICTION: Schema = _object(
    {
        "prediction": {"description": "The model's output for the row."},
        "probability": {
            "type": ["number", "null"],
            "description": "Probability of the predicted class (classifiers), else null.",
        },
        "probabilities": {**_OPTIONAL_VALUES, "description": "One per class, or null."},
        "classes": {**_OPTIONAL_VALUES, "description": "The classes, in probability order."},
        "model": _STRING,
        "model_version": _INTEGER,
        "prediction_id": _STRING,
    }
)
BATCH_PREDICTION: Schema = _object(
    {
        "predictions": _ANY_VALUES,
        "probabilities": {**_OPTIONAL_VALUES, "description": "One list per row, or null."},
        "classes": _OPTIONAL_VALUES,
        "model": _STRING,
        "model_version": _INTEGER,
        "prediction_ids": _STRINGS,
    }
)

# ---------------------------------------------------------------------------- admin

KEY_INFO: Schema = _object(
    {
        "name": _STRING,
        "key_id": {"type": "string", "description": "The public part of the key."},
        "scopes": _STRINGS,
        "rate": {"type": ["string", "null"], "description": "e.g. 100/s; null: the default."},
        "active": _BOOLEAN,
        "created_at": _TIMESTAMP,
        "expires_at": _OPTIONAL_TIMESTAMP,
        "revoked_at": _OPTIONAL_TIMESTAMP,
        "last_used_at": _OPTIONAL_TIMESTAMP,
    }
)
KEYS: Schema = _object({"keys": {"type": "array", "items": KEY_INFO}})
KEY: Schema = _object({"key": KEY_INFO})
KEY_WITH_SECRET: Schema = _object(
    {
        "key": KEY_INFO,
        "secret": {
            "type": "string",
            "description": "The key itself. It is in this answer only: Berth keeps a keyed "
            "hash, so store it now.",
        },
    }
)
_DURATION: Schema = {
    "type": "string",
    "pattern": "^[0-9]{1,9}[smhd]$",
    "description": "A duration: a number and s, m, h or d, e.g. 90d.",
}
_RATE: Schema = {
    "type": "string",
    "description": "A rate: a number of requests per s, m, h or d, e.g. 100/s.",
}
CREATE_KEY_BODY: Schema = _object(
    {
        "name": {"type": "string", "description": "A unique name for the key."},
        "scopes": {
            **_STRINGS,
            "description": "e.g. predict, read, admin, or predict:MODEL; default predict and read.",
        },
        "expires": {**_DURATION, "description": "Lifetime, e.g. 90d; no expiry if absent."},
        "rate": {**_RATE, "description": "The key's own rate limit, e.g. 100/s."},
    },
    optional=("scopes", "expires", "rate"),
)
ROTATE_KEY_BODY: Schema = _object(
    {"grace": {**_DURATION, "description": "How long the old secret keeps working; default 1h."}},
    optional=("grace",),
)
SET_ALIAS_BODY: Schema = _object(
    {
        "version": {
            "description": "The version number to point the alias at.",
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
                {"type": "string", "pattern": "^[0-9]+$"},
            ],
        }
    }
)
ALIAS_REMOVED: Schema = _object({"removed": {"type": "string", "description": "NAME@ALIAS"}})
VERSION_DELETED: Schema = _object({"deleted": {"type": "string", "description": "NAME:VERSION"}})
AUDIT_EVENTS: Schema = _object(
    {
        "events": {
            "type": "array",
            "items": _object(
                {
                    "actor": _STRING,
                    "action": _STRING,
                    "target": _STRING,
                    "outcome": _STRING,
                    "address": {"type": ["string", "null"]},
                    "detail": {"type": ["object", "null"]},
                    "at": _TIMESTAMP,
                }
            ),
        }
    }
)
AUDIT_QUERY: list[Schema] = [
    {
        "name": "since",
        "in": "query",
        "required": False,
        "description": "Only events newer than this, e.g. 24h.",
        "schema": _DURATION,
    },
    {
        "name": "actor",
        "in": "query",
        "required": False,
        "description": "Only events by this actor (a key name, or cli:USER).",
        "schema": {"type": "string", "maxLength": 128},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "At most this many events (1 to 1000, default 100).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
]

# ---------------------------------------------------------------------------- v2 (OIP)

V2_LIVE: Schema = _object({"live": _BOOLEAN})
V2_READY: Schema = _object({"ready": _BOOLEAN})
V2_MODEL_READY: Schema = _object({"name": _STRING, "ready": _BOOLEAN})
V2_SERVER_METADATA: Schema = _object({"name": _STRING, "version": _STRING, "extensions": _STRINGS})
_V2_TENSOR_METADATA = _object(
    {
        "name": _STRING,
        "datatype": {"enum": list(DATATYPES)},
        "shape": {"type": "array", "items": _INTEGER},
    }
)
V2_MODEL_METADATA: Schema = _object(
    {
        "name": _STRING,
        "versions": _STRINGS,
        "platform": _STRING,
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
V2_INFER_REQUEST: Schema = _object(
    {
        "id": _STRING,
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
            "items": _object(
                {
                    "name": _STRING,
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
            "items": _object(
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
V2_INFER_RESPONSE: Schema = _object(
    {
        "model_name": _STRING,
        "model_version": _STRING,
        "id": _STRING,
        "parameters": _PARAMETERS,
        "outputs": {
            "type": "array",
            "items": _object(
                {
                    "name": _STRING,
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
