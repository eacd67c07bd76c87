"""Prediction cache keys: a canonical hash of the decoded, validated input.

`cache_key` hashes the *decoded and validated* input, not the request body, so bodies that
differ only in whitespace, key order or `1` vs `1.0` share a key once they decode to the same
arrays. The bytes hashed are a canonical, unambiguous encoding: every variable-length part is
length-prefixed and every value carries a type tag, and arrays contribute their dtype, shape and
raw bytes (never `str(array)`, which numpy truncates). The model name, the version and a format
number are hashed too, so a new version or a new encoding never meets an old entry.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from berth.frames import imported_pandas, is_frame
from berth.runtimes.base import ModelInput

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

log = logging.getLogger("berth.serving")

Array = np.ndarray[Any, Any]

FORMAT = 2
"""Version of both the key encoding and the value format; bump it when either changes."""

_KEY_MAGIC = b"berth.cache.key\x00" + bytes([FORMAT])
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
# Kinds whose raw bytes, with dtype.str (byte order, width, unit), say everything about the data.
RAW_KINDS = frozenset("biufcmMSU")
# ndim followed by the shape, for the usual numbers of dimensions
_SHAPES = tuple(struct.Struct(f"<{ndim + 1}Q") for ndim in range(8))
# Arrays at least this large are hashed in place rather than copied into the key buffer.
_HASH_IN_PLACE = 4096


class NotCacheable(ValueError):
    """An input or prediction holding values the cache cannot encode exactly; skip the cache."""


class _KeyWriter:
    """Feeds the canonical encoding to sha256, buffering small parts (one update per flush)."""

    __slots__ = ("buffer", "digest")

    def __init__(self) -> None:
        self.buffer = bytearray(_KEY_MAGIC)
        self.digest = hashlib.sha256()

    def large(self, data: Array) -> None:
        self.digest.update(self.buffer)
        self.buffer.clear()
        self.digest.update(data.data)

    def hexdigest(self) -> str:
        self.digest.update(self.buffer)
        return self.digest.hexdigest()


def cache_key(model: str, version: int, inputs: ModelInput, artifact: str = "") -> str:
    """sha256 (hex) of the model, version, artifact digest and validated input, canonically encoded.

    `artifact` (the version's sha256) matters: version numbers come back after a model is
    deleted and registered again, and two registries may share one Redis.

    Raises `NotCacheable` for inputs holding values with no exact encoding (e.g. object
    columns of dates or lists); serve those without the cache.
    """
    out = _KeyWriter()
    _key_text(out.buffer, model)
    out.buffer += _I64.pack(version)
    _key_text(out.buffer, artifact)
    if isinstance(inputs, np.ndarray):
        out.buffer += b"A"
        _key_array(out, inputs)
    elif is_frame(inputs):
        out.buffer += b"F"
        _key_frame(out, inputs)
    elif isinstance(inputs, dict):
        out.buffer += b"D" + _U64.pack(len(inputs))
        # Names are sorted by their encoding: works for any key type and is cheap for a few.
        named = sorted(
            ((_element_bytes(name), array) for name, array in inputs.items()),
            key=lambda item: item[0],
        )
        for name_bytes, array in named:
            out.buffer += name_bytes
            if not isinstance(array, np.ndarray):
                raise NotCacheable(f"input {name_bytes!r} is not a numpy array")
            _key_array(out, array)
    else:
        raise NotCacheable(f"inputs of type {type(inputs).__name__} have no cache key")
    return out.hexdigest()


def _key_text(buffer: bytearray, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    buffer += _U64.pack(len(data))
    buffer += data


_dtype_headers: dict[np.dtype[Any], bytes] = {}


def _dtype_header(dtype: np.dtype[Any]) -> bytes:
    """`dtype.str`, length-prefixed; remembered, as it is a third of a 1-row key's cost."""
    header = _dtype_headers.get(dtype)
    if header is None:
        code = dtype.str.encode()
        header = _U64.pack(len(code)) + code
        if len(_dtype_headers) < 1024:  # bounded: string widths make dtypes many
            _dtype_headers[dtype] = header
    return header


def _key_array(out: _KeyWriter, array: Array) -> None:
    dtype = array.dtype
    buffer = out.buffer
    buffer += _dtype_header(dtype)
    ndim = array.ndim
    shapes = _SHAPES[ndim] if ndim < len(_SHAPES) else struct.Struct(f"<{ndim + 1}Q")
    buffer += shapes.pack(ndim, *array.shape)
    if dtype.kind in RAW_KINDS:
        if array.nbytes >= _HASH_IN_PLACE:
            out.large(np.ascontiguousarray(array))
        else:
            buffer += array.tobytes()  # C order whatever the layout
    elif dtype.kind == "O":
        for value in array.ravel().tolist():
            buffer += _element_bytes(value)
    else:
        raise NotCacheable(f"arrays of dtype {dtype} have no cache key")


def _element_bytes(value: Any) -> bytes:
    """One Python value, type-tagged so that e.g. 1, 1.0, True and "1" all differ."""
    kind = type(value)
    if kind is str:
        text: bytes = value.encode("utf-8", "surrogatepass")
        return b"s" + _U64.pack(len(text)) + text
    if value is None:
        return b"N"
    if kind is bool:
        return b"T" if value else b"F"
    if kind is float:
        return b"d" + _F64.pack(value)
    if kind is int:
        number: bytes = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"i" + _U64.pack(len(number)) + number
    if isinstance(value, np.generic) and value.dtype.kind in RAW_KINDS:
        data = value.tobytes()
        code = value.dtype.str.encode()
        return b"g" + _U64.pack(len(code)) + code + _U64.pack(len(data)) + data
    pandas = imported_pandas()
    if pandas is not None and value is pandas.NA:
        return b"A"
    if pandas is not None and value is pandas.NaT:
        return b"t"
    if kind is bytes:
        raw: bytes = value
        return b"b" + _U64.pack(len(raw)) + raw
    # Anything else is refused, subclasses of str or int included: a model may tell them apart
    # from the base type, and validated input holds none.
    raise NotCacheable(f"values of type {kind.__name__} have no cache key")


def _frame_columns(frame: pd.DataFrame) -> list[Any]:
    """The column arrays without building a Series per column.

    `DataFrame.items()` costs ~15 us per column (one Series each) against ~0.7 us here, on the
    hot path. `_iter_column_arrays` is private pandas API, hence the public fallback; both give
    the same arrays and so the same keys.
    """
    iterate = getattr(frame, "_iter_column_arrays", None)
    if iterate is not None:
        return list(iterate())
    return [
        column.to_numpy() if isinstance(column.dtype, np.dtype) else column.array
        for _, column in frame.items()
    ]


def _key_frame(out: _KeyWriter, frame: pd.DataFrame) -> None:
    import pandas as pd

    rows, width = frame.shape
    out.buffer += _U64.pack(rows) + _U64.pack(width)
    index = frame.index
    # Validated frames carry a fresh 0..n-1 index, which says nothing more than the row count.
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
        out.buffer += b"R"
    else:
        out.buffer += b"X"
        _key_array(out, index.to_numpy(dtype=object))
    # Via an object array: 2 us faster than Index.tolist() for pandas' str-backed column index.
    names = frame.columns.to_numpy(dtype=object).tolist()
    for name, column in zip(names, _frame_columns(frame), strict=True):
        out.buffer += _element_bytes(name)
        if isinstance(column, np.ndarray):
            out.buffer += b"n"
            _key_array(out, column)
            continue
        # Extension arrays (strings, nullable ints and booleans, categories): dtype name and
        # values as Python objects, with NA tagged.
        dtype = column.dtype
        out.buffer += b"e"
        _key_text(out.buffer, str(dtype))
        if isinstance(dtype, pd.CategoricalDtype):
            out.buffer += b"T" if dtype.ordered else b"F"
            _key_array(out, np.asarray(dtype.categories, dtype=object))
        _key_array(out, np.asarray(column.to_numpy(dtype=object), dtype=object))
