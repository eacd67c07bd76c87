"""Worker processes forked from a supervisor that has already imported the serving stack.

uvicorn starts each worker with `spawn`: a fresh interpreter that imports FastAPI, numpy,
SQLAlchemy and the whole server before it loads a single model. On two cores that took seconds,
so a worker killed in production was replaced only after 10.5 s. Here the supervisor imports the
server once and forks every worker (at start, and each replacement) from itself: a new worker
only builds its app and loads and warms its models.

A separate forkserver did this before, and cost a process of its own (the server's imports, 120
MB resident) and multiprocessing's resource tracker beside the supervisor. Forking from the
supervisor needs what a forkserver gave for free, done here: the supervisor starts no threads
of its own before forking (uvicorn's supervisor loop has none), the imported objects are frozen
out of the collector so workers do not copy their pages by collecting them, and each worker
gets the default handling of the signals uvicorn's supervisor catches. Nothing that starts
threads which do not survive a fork (onnxruntime, torch) is imported here: those load in each
worker, as before.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing.context
import signal
from collections.abc import Callable
from typing import Any

import uvicorn._subprocess
from uvicorn.supervisors.multiprocess import SIGNALS

PRELOAD = "berth.server"
"""Imported once by the supervisor before it forks.

Not skops.io: importing it walks scikit-learn's array-API support, which imports torch (2.3 s
and 150 MB before the first fork); a worker serving a skops file imports it when it loads one,
and a version served by its ONNX twin needs neither."""


class ForkedWorker(multiprocessing.context.ForkProcess):
    """A uvicorn worker forked from the supervisor."""

    def run(self) -> None:
        # uvicorn's supervisor queues these signals for itself; a worker reacts to them as a
        # spawned one would (uvicorn's server then takes SIGINT and SIGTERM over).
        for number in SIGNALS:
            default = signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
            signal.signal(number, default)
        super().run()


class _ForkContext:
    """What uvicorn asks of its process context: `Process(target=..., kwargs=...)`."""

    @staticmethod
    def Process(target: Callable[..., None], kwargs: dict[str, Any]) -> ForkedWorker:
        return ForkedWorker(target=target, kwargs=kwargs)


def fork_workers_from_this_process() -> None:
    """Import the server here and have uvicorn fork its workers from this process."""
    importlib.import_module(PRELOAD)
    gc.freeze()
    uvicorn._subprocess.spawn = _ForkContext  # type: ignore[assignment]
