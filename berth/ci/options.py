"""What `berth ci init` is asked to write."""

from __future__ import annotations

from dataclasses import dataclass

from berth import __version__
from berth.ci.config import CONFIG_FILE

PROVIDERS = ("github", "gitlab")


@dataclass(frozen=True)
class InitOptions:
    provider: str
    """github or gitlab."""
    model: str
    """The registered model's name."""
    endpoint: str | None = None
    """The production endpoint; default: the model's name."""
    approval: bool = False
    """Whether the canary waits for a person's approval (GitHub: an environment with required
    reviewers; GitLab: a manual job)."""
    environment: str = "production"
    """The provider's deployment environment of the canary job."""
    candidate: str = "model.skops"
    sample: str = "data/sample.csv"
    data: str = "data/holdout.csv"
    target: str | None = None
    python: str = "3.12"
    """The Python the pipeline's jobs run."""
    install: str = f"berth=={__version__}"
    """What the pipeline's `pip install` installs for Berth."""
    config: str = CONFIG_FILE
