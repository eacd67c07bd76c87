"""The prediction cache: canonical keys, pickle-free values, the memory LRU and the Redis backend.

Redis tests use the shared server at 127.0.0.1:6379 under a unique key prefix (deleted after);
the outage-and-recovery test runs its own `redis-server` on a free port, so the shared one is
never stopped.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import redis
from prometheus_client import REGISTRY

from berth.errors import InvalidInput
from berth.registry.signature import ColumnSpec, Signature, TensorSpec
from berth.runtimes.base import ModelInput, Prediction
from berth.serving.cache import ENTRY_OVERHEAD, KEY_PREFIX, MemoryCache, build_cache
from berth.serving.cache_keys import NotCacheable, cache_key
from berth.serving.cache_values import decode_prediction, encode_prediction
from berth.serving.redis_cache import RedisCache
from berth.serving.responses import plain
from berth.serving.validation import decode_instances, decode_named_arrays
from tests.conftest import free_port, require_service
from tests.private_redis import PrivateRedis

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
IRIS_ROW = [[5.1, 3.5, 1.4, 0.2]]


def _evictions() -> float:
    return REGISTRY.get_sample_value("berth_cache_evictions_total") or 0.0


def _errors(backend: str) -> float:
    return REGISTRY.get_sample_value("berth_cache_errors_total", {"backend": backend}) or 0.0


def _classifier(rows: int = 1) -> Prediction:
    probabilities = np.tile(np.array([[0.9, 0.07, 0.03]], dtype=np.float32), (rows, 1))
    return Prediction(
        predictions=np.zeros(rows, dtype=np.int64),
        probabilities=probabilities,
        classes=[np.int64(0), np.int64(1), np.int64(2)],
    )


# keys -----------------------------------------------------------------------------------------


def test_a_key_is_a_sha256_hex_and_equal_arrays_share_it() -> None:
    base = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=np.float32)
    fortran = np.asfortranarray(base)
    strided = np.array(
        [[1.0, 9.0, 2.0, 9.0, 3.0, 9.0, 4.0], [5.0, 9.0, 6.0, 9.0, 7.0, 9.0, 8.0]],
        dtype=np.float32,
    )[:, ::2]
    key = cache_key("iris", 1, base)
    assert len(key) == 64
    int(key, 16)
    assert cache_key("iris", 1, base.copy()) == key
    assert cache_key("iris", 1, fortran) == key
    assert cache_key("iris", 1, strided) == key


def test_json_bodies_that_decode_to_the_same_arrays_share_a_key() -> None:
    signature = Signature(kind="tensor", inputs=(TensorSpec("x", "float32", (-1, 4)),))
    bodies = [
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}',
        b'{ "instances" : [ [ 5.1,3.5 , 1.4,0.2 ] ] }',
        b'{"instances": [[5.1, 3.5, 1.4, 0.2]], "other": 1}',
    ]
    keys = {
        cache_key("iris", 1, decode_instances(signature, orjson.loads(b)["instances"], "i", 10))
        for b in bodies
    }
    assert len(keys) == 1
    integral = [
        cache_key("iris", 1, decode_instances(signature, orjson.loads(b), "i", 10))
        for b in (b"[[1, 2, 3, 4]]", b"[[1.0, 2.0, 3.0, 4.0]]", b"[[1, 2.0, 3, 4e0]]")
    ]
    assert len(set(integral)) == 1
    other = decode_instances(signature, [[1, 2, 3, 5]], "i", 10)
    assert cache_key("iris", 1, other) not in integral


def _churn_signature() -> Signature:
    return Signature(
        kind="tabular",
        columns=(
            ColumnSpec("plan", "string"),
            ColumnSpec("months", "int64"),
            ColumnSpec("spend", "float64"),
            ColumnSpec("active", "bool"),
            ColumnSpec("referrals", "int64", nullable=True),
        ),
    )


def test_table_rows_in_any_form_and_either_protocol_share_a_key() -> None:
    signature = _churn_signature()
    as_objects = orjson.loads(
        b'[{"plan": "pro", "months": 12, "spend": 10, "active": true, "referrals": null}]'
    )
    reordered = orjson.loads(
        b'[{"referrals": null, "active": true, "spend": 10.0, "months": 12, "plan": "pro"}]'
    )
    as_lists = orjson.loads(b'[["pro", 12, 10.0, true, null]]')
    keys = {
        cache_key("churn", 2, decode_instances(signature, rows, "i", 10))
        for rows in (
            as_objects,
            reordered,
            as_lists,
        )
    }
    # Open Inference Protocol: typed arrays per column, strings as UTF-8 bytes.
    named = {
        "plan": np.array([b"pro"], dtype=object),
        "months": np.array([12], dtype=np.int64),
        "spend": np.array([10.0]),
        "active": np.array([True]),
        "referrals": np.array([None], dtype=object),
    }
    keys.add(cache_key("churn", 2, decode_named_arrays(signature, named, "inputs", 10)))
    assert len(keys) == 1
    changed = decode_instances(signature, [["pro", 12, 10.0, True, 0]], "i", 10)
    assert cache_key("churn", 2, changed) not in keys


@pytest.mark.parametrize(
    ("model", "version", "array"),
    [
        ("iris", 2, np.array(IRIS_ROW, dtype=np.float32)),
        ("irises", 1, np.array(IRIS_ROW, dtype=np.float32)),
        ("iris", 1, np.array(IRIS_ROW, dtype=np.float64)),
        ("iris", 1, np.array(IRIS_ROW, dtype=np.float32).reshape(2, 2)),
        ("iris", 1, np.array(IRIS_ROW, dtype=np.float32).reshape(4)),
        ("iris", 1, np.array([[5.1, 3.5, 1.4, 0.3]], dtype=np.float32)),
        ("iris", 1, np.array(IRIS_ROW, dtype=np.float32).astype(">f4")),
        ("iris", 1, np.array(IRIS_ROW * 2, dtype=np.float32)),
    ],
)
def test_a_key_changes_with_model_version_dtype_shape_and_values(
    model: str, version: int, array: np.ndarray[Any, Any]
) -> None:
    reference = cache_key("iris", 1, np.array(IRIS_ROW, dtype=np.float32))
    assert cache_key(model, version, array) != reference


def test_object_values_are_tagged_and_length_prefixed() -> None:
    variants: list[list[Any]] = [
        ["1"],
        [1],
        [1.0],
        [True],
        [None],
        [np.int32(1)],
        [np.float32(1.0)],
        [b"1"],
        [pd.NA],
        [float("nan")],
        ["ab", "c"],
        ["a", "bc"],
        ["abc", ""],
        [2**70],
        [-(2**70)],
    ]
    keys = {
        cache_key("m", 1, np.array(values + [None] * (2 - len(values)), dtype=object))
        for values in variants
    }
    assert len(keys) == len(variants)


def test_no_truncation_on_large_arrays() -> None:
    # str() of an array this size elides the middle; the key must see every value.
    data = np.arange(100_000, dtype=np.float64).reshape(1000, 100)
    changed = data.copy()
    changed[500, 50] += 1e-9
    assert cache_key("m", 1, data) == cache_key("m", 1, data.copy())
    assert cache_key("m", 1, data) != cache_key("m", 1, changed)
    texts = np.array([f"row {i}" for i in range(5000)], dtype=object)
    other = texts.copy()
    other[2500] = "row x"
    assert cache_key("m", 1, texts) != cache_key("m", 1, other)


def _frame(**changes: Any) -> pd.DataFrame:
    columns: dict[str, Any] = {
        "plan": np.array(["pro", "basic"], dtype=object),
        "months": np.array([12, 3], dtype=np.int64),
        "spend": np.array([10.5, 0.0]),
        "active": np.array([True, False]),
    }
    columns.update(changes)
    return pd.DataFrame(columns, copy=False)


def test_dataframe_keys_cover_names_dtypes_values_and_index() -> None:
    reference = cache_key("churn", 1, _frame())
    assert cache_key("churn", 1, _frame()) == reference
    variants = [
        _frame(plan=np.array(["pro", "basics"], dtype=object)),
        _frame(months=np.array([12, 4], dtype=np.int64)),
        _frame(months=np.array([12.0, 3.0])),
        _frame(spend=np.array([10.5, -0.0])),
        _frame(active=np.array([True, True])),
        _frame().rename(columns={"plan": "tier"}),
        _frame()[["months", "plan", "spend", "active"]],
        _frame(referrals=pd.Series([1, None], dtype="Int64")),
        _frame(referrals=pd.Series([1, 0], dtype="Int64")),
        _frame(active=pd.Series([True, None], dtype="boolean")),
        _frame(plan=pd.Categorical(["pro", "basic"])),
        _frame(plan=pd.Categorical(["pro", "basic"], categories=["pro", "basic", "team"])),
        _frame().set_axis([5, 6]),
        _frame().iloc[:1],
    ]
    keys = {cache_key("churn", 1, frame) for frame in variants}
    assert reference not in keys
    assert len(keys) == len(variants)
    assert cache_key("churn", 2, _frame()) != reference


def test_dataframe_keys_do_not_depend_on_the_private_pandas_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames = [
        _frame(),
        _frame(referrals=pd.Series([1, None], dtype="Int64")),
        _frame(plan=pd.Categorical(["pro", "basic"])),
    ]
    fast = [cache_key("churn", 1, frame) for frame in frames]
    monkeypatch.delattr(pd.DataFrame, "_iter_column_arrays")
    assert [cache_key("churn", 1, frame) for frame in frames] == fast


def test_dict_keys_ignore_insertion_order_but_not_names() -> None:
    a = np.array([[1.0, 2.0]], dtype=np.float32)
    b = np.array([[3.0]], dtype=np.float32)
    reference = cache_key("m", 1, {"a": a, "b": b})
    assert cache_key("m", 1, {"b": b, "a": a}) == reference
    assert cache_key("m", 1, {"a": b, "b": a}) != reference
    assert cache_key("m", 1, {"a": a, "c": b}) != reference
    assert cache_key("m", 1, {"a": a}) != reference
    # A dict, a frame and an array with the same numbers are different inputs.
    assert cache_key("m", 1, a) != cache_key("m", 1, {"a": a})


@pytest.mark.parametrize(
    "inputs",
    [
        np.array([{"a": 1}], dtype=object),
        np.array([[1, 2]], dtype=[("x", "i4"), ("y", "i4")]),
        pd.DataFrame({"when": pd.to_datetime(["2024-01-01"]).tz_localize("UTC")}),
        [[1.0, 2.0]],
    ],
)
def test_inputs_without_an_exact_encoding_are_not_cacheable(inputs: Any) -> None:
    with pytest.raises(NotCacheable):
        cache_key("m", 1, inputs)


# values ---------------------------------------------------------------------------------------


def _document(prediction: Prediction) -> bytes:
    """What a v1 batch response holds of a prediction, serialised as the API does."""
    return orjson.dumps(
        {
            "predictions": plain(prediction.predictions),
            "probabilities": plain(prediction.probabilities),
            "classes": plain(prediction.classes),
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _assert_same_array(got: Any, want: Any) -> None:
    if want is None:
        assert got is None
        return
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if want.dtype.kind == "O":
        assert [type(v) for v in got.ravel()] == [type(v) for v in want.ravel()]
        assert [repr(v) for v in got.ravel()] == [repr(v) for v in want.ravel()]
    else:
        assert np.array_equal(got, want, equal_nan=want.dtype.kind in "fc")


PREDICTIONS = {
    "string classes": Prediction(
        predictions=np.array(["setosa", "virginica"], dtype=object),
        probabilities=np.array([[0.8, 0.2], [0.1, 0.9]]),
        classes=["setosa", "virginica"],
    ),
    "int labels, float32 probabilities": _classifier(3),
    "regression, no probabilities": Prediction(predictions=np.array([1.5, -2.25], np.float32)),
    "multi-output 2-D": Prediction(predictions=np.arange(12, dtype=np.float64).reshape(4, 3)),
    "bool labels": Prediction(
        predictions=np.array([True, False]),
        probabilities=np.array([[0.3, 0.7], [0.6, 0.4]], dtype=np.float32),
        classes=[np.False_, np.True_],
    ),
    "python classes of mixed types": Prediction(
        predictions=np.array([1, 2]), classes=[1, "two", 3.5, True]
    ),
    "float32 class labels": Prediction(
        predictions=np.array([0.5], np.float32),
        probabilities=np.array([[1.0, 0.0]]),
        classes=[np.float32(0.5), np.float32(0.1)],
    ),
    "classes as an array": Prediction(
        predictions=np.array([2]),
        probabilities=np.eye(3)[2:],
        classes=np.arange(3),  # type: ignore[arg-type]
    ),
    "object outputs with odd values": Prediction(
        predictions=np.array(
            ["a", None, 1, 2.5, float("nan"), float("-inf"), np.float32(0.1), np.str_("b"), True],
            dtype=object,
        )
    ),
    "unicode and non-native order": Prediction(
        predictions=np.array(["héllo", "日本"]), probabilities=np.array([[1.0], [0.5]], ">f8")
    ),
    "empty batch": Prediction(
        predictions=np.zeros(0, np.int64), probabilities=np.zeros((0, 3)), classes=[]
    ),
    "non-contiguous": Prediction(
        predictions=np.arange(10)[::2], probabilities=np.asfortranarray(np.eye(5))
    ),
}


@pytest.mark.parametrize("prediction", PREDICTIONS.values(), ids=PREDICTIONS.keys())
def test_predictions_round_trip_with_their_types(prediction: Prediction) -> None:
    back = decode_prediction(encode_prediction(prediction))
    _assert_same_array(back.predictions, prediction.predictions)
    _assert_same_array(back.probabilities, prediction.probabilities)
    if prediction.classes is None:
        assert back.classes is None
    else:
        assert isinstance(back.classes, list)
        assert [type(v) for v in back.classes] == [type(v) for v in prediction.classes]
        assert [repr(v) for v in back.classes] == [repr(v) for v in prediction.classes]
    assert _document(back) == _document(prediction)
    assert back.predictions.flags.writeable


@pytest.mark.parametrize(
    "prediction",
    [
        Prediction(predictions=np.array([{"label": 1}], dtype=object)),
        Prediction(predictions=np.array([np.datetime64("2024-01-01")], dtype=object)),
        Prediction(predictions=np.array([1]), classes=[object()]),
        Prediction(predictions=np.array([2**70], dtype=object)),
        Prediction(predictions=np.array([1]), probabilities=np.zeros((1, 1), dtype="V8")),
        Prediction(predictions=[1, 2]),  # type: ignore[arg-type]
    ],
    ids=["dict value", "datetime value", "object class", "huge int", "void", "a list"],
)
def test_predictions_without_an_exact_encoding_are_not_cacheable(prediction: Prediction) -> None:
    with pytest.raises(NotCacheable):
        encode_prediction(prediction)


def test_decoding_refuses_anything_but_a_well_formed_entry() -> None:
    data = encode_prediction(PREDICTIONS["string classes"])
    for end in range(len(data)):
        with pytest.raises(ValueError):
            decode_prediction(data[:end])
    with pytest.raises(ValueError):
        decode_prediction(data + b"\x00")
    with pytest.raises(ValueError):
        decode_prediction(pickle.dumps(PREDICTIONS["string classes"]))
    # An entry claiming an object dtype for raw bytes must not become an object array.
    raw = encode_prediction(Prediction(predictions=np.array([1], dtype="<i8")))
    with pytest.raises(ValueError):
        decode_prediction(raw.replace(b"<i8", b"|O8"))
    for garbage in (b"", b"BPC\x01r", b"\xff" * 64, b"BPC\x01o" + b"\x00" * 24):
        with pytest.raises(ValueError):
            decode_prediction(garbage)


# memory backend -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _entry_size(key: str, prediction: Prediction) -> int:
    return len(encode_prediction(prediction)) + len(key) + ENTRY_OVERHEAD


def test_memory_hit_miss_and_hits_cannot_be_mutated() -> None:
    async def scenario() -> None:
        cache = MemoryCache(max_bytes=1_000_000, ttl_seconds=60)
        assert cache.name == "memory"
        assert await cache.get("k") is None
        prediction = _classifier(2)
        await cache.put("k", prediction)
        first = await cache.get("k")
        assert first is not None
        assert _document(first) == _document(prediction)
        first.predictions[:] = 7
        assert first.probabilities is not None
        first.probabilities[:] = 0
        second = await cache.get("k")
        assert second is not None
        assert _document(second) == _document(prediction)
        await cache.close()
        assert len(cache) == 0
        assert cache.bytes_used == 0

    asyncio.run(scenario())


def test_memory_lru_order_evicts_the_least_recently_used() -> None:
    async def scenario() -> None:
        cache = MemoryCache(max_bytes=1_000_000, ttl_seconds=60, max_entries=2)
        prediction = _classifier()
        before = _evictions()
        await cache.put("a", prediction)
        await cache.put("b", prediction)
        assert await cache.get("a") is not None  # now b is the least recently used
        await cache.put("c", prediction)
        assert await cache.get("b") is None
        assert await cache.get("a") is not None
        assert await cache.get("c") is not None
        assert _evictions() == before + 1

    asyncio.run(scenario())


def test_memory_entries_expire_after_the_ttl() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        cache = MemoryCache(max_bytes=1_000_000, ttl_seconds=10, clock=clock)
        await cache.put("k", _classifier())
        clock.now += 9.9
        assert await cache.get("k") is not None
        clock.now += 0.1
        assert await cache.get("k") is None
        assert len(cache) == 0
        assert cache.bytes_used == 0
        await cache.put("k", _classifier())  # stored again, with a fresh TTL
        clock.now += 5
        assert await cache.get("k") is not None

    asyncio.run(scenario())


def test_memory_bound_counts_encoded_bytes_and_evicts_to_stay_under_it() -> None:
    async def scenario() -> None:
        prediction = _classifier(10)
        size = _entry_size("k0", prediction)
        cache = MemoryCache(max_bytes=3 * size + size // 2, ttl_seconds=60)
        before = _evictions()
        for i in range(3):
            await cache.put(f"k{i}", prediction)
        assert cache.bytes_used == 3 * size
        assert _evictions() == before
        await cache.put("k3", prediction)
        assert cache.bytes_used == 3 * size <= cache.max_bytes
        assert _evictions() == before + 1
        assert await cache.get("k0") is None
        assert all([await cache.get(f"k{i}") is not None for i in (1, 2, 3)])
        await cache.put("k3", prediction)  # replacing does not count the entry twice
        assert cache.bytes_used == 3 * size
        assert len(cache) == 3

    asyncio.run(scenario())


def test_memory_expired_entries_pushed_out_are_not_evictions() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        cache = MemoryCache(max_bytes=1_000_000, ttl_seconds=1, max_entries=1, clock=clock)
        before = _evictions()
        await cache.put("old", _classifier())
        clock.now += 2
        await cache.put("new", _classifier())
        assert _evictions() == before
        assert len(cache) == 1

    asyncio.run(scenario())


def test_memory_skips_oversize_and_uncacheable_predictions() -> None:
    async def scenario() -> None:
        big = _classifier(1000)
        cache = MemoryCache(max_bytes=_entry_size("k", big) - 1, ttl_seconds=60)
        before = _evictions()
        await cache.put("small", _classifier())
        await cache.put("k", big)
        assert await cache.get("k") is None
        assert await cache.get("small") is not None  # nothing was evicted to try to fit it
        assert _evictions() == before
        await cache.put("odd", Prediction(predictions=np.array([{"a": 1}], dtype=object)))
        assert await cache.get("odd") is None
        assert len(cache) == 1

    asyncio.run(scenario())


def test_memory_stays_consistent_under_many_tasks() -> None:
    async def scenario() -> None:
        predictions = [_classifier(rows) for rows in range(1, 6)]
        size = max(_entry_size("k00", p) for p in predictions)
        cache = MemoryCache(max_bytes=8 * size, ttl_seconds=60)

        async def worker(seed: int) -> None:
            for step in range(200):
                key = f"k{(seed * 7 + step) % 30:02d}"
                hit = await cache.get(key)
                if hit is None:
                    await cache.put(key, predictions[(seed + step) % len(predictions)])
                else:
                    assert hit.predictions.dtype == np.int64
                await asyncio.sleep(0)

        await asyncio.gather(*(worker(seed) for seed in range(8)))
        assert 0 < cache.bytes_used <= cache.max_bytes
        stored = [await cache.get(f"k{i:02d}") for i in range(30)]
        charged = sum(_entry_size(f"k{i:02d}", p) for i, p in enumerate(stored) if p is not None)
        assert charged == cache.bytes_used

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_bytes": 0, "ttl_seconds": 1}, "max_bytes"),
        ({"max_bytes": 10, "ttl_seconds": 0}, "ttl_seconds"),
        ({"max_bytes": 10, "ttl_seconds": float("inf")}, "ttl_seconds"),
        ({"max_bytes": 10, "ttl_seconds": 1, "max_entries": 0}, "max_entries"),
    ],
)
def test_memory_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        MemoryCache(**options)


# build_cache ----------------------------------------------------------------------------------


def test_build_cache_picks_the_backend_and_explains_bad_settings() -> None:
    memory = build_cache("memory", redis_url=None, max_bytes=1000, ttl_seconds=5)
    assert isinstance(memory, MemoryCache)
    assert (memory.max_bytes, memory.ttl_seconds) == (1000, 5)
    remote = build_cache("redis", redis_url=SHARED_REDIS_URL, max_bytes=1000, ttl_seconds=5)
    assert isinstance(remote, RedisCache)
    assert remote.max_entry_bytes == 1000
    asyncio.run(remote.close())
    with pytest.raises(InvalidInput, match="set BERTH_REDIS_URL"):
        build_cache("redis", redis_url=None, max_bytes=1000, ttl_seconds=5)
    with pytest.raises(InvalidInput, match=r"'disk' is unknown.*memory or redis"):
        build_cache("disk", redis_url=None, max_bytes=1000, ttl_seconds=5)
    with pytest.raises(InvalidInput, match="not a Redis URL"):
        RedisCache("http://127.0.0.1:6379", ttl_seconds=5)


# Redis backend --------------------------------------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        require_service("Redis at 127.0.0.1:6379", str(exc))
    prefix = f"{KEY_PREFIX}test:{uuid.uuid4().hex}:"
    yield client, prefix
    stale = list(client.scan_iter(match=f"{prefix}*"))
    if stale:
        client.delete(*stale)
    client.close()


def test_redis_entries_are_shared_by_replicas(redis_prefix: tuple[redis.Redis, str]) -> None:
    client, prefix = redis_prefix
    prediction = PREDICTIONS["string classes"]
    key = cache_key("iris", 1, np.array(IRIS_ROW, dtype=np.float32))

    async def scenario() -> None:
        one = RedisCache(SHARED_REDIS_URL, ttl_seconds=60, prefix=prefix)
        two = RedisCache(SHARED_REDIS_URL, ttl_seconds=60, prefix=prefix)
        try:
            assert one.name == "redis"
            assert await two.get(key) is None
            await one.put(key, prediction)
            hit = await two.get(key)
            assert hit is not None
            assert _document(hit) == _document(prediction)
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())
    assert 59_000 < client.pttl(prefix + key) <= 60_000


def test_redis_entries_expire(redis_prefix: tuple[redis.Redis, str]) -> None:
    _, prefix = redis_prefix

    async def scenario() -> None:
        cache = RedisCache(SHARED_REDIS_URL, ttl_seconds=0.2, prefix=prefix)
        try:
            await cache.put("k", _classifier())
            assert await cache.get("k") is not None
            await asyncio.sleep(0.35)
            assert await cache.get("k") is None
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_redis_corrupt_or_foreign_values_are_misses(
    redis_prefix: tuple[redis.Redis, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, prefix = redis_prefix
    client.set(prefix + "garbage", b"\x00not a prediction")
    # Someone able to write to Redis must not get code run by a replica: never unpickled.
    client.set(prefix + "pickled", pickle.dumps(_classifier()))
    truncated = encode_prediction(_classifier())[:-3]
    client.set(prefix + "truncated", truncated)
    before = _errors("redis")

    async def scenario() -> list[Prediction | None]:
        cache = RedisCache(SHARED_REDIS_URL, ttl_seconds=60, prefix=prefix)
        try:
            return [await cache.get(k) for k in ("garbage", "pickled", "truncated")]
        finally:
            await cache.close()

    with caplog.at_level(logging.WARNING, logger="berth.serving"):
        assert asyncio.run(scenario()) == [None, None, None]
    assert _errors("redis") == before + 3
    warnings = [r for r in caplog.records if "could not be decoded" in r.getMessage()]
    assert len(warnings) == 1


def test_redis_does_not_store_entries_over_the_size_limit(
    redis_prefix: tuple[redis.Redis, str],
) -> None:
    client, prefix = redis_prefix

    async def scenario() -> None:
        cache = RedisCache(SHARED_REDIS_URL, ttl_seconds=60, prefix=prefix, max_entry_bytes=500)
        try:
            await cache.put("small", _classifier(1))
            await cache.put("big", _classifier(100))
        finally:
            await cache.close()

    asyncio.run(scenario())
    assert client.exists(prefix + "small") == 1
    assert client.exists(prefix + "big") == 0


def test_unreachable_redis_is_a_counted_miss_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    before = _errors("redis")

    async def scenario() -> None:
        cache = RedisCache(url, ttl_seconds=60, cooldown_seconds=60)
        try:
            started = time.monotonic()
            assert await cache.get("k") is None
            await cache.put("k", _classifier())
            assert await cache.get("k") is None  # within the cooldown: Redis is not tried
            assert time.monotonic() - started < 1.0
        finally:
            await cache.close()

    with caplog.at_level(logging.WARNING, logger="berth.serving"):
        asyncio.run(scenario())
    assert _errors("redis") == before + 3
    warnings = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
    assert len(warnings) == 1


def test_redis_outage_is_survived_and_the_cache_recovers(private_redis: PrivateRedis) -> None:
    cooldown = 0.05

    async def scenario() -> None:
        cache = RedisCache(private_redis.url, ttl_seconds=60, cooldown_seconds=cooldown)
        try:
            await cache.put("k", _classifier())
            assert await cache.get("k") is not None
            private_redis.kill()
            before = _errors("redis")
            assert await cache.get("k") is None
            await cache.put("k", _classifier())
            assert _errors("redis") >= before + 2
            private_redis.start()  # empty: no persistence
            await asyncio.sleep(cooldown * 2)
            assert await cache.get("k") is None  # the probe reconnects; a plain miss
            await cache.put("k", _classifier())
            assert await cache.get("k") is not None
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_keys_from_every_input_kind_work_as_redis_keys(
    redis_prefix: tuple[redis.Redis, str],
) -> None:
    _, prefix = redis_prefix
    inputs: list[ModelInput] = [
        np.array(IRIS_ROW, dtype=np.float32),
        _frame(),
        {"a": np.array([[1.0]]), "b": np.array([["x"]], dtype=object)},
    ]

    async def scenario() -> None:
        cache = RedisCache(SHARED_REDIS_URL, ttl_seconds=60, prefix=prefix)
        try:
            for model_input in inputs:
                key = cache_key("m", 1, model_input)
                await cache.put(key, _classifier())
                assert await cache.get(key) is not None
        finally:
            await cache.close()

    asyncio.run(scenario())
