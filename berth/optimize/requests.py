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
    """Make an optimized form of a version (ONNX, TorchScript, int8, pruned), check it, and
    register it."""

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
    to: Annotated[Text, Field(max_length=16)] | None = Field(
        default=None,
        description="The form to make: onnx (the default), torchscript, or torch (a torch "
        "network's own form; the default with prune). torchscript and torch apply to torch "
        "versions.",
    )
    prune: float | None = Field(
        default=None,
        description="Torch versions: zero this share (between 0 and 1) of each Linear and Conv "
        "layer's weights, smallest magnitudes first; checked like int8.",
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        description="With labelled check rows, how much accuracy an int8 or pruned form may "
        "lose against its source (0.01: one point, the default); it then replaces the "
        "tolerance.",
    )
