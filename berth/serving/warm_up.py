"""Warm a version up at load: predict its registration example before any request does."""

from __future__ import annotations

import math
import time

from berth.errors import InvalidInput, NotReady
from berth.registry.versions import VersionInfo
from berth.runtimes.base import Runtime
from berth.serving.validation import decode_instances

WARM_UP_ROUNDS = 5


def warm_up(runtime: Runtime, info: VersionInfo) -> float:
    """Predict the registration example, so the first request pays no lazy setup.

    Returns the fastest of a few one-row predictions (inf without an example): how the
    dataplane decides whether the model is cheap enough to run on the event loop.
    """
    if not info.example:
        return math.inf
    try:
        runtime.predict(
            decode_instances(info.signature, info.example, "example", len(info.example))
        )
        row = decode_instances(info.signature, info.example[:1], "example", 1)
        fastest = math.inf
        for _ in range(WARM_UP_ROUNDS):
            started = time.perf_counter()
            runtime.predict(row)
            fastest = min(fastest, time.perf_counter() - started)
    except InvalidInput as exc:
        raise NotReady(f"{info.ref} failed its warm-up prediction: {exc.message}") from exc
    return fastest
