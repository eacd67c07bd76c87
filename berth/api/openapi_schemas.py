"""OpenAPI documentation of the routes: parameters, request bodies, responses and credentials.

The routes read and write JSON themselves (orjson, no pydantic models on the hot path), so
FastAPI cannot infer any of this. Admin request bodies are documented from the request models
that validate them (`request_body`); the rest is declared here as plain JSON Schema (OpenAPI
3.1) dicts. Both are attached with `openapi_extra=` and `responses=`; nothing here runs per
request, except two no-op dependencies on the admin routes that put the credential schemes in
the document (see `PROTECTED`). The `Authenticator` is what checks credentials.

Nothing here may hold a secret or an example key: the document is public.
"""

from __future__ import annotations

from typing import Any

from fastapi import Security
from fastapi.params import Depends
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from berth.api.v2_codec import DATATYPES, HEADER_LENGTH
from berth.registry.references import MAX_VERSION, NAME_PATTERN
from berth.registry.signature import COLUMN_DTYPES, TENSOR_DTYPES
from berth.request_model import RequestModel

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


def request_body(model: type[RequestModel], required: bool = True) -> dict[str, Any]:
    """`openapi_extra` for a JSON request body declared by a request model."""
    extra = json_body(model_schema(model), model.EXAMPLE, description=model.__doc__ or "")
    extra["requestBody"]["required"] = required
    return extra


