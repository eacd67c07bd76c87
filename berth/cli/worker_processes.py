"""Worker processes forked from a server that has already imported the serving stack.

uvicorn starts each worker with `spawn`: a fresh interpreter that imports FastAPI, numpy, pandas,
scikit-learn and skops before it loads a single model. On two cores that took seconds, so a
worker killed in production was replaced only after 10.5 s. With a `forkserver` that imported
all of that once, a new worker is a fork: it only loads and warms its models.

The forkserver is started by this (lean) supervisor and is a separate process, so the supervisor
itself still imports nothing of the data stack. Nothing that starts threads which do not survive
a fork (onnxruntime, torch) is preloaded: those load in each worker, as before.
"""

from __future__ import annotations

import multiprocessing

import uvicorn._subprocess

PRELOAD = ("berth.server",)
"""Imported once in the forkserver; a module that is not installed is skipped.

Not skops.io: importing it walks scikit-learn's array-API support, which imports torch (2.3 s
and 150 MB before the first fork); a worker serving a skops file imports it when it loads one,
and a version served by its ONNX twin needs neither."""


def fork_workers_from_preloaded_server() -> None:
    """Have uvicorn start its workers from a forkserver that has imported `PRELOAD`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    # uvicorn creates every worker (at start, and each replacement) through this context.
    uvicorn._subprocess.spawn = context  # type: ignore[assignment]
