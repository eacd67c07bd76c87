"""Property-based tests of signature validation (berth.serving.validation).

For generated signatures (tensor and tabular; every dtype, shape, range and nullability):
- any JSON-like payload (v1 `instances`) and any named numpy arrays (OIP inputs) either decode
  or raise `InvalidInput` / `PayloadTooLarge` (a 4xx), never anything else (a 500);
- payloads generated to match the signature are accepted, and keep their values.

Generation is seeded (`derandomize=True`, no example database) so CI runs are reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from berth.errors import InvalidInput, PayloadTooLarge
from berth.registry.signature import (
    COLUMN_DTYPES,
    TENSOR_DTYPES,
    ColumnSpec,
    Signature,
    TensorSpec,
)
from berth.runtimes.base import ModelInput
from berth.serving.validation import (
    decode_instances,
    decode_named_arrays,
    float_rows,
    json_array,
    validate_tensor,
)

Array = np.ndarray[Any, Any]
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
MAX_ROWS = 6
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Integers up to this size survive a trip through float64."""

# ---------------------------------------------------------------------------- signatures

_NAMES = st.text(min_size=1, max_size=6)


@st.composite
def tensor_signatures(draw: st.DrawFn) -> Signature:
    names = draw(st.lists(_NAMES, min_size=1, max_size=3, unique=True))
    inputs = []
    for name in names:
        dims = draw(st.lists(st.sampled_from([-1, 1, 2, 3]), max_size=2))
        inputs.append(TensorSpec(name, draw(st.sampled_from(TENSOR_DTYPES)), (-1, *dims)))
    return Signature(kind="tensor", inputs=tuple(inputs))


@st.composite
def column_specs(draw: st.DrawFn, name: str) -> ColumnSpec:
    dtype = draw(st.sampled_from(COLUMN_DTYPES))
    bounds: list[float | None] = [None, None]
    if dtype == "int64":
        bounds = [draw(st.none() | st.integers(-(10**6), 10**6).map(float)) for _ in range(2)]
    elif dtype == "float64":
        bounds = [
            draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)) for _ in range(2)
        ]
    if None not in bounds:
        bounds.sort()  # type: ignore[type-var]
    return ColumnSpec(name, dtype, draw(st.booleans()), bounds[0], bounds[1])


@st.composite
def table_signatures(draw: st.DrawFn) -> Signature:
    names = draw(st.lists(_NAMES, min_size=1, max_size=4, unique=True))
    return Signature(kind="tabular", columns=tuple(draw(column_specs(n)) for n in names))


signatures = st.one_of(tensor_signatures(), table_signatures())

# ---------------------------------------------------------------------------- arbitrary payloads

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT64_MIN, max_value=2**64 - 1),  # what orjson reads as ints
    st.integers(),
    st.floats(),
    st.text(max_size=6),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=24,
)
_ANY_DTYPE = st.one_of(  # what the OIP codec and numpy clients hand over, in either byte order
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.byte_string_dtypes(max_len=4),
    hnp.unicode_string_dtypes(max_len=4),
    st.just(np.dtype(object)),
)


@st.composite
def any_arrays(draw: st.DrawFn) -> Array:
    dtype = draw(_ANY_DTYPE)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if dtype.kind == "O":
        return draw(hnp.arrays(dtype, shape, elements=_JSON | st.binary(max_size=6)))
    return draw(hnp.arrays(dtype, shape))


def _payload_names(signature: Signature) -> st.SearchStrategy[str]:
    return st.sampled_from(signature.input_names) | st.text(max_size=4)


# ---------------------------------------------------------------------------- only 4xx errors


def _decodes_or_refuses(decode: Any) -> ModelInput | None:
    try:
        return decode()  # type: ignore[no-any-return]
    except (InvalidInput, PayloadTooLarge):
        return None


@FUZZ
@given(signature=signatures, instances=_JSON, single=st.booleans(), data=st.data())
def test_any_instances_decode_or_raise_invalid_input(
    signature: Signature, instances: Any, single: bool, data: st.DataObject
) -> None:
    if data.draw(st.booleans(), label="near"):  # rows of objects with the right keys
        names = _payload_names(signature)
        row = st.dictionaries(names, _JSON, max_size=4) | st.lists(_JSON, max_size=4)
        instances = data.draw(st.lists(row, max_size=MAX_ROWS + 1), label="rows")
    _decodes_or_refuses(
        lambda: decode_instances(
            signature, [instances] if single else instances, "instances", MAX_ROWS, single
        )
    )


