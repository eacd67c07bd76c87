"""The long tests start first, one group at the head of each worker's share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest

from tests.scheduling import LONG_RUNNING, spread_long_tests


@dataclass
class _Item:
    nodeid: str


def _items(names: list[str]) -> list[pytest.Item]:
    return cast(list[pytest.Item], [_Item(n) for n in names])


def _ids(items: list[Any]) -> list[str]:
    return [item.nodeid for item in items]


def test_each_share_starts_with_long_tests_and_modules_stay_together() -> None:
    short = [f"tests/test_a{i}.py::test_{i}" for i in range(30)]
    long_ones = [
        "tests/test_readme.py::test_the_readme_runs_in_order",
        "tests/test_fuzz_openapi.py::test_every_operation_as_admin",
        "tests/test_grpc.py::test_one",
        "tests/test_grpc.py::test_two",
    ]
    items = _items(short[:10] + long_ones[2:] + short[10:20] + long_ones[:2] + short[20:])
    spread_long_tests(items, 3)
    ordered = _ids(items)
    assert sorted(ordered) == sorted(short + long_ones)  # nothing lost or repeated
    share = len(ordered) // 3
    heads = [ordered[0], ordered[share], ordered[2 * share]]
    assert heads == [long_ones[0], long_ones[1], long_ones[2]]
    assert ordered[2 * share + 1] == long_ones[3]  # the module's tests stay together
    assert [n for n in ordered if n in short] == short  # the rest keep their order
    assert all(prefix.startswith("tests/") for prefix in LONG_RUNNING)


def test_without_workers_the_order_is_kept() -> None:
    names = ["tests/test_readme.py::test_x", "tests/test_b.py::test_y"]
    items = _items(list(reversed(names)))
    spread_long_tests(items, 0)
    assert _ids(items) == list(reversed(names))
