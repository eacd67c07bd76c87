"""The names rollouts are given by: strategies and experiment metrics.

Kept free of imports: `berth --help` lists them, and the modules that act on them need
SQLAlchemy, numpy or httpx.
"""

from __future__ import annotations

CANARY = "canary"
BLUE_GREEN = "blue-green"
STRATEGIES = (CANARY, BLUE_GREEN)

EXPERIMENT_METRICS = ("accuracy", "outcome")
"""What decides an experiment: the share of correct predictions, or the mean outcome."""
