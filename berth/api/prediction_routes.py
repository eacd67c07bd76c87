"""The prediction routes, in one table: what the hot path serves, load shedding counts, and the
OpenAPI document describes.

Each entry is a POST route: its path template, the handler that answers it, and what the
document says about it. The hot path (`berth.api.hot_path`) matches requests against the
entries' patterns and calls the handlers directly; the load shedder counts a request against
the concurrency cap when its path is an entry's; `router(tag)` declares the entries to FastAPI,
which documents them (and answers them if the hot path ever lets one through). A new prediction
route is one new entry here, and all three follow.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from berth.api import v1, v2
from berth.api.openapi import common as doc
from berth.api.openapi import models as models_doc
from berth.api.openapi import v2 as v2_doc

Endpoint = Callable[[Request], Awaitable[Response]]

_PARAMETER = re.compile(r"\{(\w+)\}")
_SEGMENT = "[^/]+"


@dataclass(frozen=True)
class PredictionRoute:
    """One POST route that runs a prediction."""

    path: str
    """The path template, FastAPI's syntax: `{ref}` is one path segment, passed to the handler
    in `request.path_params`. The literal parts are plain path characters (letters, digits,
    `/`, `-`), which mean themselves in a regular expression."""
    endpoint: Endpoint
    """The handler; its name is the route's name (and so part of its OpenAPI operationId)."""
    tag: str
    """The OpenAPI tag the route is listed under."""
    summary: str
    openapi_extra: dict[str, Any]
    """Parameters, request body and credentials for the document (see `berth.api.openapi`)."""
    responses: doc.Responses

    @property
    def pattern(self) -> re.Pattern[str]:
        """The regular expression a request path must match in full, one group per parameter."""
        return re.compile(_PARAMETER.sub(rf"(?P<\1>{_SEGMENT})", self.path))


_PREDICT_BODY = doc.json_body(
    {
        "type": "object",
        "required": ["features"],
        "properties": {
            "features": {
                "description": "One row: a list for tensor signatures, an object of column "
                "values (or a list in column order) for tabular ones.",
                "oneOf": [{"type": "array"}, {"type": "object"}],
            }
        },
    },
    example={"features": [5.1, 3.5, 1.4, 0.2]},
)
_BATCH_BODY = doc.json_body(
    {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "items": {},
                "description": "Rows, each as `features` would be.",
            }
        },
    },
    example={"instances": [[5.1, 3.5, 1.4, 0.2]]},
)
_PREDICT_RESPONSES = {
    **doc.ok(models_doc.SINGLE_PREDICTION, "The prediction for the row."),
    **doc.errors(*doc.PREDICT_ERRORS),
}
_BATCH_RESPONSES = {
    **doc.ok(models_doc.BATCH_PREDICTION, "One prediction per row, in order."),
    **doc.errors(*doc.PREDICT_ERRORS),
}
_WITH_REF = doc.parameters(doc.MODEL_REF)
_WITH_ENDPOINT = doc.parameters(doc.ENDPOINT_NAME)
_INFER_RESPONSES = {**v2_doc.V2_INFER_OK, **doc.errors(*doc.PREDICT_ERRORS)}

ROUTES: tuple[PredictionRoute, ...] = (
    PredictionRoute(
        "/api/v1/predict",
        v1.predict_default,
        v1.TAG,
        "Predict one row with the default model",
        doc.secured(_PREDICT_BODY),
        _PREDICT_RESPONSES,
    ),
    PredictionRoute(
        "/api/v1/batch-predict",
        v1.batch_predict_default,
        v1.TAG,
        "Predict rows with the default model",
        doc.secured(_BATCH_BODY),
        _BATCH_RESPONSES,
    ),
    PredictionRoute(
        "/api/v1/models/{ref}/predict",
        v1.predict,
        v1.TAG,
        "Predict one row",
        doc.secured(_WITH_REF, _PREDICT_BODY),
        _PREDICT_RESPONSES,
    ),
    PredictionRoute(
        "/api/v1/models/{ref}/batch-predict",
        v1.batch_predict,
        v1.TAG,
        "Predict rows",
        doc.secured(_WITH_REF, _BATCH_BODY),
        _BATCH_RESPONSES,
    ),
    PredictionRoute(
        "/api/v1/endpoints/{name}/predict",
        v1.endpoint_predict,
        v1.TAG,
        "Predict one row through an endpoint (its routes pick the version)",
        doc.secured(_WITH_ENDPOINT, _PREDICT_BODY),
        _PREDICT_RESPONSES,
    ),
    PredictionRoute(
        "/api/v1/endpoints/{name}/batch-predict",
        v1.endpoint_batch_predict,
        v1.TAG,
        "Predict rows through an endpoint (one route answers the whole request)",
        doc.secured(_WITH_ENDPOINT, _BATCH_BODY),
        _BATCH_RESPONSES,
    ),
    PredictionRoute(
        "/v2/models/{name}/infer",
        v2.infer,
        v2.TAG,
        "Inference",
        doc.secured(
            doc.parameters(doc.MODEL_NAME, doc.INFERENCE_HEADER_LENGTH), v2_doc.V2_INFER_BODY
        ),
        _INFER_RESPONSES,
    ),
    PredictionRoute(
        "/v2/models/{name}/versions/{version}/infer",
        v2.version_infer,
        v2.TAG,
        "Inference (one version)",
        doc.secured(
            doc.parameters(doc.MODEL_NAME, doc.VERSION, doc.INFERENCE_HEADER_LENGTH),
            v2_doc.V2_INFER_BODY,
        ),
        _INFER_RESPONSES,
    ),
)

# Every entry's pattern without its named groups (names repeat across entries), as one
# alternation: one match per request whatever the number of routes.
_ANY_ROUTE = re.compile("|".join(_PARAMETER.sub(_SEGMENT, route.path) for route in ROUTES))


def is_prediction(path: str) -> bool:
    """Whether a request to `path` runs a prediction (whatever its method)."""
    return _ANY_ROUTE.fullmatch(path) is not None


def router(tag: str) -> APIRouter:
    """The entries listed under `tag`, as FastAPI routes, in table order.

    Included where the hand-written routes of the same API are, so the document lists every
    operation where it always did.
    """
    found = APIRouter(tags=[tag])
    for route in ROUTES:
        if route.tag == tag:
            found.add_api_route(
                route.path,
                route.endpoint,
                methods=["POST"],
                summary=route.summary,
                openapi_extra=route.openapi_extra,
                responses=route.responses,
            )
    return found
