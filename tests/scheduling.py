"""Start the longest tests first, one at the head of each xdist worker's share.

pytest-xdist's work-stealing scheduler hands each worker a contiguous share of the collection
and lets idle workers steal from the tail of the longest queue. A test of minutes met late (the
README run, the OpenAPI fuzzing) then decides when the whole run ends. These tests (their
durations from `pytest --durations`, clean-clone run on 2 cores) go to the heads of the shares
instead, spread so that each worker starts with about the same long work; everything else keeps
its order.
"""

from __future__ import annotations

import pytest

# Node id prefixes, with seconds measured; refresh with `pytest --durations=30`.
LONG_RUNNING: dict[str, float] = {
    "tests/test_readme.py::": 184,
    "tests/test_fuzz_openapi.py::test_every_operation_as_admin": 161,
    "tests/test_fuzz_openapi.py::test_every_operation_without_valid_credentials": 68,
    "tests/test_worker_restart.py::": 42,
    "tests/test_backup_destinations.py::test_a_destination_killed_mid_backup": 32,
    "tests/test_fuzz_validation.py::": 30,
    "tests/test_ray_engine.py::": 30,
    "tests/test_console_server.py::": 30,
    "tests/test_grpc.py::": 45,
    "tests/test_server.py::test_dev_mode_with_two_workers": 27,
    "tests/test_console_browser.py::": 26,
    "tests/test_metrics.py::test_metrics_are_totals_over_workers": 24,
}


def spread_long_tests(items: list[pytest.Item], workers: int) -> None:
    """Reorder `items` in place (see the module docstring); no-op without xdist workers.

    The tests under one prefix stay together (a module's fixtures are set up once)."""
    if workers < 2 or len(items) < workers:
        return
    groups: dict[str, list[pytest.Item]] = {}
    rest: list[pytest.Item] = []
    for item in items:
        prefix = next((p for p in LONG_RUNNING if item.nodeid.startswith(p)), None)
        if prefix is None:
            rest.append(item)
        else:
            groups.setdefault(prefix, []).append(item)
    if not groups:
        return
    heads: list[list[pytest.Item]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for prefix in sorted(groups, key=lambda p: -LONG_RUNNING[p]):  # longest to least loaded
        lightest = loads.index(min(loads))
        heads[lightest].extend(groups[prefix])
        loads[lightest] += LONG_RUNNING[prefix]
    # Shares as the scheduler cuts them: len // workers each, the last one the remainder.
    share = len(items) // workers
    ordered: list[pytest.Item] = []
    for index, head in enumerate(heads):
        size = share if index < workers - 1 else len(items) - share * (workers - 1)
        take = max(0, size - len(head))
        ordered.extend(head)
        ordered.extend(rest[:take])
        del rest[:take]
    ordered.extend(rest)
    items[:] = ordered


def worker_count(config: pytest.Config) -> int:
    """The number of xdist workers, as seen from a worker (0 when not under xdist)."""
    workerinput: dict[str, object] | None = getattr(config, "workerinput", None)
    count = workerinput.get("workercount") if workerinput else None
    return count if isinstance(count, int) else 0
