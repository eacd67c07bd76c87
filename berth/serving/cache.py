"""Prediction cache: answer a repeated input of a deterministic model without running it.

Opt-in per model: only a model whose output depends on nothing but its input may be cached.

Keys. `cache_key` hashes the *decoded and validated* input, not the request body, so bodies that
differ only in whitespace, key order or `1` vs `1.0` share a key once they decode to the same
arrays. The bytes hashed are a canonical, unambiguous encoding: every variable-length part is
length-prefixed and every value carries a type tag, and arrays contribute their dtype, shape and
raw bytes (never `str(array)`, which numpy truncates). The model name, the version and a format
number are hashed too, so a new version or a new encoding never meets an old entry.

Values. Predictions are stored in a small binary format of our own: numeric arrays as a header
(dtype, shape) plus raw bytes; object arrays (strings, mixed labels) and class lists as JSON in
which numpy scalars and non-finite floats are tagged (class labels that are all numpy numbers of
one type go raw, as an array). A hit thus returns the same dtypes and element types as the miss,
and the responses are byte-identical. Never pickle: the Redis cache is shared, and unpickling
what anyone able to write to that Redis put there would be remote code execution. Decoding
trusts nothing: a value that does not parse is a miss.

Backends. `MemoryCache` keeps the *encoded* bytes in an LRU with a TTL, so its memory bound
counts real bytes (plus a fixed per-entry overhead) rather than a guess at the size of numpy
objects, and a hit, decoded afresh each time, can never be changed by a caller mutating an
earlier answer. `RedisCache` is shared by replicas; Redis failing must never fail a prediction,
so every Redis error is a counted miss. Backends count evictions and errors; the dataplane
counts hits and misses per model.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd
from redis.exceptions import RedisError

from berth import redis_client
from berth.errors import InvalidInput
from berth.observability import metrics
from berth.runtimes.base import ModelInput, Prediction

log = logging.getLogger("berth.serving")

Array = np.ndarray[Any, Any]

FORMAT = 2
"""Version of both the key encoding and the value format; bump it when either changes."""

KEY_PREFIX = "berth:cache:"
WARN_EVERY_SECONDS = 30.0
ENTRY_OVERHEAD = 256
"""Bytes charged per memory entry beyond its encoded value: the key string and the Python
objects holding the entry. Without it, many tiny entries would exceed the bound many times."""

_KEY_MAGIC = b"berth.cache.key\x00" + bytes([FORMAT])
_VALUE_MAGIC = b"BPC" + bytes([FORMAT])
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
# Kinds whose raw bytes, with dtype.str (byte order, width, unit), say everything about the data.
_RAW_KINDS = frozenset("biufcmMSU")
# ndim followed by the shape, for the usual numbers of dimensions
_SHAPES = tuple(struct.Struct(f"<{ndim + 1}Q") for ndim in range(8))
# Arrays at least this large are hashed in place rather than copied into the key buffer.
_HASH_IN_PLACE = 4096


class NotCacheable(ValueError):
    """An input or prediction holding values the cache cannot encode exactly; skip the cache."""


# keys -----------------------------------------------------------------------------------------


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
    elif isinstance(inputs, pd.DataFrame):
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
    if dtype.kind in _RAW_KINDS:
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
    if isinstance(value, np.generic) and value.dtype.kind in _RAW_KINDS:
        data = value.tobytes()
        code = value.dtype.str.encode()
        return b"g" + _U64.pack(len(code)) + code + _U64.pack(len(data)) + data
    if value is pd.NA:
        return b"A"
    if value is pd.NaT:
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


# values ---------------------------------------------------------------------------------------


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
    if array.dtype.kind in _RAW_KINDS:
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
            if dtype.kind not in _RAW_KINDS:
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


# backends -------------------------------------------------------------------------------------


class PredictionCache(Protocol):
    """Where predictions are kept. Failures are misses: no method raises on backend trouble."""

    name: str

    async def get(self, key: str) -> Prediction | None:
        """The prediction stored under `key` (a `cache_key`), or None."""
        ...

    async def put(self, key: str, prediction: Prediction) -> None:
        """Store `prediction` under `key`; a prediction that is `NotCacheable` is skipped."""
        ...

    async def close(self) -> None: ...


def _encoded(prediction: Prediction) -> bytes | None:
    """The bytes to store, or None for a prediction with no exact encoding (not cached)."""
    try:
        return encode_prediction(prediction)
    except NotCacheable as exc:
        log.debug("prediction not cached: %s", exc)
        return None


class MemoryCache:
    """An LRU of encoded predictions in this process, bounded in bytes, entries expiring.

    Every call completes without awaiting, so tasks on one event loop cannot interleave inside
    it. Expired entries are dropped when looked up or when they reach the LRU end; until then
    they count against the bound (as would live entries of that size).
    """

    name = "memory"

    def __init__(
        self,
        max_bytes: int,
        ttl_seconds: float,
        max_entries: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1:
            raise InvalidInput(f"cache max_bytes must be at least 1, got {max_bytes}")
        _check_ttl(ttl_seconds)
        if max_entries is not None and max_entries < 1:
            raise InvalidInput(f"cache max_entries must be at least 1, got {max_entries}")
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        # key -> (expires at, encoded prediction); least recently used first
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_used(self) -> int:
        """Bytes charged against `max_bytes`: encoded values plus `ENTRY_OVERHEAD` each."""
        return self._bytes

    async def get(self, key: str) -> Prediction | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, data = entry
        if expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return decode_prediction(data)

    async def put(self, key: str, prediction: Prediction) -> None:
        data = _encoded(prediction)
        if data is None:
            return
        if _charge(key, data) > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (self._clock() + self.ttl_seconds, data)
        self._bytes += _charge(key, data)
        self._shrink()

    def _shrink(self) -> None:
        now = self._clock()
        while self._bytes > self.max_bytes or (
            self.max_entries is not None and len(self._entries) > self.max_entries
        ):
            key, (expires, _) = next(iter(self._entries.items()))
            self._remove(key)
            if expires > now:  # an expired entry was no longer in the cache: not an eviction
                metrics.CACHE_EVICTIONS.inc()

    def _remove(self, key: str) -> None:
        _, data = self._entries.pop(key)
        self._bytes -= _charge(key, data)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0


def _charge(key: str, data: bytes) -> int:
    return len(data) + len(key) + ENTRY_OVERHEAD


def _check_ttl(ttl_seconds: float) -> None:
    if not (ttl_seconds > 0 and math.isfinite(ttl_seconds)):
        raise InvalidInput(
            f"cache ttl_seconds must be a positive, finite number of seconds, got {ttl_seconds}"
        )


class RedisCache:
    """Predictions in Redis, shared by every replica using the same Redis and prefix.

    Entries expire in Redis (SET with PX); Redis' own `maxmemory` policy bounds the total. Any
    Redis failure is a miss or a skipped store, counted in `berth_cache_errors_total{backend=
    "redis"}` and logged at most every `WARN_EVERY_SECONDS`. Timeouts are short, and after a
    failure Redis is left alone for `cooldown_seconds` (lookups are misses) before one call
    tries it again, so a dead Redis costs requests almost nothing.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_seconds: float,
        prefix: str = KEY_PREFIX,
        *,
        max_entry_bytes: int | None = None,
        timeout_seconds: float = 0.25,
        cooldown_seconds: float = 1.0,
    ) -> None:
        _check_ttl(ttl_seconds)
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix
        self.max_entry_bytes = max_entry_bytes
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._cooldown = cooldown_seconds
        self._client = redis_client.connect(
            url, connect_timeout=timeout_seconds, read_timeout=timeout_seconds
        )
        self._down_until = 0.0  # monotonic; > 0 while Redis is considered unreachable
        self._last_warning: dict[str, float] = {}

    async def get(self, key: str) -> Prediction | None:
        if not self._may_try():
            return None
        try:
            data = await self._client.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._succeeded()
        if not isinstance(data, bytes):  # None: not there (a str cannot come without decoding)
            return None
        try:
            return decode_prediction(data)
        except ValueError as exc:
            # Corrupt, or written by something else under our prefix: a miss, and worth a look.
            metrics.CACHE_ERRORS.labels(self.name).inc()
            self._warn("decode", f"a cache entry could not be decoded ({exc}); it counts as a miss")
            return None

    async def put(self, key: str, prediction: Prediction) -> None:
        data = _encoded(prediction)
        if data is None:
            return
        if self.max_entry_bytes is not None and len(data) > self.max_entry_bytes:
            return
        if not self._may_try():
            return
        try:
            await self._client.set(self.prefix + key, data, px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._succeeded()

    def _may_try(self) -> bool:
        if not self._down_until:
            return True
        now = time.monotonic()
        if now < self._down_until:
            metrics.CACHE_ERRORS.labels(self.name).inc()
            return False
        self._down_until = now + self._cooldown  # this call probes; the others wait
        return True

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self._cooldown
        metrics.CACHE_ERRORS.labels(self.name).inc()
        self._warn(
            "unreachable",
            f"Redis is unreachable ({type(exc).__name__}: {exc}); "
            "predicting without the cache until it is back",
        )

    def _succeeded(self) -> None:
        if self._down_until:
            self._down_until = 0.0
            log.info("prediction cache: Redis is reachable again")

    def _warn(self, kind: str, message: str) -> None:
        # Per kind, so a stream of corrupt entries cannot hide that Redis went down.
        now = time.monotonic()
        if now - self._last_warning.get(kind, -math.inf) >= WARN_EVERY_SECONDS:
            self._last_warning[kind] = now
            log.warning("prediction cache: %s", message)

    async def close(self) -> None:
        await self._client.aclose()


def build_cache(
    backend: str, *, redis_url: str | None, max_bytes: int, ttl_seconds: float
) -> PredictionCache:
    """The configured backend: "memory" (this process, at most `max_bytes` in total) or
    "redis" (shared by replicas at `redis_url`; entries above `max_bytes` are not stored)."""
    if backend == "memory":
        return MemoryCache(max_bytes=max_bytes, ttl_seconds=ttl_seconds)
    if backend == "redis":
        if not redis_url:
            raise InvalidInput(
                "the redis prediction cache needs a Redis URL; set BERTH_REDIS_URL "
                "(e.g. redis://127.0.0.1:6379/0), or use the memory cache backend"
            )
        return RedisCache(redis_url, ttl_seconds=ttl_seconds, max_entry_bytes=max_bytes)
    raise InvalidInput(
        f"cache backend {backend!r} is unknown; set BERTH_CACHE_BACKEND to memory or redis"
    )
