"""berth-ci.toml: the thresholds and names a model repository's pipeline uses, in one file.

The generated workflow never repeats a threshold: `berth ci validate` reads [gates] and
`berth ci env` exports the rest for the steps, so changing a gate or a canary step is an edit
here. Paths are relative to the folder of the file (the repository's root). A wrong value is
refused with one line naming its key: `berth-ci.toml: 'gates.min_accuracy' must be at most 1,
got 1.5`.

```toml
[model]
name = "churn"                   # the registered model
candidate = "model.skops"        # the file (or folder) this commit ships
sample = "data/sample.csv"       # rows its signature is inferred from

[gates]                          # `berth validate` on held-out rows, before registering
data = "data/holdout.csv"
target = "churned"
min_accuracy = 0.8
no_regression = true             # no metric worse than churn@production

[staging]
alias = "staging"

[canary]                         # `berth rollout start ENDPOINT --to churn:V ...`
endpoint = "churn"
steps = [10, 50, 100]
interval = "5m"
max_error_rate = 0.01
```
"""

from __future__ import annotations

import re
import tomllib
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, Field, ValidationError, model_validator

from berth.errors import InvalidInput, NotFound
from berth.registry.references import DEFAULT_ALIAS, NAME_PATTERN, check_alias, check_name
from berth.request_model import CheckedBy, Duration, RequestModel, Text, explain

CONFIG_FILE = "berth-ci.toml"
"""Where the pipeline looks for the file, at the repository's root."""

_NAME_SCHEMA: dict[str, Any] = {"pattern": f"^{NAME_PATTERN}$"}
ModelName = Annotated[str, CheckedBy(partial(check_name, "model"), _NAME_SCHEMA)]
EndpointName = Annotated[str, CheckedBy(partial(check_name, "endpoint"), _NAME_SCHEMA)]
AliasName = Annotated[str, CheckedBy(check_alias, _NAME_SCHEMA)]


def _not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


RelativePath = Annotated[Text, AfterValidator(_not_empty)]


class ModelSection(RequestModel):
    """What this repository ships."""

    name: ModelName
    """The registered model's name."""
    candidate: RelativePath
    """The model file, folder or archive this commit ships (built by an earlier step or kept
    in the repository)."""
    sample: RelativePath
    """Rows the version's signature is inferred from when it is registered (.csv, .parquet,
    .json or .npy), also sent to staging by the smoke checks."""


class GatesSection(RequestModel):
    """`berth validate` on held-out rows: the candidate is registered only when all pass."""

    data: RelativePath
    """Held-out rows: .csv, .parquet, .json or .jsonl (.npy for a tensor model)."""
    target: Text | None = None
    """The column of `data` with the true outcome."""
    min_accuracy: float | None = Field(None, ge=0, le=1)
    min_auc: float | None = Field(None, ge=0, le=1)
    max_rmse: float | None = Field(None, ge=0)
    max_mae: float | None = Field(None, ge=0)
    max_latency_ms: float | None = Field(None, gt=0)
    """p99 of one-row predictions, in process."""
    no_nan: bool = False
    output_range: list[float] | None = Field(None, min_length=2, max_length=2)
    """[low, high]: every numeric prediction (or class probability) within it."""
    no_regression: bool = False
    """No metric worse than NAME@production on the same rows (a first version has none:
    leave this false until production exists)."""
    regression_tolerance: float = Field(0.0, ge=0)
    """How much worse than production a metric may be, e.g. 0.01."""

    @model_validator(mode="after")
    def _some_gate(self) -> Self:
        if self.output_range is not None and self.output_range[0] > self.output_range[1]:
            raise ValueError("output_range must be [low, high] with low <= high")
        checks = ("min_accuracy", "min_auc", "max_rmse", "max_mae", "max_latency_ms")
        if not any(getattr(self, name) is not None for name in checks) and not (
            self.no_nan or self.output_range or self.no_regression
        ):
            raise ValueError(
                "names no gate; add one, e.g. min_accuracy = 0.9, no_nan = true or "
                "no_regression = true"
            )
        return self


class StagingSection(RequestModel):
    """The alias the pipeline moves to the candidate before the canary, for smoke checks."""

    alias: AliasName = "staging"

    @model_validator(mode="after")
    def _not_production(self) -> Self:
        if self.alias == DEFAULT_ALIAS:
            raise ValueError(f"alias must not be {DEFAULT_ALIAS}: the canary decides that one")
        return self


class CanarySection(RequestModel):
    """The rollout on the production endpoint (`berth rollout start`, then `wait`)."""

    endpoint: EndpointName | None = None
    """The endpoint production clients call; default: the model's name."""
    steps: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0])
    """The candidate's share of traffic at each step, in percent, rising to 100."""
    interval: Duration = "5m"
    """How long each step lasts at least."""
    max_error_rate: float = Field(0.01, ge=0, le=1)
    """Roll back when the candidate's error rate is significantly above this."""
    min_requests: int = Field(100, ge=0)
    """Candidate requests per step before its error rate and latency are judged."""
    wait_timeout: Duration = "30m"
    """How long `berth rollout wait` waits for the verdict; still running then fails."""

    @model_validator(mode="after")
    def _rising_to_100(self) -> Self:
        # The rule of `berth rollout start --steps`, checked here so that the pipeline does not
        # find out at its last job.
        steps = self.steps
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be rising percentages above 0, e.g. [5, 25, 50, 100]")
        if steps[-1] != 100:
            raise ValueError("steps must end at 100 (the candidate takes all traffic)")
        return self


class ImageSection(RequestModel):
    """Where the image `berth build` writes is pushed."""

    repository: Text = ""
    """e.g. registry.example.com/team/churn (tagged with the version); empty: the provider's
    registry (ghcr.io/OWNER/REPO/NAME on GitHub, $CI_REGISTRY_IMAGE/NAME on GitLab)."""


class CiConfig(RequestModel):
    model: ModelSection
    gates: GatesSection
    staging: StagingSection = Field(default_factory=StagingSection)
    canary: CanarySection = Field(default_factory=CanarySection)
    image: ImageSection = Field(default_factory=ImageSection)

    @property
    def endpoint(self) -> str:
        return self.canary.endpoint or self.model.name

    @property
    def production(self) -> str:
        """What no_regression compares with: NAME@production."""
        return f"{self.model.name}@{DEFAULT_ALIAS}"


def load(path: Path) -> CiConfig:
    """The file's configuration; one-line `InvalidInput` (or `NotFound`) naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(
            f"no {path}; write one with `berth ci init --provider github` (or gitlab), "
            "or give its path with --config"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text; save it as UTF-8") from None
    return parse(text, str(path))


def parse(text: str, source: str = CONFIG_FILE) -> CiConfig:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source} is not valid TOML: {exc}") from None
    try:
        return CiConfig.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {_located(explain(exc, CiConfig))}") from None
    except InvalidInput as exc:
        # A domain check (a name, a duration, the canary's steps) in its own words.
        raise InvalidInput(f"{source}: {exc.message}") from None


def _located(message: str) -> str:
    # `explain` words a missing section as a request body's field; this is a file.
    return re.sub(r"the request body has no '(\w+)' field", r"there is no [\1] section", message)
