"""Signatures: spec validation, JSON round trips, inference from samples, sample and file reading."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from berth.errors import InvalidInput
from berth.registry.csv_header import has_header
from berth.registry.signature import (
    COLUMN_DTYPES,
    TENSOR_DTYPES,
    ColumnSpec,
    Signature,
    TensorSpec,
    infer_from_array,
    infer_from_frame,
    infer_signature,
    load_signature_file,
    numpy_dtype_name,
    read_sample,
)

TENSOR = Signature(
    kind="tensor",
    inputs=(TensorSpec("image", "uint8", (-1, 28, 28)), TensorSpec("scale", "float32", (-1,))),
    outputs=(
        TensorSpec("predict", "int64", (-1,)),
        TensorSpec("predict_proba", "float32", (-1, 10)),
    ),
)
TABLE = Signature(
    kind="tabular",
    columns=(
        ColumnSpec("age", "int64", minimum=0, maximum=120),
        ColumnSpec("income", "float64", nullable=True, minimum=0.5),
        ColumnSpec("plan", "string", nullable=True),
        ColumnSpec("active", "bool"),
    ),
    outputs=(TensorSpec("predict", "int64", (-1,)),),
)
FRAME = pd.DataFrame(
    {"age": [30, 40], "income": [1.5, 2.5], "plan": ["basic", "pro"], "active": [True, False]}
)


def message(call: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the InvalidInput that `call(*args, **kwargs)` raises."""
    with pytest.raises(InvalidInput) as caught:
        call(*args, **kwargs)
    assert type(caught.value) is InvalidInput
    return caught.value.message


# specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
def test_every_tensor_dtype_is_accepted(dtype: str) -> None:
    assert TensorSpec("x", dtype, (-1, 3)).dtype == dtype


def test_unknown_tensor_dtype() -> None:
    text = message(TensorSpec, "x", "float8", (-1, 4))
    assert "tensor 'x': unknown dtype 'float8'" in text
    assert "float32" in text


@pytest.mark.parametrize("shape", [(), (0, 4), (-1, 0), (-2, 4), (-1, -3)])
def test_invalid_tensor_shape(shape: tuple[int, ...]) -> None:
    text = message(TensorSpec, "x", "float32", shape)
    assert f"tensor 'x': shape {list(shape)} is not valid" in text
    assert "-1 for any size" in text


@pytest.mark.parametrize("dtype", COLUMN_DTYPES)
def test_every_column_dtype_is_accepted(dtype: str) -> None:
    spec = ColumnSpec("c", dtype)
    assert spec.numeric == (dtype in ("int64", "float64"))
    assert spec.nullable is False


def test_unknown_column_dtype() -> None:
    text = message(ColumnSpec, "age", "int32")
    assert "column 'age': unknown dtype 'int32'" in text
    assert "bool, int64, float64, string" in text


def test_column_range_must_not_be_empty() -> None:
    text = message(ColumnSpec, "age", "int64", minimum=10, maximum=5)
    assert "column 'age': minimum 10 is greater than maximum 5" in text
    assert ColumnSpec("age", "int64", minimum=5, maximum=5).maximum == 5


def test_column_range_needs_a_numeric_column() -> None:
    text = message(ColumnSpec, "plan", "string", minimum=0)
    assert "column 'plan': minimum and maximum need a numeric dtype" in text
    assert "got string" in text


def test_column_range_bounds_are_not_nan() -> None:
    assert "got NaN" in message(ColumnSpec, "f", "float64", maximum=math.nan)


def test_signature_needs_inputs_or_columns() -> None:
    assert "tensor signature needs at least one input" in message(Signature, kind="tensor")
    assert "tabular signature needs at least one column" in message(Signature, kind="tabular")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "tabular", "columns": (ColumnSpec("a", "int64"), ColumnSpec("a", "float64"))},
        {
            "kind": "tensor",
            "inputs": (TensorSpec("a", "float32", (-1,)), TensorSpec("a", "int64", (-1,))),
        },
    ],
)
def test_duplicate_input_names(kwargs: dict[str, Any]) -> None:
    assert "duplicate input names: ['a', 'a']" in message(Signature, **kwargs)


