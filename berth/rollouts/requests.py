"""What people ask of endpoints, rollouts and experiments: the admin request bodies, declared once.

`POST /api/v1/rollouts` validates its body with `RolloutRequest` and documents it from the
model; `berth rollout start` builds the same model from its flags and hands it to the same
service method. The rules the services own (a version exists, the weights add up, the endpoint
is free) stay in the services; the rules of a single value with words people know (a name's
characters, a sticky key, a duration, the canary criteria) are the domain's checks, called from
here so that a mistake gets the same answer from either edge.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, model_validator

from berth.errors import InvalidInput
from berth.ops.gate_fields import FRACTION, NOT_NEGATIVE, POSITIVE, GateThresholdFields
from berth.registry.references import MAX_VERSION, NAME_PATTERN, check_name
from berth.registry.roles import ROLES, SHADOW, STABLE
from berth.request_model import CheckedBy, Duration, RequestModel, Text
from berth.rollouts.canary_analysis import CanaryCriteria
from berth.rollouts.names import CANARY, EXPERIMENT_METRICS

# Strategies and gates need SQLAlchemy and the data libraries: imported by what converts.
if TYPE_CHECKING:
    from berth.ops.gate_config import GateConfig
    from berth.registry.endpoints import RouteSpec
    from berth.rollouts.strategies import RolloutConfig

LARGEST_COUNT = 10**9
"""Bound of counts (min_requests, min_samples): far above any sensible value."""
_FREE_TEXT = 1000
"""Longest description or reason."""


def _sticky(text: str) -> None:
    from berth.registry.endpoints import parse_sticky

    parse_sticky(text)


_NAME_SCHEMA: dict[str, Any] = {"pattern": f"^{NAME_PATTERN}$"}
EndpointName = Annotated[
    str,
    CheckedBy(partial(check_name, "endpoint"), _NAME_SCHEMA),
    Field(description="An endpoint's name."),
]
ModelName = Annotated[
    str, CheckedBy(partial(check_name, "model"), _NAME_SCHEMA), Field(description="A model name.")
]
Sticky = Annotated[
    str,
    CheckedBy(_sticky, {"pattern": r"^(header|cookie|field):[A-Za-z0-9._-]{1,150}$"}),
    Field(
        description="Where a caller's sticky key is read: header:NAME, cookie:NAME or "
        "field:NAME (a top-level field of the JSON body)."
    ),
]
Reference = Annotated[
    Text, Field(description="A model reference: NAME, NAME:VERSION or NAME@ALIAS.")
]
FreeText = Annotated[Text, Field(max_length=_FREE_TEXT)]


# ---------------------------------------------------------------------------- endpoints


class EndpointRequest(RequestModel):
    """Create an endpoint whose one stable route serves a version."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "name": "churn",
        "model": "churn@production",
        "sticky": "header:X-User-ID",
    }

    name: EndpointName
    model: Reference = Field(description="The version the one stable route serves.")
    sticky: Sticky | None = None
    description: FreeText = Field("", description="Free text.")


class Route(RequestModel):
    """One route: a label, a version and its share of traffic."""

    label: Text = Field(
        description="The route's name, unique per endpoint; `X-Berth-Route: LABEL` forces it.",
        json_schema_extra={"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
    )
    role: Text | None = Field(
        None,
        description="Default: stable for the label stable, shadow for the label shadow, else "
        "canary.",
        json_schema_extra={"enum": [*ROLES, None]},
    )
    model: ModelName
    version: int = Field(ge=1, le=MAX_VERSION)
    weight: float = Field(
        description="Percent of traffic (of a shadow route: percent of requests mirrored).",
        json_schema_extra={"minimum": 0, "maximum": 100},
    )

    def spec(self) -> RouteSpec:
        from berth.registry.endpoints import RouteSpec

        role = self.role or default_role(self.label)
        return RouteSpec(self.label, role, self.model, self.version, self.weight)


def default_role(label: str) -> str:
    """A route's role when none is given: its label when that is a role's, else canary."""
    return label if label in (STABLE, SHADOW) else CANARY


class RoutesRequest(RequestModel):
    """Replace an endpoint's routes by hand."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "routes": [
            {"label": "stable", "model": "churn", "version": 2, "weight": 90},
            {"label": "canary", "model": "churn", "version": 3, "weight": 10},
        ],
        "reason": "try churn:3 on 10%",
    }

    routes: list[Route] = Field(
        min_length=1,
        description="The new routes; the weights of serving routes add up to 100, and at most "
        "one route is a shadow.",
    )
    reason: FreeText = Field("set by hand", description="Why, for the endpoint's history.")
    sticky: Sticky | None = Field(None, description="A new sticky key; unchanged if absent.")

    def specs(self) -> list[RouteSpec]:
        return [route.spec() for route in self.routes]


class ShadowRequest(RequestModel):
    """Mirror a share of an endpoint's requests to a version (its answers are compared, never
    returned); the serving routes stay as they are."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"to": "churn:4", "percent": 10}

    to: Reference = Field(description="The version to mirror requests to.")
    percent: float = Field(
        10.0, ge=0, le=100, description="Share of requests copied to the shadow, in percent."
    )


