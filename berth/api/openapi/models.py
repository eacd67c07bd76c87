"""OpenAPI schemas of the registry, v1 predictions and the admin routes (models, aliases, keys)."""

from __future__ import annotations

from berth.api.openapi.common import (
    BOOLEAN,
    INTEGER,
    NUMBER,
    OPTIONAL_TIMESTAMP,
    STRING,
    STRINGS,
    TIMESTAMP,
    Schema,
    object_schema,
)
from berth.registry.signature import COLUMN_DTYPES, TENSOR_DTYPES

# ---------------------------------------------------------------------------- registry

_TENSOR_SPEC = object_schema(
    {
        "name": STRING,
        "dtype": {"enum": list(TENSOR_DTYPES)},
        "shape": {
            "type": "array",
            "items": INTEGER,
            "description": "-1 is any size; the batch axis comes first.",
        },
    }
)
_COLUMN_SPEC = object_schema(
    {
        "name": STRING,
        "dtype": {"enum": list(COLUMN_DTYPES)},
        "nullable": BOOLEAN,
        "minimum": NUMBER,
        "maximum": NUMBER,
    },
    optional=("minimum", "maximum"),
)
SIGNATURE: Schema = object_schema(
    {
        "kind": {"enum": ["tensor", "tabular"]},
        "inputs": {"type": "array", "items": _TENSOR_SPEC, "description": "Tensor signatures."},
        "columns": {"type": "array", "items": _COLUMN_SPEC, "description": "Tabular ones."},
        "outputs": {"type": "array", "items": _TENSOR_SPEC},
    },
    optional=("inputs", "columns"),
)
VERSION_INFO: Schema = object_schema(
    {
        "model": STRING,
        "version": INTEGER,
        "flavor": STRING,
        "sha256": STRING,
        "size_bytes": INTEGER,
        "signature": SIGNATURE,
        "metrics": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
        "tags": {"type": "object", "additionalProperties": STRING},
        "description": STRING,
        "aliases": STRINGS,
        "created_at": TIMESTAMP,
        "example": {
            "type": ["array", "null"],
            "description": "A few input rows from the registration sample, as v1 instances.",
        },
        "trusted_types": STRINGS,
        "pickle_trusted": BOOLEAN,
        "accelerated": {
            "type": ["object", "null"],
            "description": "Its accelerated twin (flavor, served, sha256, converter, the check "
            "it passed, one-row times), or why it has none (reason); null when none was tried.",
        },
    }
)
REGISTERED: Schema = object_schema(
    {
        **VERSION_INFO["properties"],
        "notes": {
            **STRINGS,
            "description": "What registering found worth telling (an inferred signature, the "
            "same bytes already registered as another version); not stored.",
        },
    }
)
_MODEL_FIELDS: dict[str, Schema] = {
    "name": STRING,
    "description": STRING,
    "created_at": TIMESTAMP,
    "latest_version": {"type": ["integer", "null"]},
    "latest_flavor": {"type": ["string", "null"], "description": "The latest version's flavor."},
    "aliases": {
        "type": "object",
        "additionalProperties": INTEGER,
        "description": "Alias name to version number.",
    },
}
MODEL_SUMMARY: Schema = object_schema(
    {**_MODEL_FIELDS, "versions": {"type": "array", "items": INTEGER}}
)
MODEL_DETAIL: Schema = object_schema(
    {**_MODEL_FIELDS, "versions": {"type": "array", "items": VERSION_INFO}}
)
MODELS: Schema = object_schema({"models": {"type": "array", "items": MODEL_SUMMARY}})

# ---------------------------------------------------------------------------- v1 predictions

_ANY_VALUES: Schema = {"type": "array", "items": {}}
_OPTIONAL_VALUES: Schema = {"type": ["array", "null"], "items": {}}
SINGLE_PREDICTION: Schema = object_schema(
    {
        "prediction": {"description": "The model's output for the row."},
        "probability": {
            "type": ["number", "null"],
            "description": "Probability of the predicted class (classifiers), else null.",
        },
        "probabilities": {**_OPTIONAL_VALUES, "description": "One per class, or null."},
        "classes": {**_OPTIONAL_VALUES, "description": "The classes, in probability order."},
        "model": STRING,
        "model_version": INTEGER,
        "prediction_id": STRING,
    }
)
BATCH_PREDICTION: Schema = object_schema(
    {
        "predictions": _ANY_VALUES,
        "probabilities": {**_OPTIONAL_VALUES, "description": "One list per row, or null."},
        "classes": _OPTIONAL_VALUES,
        "model": STRING,
        "model_version": INTEGER,
        "prediction_ids": STRINGS,
    }
)

# ---------------------------------------------------------------------------- admin

KEY_INFO: Schema = object_schema(
    {
        "name": STRING,
        "key_id": {"type": "string", "description": "The public part of the key."},
        "scopes": STRINGS,
        "rate": {"type": ["string", "null"], "description": "e.g. 100/s; null: the default."},
        "active": BOOLEAN,
        "created_at": TIMESTAMP,
        "expires_at": OPTIONAL_TIMESTAMP,
        "revoked_at": OPTIONAL_TIMESTAMP,
        "last_used_at": OPTIONAL_TIMESTAMP,
    }
)
KEYS: Schema = object_schema({"keys": {"type": "array", "items": KEY_INFO}})
KEY: Schema = object_schema({"key": KEY_INFO})
KEY_WITH_SECRET: Schema = object_schema(
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
ALIAS_REMOVED: Schema = object_schema({"removed": {"type": "string", "description": "NAME@ALIAS"}})
VERSION_DELETED: Schema = object_schema(
    {"deleted": {"type": "string", "description": "NAME:VERSION"}}
)
MODEL_DELETED: Schema = object_schema({"deleted": {"type": "string", "description": "NAME"}})
AUDIT_EVENTS: Schema = object_schema(
    {
        "events": {
            "type": "array",
            "items": object_schema(
                {
                    "actor": STRING,
                    "action": STRING,
                    "target": STRING,
                    "outcome": STRING,
                    "address": {"type": ["string", "null"]},
                    "detail": {"type": ["object", "null"]},
                    "at": TIMESTAMP,
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