@FUZZ
@given(signature=signatures, data=st.data())
def test_any_named_arrays_decode_or_raise_invalid_input(
    signature: Signature, data: st.DataObject
) -> None:
    arrays = data.draw(st.dictionaries(_payload_names(signature), any_arrays(), max_size=4))
    _decodes_or_refuses(lambda: decode_named_arrays(signature, arrays, "inputs", MAX_ROWS))


# ---------------------------------------------------------------------------- valid payloads


def _tensor_values(dtype: str) -> st.SearchStrategy[Any]:
    """JSON values a tensor of `dtype` accepts, exactly representable in it."""
    if dtype == "bool":
        return st.booleans()
    if dtype == "string":
        return st.text(max_size=6)
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        return st.integers(min_value=int(info.min), max_value=int(info.max))
    return st.floats(width=kind.itemsize * 8, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]


def _column_values(spec: ColumnSpec) -> st.SearchStrategy[Any]:
    """JSON values a column accepts: in its range, null when nullable."""
    if spec.dtype == "bool":
        values: st.SearchStrategy[Any] = st.booleans()
    elif spec.dtype == "string":
        values = st.text(max_size=6)
    elif spec.dtype == "int64":
        low = INT64_MIN if spec.minimum is None else math.ceil(spec.minimum)
        high = INT64_MAX if spec.maximum is None else math.floor(spec.maximum)
        values = st.integers(min_value=low, max_value=high)
    else:
        values = st.floats(
            min_value=spec.minimum, max_value=spec.maximum, allow_nan=False, allow_infinity=False
        )
    return st.none() | values if spec.nullable else values


@st.composite
def valid_tensor_rows(draw: st.DrawFn, signature: Signature) -> tuple[list[Any], dict[str, Array]]:
    """v1 instances for a tensor signature, and the arrays they must decode to."""
    count = draw(st.integers(min_value=1, max_value=MAX_ROWS))
    expected: dict[str, Array] = {}
    columns: dict[str, list[Any]] = {}
    for spec in signature.inputs:
        inner = [d if d != -1 else draw(st.integers(1, 3)) for d in spec.shape[1:]]
        values = draw(
            st.lists(
                _tensor_values(spec.dtype),
                min_size=count * math.prod(inner),
                max_size=count * math.prod(inner),
            )
        )
        dtype = object if spec.dtype == "string" else spec.dtype
        array = np.array(values, dtype=dtype).reshape(count, *inner)
        expected[spec.name] = array
        columns[spec.name] = _nested(values, [count, *inner])
    if len(signature.inputs) == 1:
        return columns[signature.inputs[0].name], expected
    rows = [{name: columns[name][i] for name in columns} for i in range(count)]
    return rows, expected


