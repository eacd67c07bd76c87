"""OpenAPI schemas of endpoints, rollouts and experiments (the traffic admin routes)."""

from __future__ import annotations

from berth.api.openapi.common import (
    BOOLEAN,
    INTEGER,
    NAME_SCHEMA,
    NUMBER,
    OPTIONAL_TIMESTAMP,
    STRING,
    TIMESTAMP,
    Schema,
    object_schema,
    path_parameter,
)
from berth.defaults import LONG_POLL_MAX_SECONDS
from berth.registry.endpoints import ROLES
from berth.registry.references import MAX_VERSION
from berth.rollouts.experiments import METRICS as EXPERIMENT_METRICS
from berth.rollouts.strategies import STRATEGIES

# ---------------------------------------------------------------------------- traffic (admin)


_COUNT: Schema = {"type": "integer", "minimum": 0}
_OPTIONAL_NUMBER: Schema = {"type": ["number", "null"]}
_OPTIONAL_INTEGER: Schema = {"type": ["integer", "null"]}
_LABEL: Schema = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "description": "The route's name, unique per endpoint; `X-Berth-Route: LABEL` forces it.",
}
ROUTE: Schema = object_schema(
    {
        "label": _LABEL,
        "role": {"enum": list(ROLES)},
        "model": STRING,
        "version": INTEGER,
        "weight": NUMBER,
    }
)
ENDPOINT_INFO: Schema = object_schema(
    {
        "name": STRING,
        "sticky": {"type": ["string", "null"], "description": "e.g. header:x-user-id, or null."},
        "description": STRING,
        "routes": {"type": "array", "items": ROUTE},
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }
)
ENDPOINTS: Schema = object_schema({"endpoints": {"type": "array", "items": ENDPOINT_INFO}})
ENDPOINT_DELETED: Schema = object_schema(
    {"deleted": {"type": "string", "description": "The name."}}
)
ENDPOINT_HISTORY: Schema = object_schema(
    {
        "history": {
            "type": "array",
            "description": "Changes of the routes, newest first.",
            "items": object_schema(
                {
                    "id": INTEGER,
                    "endpoint": STRING,
                    "at": TIMESTAMP,
                    "actor": STRING,
                    "reason": STRING,
                    "routes": {"type": "array", "items": ROUTE},
                    "rollout_id": _OPTIONAL_INTEGER,
                    "experiment_id": _OPTIONAL_INTEGER,
                }
            ),
        }
    }
)
ENDPOINT_STATS: Schema = object_schema(
    {
        "endpoint": STRING,
        "versions": {
            "type": "array",
            "description": "Per route: running totals since each serving process started, "
            "summed over every worker and replica.",
            "items": object_schema(
                {
                    "label": STRING,
                    "model": STRING,
                    "version": INTEGER,
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
                object_schema(
                    {
                        "model": STRING,
                        "version": INTEGER,
                        "percent": NUMBER,
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
_ROLLOUT_EVENT: Schema = object_schema(
    {
        "at": TIMESTAMP,
        "kind": {
            "type": "string",
            "description": "started, gates, step, analysis, preview, switched, paused, "
            "resumed, promoted, rolled_back or aborted.",
        },
        "message": STRING,
        "detail": {
            "type": ["object", "null"],
            "description": "A verdict (decision, checks, reasons) or a gate report.",
        },
    }
)
ROLLOUT_INFO: Schema = object_schema(
    {
        "id": INTEGER,
        "endpoint": STRING,
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
        "reason": STRING,
        "actor": STRING,
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "finished_at": OPTIONAL_TIMESTAMP,
        "events": {"type": "array", "items": _ROLLOUT_EVENT, "description": "Oldest first."},
    }
)
ROLLOUTS: Schema = object_schema(
    {
        "rollouts": {
            "type": "array",
            "items": ROLLOUT_INFO,
            "description": "Newest first (at most 200), without their events.",
        }
    }
)
GATE_REPORT: Schema = object_schema(
    {
        "reference": STRING,
        "rows": INTEGER,
        "passed": BOOLEAN,
        "checks": {
            "type": "array",
            "items": object_schema(
                {
                    "name": STRING,
                    "passed": BOOLEAN,
                    "value": _OPTIONAL_NUMBER,
                    "threshold": STRING,
                    "detail": STRING,
                }
            ),
        },
    }
)
ROLLOUT_STARTED: Schema = object_schema(
    {
        "rollout": {
            **ROLLOUT_INFO,
            "description": "status running, or failed (the gates failed; routes unchanged).",
        },
        "gates": {"oneOf": [{"type": "null"}, GATE_REPORT]},
    }
)
ROLLOUT_ID = path_parameter(
    "id", f"A rollout's id (1 to {MAX_VERSION}).", {"type": "string", "pattern": "^[0-9]+$"}
)
ENDPOINT_QUERY: Schema = {
    "name": "endpoint",
    "in": "query",
    "required": False,
    "description": "Only this endpoint's.",
    "schema": NAME_SCHEMA,
}
ACTIVE_QUERY: Schema = {
    "name": "active",
    "in": "query",
    "required": False,
    "description": "true: only rollouts in progress (running or paused).",
    "schema": {"enum": ["true", "false"]},
}
WAIT_QUERY: Schema = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Long poll: hold the request up to this many seconds until the rollout "
    "changes (an event after `after_event`, or it finished); then, or at the end of the wait, "
    "answer with the rollout. The server holds at most its BERTH_LONG_POLL_SECONDS. Absent "
    "or 0: answer at once.",
    "schema": {"type": "number", "minimum": 0, "maximum": LONG_POLL_MAX_SECONDS},
}
AFTER_EVENT_QUERY: Schema = {
    "name": "after_event",
    "in": "query",
    "required": False,
    "description": "With `wait`: how many of the rollout's events the client has seen; the "
    "request is answered once there are more. Default: as many as there are now.",
    "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
}
HISTORY_LIMIT_QUERY: Schema = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "At most this many changes, newest first (default 50).",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
}
METRICS_SOURCE_QUERY: Schema = {
    "name": "metrics_source",
    "in": "query",
    "required": False,
    "description": "Where traffic totals come from: server (default) or a Prometheus URL.",
    "schema": STRING,
}


EXPERIMENT_INFO: Schema = object_schema(
    {
        "id": INTEGER,
        "endpoint": STRING,
        "status": {"enum": ["running", "concluded"]},
        "variants": {
            "type": "array",
            "items": object_schema(
                {"name": STRING, "model": STRING, "version": INTEGER, "weight": NUMBER}
            ),
            "description": "The first is the control.",
        },
        "sticky": STRING,
        "metric": {"enum": list(EXPERIMENT_METRICS)},
        "alpha": NUMBER,
        "min_samples": INTEGER,
        "winner": {"type": ["string", "null"]},
        "actor": STRING,
        "started_at": TIMESTAMP,
        "concluded_at": OPTIONAL_TIMESTAMP,
    }
)
EXPERIMENTS: Schema = object_schema(
    {"experiments": {"type": "array", "items": EXPERIMENT_INFO, "description": "Newest first."}}
)
_VARIANT_ROW: Schema = object_schema(
    {
        "name": STRING,
        "reference": STRING,
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
EXPERIMENT_REPORT: Schema = object_schema(
    {
        "experiment": EXPERIMENT_INFO,
        "report": object_schema(
            {
                "metric": {"enum": list(EXPERIMENT_METRICS)},
                "alpha": NUMBER,
                "comparison_alpha": {
                    "type": "number",
                    "description": "alpha split over the comparisons (Bonferroni).",
                },
                "min_samples": INTEGER,
                "variants": {"type": "array", "items": _VARIANT_ROW},
                "comparisons": {
                    "type": "array",
                    "description": "Each variant against the control, two-sided.",
                    "items": object_schema(
                        {
                            "variant": STRING,
                            "control": STRING,
                            "test": object_schema(
                                {
                                    "name": STRING,
                                    "statistic": _OPTIONAL_NUMBER,
                                    "p_value": _OPTIONAL_NUMBER,
                                }
                            ),
                            "difference": _OPTIONAL_NUMBER,
                            "significant": BOOLEAN,
                        }
                    ),
                },
                "recommendation": {
                    "type": ["string", "null"],
                    "description": "The variant to conclude with, or null (not yet, or none).",
                },
                "explanation": STRING,
            }
        ),
    }
)
