"""`make bench`'s own arithmetic: the loads it alternates are judged by their median run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import speed


def test_the_median_run_stands_for_alternated_loads_and_keeps_every_failure() -> None:
    runs = [
        {"rps": 6100.0, "p99_ms": 30.0, "errors": 0},
        {"rps": 5700.0, "p99_ms": 35.0, "errors": 2},
        {"rps": 6300.0, "p99_ms": 25.0, "errors": 0},
    ]
    found = speed.median_run(runs)
    assert found["rps"] == 6100.0
    assert found["p99_ms"] == 30.0  # the median run's own tail, not a mix of runs
    assert found["errors"] == 2  # a non-2xx in any run fails the target
    assert found["rps_runs"] == [6100.0, 5700.0, 6300.0]
    assert speed.median_run(runs[:2])["rps"] == 5700.0  # the lower middle of an even number
    assert speed.median_run(runs[:1]) == runs[0]


def test_the_ratio_names_every_run_behind_its_medians() -> None:
    iris = speed.median_run([{"rps": r, "errors": 0} for r in (6100.0, 5700.0, 6300.0)])
    const = speed.median_run([{"rps": r, "errors": 0} for r in (12000.0, 11500.0, 12400.0)])
    assert (
        speed._runs(iris, const) == " (medians; runs 6100 / 5700 / 6300 vs 12000 / 11500 / 12400)"
    )
    assert speed._runs({"rps": 1.0}) == ""


def test_a_start_is_judged_by_its_median() -> None:
    assert speed.median([1.53, 1.44, 1.27]) == 1.44
    assert speed.median([1.9, 1.5]) == 1.5