# ---------------------------------------------------------------------------- rollouts


def _steps(value: object) -> object:
    """Steps may come as the command line writes them: "5,25,50,100"."""
    from berth.rollouts.strategies import parse_steps

    return list(parse_steps(value)) if isinstance(value, str) else value


_NOT_GATES = {"data", "target", "regression_tolerance"}
"""Fields of `Gates` that say how gates run, not what they check."""


def _is_set(value: object) -> bool:
    # 0 is a threshold; None and false are no gate
    return value is not None and value is not False


class Gates(GateThresholdFields):
    """Validation gates the candidate must pass on test rows before it takes traffic (as
    `berth validate`). `data` is a path on the server. `no_regression: true` compares with the
    version the endpoint serves now."""

    data: Text | None = Field(None, description="Test rows: .csv, .parquet, .json or .jsonl.")
    no_regression: bool = Field(
        False, description="No metric worse than the version the endpoint serves now."
    )
    no_regression_vs: Reference | None = Field(
        None, description="No metric worse than this version."
    )
    regression_tolerance: float = Field(
        0.0,
        description="How much worse than the compared version a metric may be.",
        json_schema_extra=NOT_NEGATIVE,
    )

    @model_validator(mode="before")
    @classmethod
    def _known(cls, document: Any) -> Any:
        # In the words `berth validate` uses for a stored gate configuration.
        if isinstance(document, dict):
            unknown = sorted(str(key) for key in document if key not in cls.model_fields)
            if unknown:
                raise InvalidInput(
                    f"gate configuration has unknown keys {unknown}; known keys are "
                    f"{sorted(cls.model_fields)}"
                )
        return document

    @model_validator(mode="after")
    def _one_comparison(self) -> Self:
        if self.no_regression and self.no_regression_vs is not None:
            raise ValueError("give either no_regression or no_regression_vs, not both")
        if not any(_is_set(getattr(self, gate)) for gate in self.model_fields_set - _NOT_GATES):
            raise ValueError(
                "names no gate; add one, e.g. min_accuracy 0.9, no_nan or no_regression"
            )
        return self

    def config(self, current: str | None) -> GateConfig:
        """The gates to run; `current` is the version the endpoint serves now (NAME:VERSION),
        which `no_regression` compares with."""
        from pathlib import Path

        from berth.ops.gate_config import GateConfig

        return GateConfig(
            data=Path(self.data) if self.data is not None else None,
            target=self.target,
            min_accuracy=self.min_accuracy,
            min_auc=self.min_auc,
            max_rmse=self.max_rmse,
            max_mae=self.max_mae,
            max_latency_ms=self.max_latency_ms,
            no_nan=self.no_nan,
            output_range=(self.output_range[0], self.output_range[1])
            if self.output_range
            else None,
            no_regression_vs=current if self.no_regression else self.no_regression_vs,
            regression_tolerance=self.regression_tolerance,
        )


