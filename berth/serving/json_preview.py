"""A short rendering of an untrusted JSON value for error messages, at any nesting depth.

`repr` and `orjson.dumps` recurse: a value nested a thousand levels deep (JSON parsers accept
up to 1,024) raises RecursionError or TypeError while the error message is being written,
turning a 400 into a 500. This walks the value with an explicit stack and stops writing once
the preview is long enough, so its cost is bounded by `limit`, not by the value's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

_ELLIPSIS = "..."


def preview(value: Any, limit: int = 60) -> str:
    """`value` as compact JSON, cut to at most `limit` characters (ending in `...` when cut)."""
    pieces: list[str] = []
    length = 0
    for piece in _tokens(value):
        pieces.append(piece)
        length += len(piece)
        if length > limit:
            text = "".join(pieces)
            return text[: max(0, limit - len(_ELLIPSIS))] + _ELLIPSIS
    return "".join(pieces)


def _tokens(value: Any) -> Iterator[str]:
    """The JSON text of `value`, piece by piece, depth-first with a stack of lazy iterators."""
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, _Literal):
            yield item.text
        elif isinstance(item, list | tuple):
            yield "["
            stack.append(_list_items(item))
        elif isinstance(item, Mapping):
            yield "{"
            stack.append(_mapping_items(item))
        else:
            yield _scalar(item)


def _list_items(items: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    for index, item in enumerate(items):
        if index:
            yield _COMMA
        yield item
    yield _Literal("]")


def _mapping_items(items: Mapping[Any, Any]) -> Iterator[Any]:
    for index, (key, item) in enumerate(items.items()):
        yield _Literal(f"{',' if index else ''}{_scalar(str(key))}:")
        yield item
    yield _Literal("}")


class _Literal:
    """Text to emit as is (punctuation), as opposed to a value to render."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


_END = object()
_COMMA = _Literal(",")


def _scalar(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        try:
            return repr(value)
        except ValueError:  # Python refuses to print ints of more than 4300 digits
            return _ELLIPSIS
