"""Request data against signatures: every rule names the field, what was expected and what came.

Bad input raises `InvalidInput` (or `PayloadTooLarge` for too many rows) and nothing else: any
other exception would reach the client as an HTTP 500.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pytest

from berth.errors import BerthError, InvalidInput, PayloadTooLarge
from berth.registry.signature import ColumnSpec, Signature, TensorSpec
from berth.runtimes.base import ModelInput
from berth.serving.validation import decode_instances, decode_named_arrays

Array = np.ndarray[Any, Any]


def tensor(dtype: str = "float32", shape: tuple[int, ...] = (-1, 4), name: str = "x") -> Signature:
    return Signature(kind="tensor", inputs=(TensorSpec(name, dtype, shape),))


FLOAT4 = tensor()
INT2 = tensor("int64", (-1, 2))
UINT8 = tensor("uint8", (-1, 2, 2))
BOOL3 = tensor("bool", (-1, 3))
TEXT2 = tensor("string", (-1, 2))
MULTI = Signature(
    kind="tensor",
    inputs=(TensorSpec("a", "float32", (-1, 2)), TensorSpec("b", "int64", (-1,))),
)
TABLE = Signature(
    kind="tabular",
    columns=(
        ColumnSpec("age", "int64", minimum=0, maximum=120),
        ColumnSpec("income", "float64", nullable=True, minimum=0.0),
        ColumnSpec("plan", "string"),
        ColumnSpec("active", "bool"),
    ),
)
ROW: dict[str, Any] = {"age": 30, "income": 1000.5, "plan": "basic", "active": True}
NULLABLE = Signature(
    kind="tabular",
    columns=(
        ColumnSpec("n", "int64", nullable=True),
        ColumnSpec("f", "float64", nullable=True),
        ColumnSpec("s", "string", nullable=True),
        ColumnSpec("b", "bool", nullable=True),
    ),
)
NUMERIC = Signature(kind="tabular", columns=(ColumnSpec("a", "int64"), ColumnSpec("b", "float64")))


def rows(
    signature: Signature, instances: Any, *, max_rows: int = 100, single: bool = False
) -> ModelInput:
    field = "features" if single else "instances"
    return decode_instances(signature, instances, field, max_rows, single=single)


def named(signature: Signature, arrays: dict[str, Array], *, max_rows: int = 100) -> ModelInput:
    return decode_named_arrays(signature, arrays, "inputs", max_rows)


def fails(
    call: Callable[[], object], *fragments: str, error: type[BerthError] = InvalidInput
) -> str:
    """Run `call`, require exactly `error` and every fragment in its message; return it."""
    with pytest.raises(BerthError) as caught:
        call()
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    message = caught.value.message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def as_array(result: ModelInput) -> Array:
    assert isinstance(result, np.ndarray)
    return result


def as_frame(result: ModelInput) -> pd.DataFrame:
    assert isinstance(result, pd.DataFrame)
    return result


def as_dict(result: ModelInput) -> dict[str, Array]:
    assert isinstance(result, dict)
    return result


def texts(*values: bytes) -> Array:
    """A BYTES tensor as the Open Inference Protocol codec hands it over."""
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


# tensors from v1 instances -----------------------------------------------------------------


def test_tensor_rows_are_cast_to_the_spec_dtype() -> None:
    result = as_array(rows(FLOAT4, [[1, 2, 3, 4], [5.5, 6, 7, 8]]))
    assert result.dtype == np.float32
    assert result.shape == (2, 4)
    assert result.tolist() == [[1, 2, 3, 4], [5.5, 6, 7, 8]]


def test_wrong_feature_count() -> None:
    fails(lambda: rows(FLOAT4, [[1, 2, 3]]), "instances: expected 4 values per row, got 3")


def test_wrong_size_on_a_later_axis() -> None:
    image = [[[1, 2, 3], [4, 5, 6]]]
    fails(lambda: rows(UINT8, image), "instances: expected 2 entries on axis 2, got 3")


@pytest.mark.parametrize(
    ("instances", "got"),
    [
        ([1, 2, 3, 4], "got shape [4]"),
        ([[[1, 2, 3, 4]]], "got shape [1, 1, 4]"),
    ],
)
def test_wrong_rank(instances: Any, got: str) -> None:
    fails(
        lambda: rows(FLOAT4, instances),
        "instances: expected 2-dimensional data of shape [any, 4]",
        got,
    )


@pytest.mark.parametrize(
    "instances",
    [
        [[1, 2, 3, 4], [1, 2]],
        [[1, 2, 3, 4], 5],
        [[1, [2], 3, 4]],
        [[1, 2, 3, 4], [[1, 2, 3, 4]]],
    ],
)
def test_ragged_rows(instances: Any) -> None:
    fails(lambda: rows(FLOAT4, instances), "instances: rows have different lengths or nesting")


def test_string_among_numbers_is_named_with_its_index() -> None:
    fails(
        lambda: rows(FLOAT4, [[1, 2, 3, 4], [1.0, 2.0, "x", 4.0]]),
        "instances: expected numbers, got strings",
        "'x' at index [1, 2]",
    )


def test_all_strings_for_a_number_tensor() -> None:
    fails(lambda: rows(FLOAT4, [["1", "2", "3", "4"]]), "instances: expected numbers, got strings")


def test_boolean_among_numbers_is_not_taken_as_one() -> None:
    # numpy alone would read [1, true] as [1, 1]
    fails(
        lambda: rows(FLOAT4, [[1, 2, True, 4]]),
        "instances: expected numbers, got booleans",
        "true at index [0, 2]",
    )
    fails(lambda: rows(INT2, [[False, 2]]), "expected integers, got booleans", "false at index")


def test_all_booleans_for_a_number_tensor() -> None:
    fails(
        lambda: rows(FLOAT4, [[True, False, True, True]]),
        "instances: expected numbers, got booleans",
    )


@pytest.mark.parametrize(
    ("instances", "fragments"),
    [
        ([[1, None, 3, 4]], ("expected numbers, got null at index [0, 1]",)),
        ([{"x": [1, 2, 3, 4]}], ("expected numbers, got objects", "at index [0]")),
        ([[1, 2, 3, {"v": 4}]], ("expected numbers, got objects", "at index [0, 3]")),
    ],
)
def test_null_and_objects_in_a_tensor(instances: Any, fragments: tuple[str, ...]) -> None:
    fails(lambda: rows(FLOAT4, instances), *fragments)


def test_int_tensor_takes_whole_floats_and_refuses_fractions() -> None:
    result = as_array(rows(INT2, [[2.0, 3], [-4, 5.0]]))
    assert result.dtype == np.int64
    assert result.tolist() == [[2, 3], [-4, 5]]
    fails(
        lambda: rows(INT2, [[1.5, 2]]),
        "instances: expected integers, got a non-integer value (1.5)",
    )


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 1e20, 10**30])
def test_int_tensor_refuses_values_beyond_int64(value: float) -> None:
    fails(
        lambda: rows(INT2, [[0, value]]),
        "instances: expected integers in the range of int64",
        "at index [0, 1]",
    )


def test_int64_extremes_are_exact() -> None:
    result = as_array(rows(INT2, [[2**63 - 1, -(2**63)]]))
    assert result.tolist() == [[2**63 - 1, -(2**63)]]


def test_uint8_tensor() -> None:
    result = as_array(rows(UINT8, [[[0, 255], [1, 2]]]))
    assert result.dtype == np.uint8
    assert result.tolist() == [[[0, 255], [1, 2]]]


@pytest.mark.parametrize(
    ("value", "shown"), [(256, "got 256"), (-1, "got -1"), (300.0, "got 300.0")]
)
def test_uint8_tensor_refuses_values_that_would_wrap(value: float, shown: str) -> None:
    fails(
        lambda: rows(UINT8, [[[0, 1], [2, value]]]),
        "instances: expected integers in the range of uint8 [0, 255]",
        shown,
        "at index [0, 1, 1]",
    )


def test_float32_overflow_is_refused_not_turned_into_infinity() -> None:
    fails(
        lambda: rows(FLOAT4, [[1e39, 0, 0, 0]]),
        "instances: value at index [0, 0]",
        "too large for float32",
    )


def test_integer_too_large_for_any_float() -> None:
    fails(
        lambda: rows(FLOAT4, [[10**400, 0, 0, 0]]),
        "instances: expected numbers that fit a 64-bit float",
        "got an integer of 1329 bits at index [0, 0]",
    )


def test_integers_past_the_printing_limit_are_described_not_printed() -> None:
    # Python raises ValueError for str() of an int of more than 4300 digits, even inside a list
    huge = 10**5000
    fails(lambda: rows(FLOAT4, [[huge, 0, 0, 0]]), "got an integer of 16610 bits at index [0, 0]")
    fails(lambda: rows(INT2, [[0, -huge]]), "range of int64", "got an integer of 16610 bits")
    fails(
        lambda: rows(FLOAT4, [[{"v": huge}, 0, 0, 0]]),
        'got objects ({"v":<an integer of 16610 bits>} at index [0, 0])',
    )
    fails(
        lambda: rows(TABLE, [{**ROW, "age": huge}]),
        "instances.age: row 0 has an integer of 16610 bits",
    )
    fails(
        lambda: rows(TABLE, [{**ROW, "plan": [huge]}]),
        "instances.plan: row 0 expected strings, got a list [<an integer of 16610 bits>]",
    )


def test_bool_tensor() -> None:
    result = as_array(rows(BOOL3, [[True, False, True]]))
    assert result.dtype == np.bool_
    assert result.tolist() == [[True, False, True]]
    fails(
        lambda: rows(BOOL3, [[1, 0, 1]]), "instances: expected booleans (true/false), got integers"
    )
    fails(
        lambda: rows(BOOL3, [[True, 1, False]]),
        "instances: expected booleans, got numbers",
        "1 at index [0, 1]",
    )


def test_string_tensor() -> None:
    result = as_array(rows(TEXT2, [["a", "b\u00e9"], ["", "d"]]))
    assert result.dtype == object
    assert result.tolist() == [["a", "b\u00e9"], ["", "d"]]
    assert all(type(v) is str for v in result.ravel())
    fails(
        lambda: rows(TEXT2, [["a", 1]]),
        "instances: expected strings, got numbers (1 at index [0, 1])",
    )
    fails(lambda: rows(TEXT2, [[1, 2]]), "instances: expected strings, got integers")


def test_single_row_is_labelled_without_an_index() -> None:
    message = fails(
        lambda: rows(FLOAT4, [[1, 2, 3]], single=True), "features: expected 4 values per row, got 3"
    )
    assert "features[0]" not in message
    message = fails(
        lambda: rows(MULTI, [[1, 2]], single=True), "features: expected an object with inputs"
    )
    assert "features[0]" not in message
    message = fails(
        lambda: rows(TABLE, [{k: v for k, v in ROW.items() if k != "plan"}], single=True),
        "features: missing column 'plan'",
    )
    assert "features[0]" not in message


def test_batches_are_labelled_with_the_row_index() -> None:
    fails(lambda: rows(MULTI, [{"a": [1, 2], "b": 1}, [1, 2]]), "instances[1]: expected an object")
    fails(lambda: rows(TABLE, [ROW, {**ROW, "x": 1}]), "instances[1]: unknown column 'x'")


# several tensor inputs -----------------------------------------------------------------------


def test_multi_input_tensors() -> None:
    result = as_dict(rows(MULTI, [{"a": [1, 2], "b": 3}, {"b": 4, "a": [5, 6]}]))
    assert set(result) == {"a", "b"}
    assert result["a"].dtype == np.float32
    assert result["a"].tolist() == [[1, 2], [5, 6]]
    assert result["b"].dtype == np.int64
    assert result["b"].tolist() == [3, 4]


@pytest.mark.parametrize(
    ("instances", "fragments"),
    [
        (
            [{"a": [1, 2], "b": 3}, {"a": [1, 2]}],
            ("instances[1]: expected an object with inputs ['a', 'b'], missing 'b'",),
        ),
        (
            [{"a": [1, 2], "b": 3, "c": 0}],
            ("instances[0]: unknown input 'c'; expected inputs ['a', 'b']",),
        ),
        ([[1, 2]], ("instances[0]: expected an object with inputs ['a', 'b'], got a list",)),
        (
            [{"a": [1, 2], "b": 1.5}],
            ("instances.b: expected integers, got a non-integer value (1.5)",),
        ),
        ([{"a": [1, 2, 3], "b": 1}], ("instances.a: expected 2 values per row, got 3",)),
        ([{"a": [1, "x"], "b": 1}], ("instances.a: expected numbers, got strings",)),
    ],
)
def test_multi_input_errors(instances: Any, fragments: tuple[str, ...]) -> None:
    fails(lambda: rows(MULTI, instances), *fragments)


# request shape and limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instances", "got"),
    [
        ({"x": [1, 2, 3, 4]}, "got an object"),
        ("rows", "got a string"),
        (None, "got null"),
        (4, "got a number"),
    ],
)
@pytest.mark.parametrize("signature", [FLOAT4, TABLE], ids=["tensor", "tabular"])
def test_instances_must_be_a_list(signature: Signature, instances: Any, got: str) -> None:
    fails(lambda: rows(signature, instances), "instances: expected a list of rows", got)


@pytest.mark.parametrize("signature", [FLOAT4, MULTI, TABLE], ids=["tensor", "multi", "tabular"])
def test_zero_rows(signature: Signature) -> None:
    fails(lambda: rows(signature, []), "instances: the request holds no rows")


def test_too_many_rows_is_payload_too_large() -> None:
    assert as_array(rows(FLOAT4, [[1, 2, 3, 4]] * 5, max_rows=5)).shape == (5, 4)
    fails(
        lambda: rows(FLOAT4, [[1, 2, 3, 4]] * 6, max_rows=5),
        "instances: the request holds 6 rows, more than the limit of 5",
        "BERTH_MAX_BATCH_ROWS",
        error=PayloadTooLarge,
    )
    fails(
        lambda: rows(TABLE, [ROW] * 3, max_rows=2),
        "more than the limit of 2",
        error=PayloadTooLarge,
    )
    fails(
        lambda: named(FLOAT4, {"x": np.zeros((3, 4))}, max_rows=2),
        "inputs: the request holds 3 rows, more than the limit of 2",
        error=PayloadTooLarge,
    )


# tensors from named arrays (Open Inference Protocol) ---------------------------------------


def test_named_array_is_cast_to_float32() -> None:
    result = as_array(named(FLOAT4, {"x": np.arange(8, dtype=np.float64).reshape(2, 4)}))
    assert result.dtype == np.float32
    assert result.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_single_input_takes_the_array_whatever_its_name() -> None:
    result = as_array(named(FLOAT4, {"input-0": np.ones((1, 4), dtype=np.float32)}))
    assert result.shape == (1, 4)
    fails(
        lambda: named(FLOAT4, {"input-0": np.ones((1, 3))}),
        "inputs.input-0: expected 4 values per row, got 3",
    )


@pytest.mark.parametrize(
    ("bad", "shown"), [(np.nan, "is nan"), (np.inf, "is inf"), (-np.inf, "is -inf")]
)
def test_nan_and_infinity_in_float_tensors(bad: float, shown: str) -> None:
    array = np.array([[1, 2, 3, 4], [5, bad, 7, 8]], dtype=np.float32)
    fails(
        lambda: named(FLOAT4, {"x": array}),
        "inputs.x: value at index [1, 1]",
        shown,
        "NaN and infinity are not accepted",
    )


def test_int_tensor_given_float32_arrays() -> None:
    result = as_array(named(INT2, {"x": np.array([[1.0, -2.0]], dtype=np.float32)}))
    assert result.dtype == np.int64
    assert result.tolist() == [[1, -2]]
    fails(
        lambda: named(INT2, {"x": np.array([[1.0, 2.5]], dtype=np.float32)}),
        "inputs.x: expected integers, got a non-integer value (2.5)",
    )
    fails(
        lambda: named(INT2, {"x": np.array([[1.0, np.nan]], dtype=np.float32)}),
        "inputs.x: expected integers, got a non-integer value (nan)",
    )
    fails(
        lambda: named(INT2, {"x": np.array([[1e19, 0]])}),
        "inputs.x: expected integers in the range of int64",
    )


def test_uint8_tensor_from_arrays() -> None:
    pixels = np.array([[[0, 255], [7, 8]]], dtype=np.uint8)
    result = as_array(named(UINT8, {"x": pixels}))
    assert result.dtype == np.uint8
    assert result.tolist() == pixels.tolist()
    fails(
        lambda: named(UINT8, {"x": np.array([[[0, 256], [7, 8]]], dtype=np.int64)}),
        "inputs.x: expected integers in the range of uint8 [0, 255], got 256 at index [0, 0, 1]",
    )
    fails(
        lambda: named(UINT8, {"x": np.array([[[2**63, 0], [0, 0]]], dtype=np.uint64)}),
        "range of uint8",
    )


def test_bool_tensor_from_arrays() -> None:
    result = as_array(named(BOOL3, {"x": np.array([[True, False, True]])}))
    assert result.dtype == np.bool_
    fails(
        lambda: named(BOOL3, {"x": np.array([[1, 0, 1]])}),
        "inputs.x: expected booleans (true/false), got integers",
    )
    fails(
        lambda: named(FLOAT4, {"x": np.ones((1, 4), dtype=bool)}),
        "inputs.x: expected numbers, got booleans",
    )


def test_bytes_are_decoded_to_str_for_string_tensors() -> None:
    array = texts(b"a", "h\u00e9".encode(), b"", b"z").reshape(2, 2)
    result = as_array(named(TEXT2, {"x": array}))
    assert result.dtype == object
    assert result.tolist() == [["a", "h\u00e9"], ["", "z"]]
    assert all(type(v) is str for v in result.ravel())


def test_non_utf8_bytes_are_refused() -> None:
    array = texts(b"a", b"\xff\xfe").reshape(1, 2)
    fails(
        lambda: named(TEXT2, {"x": array}),
        "inputs.x: expected UTF-8 encoded text, got bytes that are not UTF-8",
    )


def test_string_tensor_refuses_non_text_objects() -> None:
    array = np.empty((1, 2), dtype=object)
    array[0, 0], array[0, 1] = b"a", 5
    fails(
        lambda: named(TEXT2, {"x": array}),
        "inputs.x: expected strings, got a number at index [0, 1]",
    )
    fails(lambda: named(TEXT2, {"x": np.ones((1, 2))}), "inputs.x: expected strings, got numbers")


def test_bytes_for_a_number_tensor() -> None:
    array = texts(b"1", b"2", b"3", b"4").reshape(1, 4)
    fails(lambda: named(FLOAT4, {"x": array}), "inputs.x: expected numbers")
    fails(
        lambda: named(FLOAT4, {"x": np.array([["1", "2", "3", "4"]])}),
        "inputs.x: expected numbers, got strings",
    )


def test_named_array_of_wrong_rank() -> None:
    fails(
        lambda: named(FLOAT4, {"x": np.zeros(4)}),
        "inputs.x: expected 2-dimensional data",
        "got shape [4]",
    )
    fails(
        lambda: named(FLOAT4, {"x": np.float32(1)}),
        "inputs.x: expected 2-dimensional data",
        "got shape []",
    )


def test_multi_input_named_arrays() -> None:
    result = as_dict(named(MULTI, {"b": np.array([1, 2]), "a": np.ones((2, 2))}))
    assert result["a"].dtype == np.float32
    assert result["b"].dtype == np.int64
    fails(
        lambda: named(MULTI, {"a": np.ones((2, 2))}),
        "inputs: missing input 'b'; expected ['a', 'b']",
    )
    fails(
        lambda: named(MULTI, {"a": np.ones((2, 2)), "b": np.ones(2), "c": np.ones(2)}),
        "inputs: unknown input 'c'",
    )
    fails(
        lambda: named(MULTI, {"a": np.ones((2, 2)), "b": np.ones(3)}),
        "inputs: inputs have different row counts",
    )
    fails(lambda: named(MULTI, {}), "inputs: no inputs given; expected ['a', 'b']")


# tables from v1 instances ------------------------------------------------------------------


def test_table_rows_as_objects() -> None:
    frame = as_frame(rows(TABLE, [ROW, {"active": False, "plan": "pro", "income": 7, "age": 2.0}]))
    assert list(frame.columns) == ["age", "income", "plan", "active"]
    assert frame["age"].dtype == np.int64
    assert frame["income"].dtype == np.float64
    assert pd.api.types.is_string_dtype(frame["plan"])  # pandas' own string dtype
    assert frame["active"].dtype == np.bool_
    assert frame.to_dict("list") == {
        "age": [30, 2],
        "income": [1000.5, 7.0],
        "plan": ["basic", "pro"],
        "active": [True, False],
    }


def test_table_rows_as_lists_in_column_order() -> None:
    as_lists = as_frame(rows(TABLE, [[30, 1000.5, "basic", True]]))
    as_objects = as_frame(rows(TABLE, [ROW]))
    pd.testing.assert_frame_equal(as_lists, as_objects)


@pytest.mark.parametrize("row", [[30, 1000.5], [30, 1000.5, "basic", True, 1], []])
def test_list_row_of_the_wrong_length(row: list[Any]) -> None:
    fails(
        lambda: rows(TABLE, [ROW, row]),
        f"instances[1]: expected 4 values in column order ['age', 'income', 'plan', 'active'], got {len(row)}",
    )


@pytest.mark.parametrize(
    ("row", "got"),
    [("x", "got a string"), (5, "got a number"), (None, "got null"), (True, "got a boolean")],
)
def test_table_row_that_is_neither_object_nor_list(row: Any, got: str) -> None:
    fails(lambda: rows(TABLE, [row]), "instances[0]: expected an object of column values", got)


def test_missing_and_unknown_columns() -> None:
    fails(
        lambda: rows(TABLE, [{k: v for k, v in ROW.items() if k != "plan"}]),
        "instances[0]: missing column 'plan'; expected columns ['age', 'income', 'plan', 'active']",
    )
    fails(lambda: rows(TABLE, [{**ROW, "extra": 1}]), "instances[0]: unknown column 'extra'")


def test_null_in_a_non_nullable_column() -> None:
    fails(
        lambda: rows(TABLE, [ROW, {**ROW, "age": None}]),
        "instances.age: row 1 is null or NaN, but the column is not nullable",
    )
    fails(
        lambda: rows(NUMERIC, [[1, math.nan]]), "instances.b: row 0 is null or NaN", "not nullable"
    )


def test_nullable_columns_take_null_and_nan() -> None:
    frame = as_frame(
        rows(NULLABLE, [[1, 2.5, "x", True], [None, None, None, None], [3, math.nan, "z", False]])
    )
    assert str(frame["n"].dtype) == "Int64"  # nullable integers stay exact, null is <NA>
    assert frame["n"].tolist()[0] == 1
    assert frame["n"][1] is pd.NA
    assert frame["f"].dtype == np.float64
    assert math.isnan(frame["f"][1])
    assert math.isnan(frame["f"][2])
    assert frame["s"].tolist()[0] == "x"
    assert pd.isna(frame["s"][1])
    assert frame["b"].dtype == "boolean"
    assert frame["b"].isna().tolist() == [False, True, False]
    assert math.isnan(as_frame(rows(TABLE, [{**ROW, "income": None}]))["income"][0])


def test_nullable_int_column_without_nulls_stays_int64() -> None:
    assert as_frame(rows(NULLABLE, [[1, 2.5, "x", True]]))["n"].dtype == np.int64


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_infinity_in_a_float_column(bad: float) -> None:
    fails(
        lambda: rows(TABLE, [ROW, {**ROW, "income": bad}]),
        "instances.income: row 1 is",
        "NaN and infinity are not accepted",
    )


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("age", "ten", "instances.age: row 0 expected integers, got a string 'ten'"),
        ("age", True, "instances.age: row 0 expected integers, got a boolean true"),
        ("income", False, "instances.income: row 0 expected numbers, got a boolean false"),
        ("income", "1.5", "instances.income: row 0 expected numbers, got a string '1.5'"),
        ("age", 30.5, "instances.age: row 0 expected integers, got a number 30.5"),
        ("age", [30], "instances.age: row 0 expected integers, got a list [30]"),
        ("age", {"v": 30}, "instances.age: row 0 expected integers, got an object"),
        ("plan", 3, "instances.plan: row 0 expected strings, got a number 3"),
        ("plan", ["basic"], "instances.plan: row 0 expected strings, got a list"),
        ("active", 1, "instances.active: row 0 expected booleans, got a number 1"),
        ("active", "yes", "instances.active: row 0 expected booleans, got a string 'yes'"),
    ],
)
def test_wrong_json_type_in_a_column(column: str, value: Any, fragment: str) -> None:
    fails(lambda: rows(TABLE, [{**ROW, column: value}]), fragment)


def test_whole_float_is_accepted_for_an_int_column() -> None:
    frame = as_frame(rows(TABLE, [{**ROW, "age": 2.0}, {**ROW, "age": 3}]))
    assert frame["age"].dtype == np.int64
    assert frame["age"].tolist() == [2, 3]


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("age", -1, "instances.age: row 0 has -1, outside the allowed range [0, 120]"),
        ("age", 121, "instances.age: row 0 has 121, outside the allowed range [0, 120]"),
        ("income", -0.5, "instances.income: row 0 has -0.5, outside the allowed range [0, any]"),
    ],
)
def test_out_of_range(column: str, value: float, fragment: str) -> None:
    fails(lambda: rows(TABLE, [{**ROW, column: value}]), fragment)


def test_range_bounds_are_inclusive_and_nulls_pass() -> None:
    frame = as_frame(rows(TABLE, [{**ROW, "age": 0}, {**ROW, "age": 120, "income": None}]))
    assert frame["age"].tolist() == [0, 120]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30, 1e20])
def test_int_column_refuses_values_beyond_int64(value: float) -> None:
    fails(
        lambda: rows(TABLE, [{**ROW, "age": value}]),
        "instances.age: row 0 has",
        "outside the range of int64",
    )


def test_float_column_refuses_integers_beyond_float64() -> None:
    fails(
        lambda: rows(TABLE, [{**ROW, "income": 10**400}]),
        "instances.income: row 0 has",
        "outside the range of float64",
    )


def test_int_column_accepts_the_int64_extremes() -> None:
    signature = Signature(kind="tabular", columns=(ColumnSpec("n", "int64"),))
    frame = as_frame(rows(signature, [[2**63 - 1], [-(2**63)]]))
    assert frame["n"].tolist() == [2**63 - 1, -(2**63)]


def test_the_first_bad_row_is_named() -> None:
    fails(
        lambda: rows(TABLE, [ROW, ROW, {**ROW, "age": "x"}]),
        "instances.age: row 2 expected integers",
    )


# tables from named arrays ------------------------------------------------------------------


def test_table_from_one_array_per_column() -> None:
    frame = as_frame(
        named(
            TABLE,
            {
                "age": np.array([30, 40], dtype=np.int32),
                "income": np.array([[1.5], [2.5]], dtype=np.float32),
                "plan": texts(b"basic", "pr\u00f6".encode()),
                "active": np.array([True, False]),
            },
        )
    )
    assert list(frame.columns) == ["age", "income", "plan", "active"]
    assert frame["age"].dtype == np.int64
    assert frame["income"].dtype == np.float64
    assert frame["plan"].tolist() == ["basic", "pr\u00f6"]
    assert frame["active"].dtype == np.bool_


def test_table_from_one_matrix_in_column_order() -> None:
    frame = as_frame(named(NUMERIC, {"input-0": np.array([[1.0, 2.5], [3.0, 4.0]])}))
    assert frame["a"].dtype == np.int64
    assert frame["a"].tolist() == [1, 3]
    assert frame["b"].tolist() == [2.5, 4.0]
    fails(
        lambda: named(NUMERIC, {"input-0": np.array([[1.5, 2.5]])}),
        "inputs.a: expected integers, got a non-integer value (1.5)",
    )
    fails(lambda: named(NUMERIC, {"input-0": np.ones((2, 3))}), "inputs: missing column 'a'")


def test_named_table_missing_unknown_and_misshaped_columns() -> None:
    fails(
        lambda: named(NUMERIC, {"a": np.ones(2)}),
        "inputs: missing column 'b'; expected columns ['a', 'b']",
    )
    fails(
        lambda: named(NUMERIC, {"a": np.ones(2), "b": np.ones(2), "c": np.ones(2)}),
        "inputs: unknown column 'c'",
    )
    fails(
        lambda: named(NUMERIC, {"a": np.ones(2), "b": np.ones((2, 2))}),
        "inputs.b: expected one value per row, got shape [2, 2]",
    )
    fails(lambda: named(NUMERIC, {"a": np.ones(2), "b": np.ones(3)}), "different row counts")
    fails(
        lambda: named(NUMERIC, {"a": np.ones(0), "b": np.ones(0)}),
        "inputs: the request holds no rows",
    )


def test_nan_in_named_columns() -> None:
    fails(
        lambda: named(NUMERIC, {"a": np.ones(2), "b": np.array([1.0, np.nan])}),
        "inputs.b: row 1 is null or NaN, but the column is not nullable",
    )
    frame = as_frame(
        named(
            NULLABLE,
            {
                "n": np.array([1.0, np.nan]),
                "f": np.array([np.nan, 2.0]),
                "s": texts(b"x", b"y"),
                "b": np.array([True, False]),
            },
        )
    )
    assert str(frame["n"].dtype) == "Int64"
    assert frame["n"][0] == 1
    assert frame["n"][1] is pd.NA
    assert math.isnan(frame["f"][0])


@pytest.mark.parametrize(
    ("column", "values", "fragment"),
    [
        ("n", [1.5, np.nan], "inputs.n: expected integers, got a non-integer value (1.5)"),
        ("b", [2.5, np.nan], "inputs.b: expected booleans (true/false), got numbers"),
        ("s", [2.5, np.nan], "inputs.s: expected strings, got numbers"),
        ("f", [np.inf, np.nan], "inputs.f: value at index [0] is inf"),
    ],
)
def test_nullable_named_columns_check_the_values_beside_nan(
    column: str, values: list[float], fragment: str
) -> None:
    arrays: dict[str, Array] = {
        "n": np.array([1, 2]),
        "f": np.array([1.0, 2.0]),
        "s": texts(b"x", b"y"),
        "b": np.array([True, False]),
    }
    arrays[column] = np.array(values)
    fails(lambda: named(NULLABLE, arrays), fragment)


def test_named_column_type_errors() -> None:
    fails(
        lambda: named(NUMERIC, {"a": np.array(["1", "2"]), "b": np.ones(2)}),
        "inputs.a: expected integers, got strings",
    )
    fails(
        lambda: named(NUMERIC, {"a": np.array([2**63], dtype=np.uint64), "b": np.ones(1)}),
        "inputs.a: expected integers in the range of int64",
    )
    fails(
        lambda: named(NUMERIC, {"a": np.ones(2, dtype=bool), "b": np.ones(2)}),
        "inputs.a: expected integers, got booleans",
    )
    fails(
        lambda: named(NUMERIC, {"a": np.ones(2), "b": np.array([1.0, np.inf])}),
        "inputs.b: value at index [1] is inf",
    )
    fails(
        lambda: named(NUMERIC, {"a": texts(b"1", b"2"), "b": np.ones(2)}),
        "inputs.a: row 0 expected integers, got bytes",
    )


def test_non_utf8_bytes_in_a_string_column() -> None:
    arrays = {
        "age": np.array([1]),
        "income": np.array([1.0]),
        "plan": texts(b"\xc3\x28"),
        "active": np.array([True]),
    }
    fails(
        lambda: named(TABLE, arrays),
        "inputs.plan: expected UTF-8 encoded text, got bytes that are not UTF-8",
    )


def test_named_table_range_check() -> None:
    arrays = {
        "age": np.array([1, 500]),
        "income": np.array([1.0, 2.0]),
        "plan": texts(b"a", b"b"),
        "active": np.array([True, True]),
    }
    fails(
        lambda: named(TABLE, arrays),
        "inputs.age: row 1 has 500, outside the allowed range [0, 120]",
    )


# fuzzing: arbitrary JSON never escapes as another exception ---------------------------------

SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    255,
    256,
    2**31,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    10**400,
    -(10**400),
    10**5000,  # past Python's 4300-digit limit for int <-> str
    0.0,
    -0.0,
    0.5,
    2.0,
    1e20,
    1e39,
    1.7976931348623157e308,
    -1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "x",
    "1",
    "true",
    "h\u00e9llo",
    "\u2603",
]
KEYS = ["x", "a", "b", "age", "income", "plan", "active", "n", "f", "s", "", "other"]


def json_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth >= 4 or roll < 0.45:
        return rng.choice(SCALARS) if rng.random() < 0.8 else rng.uniform(-1e6, 1e6)
    if roll < 0.8:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = rng.sample(KEYS, rng.randint(0, 5))
    return {key: json_value(rng, depth + 1) for key in keys}


GOOD: dict[str, list[Any]] = {
    "bool": [True, False],
    "string": ["a", "", "h\u00e9"],
    "int64": [0, 1, 7, 2.0, -3],
    "uint8": [0, 1, 255, 2.0],
    "float32": [0, 1.5, -2, 1e10],
    "float64": [0, 1.5, -2, 1e300],
}


def scalar(rng: random.Random, dtype: str) -> Any:
    """Mostly a value of the right type, sometimes anything."""
    return rng.choice(GOOD[dtype]) if rng.random() < 0.97 else rng.choice(SCALARS)


def plausible_row(rng: random.Random, signature: Signature) -> Any:
    """A row that is nearly right, so the fuzz reaches the deeper checks."""
    if signature.kind == "tabular":
        values = [
            None if c.nullable and rng.random() < 0.2 else scalar(rng, c.dtype)
            for c in signature.columns
        ]
        if rng.random() < 0.5:
            return dict(zip(signature.input_names, values, strict=True))
        return values
    if len(signature.inputs) > 1:
        return {spec.name: plausible_tensor_row(rng, spec) for spec in signature.inputs}
    return plausible_tensor_row(rng, signature.inputs[0])


def plausible_tensor_row(rng: random.Random, spec: TensorSpec) -> Any:
    def build(shape: tuple[int, ...]) -> Any:
        if not shape:
            return scalar(rng, spec.dtype)
        size = shape[0] if shape[0] != -1 else rng.randint(1, 3)
        if rng.random() < 0.02:
            size += rng.choice([-1, 1])
        return [build(shape[1:]) for _ in range(max(size, 0))]

    return build(spec.shape[1:])


def instances(rng: random.Random, signature: Signature) -> Any:
    roll = rng.random()
    if roll < 0.1:
        return json_value(rng)
    count = rng.randint(0, 6)
    if roll < 0.3:
        return [json_value(rng) for _ in range(count)]
    return [
        plausible_row(rng, signature) if rng.random() < 0.97 else json_value(rng)
        for _ in range(count)
    ]


FUZZ_SIGNATURES = {
    "float32": FLOAT4,
    "int64": INT2,
    "uint8": UINT8,
    "bool": BOOL3,
    "string": TEXT2,
    "multi": MULTI,
    "tabular": TABLE,
    "nullable": NULLABLE,
}


def outcome(call: Callable[[], ModelInput], given: object) -> ModelInput | BerthError:
    """The decoded input or the domain error; any other exception fails the test."""
    try:
        return call()
    except (InvalidInput, PayloadTooLarge) as exc:
        return exc
    except Exception as exc:  # the defect the fuzz hunts for: it would be an HTTP 500
        try:
            shown = repr(given)
        except ValueError:  # an int of more than 4300 digits inside
            shown = "a value holding a huge integer"
        pytest.fail(f"{type(exc).__name__}: {exc} for {shown}")


@pytest.mark.parametrize("name", sorted(FUZZ_SIGNATURES))
def test_fuzz_decode_instances_raises_only_domain_errors(name: str) -> None:
    signature = FUZZ_SIGNATURES[name]
    rng = random.Random(f"berth-{name}")
    outcomes = {"ok": 0, "invalid": 0}
    for _ in range(3000):
        value = instances(rng, signature)
        single = rng.random() < 0.2
        call = partial(decode_instances, signature, value, "instances", 5, single=single)
        result = outcome(call, value)
        if isinstance(result, BerthError):
            assert result.message.startswith("instances"), result.message
            outcomes["invalid"] += 1
            continue
        outcomes["ok"] += 1
        assert isinstance(value, list)
        if isinstance(result, dict):
            assert all(len(array) == len(value) for array in result.values())
        else:
            assert len(result) == len(value)
    # the generator must reach both outcomes, or it tests nothing
    assert outcomes["ok"] > 20, outcomes
    assert outcomes["invalid"] > 20, outcomes


KINDS = {
    "float32": "float",
    "float64": "float",
    "int64": "int",
    "uint8": "int",
    "bool": "bool",
    "string": "bytes",
}


def random_array(rng: random.Random, shape: tuple[int, ...], dtype: str | None) -> Array:
    """An array of `shape`, mostly of the kind `dtype` asks for (None: any kind)."""
    size = math.prod(shape)
    kinds = ["float", "int", "uint", "bool", "bytes", "str", "mixed"]
    kind = KINDS[dtype] if dtype is not None and rng.random() < 0.8 else rng.choice(kinds)
    rare = rng.random() < 0.3  # then values outside the everyday ones may appear
    if kind == "float":
        pool: list[Any] = [0.0, 1.0, 0.5, -3.0]
        pool += [math.nan, math.inf, 1e39, 300.0, 2.5] if rare else []
        values = [rng.choice(pool) for _ in range(size)]
        with np.errstate(over="ignore"):  # 1e39 is inf as float32
            return np.array(values, dtype=rng.choice([np.float32, np.float64])).reshape(shape)
    if kind == "int":
        pool = [0, 1, 7] + ([-1, 255, 256, 2**40] if rare else [])
        values = [rng.choice(pool) for _ in range(size)]
        itype = np.int64 if rare else rng.choice([np.int64, np.int32, np.uint8])
        return np.array(values, dtype=itype).reshape(shape)
    if kind == "uint":
        pool = [0, 1, 2**63, 2**64 - 1]
        return np.array([rng.choice(pool) for _ in range(size)], dtype=np.uint64).reshape(shape)
    if kind == "bool":
        return np.array([rng.random() < 0.5 for _ in range(size)], dtype=bool).reshape(shape)
    if kind == "str":
        return np.array([rng.choice(["a", "1", ""]) for _ in range(size)], dtype=str).reshape(shape)
    pool = [b"a", b"1", b""] + ([b"\xff", "b"] if rare else [])
    if kind == "mixed":
        pool = [b"a", b"\xff", "b", None, 1, 2.5, math.nan, True]
    array = np.empty(size, dtype=object)
    array[:] = [rng.choice(pool) for _ in range(size)]
    return array.reshape(shape)


def input_shapes(signature: Signature, count: int) -> dict[str, tuple[tuple[int, ...], str]]:
    if signature.kind == "tabular":
        return {c.name: ((count,), c.dtype) for c in signature.columns}
    return {
        t.name: ((count, *(2 if d == -1 else d for d in t.shape[1:])), t.dtype)
        for t in signature.inputs
    }


@pytest.mark.parametrize("name", sorted(FUZZ_SIGNATURES))
def test_fuzz_decode_named_arrays_raises_only_domain_errors(name: str) -> None:
    signature = FUZZ_SIGNATURES[name]
    rng = random.Random(f"berth-arrays-{name}")
    names = [*signature.input_names, "input-0"]
    outcomes = {"ok": 0, "invalid": 0}
    for _ in range(1500):
        count = rng.choice([0, 1, 2, 3, 3, 7])
        if rng.random() < 0.8:  # one array per input of the right shape, as clients send them
            arrays = {
                key: random_array(rng, shape, dtype)
                for key, (shape, dtype) in input_shapes(signature, count).items()
            }
        else:
            arrays = {
                rng.choice(names): random_array(
                    rng, (count, rng.choice([1, 2, 3, 4]))[: rng.randint(0, 2)], None
                )
                for _ in range(rng.randint(0, len(names)))
            }
        result = outcome(partial(decode_named_arrays, signature, arrays, "inputs", 5), arrays)
        if isinstance(result, BerthError):
            assert result.message.startswith("inputs"), result.message
            outcomes["invalid"] += 1
            continue
        outcomes["ok"] += 1
    assert outcomes["ok"] > 20, outcomes
    assert outcomes["invalid"] > 20, outcomes
