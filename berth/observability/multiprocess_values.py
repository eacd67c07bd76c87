"""prometheus_client's file-backed metric values, without a system call per update.

In multiprocess mode every update (a counter's inc, a histogram's observe, a gauge's set) first
asks `os.getpid()` whether the process has forked since, so that a forked child writes its own
file. That is a real system call each time (glibc caches no pid), and a prediction makes eight
to ten updates: 5% of a worker's time on iris. The pid is kept here instead, refreshed in every
child by an at-fork hook, which answers the same question for the fork that matters (the
supervisor forking its workers).
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _refresh_after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_after_fork)


def current_pid() -> int:
    return _pid


def use_cached_pid() -> None:
    """Make metrics created from now on use the kept pid (call once the multiprocess directory
    is set, before the server's modules make their metrics)."""
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue(process_identifier=current_pid)  # type: ignore[no-untyped-call]