def test_input_names_and_with_outputs() -> None:
    assert TABLE.input_names == ["age", "income", "plan", "active"]
    assert TENSOR.input_names == ["image", "scale"]
    outputs = (TensorSpec("y", "float64", (-1, 2)),)
    replaced = TABLE.with_outputs(outputs)
    assert replaced.outputs == outputs
    assert replaced.columns == TABLE.columns
    assert TABLE.outputs != outputs  # frozen: the original is unchanged


# JSON round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("signature", [TENSOR, TABLE], ids=["tensor", "tabular"])
def test_to_dict_from_dict_round_trip(signature: Signature) -> None:
    data = json.loads(json.dumps(signature.to_dict()))
    assert Signature.from_dict(data) == signature
    assert Signature.from_dict(data).to_dict() == data


def test_to_dict_layout() -> None:
    assert TENSOR.to_dict()["inputs"][0] == {
        "name": "image",
        "dtype": "uint8",
        "shape": [-1, 28, 28],
    }
    assert "columns" not in TENSOR.to_dict()
    columns = TABLE.to_dict()["columns"]
    assert columns[0] == {
        "name": "age",
        "dtype": "int64",
        "nullable": False,
        "minimum": 0,
        "maximum": 120,
    }
    assert columns[2] == {"name": "plan", "dtype": "string", "nullable": True}  # no bounds
    assert TABLE.to_dict()["kind"] == "tabular"
    assert "inputs" not in TABLE.to_dict()


def test_from_dict_defaults() -> None:
    signature = Signature.from_dict({"columns": [{"name": "a", "dtype": "float64"}]})
    assert signature.kind == "tabular"
    assert signature.columns == (ColumnSpec("a", "float64"),)
    assert signature.outputs == ()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "missing key 'inputs'"),
        ({"inputs": "x"}, "'inputs' must be a list, got str"),
        ({"inputs": [{"name": "x", "dtype": "float32"}]}, "'shape'"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": "12"}]}, "'shape' must be a list"),
        (
            {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1.5]}]},
            "'shape' must hold integers",
        ),
        (
            {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, True]}]},
            "'shape' must hold integers",
        ),
        (
            {"inputs": [{"name": "x", "dtype": "float32", "shape": [None]}]},
            "'shape' must hold integers",
        ),
        ({"inputs": ["x"]}, "signature JSON is not valid"),
        ({"inputs": [["x", "float32", [-1]]]}, "signature JSON is not valid"),
        ({"columns": [{"name": "a"}]}, "missing key 'dtype'"),
        ({"columns": {"name": "a", "dtype": "int64"}}, "'columns' must be a list, got dict"),
        (
            {"columns": [{"name": "a", "dtype": "int64", "nullable": "false"}]},
            "'nullable' must be true or false, got 'false'",
        ),
        (
            {"columns": [{"name": "a", "dtype": "int64", "minimum": "0"}]},
            "'minimum' must be a number, got '0'",
        ),
        (
            {"columns": [{"name": "a", "dtype": "int64", "maximum": True}]},
            "'maximum' must be a number, got True",
        ),
        (
            {"columns": [{"name": "a", "dtype": "float64", "maximum": 10**400}]},
            "signature JSON is not valid",
        ),
        (
            {"columns": [{"name": "a", "dtype": "int64"}], "outputs": 5},
            "'outputs' must be a list, got int",
        ),
        (
            {"columns": [{"name": "a", "dtype": "int64"}], "outputs": [{"name": "y"}]},
            "missing key 'shape'",
        ),
    ],
)
def test_from_dict_rejects_wrong_structure(data: dict[str, Any], fragment: str) -> None:
    text = message(Signature.from_dict, data)
    assert fragment in text
    assert "signature JSON is not valid" in text
    assert '{"columns": [{"name", "dtype"}, ...]}' in text  # says what was expected


