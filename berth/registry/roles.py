"""The roles a route plays behind an endpoint.

Kept free of imports: `berth --help` lists them, and the modules that act on them need
SQLAlchemy.
"""

from __future__ import annotations

STABLE = "stable"
SHADOW = "shadow"
ROLES = ("stable", "canary", "green", "blue", "variant", "shadow")
SERVING_ROLES = frozenset(ROLES) - {"shadow"}
"""Roles that answer requests; a shadow only receives copies."""
