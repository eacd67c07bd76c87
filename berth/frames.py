"""pandas on demand: a server of tensor models never imports it.

pandas and pyarrow take 0.3 s and about 60 MB in every process that imports them, and a tensor
model's request never meets a table. Modules on the serving path import pandas for type hints
only (under TYPE_CHECKING), ask `is_frame` instead of `isinstance(x, pd.DataFrame)`, and import
it inside the functions that build tables. If pandas has not been imported, nothing can be a
DataFrame, so the check needs no import.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from typing_extensions import TypeIs

if TYPE_CHECKING:
    import pandas as pd


def imported_pandas() -> ModuleType | None:
    """pandas if something has imported it, else None (and then no value is pandas')."""
    return sys.modules.get("pandas")


def is_frame(value: Any) -> TypeIs[pd.DataFrame]:
    """Whether `value` is a pandas DataFrame."""
    pandas = imported_pandas()
    return pandas is not None and isinstance(value, pandas.DataFrame)


def is_missing_marker(value: Any) -> bool:
    """Whether `value` is pandas' NA or NaT."""
    pandas = imported_pandas()
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)