def test_from_dict_passes_spec_errors_through() -> None:
    assert "unknown dtype 'int32'" in message(
        Signature.from_dict, {"columns": [{"name": "a", "dtype": "int32"}]}
    )
    assert "minimum 3 is greater than maximum 1" in message(
        Signature.from_dict,
        {"columns": [{"name": "a", "dtype": "int64", "minimum": 3, "maximum": 1}]},
    )


def test_from_dict_of_a_non_object() -> None:
    assert "signature JSON is not valid" in message(Signature.from_dict, ["inputs"])


# inference -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (np.float32, "float32"),
        (np.float64, "float64"),
        (np.int8, "int8"),
        (np.uint16, "uint16"),
        (np.bool_, "bool"),
        (np.str_, "string"),
        (np.bytes_, "string"),
        (object, "string"),
    ],
)
def test_numpy_dtype_name(dtype: Any, name: str) -> None:
    assert numpy_dtype_name(np.dtype(dtype)) == name


@pytest.mark.parametrize("dtype", [np.complex128, "datetime64[ns]", [("a", "f4")]])
def test_unsupported_numpy_dtypes(dtype: Any) -> None:
    text = message(numpy_dtype_name, np.dtype(dtype))
    assert f"arrays of dtype {np.dtype(dtype).name} are not supported" in text


def test_infer_from_array() -> None:
    signature = infer_from_array(np.zeros((20, 4), dtype=np.float32))
    assert signature.kind == "tensor"
    assert signature.inputs == (TensorSpec("input", "float32", (-1, 4)),)
    assert infer_from_array(np.zeros((2, 28, 28), np.uint8), "image").inputs == (
        TensorSpec("image", "uint8", (-1, 28, 28)),
    )
    assert infer_from_array(np.array([1, 2])).inputs[0].shape == (-1,)
    assert infer_from_array(np.array([["a", "b"]])).inputs[0].dtype == "string"


def test_infer_from_array_needs_a_batch_axis() -> None:
    assert "must have a batch axis" in message(infer_from_array, np.float32(1.0))
    assert "complex128" in message(infer_from_array, np.zeros((2, 2), dtype=complex))


def test_infer_from_frame_dtypes_and_nullability() -> None:
    frame = pd.DataFrame(
        {
            "int": [1, 2, 3],
            "float": [1.5, np.nan, 2.0],
            "bool": [True, False, True],
            "text": ["a", None, "c"],
            "full_text": ["a", "b", "c"],
            "small_int": np.array([1, 2, 3], dtype=np.uint8),
            "f32": np.array([1, 2, 3], dtype=np.float32),
            "nullable_int": pd.array([1, None, 3], dtype="Int64"),
            "nullable_bool": pd.array([True, None, False], dtype="boolean"),
            "bool_with_gaps": pd.Series([True, None, False], dtype=object),
            "category": pd.Categorical(["x", "y", "x"]),
        }
    )
    signature = infer_from_frame(frame)
    assert signature.kind == "tabular"
    found = {c.name: (c.dtype, c.nullable) for c in signature.columns}
    assert found == {
        "int": ("int64", False),
        "float": ("float64", True),
        "bool": ("bool", False),
        "text": ("string", True),
        "full_text": ("string", False),
        "small_int": ("int64", False),
        "f32": ("float64", False),
        "nullable_int": ("int64", True),
        "nullable_bool": ("bool", True),
        "bool_with_gaps": ("bool", True),
        "category": ("string", False),
    }
    assert all(c.minimum is None and c.maximum is None for c in signature.columns)