class RolloutRequest(RequestModel):
    """Start moving an endpoint to a new version: canary or blue-green."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "endpoint": "churn",
        "to": "churn:3",
        "strategy": "canary",
        "steps": [5, 25, 50, 100],
        "interval": "60s",
        "max_error_rate": 0.01,
        "max_p99_ms": 200,
    }

    endpoint: EndpointName
    to: Reference = Field(description="The candidate version.")
    strategy: Literal["canary", "blue-green"] = "canary"
    steps: Annotated[list[float], BeforeValidator(_steps)] = Field(
        [5.0, 25.0, 50.0, 100.0],
        description="Canary weights in percent, rising, ending at 100 (or the same as text, "
        '"5,25,50,100").',
        json_schema_extra={
            "minItems": 1,
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        },
    )
    interval: Duration = Field(
        "60s",
        description="Canary: how long each step lasts at least; blue-green: the live check "
        "after the switch.",
    )
    max_error_rate: float | None = Field(
        None,
        description="Roll back when the candidate's error rate is significantly above this.",
        json_schema_extra=FRACTION,
    )
    max_p99_ms: float | None = Field(
        None,
        description="Absolute p99 limit in ms: above it the candidate is rolled back, unless "
        "stable is as slow in the same window (within max_p99_ratio).",
        json_schema_extra=POSITIVE,
    )
    max_p99_ratio: float = Field(
        CanaryCriteria.max_p99_ratio,
        description="Roll back when the candidate's p99 is above this many times stable's in "
        "the same window, plus p99_slack_ms; at least 1, or 0 for no comparison.",
        json_schema_extra=NOT_NEGATIVE,
    )
    p99_slack_ms: float = Field(
        CanaryCriteria.p99_slack_ms,
        description="Milliseconds added to stable's p99 times max_p99_ratio.",
        json_schema_extra=NOT_NEGATIVE,
    )
    min_requests: int = Field(
        CanaryCriteria.min_requests,
        ge=0,
        le=LARGEST_COUNT,
        description="Candidate requests per step before error rate and latency are judged.",
    )
    min_accuracy: float | None = Field(
        None,
        description="Roll back when live accuracy (from feedback) is significantly below this.",
        json_schema_extra=FRACTION,
    )
    min_feedback: int = Field(
        CanaryCriteria.min_feedback,
        ge=0,
        le=LARGEST_COUNT,
        description="Labelled candidate predictions before accuracy is judged.",
    )
    alpha: float = Field(
        CanaryCriteria.alpha,
        description="Significance level of every decision.",
        json_schema_extra={"exclusiveMinimum": 0, "exclusiveMaximum": 0.5},
    )
    metrics_source: Text = Field(
        "server",
        description="Where traffic totals come from: server, or a Prometheus URL, e.g. "
        "http://host:9090.",
    )
    switch: Literal["auto", "manual"] = Field(
        "auto",
        description="Blue-green: auto switches after the preview; manual waits for promote.",
    )
    preview: Duration = Field(
        "0s", description="Blue-green: how long green is reachable only with X-Berth-Route."
    )
    finalize_after: Duration | None = Field(
        None, description="Blue-green: unload blue this long after the switch; else at finalize."
    )
    gates: Gates | None = None

    @model_validator(mode="after")
    def _valid_config(self) -> Self:
        self.config()  # the criteria's and the strategy's own checks, in their words
        return self

    def criteria(self) -> CanaryCriteria:
        return CanaryCriteria(
            min_requests=self.min_requests,
            max_error_rate=self.max_error_rate,
            max_p99_ms=self.max_p99_ms,
            max_p99_ratio=self.max_p99_ratio,
            p99_slack_ms=self.p99_slack_ms,
            min_accuracy=self.min_accuracy,
            min_feedback=self.min_feedback,
            alpha=self.alpha,
        )

    def config(self) -> RolloutConfig:
        from berth.durations import parse_duration
        from berth.rollouts.strategies import RolloutConfig

        finalize_after = self.finalize_after
        return RolloutConfig(
            steps=tuple(self.steps),
            interval_seconds=parse_duration(self.interval).total_seconds(),
            criteria=self.criteria(),
            metrics_source=self.metrics_source,
            switch=self.switch,
            preview_seconds=parse_duration(self.preview).total_seconds(),
            finalize_after_seconds=(
                parse_duration(finalize_after).total_seconds() if finalize_after else None
            ),
        )


class RollbackRequest(RequestModel):
    """Send all traffic back to the old version."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"reason": "support tickets about scores"}

    reason: FreeText | None = Field(None, description="Why, for the history.")


# ---------------------------------------------------------------------------- experiments


class ExperimentRequest(RequestModel):
    """Split an endpoint between versions; each user sticks to one variant."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "endpoint": "churn",
        "variants": ["a=churn:2:50", "b=churn:3:50"],
        "sticky": "header:X-User-ID",
        "metric": "accuracy",
    }

    endpoint: EndpointName
    variants: list[Text] = Field(
        description="NAME=MODEL:VERSION:WEIGHT each, e.g. a=churn:2:50; the first is the "
        "control; weights add up to 100.",
        json_schema_extra={
            "minItems": 2,
            "items": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}=.+:[0-9.]+$"},
        },
    )
    sticky: Sticky = "header:X-User-ID"
    metric: Text = Field(
        "accuracy",
        description="What decides: the share of correct predictions, or the mean numeric "
        "outcome posted as feedback.",
        json_schema_extra={"enum": list(EXPERIMENT_METRICS)},
    )
    alpha: float = Field(
        0.05,
        description="Significance level of the comparisons.",
        json_schema_extra={"exclusiveMinimum": 0, "exclusiveMaximum": 0.5},
    )
    min_samples: int = Field(
        100,
        le=LARGEST_COUNT,
        description="Observations of the metric each variant needs before a recommendation.",
        json_schema_extra={"minimum": 1},
    )


class ConcludeRequest(RequestModel):
    """End an experiment: the winner becomes the endpoint's one stable route."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"winner": "b"}

    winner: Text = Field(description="The winning variant's name, e.g. b.")
