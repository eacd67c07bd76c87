"""Defaults that are shown before any settings are read.

`berth --help` shows them, and must not import pydantic-settings (berth.config) to do so.
"""

from __future__ import annotations

DEFAULT_PORT = 8321