def test_infer_from_frame_names_are_strings() -> None:
    signature = infer_from_frame(pd.DataFrame({0: [1.0], 1: [2.0]}))
    assert signature.input_names == ["0", "1"]


def test_infer_from_frame_refuses_duplicate_and_missing_columns() -> None:
    duplicate = pd.DataFrame([[1, 2]], columns=["a", "a"])
    assert "duplicate column names ['a']" in message(infer_from_frame, duplicate)
    assert "duplicate column names ['1']" in message(
        infer_from_frame, pd.DataFrame([[1, 2]], columns=[1, "1"])
    )
    assert "at least one column" in message(infer_from_frame, pd.DataFrame())


def test_infer_signature_dispatches_on_the_sample_type() -> None:
    assert infer_signature(FRAME).kind == "tabular"
    assert infer_signature(np.zeros((1, 2))).kind == "tensor"


# sample files ------------------------------------------------------------------------------


def test_read_npy(tmp_path: Path) -> None:
    path = tmp_path / "sample.npy"
    np.save(path, np.arange(6, dtype=np.float32).reshape(3, 2))
    sample = read_sample(path)
    assert isinstance(sample, np.ndarray)
    assert sample.dtype == np.float32
    assert sample.tolist() == [[0, 1], [2, 3], [4, 5]]


def write_table(path: Path, frame: pd.DataFrame) -> None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict("records")))
    else:
        frame.to_json(path, orient="records", lines=True)


@pytest.mark.parametrize(
    "name", ["s.csv", "s.CSV", "s.parquet", "s.pq", "s.json", "s.jsonl", "s.ndjson"]
)
def test_read_tables(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_table(path, FRAME)
    sample = read_sample(path)
    assert isinstance(sample, pd.DataFrame)
    assert list(sample.columns) == list(FRAME.columns)
    assert sample["age"].tolist() == [30, 40]
    assert sample["plan"].tolist() == ["basic", "pro"]
    found = {c.name: c.dtype for c in infer_from_frame(sample).columns}
    assert found == {"age": "int64", "income": "float64", "plan": "string", "active": "bool"}


def test_read_json_of_columns(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"a": [1, 2], "b": ["x", None]}))
    sample = read_sample(path)
    assert isinstance(sample, pd.DataFrame)
    found = {c.name: (c.dtype, c.nullable) for c in infer_from_frame(sample).columns}
    assert found == {"a": ("int64", False), "b": ("string", True)}


