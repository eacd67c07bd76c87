"""Admin request bodies as pydantic models: one declaration for the API, its document and the CLI.

Each body is a `RequestModel` in the package of the service that acts on it
(`berth.rollouts.requests`, `berth.security.requests`, ...). The admin API validates a JSON body
with `parse` and documents it from the model's JSON schema; a command builds the same model from
its flags. So a request is checked the same way whichever edge it comes in by.

A model checks the shape of a request: types (strictly: no "1" for 1, no true for 1), required
fields, unknown fields (a misspelt limit would otherwise silently not be checked), lengths and
ranges. Where the domain already owns a rule and its wording (names, durations, sticky keys,
canary criteria), the model calls the domain's check (`CheckedBy`, model validators), whose
`InvalidInput` passes through pydantic unchanged. Every other failure is a pydantic error, told
by `explain` in words that name the field.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Self

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, GetCoreSchemaHandler, ValidationError
from pydantic import GetJsonSchemaHandler as JsonHandler
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, ErrorDetails, core_schema

from berth import durations
from berth.errors import InvalidInput

Loc = tuple[str | int, ...]


class RequestModel(BaseModel):
    """A request body. Unknown fields are refused, types are strict, numbers finite."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    EXAMPLE: ClassVar[dict[str, Any]] = {}
    """A body to show: in the OpenAPI document, and after a refusal (`send e.g. ...`)."""

    @classmethod
    def parse(cls, document: object) -> Self:
        """The body as this model; `InvalidInput` naming the first wrong field otherwise."""
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise InvalidInput(f"{explain(exc, cls)}; send e.g. {cls.example_text()}") from None

    @classmethod
    def example_text(cls) -> str:
        return orjson.dumps(cls.EXAMPLE).decode()


class NoFields(RequestModel):
    """Nothing: an empty object (or no body at all)."""


def _no_nul(value: str) -> str:
    # PostgreSQL text and JSON cannot hold NUL; refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
"""Any string PostgreSQL can store."""


@dataclass(frozen=True)
class CheckedBy:
    """`Annotated` metadata: the domain's `check` validates the value (its `InvalidInput` is the
    message), and `schema` shows the same rule in the JSON schema.

    For rules the domain checks anyway with words people know (a name's characters, a
    duration's units): declaring them again as pydantic constraints would answer the same
    mistake in two ways depending on where it was caught.
    """

    check: Callable[[Any], object]
    schema: dict[str, Any] = field(default_factory=dict, hash=False)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._checked, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: JsonHandler
    ) -> JsonSchemaValue:
        shown = handler(schema)
        shown.update(self.schema)
        return shown

    def _checked(self, value: Any) -> Any:
        self.check(value)
        return value


Duration = Annotated[
    str,
    CheckedBy(
        durations.parse_duration,
        {"pattern": durations.PATTERN, "description": "A duration: a number and s, m, h or d."},
    ),
]
"""A span as people write it: 90s, 30m, 12h, 90d."""


# ---------------------------------------------------------------------------- messages

_KINDS = {
    "string_type": ("a string", "strings"),
    "float_type": ("a number", "numbers"),
    "int_type": ("a whole number", "whole numbers"),
    "int_from_float": ("a whole number", "whole numbers"),
    "bool_type": ("true or false", "true or false values"),
    "list_type": ("a list", "lists"),
    "model_type": ("an object", "objects"),
    "dict_type": ("an object", "objects"),
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "greater than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def explain(
    error: ValidationError, model: type[BaseModel], flags: Mapping[str, str] | None = None
) -> str:
    """The first problem of a failed validation, naming the field: `'steps' must be a list of
    numbers; item 2 is '5'`, `route 1: 'version' must be a whole number from 1 to ...`.

    Unknown fields come first: a misspelt field is often why another one is missing. With
    `flags` (a field's dotted path to a command-line flag), fields are named by their flags,
    in the words of validators too (`max_error_rate is ...` becomes `--max-error-rate is ...`).
    """
    flags = flags or {}
    details = error.errors()
    extra = [d for d in details if d["type"] == "extra_forbidden"]
    if extra:
        parent = extra[0]["loc"][:-1]
        names = [str(d["loc"][-1]) for d in extra if d["loc"][:-1] == parent]
        owner = _model_at(model, parent)
        known = ", ".join(sorted(owner.model_fields)) if owner else ""
        where = f"{_name(model, parent, flags)}: " if parent else ""
        plural = "s" if len(names) > 1 else ""
        return f"{where}unknown field{plural} {', '.join(names)}; known fields: {known or 'none'}"
    return _told(details[0], model, flags)


