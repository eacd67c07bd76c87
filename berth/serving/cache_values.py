"""Cached predictions as bytes: a small binary format of our own, never pickle.

Numeric arrays are a header (dtype, shape) plus raw bytes; object arrays (strings, mixed labels)
and class lists are JSON in which numpy scalars and non-finite floats are tagged (class labels
that are all numpy numbers of one type go raw, as an array). A hit thus returns the same dtypes
and element types as the miss, and the responses are byte-identical. Never pickle: the Redis
cache is shared, and unpickling what anyone able to write to that Redis put there would be
remote code execution. Decoding trusts nothing: a value that does not parse is a miss.
"""

from __future__ import annotations

import functools
import logging
import math
import struct
from typing import Any

import numpy as np
import orjson

from berth.runtimes.base import Prediction
from berth.serving.cache_keys import FORMAT, RAW_KINDS, NotCacheable

log = logging.getLogger("berth.serving")

Array = np.ndarray[Any, Any]

_VALUE_MAGIC = b"BPC" + bytes([FORMAT])
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


def encode_prediction(prediction: Prediction) -> bytes:
    """The bytes stored for a prediction (no pickle); raises `NotCacheable` if not exact."""
    parts = [_VALUE_MAGIC]
    _encode_array(parts, prediction.predictions)
    if prediction.probabilities is None:
        parts.append(b"\x00")
    else:
        parts.append(b"\x01")
        _encode_array(parts, prediction.probabilities)
    if prediction.classes is None:
        parts.append(b"\x00")
    elif (labels := _uniform_labels(prediction.classes)) is not None:
        parts.append(b"\x02")
        _encode_array(parts, labels)
    else:
        classes = prediction.classes
        if isinstance(classes, np.ndarray):
            classes = classes.tolist()
        document = _json([_element_json(value) for value in classes])
        parts += [b"\x01", _U64.pack(len(document)), document]
    return b"".join(parts)


def _uniform_labels(classes: Any) -> Array | None:
    """Classes that are numpy numbers of one type (sklearn's usual) as one array, else None.

    Stored raw and listed back on decoding, they return as the same numpy scalars, at a
    fraction of the cost of tagging each one in JSON.
    """
    if isinstance(classes, np.ndarray):
        return classes if classes.ndim == 1 and classes.dtype.kind in "biufc" else None
    if not classes or not isinstance(classes[0], np.generic):
        return None
    first = type(classes[0])
    if classes[0].dtype.kind not in "biufc" or any(type(v) is not first for v in classes):
        return None
    return np.array(classes, dtype=classes[0].dtype)


def _encode_array(parts: list[bytes], array: Any) -> None:
    if not isinstance(array, np.ndarray):
        raise NotCacheable(f"a prediction of type {type(array).__name__} is not a numpy array")
    shape = b"".join(_U64.pack(size) for size in array.shape)
    if array.dtype.kind in RAW_KINDS:
        code = array.dtype.str.encode()
        data = np.ascontiguousarray(array).tobytes()
        parts += [b"r", _U64.pack(len(code)), code, _U64.pack(array.ndim), shape]
        parts += [_U64.pack(len(data)), data]
    elif array.dtype.kind == "O":
        values = array.ravel().tolist()
        # String labels are the usual case: they need no tagging, and checking is 5x cheaper.
        if not all(type(value) is str for value in values):
            values = [_element_json(value) for value in values]
        document = _json(values)
        parts += [b"o", _U64.pack(array.ndim), shape, _U64.pack(len(document)), document]
    else:
        raise NotCacheable(f"predictions of dtype {array.dtype} cannot be cached")


def _json(values: list[Any]) -> bytes:
    try:
        return orjson.dumps(values)
    except orjson.JSONEncodeError as exc:  # e.g. ints beyond 64 bits, lone surrogates
        raise NotCacheable(f"a prediction value has no JSON form: {exc}") from exc


def _element_json(value: Any) -> Any:
    """A JSON value that decodes back to the same Python object (type included).

    Plain JSON values pass as they are; what JSON would change is wrapped in a one-key object
    (dict values are not accepted otherwise, so the wrappers cannot be confused with data):
    numpy scalars as dtype + raw bytes, non-finite floats (JSON has no NaN) as text.
    """
    kind = type(value)
    if kind is str or kind is bool or kind is int or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if isinstance(value, np.generic):
        if value.dtype.kind in "biufc":
            return {"n": [value.dtype.str, value.tobytes().hex()]}
        if value.dtype.kind == "U":
            return {"u": str(value)}
    raise NotCacheable(f"prediction values of type {kind.__name__} cannot be cached")