def _nested(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nested(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def valid_table_rows(
    draw: st.DrawFn, signature: Signature
) -> tuple[list[Any], dict[str, list[Any]]]:
    """v1 instances for a tabular signature (objects or lists in column order), and columns."""
    count = draw(st.integers(min_value=1, max_value=MAX_ROWS))
    columns = {
        spec.name: draw(st.lists(_column_values(spec), min_size=count, max_size=count))
        for spec in signature.columns
    }
    names = signature.input_names
    rows: list[Any] = []
    for i in range(count):
        if draw(st.booleans()):
            row = {name: columns[name][i] for name in draw(st.permutations(names))}
            rows.append(row)
        else:
            rows.append([columns[name][i] for name in names])
    return rows, columns


@FUZZ
@given(signature=tensor_signatures(), data=st.data())
def test_valid_tensor_instances_are_accepted_unchanged(
    signature: Signature, data: st.DataObject
) -> None:
    instances, expected = data.draw(valid_tensor_rows(signature), label="instances")
    decoded = decode_instances(signature, instances, "instances", MAX_ROWS)
    _assert_tensors(signature, decoded, expected)


@FUZZ
@given(signature=table_signatures(), data=st.data())
def test_valid_table_instances_are_accepted_unchanged(
    signature: Signature, data: st.DataObject
) -> None:
    instances, columns = data.draw(valid_table_rows(signature), label="instances")
    decoded = decode_instances(signature, instances, "instances", MAX_ROWS)
    _assert_table(signature, decoded, columns)


@FUZZ
@given(signature=tensor_signatures(), data=st.data())
def test_valid_tensor_arrays_are_accepted_unchanged(
    signature: Signature, data: st.DataObject
) -> None:
    _, expected = data.draw(valid_tensor_rows(signature), label="arrays")
    arrays = {name: _as_sent(array, data) for name, array in expected.items()}
    if len(arrays) == 1 and data.draw(st.booleans(), label="renamed"):
        arrays = {"input-0": next(iter(arrays.values()))}  # one input: any name will do
    decoded = decode_named_arrays(signature, arrays, "inputs", MAX_ROWS)
    _assert_tensors(signature, decoded, expected)


def _as_sent(array: Array, data: st.DataObject) -> Array:
    """Strings as an OIP client sends them: str objects, unicode, or UTF-8 bytes (BYTES)."""
    if array.dtype != object:
        return array
    form = data.draw(st.sampled_from(["str", "unicode", "bytes"]), label="strings")
    if form == "unicode" and array.size:
        return array.astype(str)
    if form == "bytes":
        encoded = np.empty(array.shape, dtype=object)
        encoded.reshape(-1)[:] = [v.encode() for v in array.reshape(-1)]
        return encoded
    return array


@FUZZ
@given(signature=table_signatures(), data=st.data())
def test_valid_table_arrays_are_accepted_unchanged(
    signature: Signature, data: st.DataObject
) -> None:
    _, columns = data.draw(valid_table_rows(signature), label="columns")
    arrays = {}
    for spec in signature.columns:
        array = _column_array(spec, columns[spec.name])
        if data.draw(st.booleans(), label="as [n, 1]"):
            array = array.reshape(-1, 1)
        arrays[spec.name] = array
    decoded = decode_named_arrays(signature, arrays, "inputs", MAX_ROWS)
    _assert_table(signature, decoded, columns)


def _column_array(spec: ColumnSpec, values: list[Any]) -> Array:
    """A column as an OIP input holds it: typed when it can be, NaN for a float null."""
    if any(v is None for v in values):
        if spec.dtype == "float64":
            return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        return np.array(values, dtype=object)
    return np.array(values, dtype=object if spec.dtype == "string" else spec.dtype)


@st.composite
def nearly_valid_instances(draw: st.DrawFn, signature: Signature) -> list[Any]:
    """Valid rows with one to three cells, rows or keys changed to anything JSON can say."""
    if signature.kind == "tabular":
        rows, _ = draw(valid_table_rows(signature))
    else:
        rows, _ = draw(valid_tensor_rows(signature))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=len(rows) - 1))
        row = rows[index]
        change = draw(st.sampled_from(["cell", "row", "drop", "add", "more rows"]))
        if change == "cell" and isinstance(row, dict) and row:
            row[draw(st.sampled_from(sorted(row)))] = draw(_JSON)
        elif change == "cell" and isinstance(row, list) and row:
            row[draw(st.integers(min_value=0, max_value=len(row) - 1))] = draw(_JSON)
        elif change == "row":
            rows[index] = draw(_JSON)
        elif change == "drop" and isinstance(row, dict) and row:
            del row[draw(st.sampled_from(sorted(row)))]
        elif change == "drop" and isinstance(row, list) and row:
            row.pop()
        elif change == "add" and isinstance(row, dict):
            row[draw(st.text(max_size=4))] = draw(_JSON)
        elif change == "add" and isinstance(row, list):
            row.append(draw(_JSON))
        else:
            rows.extend(rows[: draw(st.integers(min_value=1, max_value=MAX_ROWS))])
    return rows


@FUZZ
@given(signature=signatures, single=st.booleans(), data=st.data())
def test_nearly_valid_instances_decode_or_raise_invalid_input(
    signature: Signature, single: bool, data: st.DataObject
) -> None:
    instances = data.draw(nearly_valid_instances(signature), label="instances")
    if single:
        instances = instances[:1]
    _decodes_or_refuses(
        lambda: decode_instances(signature, instances, "instances", MAX_ROWS, single)
    )


# ---------------------------------------------------------------------------- comparisons


def _assert_tensors(signature: Signature, decoded: ModelInput, expected: dict[str, Array]) -> None:
    if len(signature.inputs) == 1:
        assert isinstance(decoded, np.ndarray)
        decoded = {signature.inputs[0].name: decoded}
    assert isinstance(decoded, dict)
    assert set(decoded) == set(expected)
    for spec in signature.inputs:
        got, want = decoded[spec.name], expected[spec.name]
        assert got.shape == want.shape, spec
        if spec.dtype == "string":
            assert got.dtype == object
            assert got.reshape(-1).tolist() == want.reshape(-1).tolist()
        else:
            assert got.dtype == np.dtype(spec.dtype), spec
            assert np.array_equal(got, want), spec
            if got.dtype.kind == "f":  # 0.0 and -0.0 are different inputs to some models
                assert np.array_equal(np.signbit(got), np.signbit(want)), spec


