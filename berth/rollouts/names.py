"""The names rollouts are given by: strategies, route roles and experiment metrics.

Kept free of imports: `berth --help` lists them, and the modules that act on them need
SQLAlchemy, numpy or httpx.
"""

from __future__ import annotations

CANARY = "canary"
BLUE_GREEN = "blue-green"
STRATEGIES = (CANARY, BLUE_GREEN)

STABLE = "stable"
ROLES = ("stable", "canary", "green", "blue", "variant", "shadow")
SERVING_ROLES = frozenset(ROLES) - {"shadow"}

EXPERIMENT_METRICS = ("accuracy", "outcome")
"""What decides an experiment: the share of correct predictions, or the mean outcome."""
