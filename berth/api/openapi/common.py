"""Shared pieces of the OpenAPI document: credentials, building blocks, errors and parameters."""

from __future__ import annotations

from typing import Any

from fastapi import Security
from fastapi.params import Depends
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from berth.api.v2_codec import HEADER_LENGTH
from berth.registry.references import MAX_VERSION, NAME_PATTERN
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

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {"type": "string", "description": "ISO 8601 date and time"}
OPTIONAL_TIMESTAMP: Schema = {"type": ["string", "null"], "description": "ISO 8601, or null"}
STRINGS: Schema = {"type": "array", "items": STRING}


def object_schema(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
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


def multipart_body(
    files: dict[str, str],
    required: tuple[str, ...],
    fields: dict[str, type[RequestModel]],
) -> dict[str, Any]:
    """`openapi_extra` for a `multipart/form-data` body: file parts (name: description), of
    which `required` must come, and required JSON parts declared by request models."""
    properties: dict[str, Schema] = {
        name: {"type": "string", "format": "binary", "description": description}
        for name, description in files.items()
    }
    properties.update({name: model_schema(model) for name, model in fields.items()})
    schema: Schema = {
        "type": "object",
        "required": [*required, *fields],
        "properties": properties,
        "additionalProperties": False,
    }
    encoding = {name: {"contentType": "application/json"} for name in fields}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema, "encoding": encoding}},
        }
    }


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


def created(schema: Schema, description: str) -> Responses:
    """`responses=` entry for a 201 answer: the new resource, and its URL in Location."""
    location = {"description": "The new resource's URL.", "required": True, "schema": STRING}
    return {
        201: {
            "description": description,
            "headers": {"Location": location},
            "content": {"application/json": {"schema": schema}},
        }
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
                "schema": STRING,
            }
        },
    ),
    403: ("Valid credentials without the scope this route needs.", {}),
    404: ("No such model, version, alias or key.", {}),
    408: ("The body did not arrive in time; the connection is closed.", {}),
    409: ("The change clashes with the current state (e.g. the version has an alias).", {}),
    413: ("The body, or the number of rows, is over the configured limit.", {}),
    415: (
        "The body is in an encoding (Content-Encoding) or media type the route does not take.",
        {},
    ),
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


def path_parameter(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or STRING,
    }


NAME_SCHEMA: Schema = {"type": "string", "pattern": f"^{NAME_PATTERN}$"}
MODEL_REF = path_parameter(
    "ref",
    "A model reference: `NAME` (its production alias, else its latest version), "
    "`NAME:VERSION` or `NAME@ALIAS`.",
)
MODEL_NAME = path_parameter("name", "A model name.", NAME_SCHEMA)
ENDPOINT_NAME = path_parameter(
    "name",
    "An endpoint's name. Its routes pick the version; send `X-Berth-Route: LABEL` to force one, "
    "and the endpoint's sticky key (a header, cookie or body field) to keep a caller on one.",
    NAME_SCHEMA,
)
VERSION = path_parameter(
    "version",
    f"A version number (1 to {MAX_VERSION}).",
    {"type": "string", "pattern": "^[0-9]+$"},
)
ALIAS = path_parameter("alias", "An alias name, e.g. `production`.", NAME_SCHEMA)
KEY_NAME = path_parameter("name", "The name the key was created with.")
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

HEALTH: Schema = object_schema({"status": {"const": "ok"}})
READINESS: Schema = object_schema(
    {
        "status": {"enum": ["ready", "loading"]},
        "models": {**STRINGS, "description": "Loaded versions, as NAME:VERSION."},
    }
)