def _told(detail: ErrorDetails, model: type[BaseModel], flags: Mapping[str, str]) -> str:
    kind, loc, given = detail["type"], detail["loc"], _show(detail["input"])
    context = detail.get("ctx") or {}
    if kind in ("value_error", "assertion_error"):
        message = re.sub(r"^(Value|Assertion) error, ", "", detail["msg"])
        message = _renamed(message, _path(loc), flags)
        return f"{_name(model, loc, flags)} {message}" if loc else message
    if loc and isinstance(loc[-1], int) and kind in _KINDS and _model_at(model, loc) is None:
        # an item of a list of plain values: the list is what was wrong
        plural = _KINDS[kind][1]
        listed = _name(model, loc[:-1], flags)
        return f"{listed} must be a list of {plural}; item {loc[-1] + 1} is {given}"
    name = _name(model, loc, flags)
    info = _field_at(model, loc)
    if kind == "missing":
        owner = f"{_name(model, loc[:-1], flags)} has" if len(loc) > 1 else "the request body has"
        if info is not None and _bound(info, "min_length") == 1:
            return f"{name} must be a non-empty list, and {owner} no '{loc[-1]}' field"
        return f"{owner} no '{loc[-1]}' field"
    if kind in ("int_type", "int_from_float") or (kind in _BOUNDS and _whole(info)):
        return f"{name} must be a whole number{_range(info)}, got {given}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"{name} must be {words} {context[key]}, got {given}"
    if kind in _KINDS:
        return f"{name} must be {_KINDS[kind][0]}, got {given}"
    if kind == "finite_number":
        return f"{name} must be a finite number, got {given}"
    if kind == "literal_error":
        choices = str(context["expected"]).replace("'", "")  # 'auto' or 'manual'
        return f"{name} must be {choices}, got {given}"
    if kind == "too_short":
        least = context["min_length"]
        return f"{name} must be a non-empty list" if least == 1 else f"{name} needs {least} items"
    if kind == "too_long":
        return f"{name} must have at most {context['max_length']} items"
    if kind == "string_too_long":
        return f"{name} must be at most {context['max_length']} characters"
    if kind == "string_too_short":
        return f"{name} must not be empty"
    return f"{name}: {detail['msg']}"


def _name(model: type[BaseModel], loc: Loc, flags: Mapping[str, str]) -> str:
    """How a message names the value at `loc`: 'interval', 'gates.no_nan', route 2, or
    route 2: 'weight' (an item of a list of objects is named after its model)."""
    path = _path(loc)
    if path in flags:
        return flags[path]
    items = [i for i, part in enumerate(loc) if isinstance(part, int)]
    if not items:
        return f"'{path}'"
    last = items[-1]
    item = _model_at(model, loc[: last + 1])
    index = loc[last]
    assert isinstance(index, int)
    label = f"{item.__name__.lower() if item else 'item'} {index + 1}"
    rest = _path(loc[last + 1 :])
    return f"{label}: '{rest}'" if rest else label


def _renamed(message: str, path: str, flags: Mapping[str, str]) -> str:
    """A validator's message with the fields of the object it checked named by their flags."""
    prefix = f"{path}." if path else ""
    for dotted, flag in flags.items():
        if dotted.startswith(prefix) and "." not in dotted[len(prefix) :]:
            field_name = re.escape(dotted[len(prefix) :])
            message = re.sub(rf"(?<![\w'-]){field_name}(?![\w'-])", flag, message)
    return message


def _path(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model of the object at `loc` (through optional values and lists), or None."""
    found: type[BaseModel] | None = model
    for part in loc:
        if found is None:
            return None
        if isinstance(part, str):
            info = found.model_fields.get(part)
            found = _model_in(info.annotation) if info is not None else None
    return found


def _field_at(model: type[BaseModel], loc: Loc) -> FieldInfo | None:
    if not loc or not isinstance(loc[-1], str):
        return None
    owner = _model_at(model, loc[:-1])
    return owner.model_fields.get(loc[-1]) if owner is not None else None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _whole(info: FieldInfo | None) -> bool:
    return info is not None and int in (info.annotation, *typing.get_args(info.annotation))


def _bound(info: FieldInfo, name: str) -> Any:
    return next((getattr(m, name) for m in info.metadata if hasattr(m, name)), None)


def _range(info: FieldInfo | None) -> str:
    """` from 1 to 100`, ` of at least 0`, ... from the field's bounds; empty without any."""
    if info is None or _bound(info, "gt") is not None or _bound(info, "lt") is not None:
        return ""
    low, high = _bound(info, "ge"), _bound(info, "le")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    return f" of at most {high}" if high is not None else ""


def _show(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return "a very large number"  # repr() of a huge int is slow, or refused
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