def test_read_csv_bool_column_with_gaps(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("flag,n\nTrue,1\n,2\nFalse,3\n")
    sample = read_sample(path)
    assert isinstance(sample, pd.DataFrame)
    assert infer_from_frame(sample).columns[0] == ColumnSpec("flag", "bool", nullable=True)


def test_csv_without_header_row_keeps_its_first_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("5.1,3.5\n4.9,3.0\n")
    positional = read_sample(path)
    assert isinstance(positional, pd.DataFrame)
    assert list(positional.columns) == ["0", "1"]
    assert positional.to_numpy().tolist() == [[5.1, 3.5], [4.9, 3.0]]
    named = read_sample(path, ["sepal_length", "sepal_width"])
    assert isinstance(named, pd.DataFrame)
    assert list(named.columns) == ["sepal_length", "sepal_width"]
    assert len(named) == 2
    text = message(read_sample, path, ["a", "b", "c"])
    assert "has no header row (its first line, 5.1,3.5, holds values) and 2 columns" in text
    assert "takes 3: a, b, c; add a first line with the column names" in text


def test_csv_header_rows_are_still_headers(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n")
    assert list(read_sample(path, ["a", "b"]).columns) == ["a", "b"]
    # What pandas writes for a frame of an array, with or without its index: a header.
    path.write_text("0,1\n7,8\n")
    assert read_sample(path).to_numpy().tolist() == [[7, 8]]
    path.write_text(",0,1\n0,7,8\n")
    assert len(read_sample(path)) == 1


@pytest.mark.parametrize(
    ("row", "names", "header"),
    [
        (["sepal_length", "species"], None, True),
        (["5.1", "3.5"], None, False),
        (["5.1", "", "-2e3"], None, False),  # a gap is a missing value
        (["0", "1", "2"], None, True),
        (["", "0", "1"], None, True),
        (["nan", "inf"], None, True),
        # Text and numbers: data when the known names share none of its cells.
        (["3", "basic"], ["tenure", "plan"], False),
        (["3", "basic"], None, True),
        (["tenure", "3"], ["tenure", "plan"], True),
        (["3", "basic", "x"], ["tenure", "plan"], True),
        (["2019", "2020"], ["2019", "2020"], True),  # numbers, but the model's column names
        (["2019", "2020"], None, False),
        ([], None, True),
    ],
)
def test_has_header(row: list[str], names: list[str] | None, header: bool) -> None:
    assert has_header(row, names) is header


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "sample.txt"
    path.write_text("a,b\n1,2\n")
    text = message(read_sample, path)
    assert "has an unknown extension" in text
    assert ".csv, .parquet, .json, .jsonl or .npy" in text


def test_missing_sample_file(tmp_path: Path) -> None:
    text = message(read_sample, tmp_path / "nope.csv")
    assert "nope.csv does not exist" in text


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.npy", b"not an array"),
        ("short.npy", b"\x93NUMPY\x01\x00v\x00{'descr'"),
        ("bad.parquet", b"PAR1 nope"),
        ("bad.csv", b"\xff\xfe\x00bad"),
        ("empty.csv", b""),
        ("bad.json", b"{not json"),
        ("scalar.json", b"5"),
        ("flat.json", b'{"a": 1}'),
        ("mixed.json", b'[{"a": 1}, 5]'),
        ("latin1.json", b'[{"a": "\xe9"}]'),
        ("bad.jsonl", b"{nope"),
    ],
)
def test_unreadable_samples(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert f"could not read sample file {path}" in message(read_sample, path)


def test_object_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "could not read sample file" in message(read_sample, path)


def test_directory_as_sample(tmp_path: Path) -> None:
    path = tmp_path / "folder.csv"
    path.mkdir()
    assert "could not read sample file" in message(read_sample, path)


# signature files ---------------------------------------------------------------------------


def test_load_signature_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "signature.json"
    path.write_text(json.dumps(TABLE.to_dict()))
    assert load_signature_file(path) == TABLE


def test_load_signature_file_with_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "signature.json"
    path.write_text('{"columns": [')
    text = message(load_signature_file, path)
    assert f"could not read signature file {path}" in text


def test_load_signature_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "signature.json"
    path.write_bytes(b'{"columns": [{"name": "\xe9", "dtype": "int64"}]}')
    assert "could not read signature file" in message(load_signature_file, path)


def test_load_missing_signature_file(tmp_path: Path) -> None:
    assert "could not read signature file" in message(load_signature_file, tmp_path / "nope.json")


@pytest.mark.parametrize("content", ["[]", "5", '"columns"', "null"])
def test_load_signature_file_needs_an_object(tmp_path: Path, content: str) -> None:
    path = tmp_path / "signature.json"
    path.write_text(content)
    assert f"signature file {path} must hold a JSON object" in message(load_signature_file, path)


def test_load_signature_file_with_wrong_structure(tmp_path: Path) -> None:
    path = tmp_path / "signature.json"
    path.write_text(json.dumps({"cols": [{"name": "a", "dtype": "int64"}]}))
    text = message(load_signature_file, path)
    assert "signature JSON is not valid" in text
    assert '{"inputs": [{"name", "dtype", "shape"}, ...]}' in text
    path.write_text(json.dumps({"columns": [{"name": "a", "dtype": "int64", "nullable": "no"}]}))
    assert "'nullable' must be true or false, got 'no'" in message(load_signature_file, path)