def decode_prediction(data: bytes) -> Prediction:
    """The prediction `encode_prediction` stored; `ValueError` for anything else."""
    try:
        reader = _Reader(data)
        if reader.take(len(_VALUE_MAGIC)) != _VALUE_MAGIC:
            raise ValueError("not a Berth prediction cache entry of this format")
        predictions = reader.array()
        probabilities = reader.array() if reader.flag() else None
        classes: list[Any] | None = None
        stored = reader.take(1)
        if stored == b"\x01":
            listed = orjson.loads(reader.take(reader.u64()))
            if not isinstance(listed, list):
                raise ValueError("classes are not a list")
            classes = [_element_from_json(value) for value in listed]
        elif stored == b"\x02":
            labels = reader.array()
            if labels.ndim != 1 or labels.dtype.kind not in "biufc":
                raise ValueError("class labels are not a list of numbers")
            classes = list(labels)
        elif stored != b"\x00":
            raise ValueError("bad classes tag")
        if reader.offset != len(data):
            raise ValueError("trailing bytes after the prediction")
    except ValueError:  # orjson.JSONDecodeError is one
        raise
    except (TypeError, KeyError, IndexError, OverflowError, struct.error) as exc:
        raise ValueError(f"malformed prediction cache entry: {exc}") from exc
    return Prediction(predictions=predictions, probabilities=probabilities, classes=classes)


@functools.lru_cache(maxsize=256)  # parsing a dtype string costs more than the rest of a row
def _dtype(code: str) -> np.dtype[Any]:
    return np.dtype(code)


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise ValueError("truncated prediction cache entry")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u64(self) -> int:
        # unpack_from raises struct.error past the end: reported as a malformed entry
        (value,) = _U64.unpack_from(self.data, self.offset)
        self.offset += 8
        return int(value)

    def flag(self) -> bool:
        byte = self.take(1)
        if byte not in (b"\x00", b"\x01"):
            raise ValueError("bad presence flag")
        return byte == b"\x01"

    def shape(self) -> tuple[int, ...]:
        ndim = self.u64()
        if ndim > 32:  # numpy's own limit is 64; bounding it keeps garbage from allocating
            raise ValueError("too many dimensions")
        shape = struct.unpack_from(f"<{ndim}Q", self.data, self.offset)
        self.offset += 8 * ndim
        return shape

    def array(self) -> Array:
        tag = self.take(1)
        if tag == b"r":
            dtype = _dtype(self.take(self.u64()).decode("ascii"))
            if dtype.kind not in RAW_KINDS:
                raise ValueError(f"dtype {dtype} is not stored raw")
            shape = self.shape()
            raw = self.take(self.u64())
            if len(raw) != math.prod(shape) * dtype.itemsize:
                raise ValueError("array bytes do not match its shape")
            # A copy: writable and aligned like the array the model returned.
            return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        if tag == b"o":
            shape = self.shape()
            values = orjson.loads(self.take(self.u64()))
            if not isinstance(values, list) or len(values) != math.prod(shape):
                raise ValueError("object array values do not match its shape")
            array = np.empty(len(values), dtype=object)
            if all(type(value) is str for value in values):
                array[:] = values
            else:
                # Item by item: a slice assignment would take a list value as another axis.
                for i, value in enumerate(values):
                    array[i] = _element_from_json(value)
            return array.reshape(shape)
        raise ValueError(f"unknown array tag {tag!r}")


def _element_from_json(value: Any) -> Any:
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise ValueError("nested lists are never stored")
        return value
    if len(value) != 1:
        raise ValueError("unknown tagged value")
    (tag, content), *_ = value.items()
    if tag == "f" and content in ("nan", "inf", "-inf"):
        return float(content)
    if tag == "u" and isinstance(content, str):
        return np.str_(content)
    if tag == "n" and isinstance(content, list) and len(content) == 2:
        dtype = _dtype(str(content[0]))
        raw = bytes.fromhex(str(content[1]))
        if dtype.kind not in "biufc" or len(raw) != dtype.itemsize:
            raise ValueError("bad numpy scalar")
        return np.frombuffer(raw, dtype=dtype)[0]
    raise ValueError("unknown tagged value")
