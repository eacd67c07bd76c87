"""How the dataplane serves: one frozen object, built once from the settings by each process kind
(the server, a stream consumer) rather than spelled out argument by argument at each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from berth.config import ModelServing, Settings


def _no_options(_model: str) -> ModelServing:
    return ModelServing()


@dataclass(frozen=True)
class ServingConfig:
    """The dataplane's settings; the defaults are those of an in-process dataplane (CLI, tests)."""

    refresh_seconds: float = 2.0
    """How often aliases and endpoints are re-read from the registry (BERTH_REFRESH_SECONDS)."""

    max_batch_rows: int = 10_000
    """Most rows one request may carry; the edges' decoders refuse more (BERTH_MAX_BATCH_ROWS)."""

    timeout_seconds: float | None = None
    """Longest a model call may take, batch wait included (BERTH_REQUEST_TIMEOUT_SECONDS)."""

    threads: int | None = None
    """Worker threads for model calls; None: one per core (BERTH_PREDICT_THREADS)."""

    inline_seconds: float = 0.0
    """Versions predicting one row faster run on the event loop (BERTH_INLINE_PREDICT_MS)."""

    model_options: Callable[[str], ModelServing] = _no_options
    """A model's batching and cache options, by model name (BERTH_MODELS)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingConfig:
        return cls(
            refresh_seconds=settings.refresh_seconds,
            max_batch_rows=settings.max_batch_rows,
            timeout_seconds=settings.request_timeout_seconds,
            threads=settings.predict_threads,
            inline_seconds=settings.inline_predict_ms / 1000,
            model_options=settings.serving,
        )
