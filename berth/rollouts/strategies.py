"""Rollout settings, and the routes an endpoint has in each phase of a rollout.

Canary: `loading` (the candidate at 0%, loaded and smoke-tested) → `step` (the candidate at
steps[i]%, judged on live evidence after each interval) → promoted (the candidate is the one
stable route) or rolled back (the old version is).

Blue-green: `loading` (green at 0%) → `preview` (green at 0%, reachable with
`X-Berth-Route: green`) → `switched` (green 100%, blue kept loaded at 0% for an instant
rollback) → promoted at `finalize` (or after `finalize_after_seconds`), or rolled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from berth.errors import InvalidInput
from berth.registry.endpoints import ACTIVE_ROLLOUT, STABLE, RouteSpec
from berth.rollouts.canary_analysis import CanaryCriteria
from berth.rollouts.evidence import check_metrics_source
from berth.rollouts.names import BLUE_GREEN as BLUE_GREEN
from berth.rollouts.names import CANARY as CANARY
from berth.rollouts.names import STRATEGIES as STRATEGIES

RUNNING, PAUSED = "running", "paused"
PROMOTED, ROLLED_BACK, ABORTED, FAILED = "promoted", "rolled_back", "aborted", "failed"
ACTIVE = ACTIVE_ROLLOUT

LOADING, STEP, PREVIEW, SWITCHED = "loading", "step", "preview", "switched"


@dataclass(frozen=True)
class RolloutConfig:
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    """Canary weights in percent, rising, ending at 100."""
    interval_seconds: float = 60.0
    """How long each canary step lasts at least (and blue-green's live check after the switch)."""
    criteria: CanaryCriteria = field(default_factory=CanaryCriteria)
    metrics_source: str = "server"
    switch: str = "auto"
    """Blue-green: `auto` switches once green passed its smoke test and the preview time;
    `manual` waits for `berth rollout promote`."""
    preview_seconds: float = 0.0
    finalize_after_seconds: float | None = None
    """Blue-green: drop blue this long after the switch; None keeps it until `finalize`."""
    gates: dict[str, Any] | None = None
    """The validation gates the candidate passed before the rollout began (GateConfig)."""

    def __post_init__(self) -> None:
        steps = self.steps
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise InvalidInput(
                f"canary steps {','.join(f'{s:g}' for s in steps)} are not valid; give rising "
                "percentages above 0 ending at 100, e.g. --steps 5,25,50,100"
            )
        if steps[-1] != 100:
            raise InvalidInput("the last canary step must be 100 (the candidate takes all traffic)")
        if self.interval_seconds < 0 or self.preview_seconds < 0:
            raise InvalidInput("--interval and --preview must not be negative")
        if self.switch not in ("auto", "manual"):
            raise InvalidInput(f"--switch must be auto or manual, not '{self.switch}'")
        check_metrics_source(self.metrics_source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "interval_seconds": self.interval_seconds,
            "criteria": self.criteria.to_dict(),
            "metrics_source": self.metrics_source,
            "switch": self.switch,
            "preview_seconds": self.preview_seconds,
            "finalize_after_seconds": self.finalize_after_seconds,
            "gates": self.gates,
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> RolloutConfig:
        return cls(
            steps=tuple(float(s) for s in document.get("steps", cls.steps)),
            interval_seconds=float(document.get("interval_seconds", 60.0)),
            criteria=CanaryCriteria.from_dict(document.get("criteria", {})),
            metrics_source=str(document.get("metrics_source", "server")),
            switch=str(document.get("switch", "auto")),
            preview_seconds=float(document.get("preview_seconds", 0.0)),
            finalize_after_seconds=document.get("finalize_after_seconds"),
            gates=document.get("gates"),
        )


def parse_steps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise InvalidInput(
            f"--steps '{text}' is not a list of percentages; write e.g. 5,25,50,100"
        ) from exc


def new_route_label(strategy: str) -> str:
    return "canary" if strategy == CANARY else "green"


def candidate_routes(
    strategy: str, old: RouteSpec, new: RouteSpec, weight: float, others: Sequence[RouteSpec]
) -> list[RouteSpec]:
    """The endpoint's routes with the candidate at `weight` percent (before a blue-green
    switch: 0)."""
    label = new_route_label(strategy)
    return [
        replace(old, label=STABLE, role=STABLE, weight=100.0 - weight),
        replace(new, label=label, role=label, weight=weight),
        *others,
    ]


def switched_routes(old: RouteSpec, new: RouteSpec, others: Sequence[RouteSpec]) -> list[RouteSpec]:
    """Blue-green after the switch: green takes everything, blue stays loaded at 0%."""
    return [
        replace(new, label="green", role="green", weight=100.0),
        replace(old, label="blue", role="blue", weight=0.0),
        *others,
    ]


def final_routes(version: RouteSpec, others: Sequence[RouteSpec]) -> list[RouteSpec]:
    """One stable route: after a promotion (the candidate) or a rollback (the old version)."""
    return [replace(version, label=STABLE, role=STABLE, weight=100.0), *others]
