"""Request models built from a command's options, so a command checks what the API checks.

A command gathers its option values into the request model the matching admin route reads
(`berth.rollouts.requests`, ...) and hands that to the service. A refusal names the command's
flags (`--max-error-rate is a fraction ...`) where the API would name the body's fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from berth.errors import InvalidInput
from berth.request_model import RequestModel, explain

M = TypeVar("M", bound=RequestModel)


def from_flags(model: type[M], flags: Mapping[str, str], values: Mapping[str, Any]) -> M:
    """`model` from option values (None: not given, the model's default applies).

    `flags` maps a field's dotted path (`gates.min_accuracy`) to the flag that sets it.
    """
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise InvalidInput(explain(exc, model, flags)) from None
