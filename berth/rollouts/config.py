"""What the rollout controller reads from the settings (built by `from_settings` alone)."""

from __future__ import annotations

from dataclasses import dataclass

from berth.config import Settings


@dataclass(frozen=True)
class RolloutControllerConfig:
    """Whether a server runs the rollout controller, how often it acts, and its lease's term."""

    enabled: bool
    """Run the controller in this server (one process acts at a time, by lease)."""

    interval_seconds: float
    """How often the controller looks at running rollouts."""

    lease_seconds: float
    """How long the controller's lease lasts unrenewed (a dead leader's successor waits this)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RolloutControllerConfig:
        return cls(
            enabled=settings.rollout_controller,
            interval_seconds=settings.controller_interval_seconds,
            lease_seconds=settings.lease_seconds,
        )