def _assert_table(signature: Signature, decoded: ModelInput, columns: dict[str, list[Any]]) -> None:
    assert isinstance(decoded, pd.DataFrame)
    assert list(decoded.columns) == signature.input_names
    for spec in signature.columns:
        got = decoded[spec.name].tolist()
        want = columns[spec.name]
        assert len(got) == len(want)
        for index, (cell, value) in enumerate(zip(got, want, strict=True)):
            where = (spec, index, cell, value)
            if value is None:
                assert cell is None or pd.isna(cell), where
            elif spec.dtype == "bool":
                assert isinstance(cell, bool | np.bool_), where
                assert cell == value, where
            elif spec.dtype == "string" or spec.dtype == "int64":
                assert cell == value, where
            else:
                assert cell == value, where
                assert math.copysign(1, cell) == math.copysign(1, value), where


def test_nullable_int64_column_keeps_large_integers() -> None:
    signature = Signature(kind="tabular", columns=(ColumnSpec("n", "int64", nullable=True),))
    for payload in (
        lambda: decode_instances(signature, [{"n": None}, {"n": 2**53 + 1}], "instances", 10),
        lambda: decode_named_arrays(
            signature, {"n": np.array([None, 2**53 + 1], dtype=object)}, "inputs", 10
        ),
    ):
        frame = payload()
        assert isinstance(frame, pd.DataFrame)
        assert frame["n"].tolist()[1] == 2**53 + 1


def test_exotic_dtypes_are_refused() -> None:
    signature = Signature(kind="tensor", inputs=(TensorSpec("x", "uint8", (-1,)),))
    for array in (np.array([1 + 0j]), np.array([1], dtype="m8[s]")):
        try:
            decode_named_arrays(signature, {"x": array}, "inputs", MAX_ROWS)
        except InvalidInput:
            continue
        raise AssertionError(f"{array.dtype} accepted")


# ------------------------------------------------------------------- the float rows fast path

_EDGE_FLOATS = [0.0, -0.0, 1.5, 3.4028234663852886e38, 3.4028235677973366e38, 1e39, -1e39,
                1.7976931348623157e308, math.inf, -math.inf, math.nan, 5e-324, 1e-46]  # fmt: skip
_FLOATS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(),
    st.sampled_from(_EDGE_FLOATS),
)
_NUMBERS = st.one_of(
    _FLOATS,
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**64, 10**400]),
)
_CELLS = st.one_of(_NUMBERS, st.booleans(), st.text(max_size=2), st.none())


@st.composite
def float_requests(draw: st.DrawFn) -> tuple[TensorSpec, list[Any]]:
    """Mostly what the fast path takes (rows of numbers for a float matrix), and near misses."""
    common = draw(st.integers(0, 3)) > 0
    dtype = draw(st.sampled_from(["float32", "float64"] if common else TENSOR_DTYPES))
    width = draw(st.sampled_from([-1, 1, 4]))
    row_width = width if width != -1 else draw(st.integers(1, 4))
    cells = _FLOATS if common else draw(st.sampled_from([_NUMBERS, _CELLS]))
    count = draw(st.integers(1 if common else 0, 4))
    rows: list[Any] = [
        draw(st.lists(cells, min_size=row_width, max_size=row_width)) for _ in range(count)
    ]
    batch = -1 if common or draw(st.booleans()) else draw(st.integers(1, 3))
    if not common and rows and draw(st.booleans()):
        rows[-1] = draw(st.one_of(st.lists(_CELLS, max_size=5), _CELLS))  # ragged or scalar
    return TensorSpec("x", dtype, (batch, width)), rows


@FUZZ
@given(float_requests())
def test_the_float_rows_fast_path_answers_as_the_general_path_or_leaves_it(
    request: tuple[TensorSpec, list[Any]],
) -> None:
    spec, rows = request
    fast = float_rows(spec, rows)
    if fast is None:
        return
    general = validate_tensor(spec, json_array(rows, "instances", spec.dtype), "instances")
    assert (fast.dtype, fast.shape) == (general.dtype, general.shape)
    assert fast.tobytes() == general.tobytes()  # bit for bit, signed zeros included


def test_the_float_rows_fast_path_takes_the_common_request() -> None:
    spec = TensorSpec("x", "float32", (-1, 4))
    rows = float_rows(spec, [[5.1, 3.5, 1.4, 0.2], [1, 2, 3, 4]])
    assert rows is not None
    assert rows.dtype == np.float32
    assert rows.tolist() == np.array([[5.1, 3.5, 1.4, 0.2], [1, 2, 3, 4]], np.float32).tolist()
    assert float_rows(spec, [[5.1, 3.5, 1.4, True]]) is None
    assert float_rows(spec, [[5.1, 3.5, 1.4, math.nan]]) is None
