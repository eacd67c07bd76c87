"""berth-ci.toml turned into what the pipeline's steps run: `berth validate`'s arguments, and
variables (BERTH_CI_*) for the steps that call `berth` themselves."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from berth.ci.config import CiConfig
from berth.errors import InvalidInput

PREFIX = "BERTH_CI_"


def validate_args(config: CiConfig, root: Path) -> list[str]:
    """`berth validate`'s arguments (without `berth`) for the candidate and the [gates]."""
    gates = config.gates
    candidate = path_argument(root / config.model.candidate)
    args = ["validate", candidate, "--data", str(root / gates.data)]
    # Loaded as registering will load it: its signature from the same sample.
    args += ["--sample", str(root / config.model.sample)]
    if gates.target is not None:
        args += ["--target", gates.target]
    for name in ("min_accuracy", "min_auc", "max_rmse", "max_mae", "max_latency_ms"):
        value = getattr(gates, name)
        if value is not None:
            args += [f"--{name.replace('_', '-')}", number(value)]
    if gates.no_nan:
        args.append("--no-nan")
    if gates.output_range is not None:
        low, high = gates.output_range
        args += ["--output-range", f"{number(low)},{number(high)}"]
    if gates.no_regression:
        args += ["--no-regression-vs", config.production]
        if gates.regression_tolerance:
            args += ["--regression-tolerance", number(gates.regression_tolerance)]
    return args


def variables(
    config: CiConfig, root: Path, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What the steps read: names, paths (relative to where the step runs) and the canary's
    settings. `environ` (default: this process's) tells the provider, for the image's default
    repository."""
    canary = config.canary
    return {
        f"{PREFIX}MODEL": config.model.name,
        f"{PREFIX}CANDIDATE": str(root / config.model.candidate),
        f"{PREFIX}SAMPLE": str(root / config.model.sample),
        f"{PREFIX}ENDPOINT": config.endpoint,
        f"{PREFIX}STAGING": config.staging.alias,
        f"{PREFIX}STEPS": ",".join(number(step) for step in canary.steps),
        f"{PREFIX}INTERVAL": canary.interval,
        f"{PREFIX}MAX_ERROR_RATE": number(canary.max_error_rate),
        f"{PREFIX}MIN_REQUESTS": str(canary.min_requests),
        f"{PREFIX}WAIT_TIMEOUT": canary.wait_timeout,
        f"{PREFIX}IMAGE": image_repository(config, os.environ if environ is None else environ),
    }


def path_argument(path: Path) -> str:
    """A path as an argument no command takes for a model's name: with a `/` (./model)."""
    text = str(path)
    return text if "/" in text else f"./{text}"


def image_repository(config: CiConfig, environ: Mapping[str, str]) -> str:
    """[image] repository, else the registry of the provider the pipeline runs on."""
    if config.image.repository:
        return config.image.repository
    name = config.model.name.lower()
    if environ.get("CI_REGISTRY_IMAGE"):
        return f"{environ['CI_REGISTRY_IMAGE']}/{name}"
    if environ.get("GITHUB_REPOSITORY"):
        # Image names are lower case; repository names need not be.
        return f"ghcr.io/{environ['GITHUB_REPOSITORY'].lower()}/{name}"
    return f"berth-{name}"


def render(values: Mapping[str, str], style: str) -> str:
    """`shell`: export lines to eval; `github`: KEY=VALUE lines to append to $GITHUB_ENV."""
    if style == "shell":
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    if style == "github":
        for key, value in values.items():
            if "\n" in value or "\r" in value:
                raise InvalidInput(f"{key} holds a line break; $GITHUB_ENV takes one line")
        return "".join(f"{k}={v}\n" for k, v in values.items())
    raise InvalidInput(f"format '{style}' is not known; use shell or github")


def number(value: float) -> str:
    """A number as a flag takes it: 10 for 10.0, 0.85 as is, no float noise."""
    return f"{value:.15g}"


def command_line(args: list[str]) -> str:
    """How a log shows the command: `berth validate model.skops --data ...`, shell-quoted."""
    return shlex.join(["berth", *args])
