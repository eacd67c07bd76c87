"""Defaults that are shown before any settings are read.

`berth --help` shows them, and must not import pydantic-settings (berth.config) to do so.
"""

from __future__ import annotations

DEFAULT_PORT = 8321
DEFAULT_GRPC_PORT = 8322
"""Where `berth build`'s images serve the Open Inference Protocol over gRPC."""

LONG_POLL_MAX_SECONDS = 60
"""The longest wait a long poll (`GET /api/v1/rollouts/ID?wait=SECONDS`) may ask for; a server
holds it at most its BERTH_LONG_POLL_SECONDS."""
