"""Admin request bodies: the models the API validates and documents, and the CLI builds."""

from __future__ import annotations

from typing import Any

import pytest

from berth.api.openapi import common as doc
from berth.backup.requests import BackupRequest, PruneRequest, VerifyRequest
from berth.cli.flags import from_flags
from berth.errors import InvalidInput
from berth.jobs.requests import ScheduleRequest
from berth.optimize.requests import OptimizeRequest
from berth.registration.requests import UploadMetadata
from berth.registry.requests import AliasRequest
from berth.request_model import NoFields, RequestModel
from berth.rollouts.requests import (
    ConcludeRequest,
    EndpointRequest,
    ExperimentRequest,
    RollbackRequest,
    RolloutRequest,
    RoutesRequest,
    ShadowRequest,
)
from berth.security.requests import KeyRequest, RotateRequest

MODELS: list[type[RequestModel]] = [
    AliasRequest,
    BackupRequest,
    ConcludeRequest,
    EndpointRequest,
    ExperimentRequest,
    KeyRequest,
    NoFields,
    OptimizeRequest,
    PruneRequest,
    RollbackRequest,
    RolloutRequest,
    RotateRequest,
    RoutesRequest,
    ScheduleRequest,
    ShadowRequest,
    UploadMetadata,
    VerifyRequest,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_each_example_is_a_valid_body_and_the_document_has_no_references(
    model: type[RequestModel],
) -> None:
    model.parse(model.EXAMPLE)
    assert "$ref" not in str(doc.model_schema(model))
    body = doc.request_body(model)["requestBody"]["content"]["application/json"]
    assert body["example"] == model.EXAMPLE


def _refusal(model: type[RequestModel], body: Any) -> str:
    with pytest.raises(InvalidInput) as refused:
        model.parse(body)
    return refused.value.message


ROLLOUT = {"endpoint": "churn", "to": "churn:3"}


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        (
            RolloutRequest,
            {**ROLLOUT, "steps": [5, "x"]},
            "'steps' must be a list of numbers; item 2",
        ),
        (RolloutRequest, {**ROLLOUT, "min_requests": True}, "from 0 to 1000000000, got True"),
        (RolloutRequest, {**ROLLOUT, "a": 1, "b": 2, "to": 3}, "unknown fields a, b; known"),
        (RolloutRequest, {**ROLLOUT, "gates": {"no_nan": 1}}, "'gates.no_nan' must be true"),
        (RoutesRequest, {"routes": [{"label": "a"}]}, "route 1 has no 'model' field"),
        (NoFields, {"reason": "x"}, "unknown field reason; known fields: none"),
        (EndpointRequest, {"name": "x", "model": "m", "description": "d" * 1001}, "at most 1000"),
        (AliasRequest, {"version": 10**40}, "whole number from 1 to 2147483647, got a very large"),
        (BackupRequest, {"to": ["/b", 3]}, "'to' must be a list of strings; item 2 is 3"),
        (PruneRequest, {"destination": "/b", "keep_last": -1}, "'keep_last' must be a whole"),
        (VerifyRequest, {"destination": "/b", "deep": "yes"}, "'deep' must be true or false"),
    ],
)
def test_refusals_name_the_field(model: type[RequestModel], body: Any, message: str) -> None:
    refusal = _refusal(model, body)
    assert message in refusal
    assert refusal.endswith(f"send e.g. {model.example_text()}")


def test_an_alias_version_may_be_written_as_digits_only() -> None:
    assert AliasRequest.parse({"version": "3"}).version == 3
    assert "got '²'" in _refusal(AliasRequest, {"version": "²"})


def test_from_flags_names_the_flags_also_in_a_validators_words() -> None:
    flags = {"max_error_rate": "--max-error-rate", "gates": "--gate-*",
             "gates.no_nan": "--gate-no-nan", "gates.min_accuracy": "--gate-min-accuracy",
             "gates.no_regression": "--gate-no-regression"}  # fmt: skip
    for values, message in (
        ({"max_error_rate": 2.0}, "--max-error-rate is a fraction within [0, 1], got 2.0"),
        ({"gates": {"data": "x.csv"}}, "--gate-* names no gate; add one, e.g. --gate-min-acc"),
        ({"gates": {"no_nan": "yes"}}, "--gate-no-nan must be true or false, got 'yes'"),
    ):
        with pytest.raises(InvalidInput) as refused:
            from_flags(RolloutRequest, flags, {**ROLLOUT, **values})
        assert refused.value.message.startswith(message), refused.value.message
    # an option not given (None) leaves the model's default
    assert from_flags(RolloutRequest, flags, {**ROLLOUT, "interval": None}).interval == "60s"


def test_a_rollout_request_becomes_the_config_the_service_stores() -> None:
    request = RolloutRequest.parse({**ROLLOUT, "steps": "10,50,100", "interval": "5m",
                                    "max_p99_ms": 250, "finalize_after": "10m"})  # fmt: skip
    config = request.config()
    assert config.steps == (10.0, 50.0, 100.0)
    assert (config.interval_seconds, config.finalize_after_seconds) == (300.0, 600.0)
    assert config.criteria.max_p99_ms == 250.0
    gates = RolloutRequest.parse({**ROLLOUT, "gates": {"data": "x.csv", "target": "y",
                                                      "no_regression": True}}).gates  # fmt: skip
    assert gates is not None
    assert gates.config("churn:2").no_regression_vs == "churn:2"
