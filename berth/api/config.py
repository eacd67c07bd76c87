"""What the HTTP edge reads from the settings: request limits, compression, docs, access log.

Built by `HttpConfig.from_settings` alone, so a knob's default lives in `berth.config` and
nowhere else; `create_app` hands each middleware its part.
"""

from __future__ import annotations

from dataclasses import dataclass

from berth.api.docs import DocsPolicy
from berth.config import Settings


@dataclass(frozen=True)
class HttpConfig:
    """Limits on requests and extras around them, for every route of one server process."""

    max_body_bytes: int
    """Largest request body accepted (after decompression); larger ones get 413."""

    body_timeout_seconds: float
    """Longest a client may take to send a request body; slower ones get 408."""

    compress_min_bytes: int
    """Responses of at least this many bytes are gzip-compressed for clients accepting it; 0 never."""

    docs: DocsPolicy
    """Who may read /docs and /openapi.json; dev mode makes them public."""

    access_log: bool
    """Log one line per HTTP request."""

    access_log_sample: float
    """Fraction of requests the access log records, from 0 to 1."""

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpConfig:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            body_timeout_seconds=settings.body_timeout_seconds,
            compress_min_bytes=settings.compress_min_bytes,
            docs="public" if settings.dev else settings.docs,
            access_log=settings.access_log,
            access_log_sample=settings.access_log_sample,
        )
