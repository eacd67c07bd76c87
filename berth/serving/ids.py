"""Unique ids for requests and predictions, cheaper than uuid4 on the hot path.

uuid4 asks the kernel for 16 random bytes per call; an id here is a random 64-bit prefix drawn
once per process (and again in a forked child) followed by a counter: 32 hex characters, unique
across workers and restarts, in the same format clients already store.
"""

from __future__ import annotations

import itertools
import os
import secrets


def _fresh() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(8)
    _counter = itertools.count()


_prefix = ""
_counter = itertools.count()
_fresh()
os.register_at_fork(after_in_child=_fresh)


def new_id() -> str:
    return f"{_prefix}{next(_counter):016x}"


REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""What a caller's own request id (`X-Request-ID`, gRPC `x-request-id`) may be to be kept: safe
in a log line and a header; anything else is replaced by a new id."""
