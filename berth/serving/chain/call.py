"""The one call type of the chain, and the context a request carries through it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from berth.runtimes.base import ModelInput, Prediction


@dataclass(slots=True, eq=False)
class CallContext:
    """One request on its way through a chain: what wrappers read of it, and tell the caller."""

    rows: int
    """Rows of the input, counted once rather than by every wrapper."""

    cached: bool | None = None
    """Set by the cache: answered from it (True) or by the model (False); None if not looked up."""


ModelCall = Callable[[ModelInput, CallContext], Awaitable[Prediction]]
"""A prediction for the input: every wrapper, and the runtime call it ends in, is one. A wrapper
with nothing to await itself returns the next call's awaitable, so it costs no coroutine."""
