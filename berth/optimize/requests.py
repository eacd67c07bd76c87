"""What people ask of `optimize`: the body of `POST /api/v1/models/{ref}/optimize`, declared once
for the API, its OpenAPI document and `berth models optimize`.

The check rows are not part of it: they are the version's example rows (topped up with
generated rows) unless a file of rows comes with the request (`--data`, or a `data` part).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field

from berth.registry.references import check_alias
from berth.request_model import CheckedBy, RequestModel, Text

_Alias = Annotated[str, CheckedBy(check_alias)]


class OptimizeRequest(RequestModel):
    """Convert a version to ONNX (optionally quantized), check it, and register it."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"quantize": "int8", "tolerance": 0.01, "alias": "staging"}

    quantize: Annotated[Text, Field(max_length=16)] | None = Field(
        default=None,
        description="int8: also quantize the weights to int8 (dynamic), checked with the "
        "tolerance. Null: a plain conversion.",
    )
    tolerance: float | None = Field(
        default=None,
        description="Largest probability (or relative value) difference accepted: at most "
        "1e-4 for a plain conversion (may only be tightened), 1e-2 by default when quantized.",
    )
    alias: _Alias | None = Field(
        default=None, description="Alias to point at the new version; null: no alias moves."
    )