def model_schema(model: type[BaseModel]) -> Schema:
    """The model's JSON schema with its `$defs` written in place.

    In the OpenAPI document a schema sits deep inside an operation, where pydantic's
    `#/$defs/...` references would not resolve; request bodies are small, so nested models are
    repeated rather than moved to `components`.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inlined(node: Any) -> Any:
        if isinstance(node, list):
            return [inlined(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**inlined(definitions[node["$ref"].rsplit("/", 1)[-1]]), **inlined(rest)}
        return {key: inlined(value) for key, value in node.items()}

    result: Schema = inlined(schema)
    return result


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

# ---------------------------------------------------------------------------- traffic (admin)
# Endpoints, rollouts and experiments (berth/api/traffic.py). The imports sit here rather than
# at the top because this section was appended while the rest of the file was being edited.

from berth.registry.endpoints import ROLES  # noqa: E402
from berth.rollouts.experiments import METRICS as EXPERIMENT_METRICS  # noqa: E402
from berth.rollouts.strategies import STRATEGIES  # noqa: E402

_COUNT: Schema = {"type": "integer", "minimum": 0}
_OPTIONAL_NUMBER: Schema = {"type": ["number", "null"]}
_OPTIONAL_INTEGER: Schema = {"type": ["integer", "null"]}
_LABEL: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "description": "The route's name, unique per endpoint; `X-Berth-Route: LABEL` forces it.",
}
ROUTE: Schema = _object(
    {
        "label": _LABEL,
        "role": {"enum": list(ROLES)},
        "model": _STRING,
        "version": _INTEGER,
        "weight": _NUMBER,
    }
)
ENDPOINT_INFO: Schema = _object(
    {
        "name": _STRING,
        "sticky": {"type": ["string", "null"], "description": "e.g. header:x-user-id, or null."},
        "description": _STRING,
        "routes": {"type": "array", "items": ROUTE},
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
    }
)
ENDPOINTS: Schema = _object({"endpoints": {"type": "array", "items": ENDPOINT_INFO}})
ENDPOINT_DELETED: Schema = _object({"deleted": {"type": "string", "description": "The name."}})
ENDPOINT_HISTORY: Schema = _object(
    {
        "history": {
            "type": "array",
            "description": "Changes of the routes, newest first.",
            "items": _object(
                {
                    "id": _INTEGER,
                    "endpoint": _STRING,
                    "at": _TIMESTAMP,
                    "actor": _STRING,
                    "reason": _STRING,
                    "routes": {"type": "array", "items": ROUTE},
                    "rollout_id": _OPTIONAL_INTEGER,
                    "experiment_id": _OPTIONAL_INTEGER,
                }
            ),
        }
    }
)
ENDPOINT_STATS: Schema = _object(
    {
        "endpoint": _STRING,
        "versions": {
            "type": "array",
            "description": "Per route: running totals since each serving process started, "
            "summed over every worker and replica.",
            "items": _object(
                {
                    "label": _STRING,
                    "model": _STRING,
                    "version": _INTEGER,
                    "requests": _COUNT,
                    "errors": _COUNT,
                    "error_rate": _OPTIONAL_NUMBER,
                    "mean_latency_ms": _OPTIONAL_NUMBER,
                    "p99_ms": _OPTIONAL_NUMBER,
                }
            ),
        },
        "shadow": {
            "description": "The shadow route's agreement with the served answers; null "
            "without a shadow route.",
            "oneOf": [
                {"type": "null"},
                _object(
                    {
                        "model": _STRING,
                        "version": _INTEGER,
                        "percent": _NUMBER,
                        "compared": _COUNT,
                        "agreed": _COUNT,
                        "agreement": _OPTIONAL_NUMBER,
                        "mean_latency_delta_ms": {
                            **_OPTIONAL_NUMBER,
                            "description": "Shadow minus served latency, on average.",
                        },
                    }
                ),
            ],
        },
    }
)
_ROLLOUT_EVENT: Schema = _object(
    {
        "at": _TIMESTAMP,
        "kind": {
            "type": "string",
            "description": "started, gates, step, analysis, preview, switched, paused, "
            "resumed, promoted, rolled_back or aborted.",
        },
        "message": _STRING,
        "detail": {
            "type": ["object", "null"],
            "description": "A verdict (decision, checks, reasons) or a gate report.",
        },
    }
)
ROLLOUT_INFO: Schema = _object(
    {
        "id": _INTEGER,
        "endpoint": _STRING,
        "strategy": {"enum": list(STRATEGIES)},
        "status": {"enum": ["running", "paused", "promoted", "rolled_back", "aborted", "failed"]},
        "phase": {
            "type": "string",
            "description": "loading, step, preview, switched, done, or gates (failed gates).",
        },
        "from": {"type": "string", "description": "The version before, NAME:VERSION."},
        "to": {"type": "string", "description": "The candidate, NAME:VERSION."},
        "weight": {"type": "number", "description": "The candidate's share now, in percent."},
        "config": {"type": "object", "description": "Steps, interval, criteria, gates, ..."},
        "state": {"type": "object", "description": "The controller's state (step, baseline)."},
        "reason": _STRING,
        "actor": _STRING,
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "finished_at": _OPTIONAL_TIMESTAMP,
        "events": {"type": "array", "items": _ROLLOUT_EVENT, "description": "Oldest first."},
    }
)
ROLLOUTS: Schema = _object(
    {
        "rollouts": {
            "type": "array",
            "items": ROLLOUT_INFO,
            "description": "Newest first (at most 200), without their events.",
        }
    }
)
GATE_REPORT: Schema = _object(
    {
        "reference": _STRING,
        "rows": _INTEGER,
        "passed": _BOOLEAN,
        "checks": {
            "type": "array",
            "items": _object(
                {
                    "name": _STRING,
                    "passed": _BOOLEAN,
                    "value": _OPTIONAL_NUMBER,
                    "threshold": _STRING,
                    "detail": _STRING,
                }
            ),
        },
    }
)
ROLLOUT_STARTED: Schema = _object(
    {
        "rollout": {
            **ROLLOUT_INFO,
            "description": "status running, or failed (the gates failed; routes unchanged).",
        },
        "gates": {"oneOf": [{"type": "null"}, GATE_REPORT]},
    }
)
ROLLOUT_ID = _path(
    "id", f"A rollout's id (1 to {MAX_VERSION}).", {"type": "string", "pattern": "^[0-9]+$"}
)
ENDPOINT_QUERY: Schema = {
    "name": "endpoint",
    "in": "query",
    "required": False,
    "description": "Only this endpoint's.",
    "schema": _NAME_SCHEMA,
}
METRICS_SOURCE_QUERY: Schema = {
    "name": "metrics_source",
    "in": "query",
    "required": False,
    "description": "Where traffic totals come from: server (default) or a Prometheus URL.",
    "schema": _STRING,
}


EXPERIMENT_INFO: Schema = _object(
    {
        "id": _INTEGER,
        "endpoint": _STRING,
        "status": {"enum": ["running", "concluded"]},
        "variants": {
            "type": "array",
            "items": _object(
                {"name": _STRING, "model": _STRING, "version": _INTEGER, "weight": _NUMBER}
            ),
            "description": "The first is the control.",
        },
        "sticky": _STRING,
        "metric": {"enum": list(EXPERIMENT_METRICS)},
        "alpha": _NUMBER,
        "min_samples": _INTEGER,
        "winner": {"type": ["string", "null"]},
        "actor": _STRING,
        "started_at": _TIMESTAMP,
        "concluded_at": _OPTIONAL_TIMESTAMP,
    }
)
EXPERIMENTS: Schema = _object(
    {"experiments": {"type": "array", "items": EXPERIMENT_INFO, "description": "Newest first."}}
)
_VARIANT_ROW: Schema = _object(
    {
        "name": _STRING,
        "reference": _STRING,
        "requests": _COUNT,
        "errors": _COUNT,
        "error_rate": _OPTIONAL_NUMBER,
        "mean_latency_ms": _OPTIONAL_NUMBER,
        "p99_ms": _OPTIONAL_NUMBER,
        "samples": {**_COUNT, "description": "Labelled predictions, or numeric outcomes."},
        "estimate": _OPTIONAL_NUMBER,
        "ci_low": _OPTIONAL_NUMBER,
        "ci_high": _OPTIONAL_NUMBER,
    }
)
EXPERIMENT_REPORT: Schema = _object(
    {
        "experiment": EXPERIMENT_INFO,
        "report": _object(
            {
                "metric": {"enum": list(EXPERIMENT_METRICS)},
                "alpha": _NUMBER,
                "comparison_alpha": {
                    "type": "number",
                    "description": "alpha split over the comparisons (Bonferroni).",
                },
                "min_samples": _INTEGER,
                "variants": {"type": "array", "items": _VARIANT_ROW},
                "comparisons": {
                    "type": "array",
                    "description": "Each variant against the control, two-sided.",
                    "items": _object(
                        {
                            "variant": _STRING,
                            "control": _STRING,
                            "test": _object(
                                {
                                    "name": _STRING,
                                    "statistic": _OPTIONAL_NUMBER,
                                    "p_value": _OPTIONAL_NUMBER,
                                }
                            ),
                            "difference": _OPTIONAL_NUMBER,
                            "significant": _BOOLEAN,
                        }
                    ),
                },
                "recommendation": {
                    "type": ["string", "null"],
                    "description": "The variant to conclude with, or null (not yet, or none).",
                },
                "explanation": _STRING,
            }
        ),
    }
)
