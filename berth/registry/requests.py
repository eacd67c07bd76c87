"""What people ask of aliases: the body of `PUT /api/v1/models/{name}/aliases/{alias}`, declared
once for the API, its OpenAPI document and `berth models alias`."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field

from berth.registry.references import MAX_VERSION
from berth.request_model import RequestModel

_DIGITS = re.compile(r"[0-9]{1,10}")


def _number(value: object) -> object:
    # A version may come as a string of ASCII digits, as it does in paths ("3"); "²" is a digit
    # to str.isdigit but not to int(), so it stays a string and is refused as one.
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return value


_Written = (
    Annotated[int, Field(ge=1, le=MAX_VERSION)]
    | Annotated[str, Field(pattern=f"^{_DIGITS.pattern}$")]
)
"""How a version may be written in a body, for the document."""


class AliasRequest(RequestModel):
    """Point an alias at a version."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"version": 3}

    version: Annotated[int, BeforeValidator(_number, json_schema_input_type=_Written)] = Field(
        ge=1,
        le=MAX_VERSION,
        description="The version number to point the alias at (a number, or its digits).",
    )
