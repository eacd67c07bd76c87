"""How Berth runs on Ray Serve: names and replica options, without importing Ray.

`berth.deploy.ray_serve` deploys with these options; `berth build --target kuberay` writes the
same options into a RayService, so both say the same thing in Ray 2.60's names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from berth.config import Settings
from berth.errors import InvalidInput

DEPLOYMENT_NAME = "Berth"
APPLICATION_NAME = "berth"
IMPORT_PATH = "berth.deploy.ray_serve:build_app"
"""The application builder Ray Serve config files and KubeRay name."""
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's variable: the folder where the replicas of one machine sum metrics."""


@dataclass(frozen=True)
class ReplicaOptions:
    """How many replicas Ray Serve runs and how it scales them.

    The defaults are those of an application builder's `args` that leave a field out; a server
    deploys with `from_settings`.
    """

    min_replicas: int = 1
    """Fewest replicas (and how many start)."""
    max_replicas: int = 4
    """Most replicas the autoscaler may start."""
    target_ongoing_requests: float = 8.0
    """Requests in flight per replica the autoscaler aims at."""
    max_ongoing_requests: int = 64
    """Requests Ray sends one replica at once; the replica sheds load beyond it itself."""
    replica_cpus: float = 1.0
    """CPUs Ray reserves for each replica."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables every replica starts with: the `BERTH_*` settings it builds its app from."""

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise InvalidInput(f"min_replicas is {self.min_replicas}; it must be at least 1")
        if self.max_replicas < self.min_replicas:
            raise InvalidInput(
                f"max_replicas ({self.max_replicas}) is below min_replicas "
                f"({self.min_replicas}); raise BERTH_RAY_MAX_REPLICAS or lower the minimum"
            )
        if self.target_ongoing_requests <= 0 or self.max_ongoing_requests < 1:
            raise InvalidInput(
                "target_ongoing_requests must be above 0 and max_ongoing_requests at least 1"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplicaOptions:
        """The `ray_*` settings; `env` is left for the engine to fill in."""
        return cls(
            min_replicas=settings.ray_min_replicas,
            max_replicas=settings.ray_max_replicas,
            target_ongoing_requests=settings.ray_target_ongoing_requests,
            # A replica sheds load beyond this itself (503), so Ray need not queue more on it.
            max_ongoing_requests=settings.max_concurrent_requests,
            replica_cpus=settings.ray_replica_cpus,
        )

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments of `serve.deployment(...).options(...)` (Ray 2.60 names)."""
        options: dict[str, Any] = {
            "name": DEPLOYMENT_NAME,
            "max_ongoing_requests": self.max_ongoing_requests,
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "ray_actor_options": {"num_cpus": self.replica_cpus},
        }
        if self.env:
            options["ray_actor_options"]["runtime_env"] = {"env_vars": dict(self.env)}
        return options

    def to_args(self) -> dict[str, Any]:
        """The builder's `args` (what a Ray Serve config file or RayService carries)."""
        args = asdict(self)
        args.pop("env")
        return args
