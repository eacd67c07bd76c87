"""Turn request data into model input, checked against the version's signature.

Every rule names the field, what was expected and what came, so a caller can fix the request.
Checks run on whole numpy arrays (one pass per column or tensor), not per element in Python,
except the type scan of JSON values, which is needed to tell `1` from `"1"` and `true`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from berth.errors import InvalidInput, PayloadTooLarge
from berth.registry.signature import ColumnSpec, Signature, TensorSpec
from berth.runtimes.base import ModelInput
from berth.serving.json_preview import preview

if TYPE_CHECKING:  # imported where a table is met (berth.frames)
    import pandas as pd

Array = np.ndarray[Any, Any]

_NUMERIC_KINDS = "iuf"
_NUMBER_TYPES = (int, float, np.integer, np.floating)


# limits ------------------------------------------------------------------------------------


def check_rows(count: int, limit: int, field: str) -> None:
    if count == 0:
        raise InvalidInput(f"{field}: the request holds no rows; send at least one instance")
    if count > limit:
        raise PayloadTooLarge(
            f"{field}: the request holds {count} rows, more than the limit of {limit}; "
            "split it into smaller requests (or raise BERTH_MAX_BATCH_ROWS)"
        )


# tensors -----------------------------------------------------------------------------------


def validate_tensor(spec: TensorSpec, array: Array, field: str) -> Array:
    """Check shape, type and finiteness of one tensor (batch axis first) and cast it."""
    _check_shape(spec, array.shape, field)
    return _cast(spec.dtype, array, field)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], field: str) -> None:
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"{field}: expected {len(spec.shape)}-dimensional data of shape {_shape(spec.shape)}, "
            f"got shape {list(shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if want != -1 and want != got:
            what = "values per row" if axis == 1 and len(shape) == 2 else f"entries on axis {axis}"
            raise InvalidInput(f"{field}: expected {want} {what}, got {got}")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("any" if d == -1 else str(d) for d in shape) + "]"


def _cast(dtype: str, array: Array, field: str) -> Array:
    kind = array.dtype.kind
    if kind in "cmMV":
        raise InvalidInput(f"{field}: values of type {array.dtype} are not accepted; send numbers")
    if dtype == "string":
        if kind not in "USO":
            raise InvalidInput(f"{field}: expected strings, got {_kind_name(kind)}")
        text = _text(array, field)
        if kind != "U":
            _check_all_text(text, field)
        return text
    if kind in "USO":
        raise InvalidInput(f"{field}: expected {_type_name(dtype)}, got {_kind_name(kind)}")
    if dtype == "bool":
        if kind != "b":
            raise InvalidInput(f"{field}: expected booleans (true/false), got {_kind_name(kind)}")
        return array
    if kind == "b":
        raise InvalidInput(f"{field}: expected {_type_name(dtype)}, got booleans")
    if np.dtype(dtype).kind in "iu" and kind == "f" and not _integral(array):
        raise InvalidInput(f"{field}: expected integers, got {_first_fraction(array)}")
    if kind == "f":
        _check_finite(array, field)
    target = np.dtype(dtype)
    if target.kind in "iu":
        _check_int_range(target, array, field)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(target, casting="unsafe", copy=False)
    if target.kind == "f" and not np.all(np.isfinite(cast)):
        where = _index(array.shape, int(np.argmin(np.isfinite(cast).ravel())))
        raise InvalidInput(
            f"{field}: value at index {where} is {array[tuple(where)]}, too large for {dtype}"
        )
    return cast


def _index(shape: tuple[int, ...], flat: int) -> list[int]:
    return [int(i) for i in np.unravel_index(flat, shape)]


def _check_int_range(target: np.dtype[Any], array: Array, field: str) -> None:
    """Integer casts wrap silently in numpy (300 -> 44 as uint8): refuse values out of range."""
    if array.size == 0:
        return
    info = np.iinfo(target)
    low, high = _python(array.min()), _python(array.max())  # Python numbers compare exactly
    if info.min <= low and high <= info.max:
        return
    flat = array.ravel().tolist()
    bad = next(i for i, v in enumerate(flat) if not info.min <= v <= info.max)
    raise InvalidInput(
        f"{field}: expected integers in the range of {target.name} [{info.min}, {info.max}], "
        f"got {_json_value(flat[bad])} at index {_index(array.shape, bad)}"
    )


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _check_all_text(array: Array, field: str) -> None:
    flat = array.ravel()
    bad = next((i for i, v in enumerate(flat) if not isinstance(v, str)), None)
    if bad is not None:
        raise InvalidInput(
            f"{field}: expected strings, got {json_type(flat[bad])} at index "
            f"{_index(array.shape, bad)}"
        )


def _text(array: Array, field: str) -> Array:
    """Strings as str objects: binary protocols (OIP BYTES) deliver UTF-8 bytes."""
    flat = array.ravel()
    if array.dtype.kind == "U" or not any(isinstance(v, bytes) for v in flat):
        return array.astype(object)
    try:
        decoded = [v.decode() if isinstance(v, bytes) else v for v in flat]
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{field}: expected UTF-8 encoded text, got bytes that are not UTF-8 ({exc})"
        ) from exc
    return np.array(decoded, dtype=object).reshape(array.shape)


def _integral(array: Array) -> bool:
    return bool(np.all(np.isfinite(array)) and np.all(np.mod(array, 1) == 0))


def _check_finite(array: Array, field: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        where = np.argwhere(~finite)[0].tolist()
        raise InvalidInput(
            f"{field}: value at index {where} is {array[tuple(where)]}; NaN and infinity are "
            "not accepted, send finite numbers"
        )


def _first_fraction(array: Array) -> str:
    flat = array.ravel()
    bad = flat[~np.isfinite(flat) | (np.mod(np.nan_to_num(flat), 1) != 0)]
    return f"a non-integer value ({bad[0]})" if len(bad) else "non-integer values"


def _type_name(dtype: str) -> str:
    if dtype == "bool":
        return "booleans"
    if dtype == "string":
        return "strings"
    return "integers" if np.dtype(dtype).kind in "iu" else "numbers"


def _kind_name(kind: str) -> str:
    return {
        "U": "strings",
        "S": "bytes",
        "O": "mixed or nested values",
        "b": "booleans",
        "f": "numbers",
        "i": "integers",
        "u": "integers",
    }.get(kind, f"values of kind {kind}")


_RAGGED = "rows have different lengths or nesting; every row must have the same shape"


def json_array(values: Any, field: str, dtype: str) -> Array:
    """A numpy array from JSON lists; ragged or mixed data is a clear error, not a crash.

    The leaves are scanned for their JSON type first: numpy would silently turn `[1, true]`
    into `[1, 1]` and `[1, "a"]` into strings. `dtype` (the spec's) only words the errors.
    """
    try:
        objects = np.asarray(values, dtype=object)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{field}: {_RAGGED}") from exc
    flat = objects.reshape(-1)
    types = set(map(type, flat))
    if list in types or tuple in types:
        raise InvalidInput(f"{field}: {_RAGGED}")
    categories = {_category(t) for t in types}
    if not categories:
        return objects.astype(np.float64)
    if categories == {"booleans"}:
        return objects.astype(bool)
    if categories == {"strings"}:
        if dtype != "string":
            raise InvalidInput(f"{field}: expected {_type_name(dtype)}, got strings")
        return objects  # str objects: a numpy unicode array would drop trailing "\x00"s
    if categories == {"numbers"}:
        return _json_numbers(objects, field, dtype, ints=types <= {int})
    expected = "numbers" if _type_name(dtype) == "integers" else _type_name(dtype)
    bad = next(i for i, v in enumerate(flat) if _category(type(v)) != expected)
    value, where = flat[bad], _index(objects.shape, bad)
    shown = f"at index {where}" if value is None else f"({_json_value(value)} at index {where})"
    raise InvalidInput(
        f"{field}: expected {_type_name(dtype)}, got {_category(type(value))} {shown}"
    )


def _category(kind: type) -> str:
    if kind is bool or kind is np.bool_:
        return "booleans"
    if issubclass(kind, int | float | np.integer | np.floating):
        return "numbers"
    if issubclass(kind, str):
        return "strings"
    if kind is type(None):
        return "null"
    if issubclass(kind, Mapping):
        return "objects"
    return kind.__name__


def _json_numbers(objects: Array, field: str, dtype: str, ints: bool) -> Array:
    """JSON numbers as int64 (uint64 beyond it), float64 when any is a float or too large."""
    targets = (np.int64, np.uint64) if ints else ()
    for target in targets:
        try:
            return objects.astype(target)
        except OverflowError:
            continue
    if ints and dtype != "string" and np.dtype(dtype).kind in "iu":
        # beyond 64 bits: as floats they would round into range (-(2**63) - 1 -> -(2**63))
        _check_int_range(np.dtype(dtype), objects, field)
    try:
        return objects.astype(np.float64)
    except OverflowError:
        pass
    flat = objects.reshape(-1)
    bad = next(i for i, v in enumerate(flat) if isinstance(v, int) and abs(v) > sys.float_info.max)
    raise InvalidInput(
        f"{field}: expected numbers that fit a 64-bit float, got {_json_value(flat[bad])} "
        f"at index {_index(objects.shape, bad)}"
    )


def _json_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list | tuple | Mapping):
        return preview(value, 40)  # repr recurses: a deeply nested value would raise
    try:
        text = repr(value)
    except ValueError:  # Python refuses to print ints of more than 4300 digits, even nested
        return "[...]" if isinstance(value, list) else "{...}" if isinstance(value, dict) else "..."
    return text if len(text) <= 40 else text[:37] + "..."


def _row_label(field: str, index: int, single: bool) -> str:
    return field if single else f"{field}[{index}]"


def decode_tensor_rows(
    signature: Signature, instances: Sequence[Any], field: str, single: bool = False
) -> ModelInput:
    """v1 instances for a tensor signature: rows for one input, objects for several."""
    if len(signature.inputs) == 1:
        spec = signature.inputs[0]
        rows = float_rows(spec, instances)
        if rows is not None:
            return rows
        return validate_tensor(spec, json_array(instances, field, spec.dtype), field)
    names = signature.input_names
    for index, row in enumerate(instances):
        where = _row_label(field, index, single)
        if not isinstance(row, Mapping):
            raise InvalidInput(
                f"{where}: expected an object with inputs {names}, got {json_type(row)}"
            )
        missing = [n for n in names if n not in row]
        if missing:
            raise InvalidInput(
                f"{where}: expected an object with inputs {names}, missing '{missing[0]}'"
            )
        unknown = [k for k in row if k not in names]
        if unknown:
            raise InvalidInput(f"{where}: unknown input {unknown[0]!r}; expected inputs {names}")
    arrays: dict[str, Array] = {}
    for spec in signature.inputs:
        values = [row[spec.name] for row in instances]
        name = f"{field}.{spec.name}"
        arrays[spec.name] = validate_tensor(spec, json_array(values, name, spec.dtype), name)
    return arrays


_FLOAT_LIMITS = {"float32": float(np.finfo(np.float32).max), "float64": sys.float_info.max}
_EXACT_INT = 2**53
"""Beyond it a JSON integer takes the integer path's rounding (int64, then float), not this one's."""


def float_rows(spec: TensorSpec, instances: Sequence[Any]) -> Array | None:
    """The request almost every tabular tensor model gets, rows of JSON numbers for a float
    matrix, checked and cast in one pass over the Python values.

    For a few values numpy's per-call costs were most of a request's decoding (an object array,
    a type scan, a finiteness check and a cast: 65 us for one row of four). The result is the
    array the general path (`json_array`, then `validate_tensor`) returns, bit for bit; None
    for anything else (another shape or dtype, a string, a boolean, NaN, infinity, a value
    beyond the dtype's range, an integer beyond 2**53, ragged rows), which the general path
    then takes, and words its error."""
    limit = _FLOAT_LIMITS.get(spec.dtype)
    if limit is None or len(spec.shape) != 2 or not instances:
        return None
    if spec.shape[0] not in (-1, len(instances)):
        return None
    width = spec.shape[1]
    if width == -1:
        first = instances[0]
        width = len(first) if type(first) is list else -1
    for row in instances:
        if type(row) is not list or len(row) != width:
            return None
        for value in row:
            kind = type(value)
            if kind is float:
                if not -limit <= value <= limit:  # NaN compares false
                    return None
            elif kind is not int or not -_EXACT_INT <= value <= _EXACT_INT:
                return None
    return np.array(instances, dtype=spec.dtype)


# tables ------------------------------------------------------------------------------------


def decode_table_rows(
    signature: Signature, instances: Sequence[Any], field: str, single: bool = False
) -> pd.DataFrame:
    """v1 instances for a tabular signature: objects of column values, or lists in column order."""
    names = signature.input_names
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, row in enumerate(instances):
        where = _row_label(field, index, single)
        if isinstance(row, Mapping):
            _check_keys(row, names, where)
            for name in names:
                columns[name].append(row.get(name))
        elif isinstance(row, list | tuple):
            if len(row) != len(names):
                raise InvalidInput(
                    f"{where}: expected {len(names)} values in column order {names}, got {len(row)}"
                )
            for name, value in zip(names, row, strict=True):
                columns[name].append(value)
        else:
            raise InvalidInput(
                f"{where}: expected an object of column values, got {json_type(row)}"
            )
    # fromiter keeps a list value as one element: asarray would make it an extra axis
    arrays = {
        name: np.fromiter(values, dtype=object, count=len(values))
        for name, values in columns.items()
    }
    return validate_columns(signature, arrays, field)


def _check_keys(row: Mapping[str, Any], names: list[str], where: str) -> None:
    unknown = [k for k in row if k not in names]
    if unknown:
        raise InvalidInput(f"{where}: unknown column {unknown[0]!r}; expected columns {names}")
    missing = [n for n in names if n not in row]
    if missing:
        raise InvalidInput(f"{where}: missing column {missing[0]!r}; expected columns {names}")


def validate_columns(signature: Signature, arrays: Mapping[str, Array], field: str) -> pd.DataFrame:
    """Check each column of a table (object arrays from JSON, or typed arrays) and build a frame."""
    import pandas as pd

    data = {}
    for spec in signature.columns:
        if spec.name not in arrays:
            raise InvalidInput(
                f"{field}: missing column {spec.name!r}; expected columns {signature.input_names}"
            )
        data[spec.name] = _column(spec, arrays[spec.name], f"{field}.{spec.name}")
    unknown = [name for name in arrays if name not in data]
    if unknown:
        raise InvalidInput(
            f"{field}: unknown column {unknown[0]!r}; expected columns {signature.input_names}"
        )
    return pd.DataFrame(data, copy=False)


def _column(spec: ColumnSpec, values: Array, field: str) -> Array | pd.Series[Any]:
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise InvalidInput(f"{field}: expected one value per row, got shape {list(values.shape)}")
    if spec.dtype == "string" and values.dtype.kind in "OS":
        values = _text(values, field)
    nulls = _nulls(values)
    if nulls.any() and not spec.nullable:
        row = int(np.argmax(nulls))
        raise InvalidInput(
            f"{field}: row {row} is null or NaN, but the column is not nullable; send a value"
        )
    if values.dtype.kind == "O":
        _check_json_types(spec, values, nulls, field)
    elif nulls.any():  # only float arrays hold nulls (NaN): check the values around them
        _cast(spec.dtype, np.where(nulls, 0.0, values), field)
    else:
        values = _cast(spec.dtype, values, field)
    column = _typed(spec, values, nulls, field)
    if spec.numeric:
        _check_range(spec, column, field)
    return column


def _nulls(values: Array) -> Array:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.fromiter((v is None or v != v for v in values), dtype=bool, count=len(values))
    return np.zeros(len(values), dtype=bool)


_EXACT_TYPES: dict[str, set[type]] = {
    "string": {str},
    "bool": {bool, np.bool_},
    "int64": set(),  # ints need a range check, floats an integrality check: see _fits
    "float64": {float, np.float64},
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_json_types(spec: ColumnSpec, values: Array, nulls: Array, field: str) -> None:
    present = values[~nulls]
    types = {type(v) for v in present}
    if types <= _EXACT_TYPES[spec.dtype]:
        return
    if (
        spec.dtype == "int64"
        and types == {int}
        and _INT64_MIN <= min(present) <= max(present) <= _INT64_MAX
    ):
        return
    bad = next((i for i, v in enumerate(values) if not nulls[i] and not _fits(spec.dtype, v)), None)
    if bad is None:
        return
    value = values[bad]
    if _is_number(value) and spec.numeric:
        if spec.dtype == "int64" and not _integral_value(value):
            got = f"a number {value!r}"
        else:
            raise InvalidInput(
                f"{field}: row {bad} has {_json_value(value)}, outside the range of "
                f"{spec.dtype}; expected {_type_name(spec.dtype)} that fit {spec.dtype}"
            )
    else:
        got = f"{json_type(value)} {_json_value(value)}"
    raise InvalidInput(f"{field}: row {bad} expected {_type_name(spec.dtype)}, got {got}")


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool | np.bool_)


def _integral_value(value: Any) -> bool:
    if isinstance(value, int | np.integer):
        return True
    return math.isfinite(value) and float(value).is_integer()


def _fits(dtype: str, value: Any) -> bool:
    if dtype == "string":
        return isinstance(value, str)
    if dtype == "bool":
        return isinstance(value, bool | np.bool_)
    if not _is_number(value):
        return False
    if dtype == "int64":
        # Python compares ints and floats exactly, so 2.0**63 is out and 2**63 - 1 is in
        return _integral_value(value) and _INT64_MIN <= value <= _INT64_MAX
    # float64: ints beyond the largest float do not convert; inf/NaN are found later
    return not isinstance(value, int | np.integer) or abs(int(value)) <= sys.float_info.max


def _typed(spec: ColumnSpec, values: Array, nulls: Array, field: str) -> Array | pd.Series[Any]:
    import pandas as pd

    if spec.dtype == "string":
        return values.astype(object)
    if spec.dtype == "bool":
        return values.astype(bool) if not nulls.any() else pd.Series(values, dtype="boolean")
    if spec.dtype == "int64":
        if not nulls.any():
            return values.astype(np.int64)
        # Nullable integers stay exact (float64 would round past 2**53): pandas' Int64 with NA.
        exact = [None if null else value for null, value in zip(nulls, values, strict=True)]
        return pd.Series(exact, dtype="Int64")
    column = np.where(nulls, np.nan, values).astype(np.float64)
    infinite = ~nulls & ~np.isfinite(column)
    if infinite.any():
        row = int(np.argmax(infinite))
        raise InvalidInput(
            f"{field}: row {row} is {column[row]}; NaN and infinity are not accepted, "
            "send finite numbers"
        )
    return column


def _check_range(spec: ColumnSpec, column: Array | pd.Series[Any], field: str) -> None:
    if spec.minimum is None and spec.maximum is None:
        return
    values = np.asarray(column, dtype=np.float64)
    low = -np.inf if spec.minimum is None else spec.minimum
    high = np.inf if spec.maximum is None else spec.maximum
    bad = (values < low) | (values > high)  # NaN (a null) compares False: nulls pass
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInput(
            f"{field}: row {row} has {values[row]:g}, outside the allowed range "
            f"[{_bound(spec.minimum)}, {_bound(spec.maximum)}]"
        )


def _bound(value: float | None) -> str:
    return "any" if value is None else f"{value:g}"


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


FEATURES_EXAMPLE = '{"features": [5.1, 3.5, 1.4, 0.2]} or {"features": {"age": 42, "plan": "pro"}}'


def features_row(value: Any) -> list[Any]:
    """A v1 `features` value as the one row it holds (`berth serve` and `berth predict` alike)."""
    if not isinstance(value, list | dict):
        raise InvalidInput(
            "features: expected a list or an object of column values; send e.g. " + FEATURES_EXAMPLE
        )
    return [value]


def decode_instances(
    signature: Signature, instances: Any, field: str, max_rows: int, single: bool = False
) -> ModelInput:
    """v1 `instances` (a list of rows) into validated model input."""
    if not isinstance(instances, list):
        raise InvalidInput(f"{field}: expected a list of rows, got {json_type(instances)}")
    check_rows(len(instances), max_rows, field)
    if signature.kind == "tabular":
        return decode_table_rows(signature, instances, field, single)
    return decode_tensor_rows(signature, instances, field, single)


def instances_decoder(
    instances: Any, field: str, max_rows: int, single: bool = False
) -> Callable[[Signature], ModelInput]:
    """`decode_instances` for these rows, against the signature of whichever version answers
    (a dataplane decoder); `single`: one row, unindexed."""
    return partial(
        decode_instances, instances=instances, field=field, max_rows=max_rows, single=single
    )


def decode_named_arrays(
    signature: Signature, arrays: Mapping[str, Array], field: str, max_rows: int
) -> ModelInput:
    """Named arrays (Open Inference Protocol inputs) into validated model input.

    A tabular signature takes one array per column ([n] or [n, 1]), or one [n, columns] array
    whose columns are in signature order. A tensor signature with one input takes the single
    array whatever its name, so clients that call it `input-0` work unchanged.
    """
    if not arrays:
        raise InvalidInput(f"{field}: no inputs given; expected {signature.input_names}")
    if signature.kind == "tabular":
        arrays = _split_matrix(signature, arrays)
        _check_same_rows(arrays, field, max_rows)
        return validate_columns(signature, arrays, field)
    _check_same_rows(arrays, field, max_rows)
    if len(signature.inputs) == 1 and len(arrays) == 1:
        spec = signature.inputs[0]
        name, array = next(iter(arrays.items()))
        return validate_tensor(spec, array, f"{field}.{name}")
    decoded: dict[str, Array] = {}
    for spec in signature.inputs:
        if spec.name not in arrays:
            raise InvalidInput(
                f"{field}: missing input {spec.name!r}; expected {signature.input_names}"
            )
        decoded[spec.name] = validate_tensor(spec, arrays[spec.name], f"{field}.{spec.name}")
    unknown = [n for n in arrays if n not in decoded]
    if unknown:
        raise InvalidInput(
            f"{field}: unknown input {unknown[0]!r}; expected {signature.input_names}"
        )
    return decoded


def _split_matrix(signature: Signature, arrays: Mapping[str, Array]) -> Mapping[str, Array]:
    if len(arrays) != 1:
        return arrays
    name, array = next(iter(arrays.items()))
    names = signature.input_names
    if name in names or array.ndim != 2 or array.shape[1] != len(names):
        return arrays
    return {column: array[:, i] for i, column in enumerate(names)}


def check_declared_shapes(
    signature: Signature | None,
    field: str,
    max_rows: int,
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Refuse named inputs by their declared shapes alone, before their values are decoded.

    Rows (the first axis) over `max_rows` are 413. With a tensor signature, each input whose
    spec is known (by name, or the only one) must have its rank and fixed dimensions. Everything
    else is checked on the decoded values by `decode_named_arrays`.
    """
    check_rows(max((s[0] if s else 1 for s in shapes.values()), default=1), max_rows, field)
    if signature is None or signature.kind != "tensor":
        return
    specs = {spec.name: spec for spec in signature.inputs}
    single = len(signature.inputs) == 1 and len(shapes) == 1
    for name, shape in shapes.items():
        spec = signature.inputs[0] if single else specs.get(name)
        if spec is not None:
            _check_shape(spec, shape, f"{field}.{name}")


def _check_same_rows(arrays: Mapping[str, Array], field: str, max_rows: int) -> None:
    counts = {name: (len(a) if a.ndim else 1) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InvalidInput(f"{field}: inputs have different row counts {counts}; send equal rows")
    check_rows(next(iter(counts.values())), max_rows, field)
