"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis, in process over ASGI).

Every documented operation gets generated requests (schema-valid and schema-breaking ones),
once as an admin, so handlers run through to the model, and once without credentials. Every
answer must be documented: never a 5xx, a documented status code and content type, headers and
a body that match the documented schema.

Generation is seeded from the test (`derandomize=True`, no example database), so a CI run is
reproducible; the number of generated cases is printed at the end of each test.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import schemathesis
import skops.io
from hypothesis import HealthCheck, given, reject
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from berth.config import Settings
from berth.registry.service import RegisterRequest, Registry
from berth.security.keys import KeyService, server_secret
from tests.conftest import register_churn

JWT_SECRET = "fuzz-jwt-secret-0123456789abcdef-0123456789"
ADMIN = "fuzz-admin"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AS_ADMIN = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 25}
ANONYMOUS = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}
OPEN_OPERATIONS = {
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /v2/",
    "GET /v2/health/live",
    "GET /v2/health/ready",
}
KEY_PATTERN = re.compile(r"berth_[A-Za-z0-9-]+_[A-Za-z0-9_-]{16,}")


@dataclass
class Fuzzed:
    schema: Any
    registry: Registry
    admin_key: str
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)


@pytest.fixture
def fuzzed(
    settings: Settings,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    tmp_path: Path,
) -> Iterator[Fuzzed]:
    """A secured app (keys and JWT) serving iris (tensor) and churn (tabular), plus `spare`.

    `spare` (two versions, alias `staging`, not served) is what DELETE requests aim at, so the
    served models stay intact for the whole run while deletions still go through.
    """
    from berth.api.app import build_services, create_app

    settings = settings.model_copy(
        update={"jwt_secret": SecretStr(JWT_SECRET), "jwt_audience": "berth-fuzz"}
    )
    registry = Registry.from_settings(settings)
    model, sample = iris_files
    iris = tmp_path / "iris.skops"  # skops, so serving needs no pickle trust
    skops.io.dump(joblib.load(model), iris)
    registry.register(RegisterRequest(name="iris", path=iris, sample=sample, aliases=("production",)))
    register_churn(registry, churn_files)
    for aliases in (("staging",), ()):
        registry.register(RegisterRequest(name="spare", path=iris, sample=sample, aliases=aliases))
    keys = KeyService(registry.db, server_secret(settings))
    _, admin_key = keys.create(ADMIN, ("admin",))
    keys.create("fuzz-user", ("predict", "read"))
    keys.create("fuzz-victim", ("read",))
    app = create_app(settings, build_services(settings, registry))
    # Loading the schema starts the app's lifespan (models load); schemathesis' pytest plugin
    # ends it when the test is torn down.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield Fuzzed(schema=schema, registry=registry, admin_key=admin_key)
    registry.db.dispose()


# ---------------------------------------------------------------------------- the runs


def test_every_operation_as_admin(fuzzed: Fuzzed, request: pytest.FixtureRequest) -> None:
    headers = {"X-API-Key": fuzzed.admin_key}

    def authenticated(case: Case, response: Any) -> None:
        assert response.status_code not in (401, 403), (case.operation.label, response.text)

    _fuzz(fuzzed, headers, AS_ADMIN, authenticated)
    _report(request, "as admin", fuzzed)
    import pprint; pprint.pprint(sorted(fuzzed.statuses.items()))
    assert sum(fuzzed.cases.values()) >= 800
    # the fixed path parameters and the documented examples take requests all the way through
    for label in (
        "POST /api/v1/models/{ref}/predict",
        "POST /api/v1/models/{ref}/batch-predict",
        "POST /v2/models/{name}/infer",
        "GET /api/v1/models/{name}/versions/{version}",
        "GET /v2/models/{name}",
    ):
        assert fuzzed.statuses[(label, 200)], (label, _statuses_of(fuzzed, label))


def test_every_operation_without_credentials(
    fuzzed: Fuzzed, request: pytest.FixtureRequest
) -> None:
    def refused(case: Case, response: Any) -> None:
        if case.operation.label in OPEN_OPERATIONS:
            return
        # generated X-API-Key and Authorization values (keys, JWTs, garbage) never get in
        assert response.status_code == 401, (case.operation.label, response.text)
        assert response.headers["www-authenticate"][0].startswith('Bearer realm="berth"')

    _fuzz(fuzzed, {}, ANONYMOUS, refused)
    _report(request, "without credentials", fuzzed)
    assert sum(fuzzed.cases.values()) >= 250


def _fuzz(
    fuzzed: Fuzzed,
    headers: dict[str, str],
    examples: dict[GenerationMode, int],
    extra_check: Callable[[Case, Any], None],
) -> None:
    failures: list[str] = []
    for result in fuzzed.schema.get_all_operations():
        operation = result.ok()
        for mode, count in examples.items():

            @hypothesis_settings(
                max_examples=count,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )
            @given(case=_cases(operation, mode))
            def call(case: Case) -> None:
                if case.path_parameters and case.path_parameters.get("name") == ADMIN:
                    reject()  # revoking or rotating the key in use would end the run
                response = case.call(headers=dict(headers))  # call() adds to the dict
                fuzzed.cases[mode.value] += 1
                fuzzed.statuses[(operation.label, response.status_code)] += 1
                case.validate_response(response, checks=CHECKS, headers=headers)
                extra_check(case, response)

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to break
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a Base one
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def _cases(operation: Any, mode: GenerationMode) -> st.SearchStrategy[Case]:
    """Generated cases; half of them with path parameters that name real things."""
    generated = operation.as_strategy(generation_mode=mode)
    known = [
        operation.as_strategy(generation_mode=mode, path_parameters=values)
        for values in _known_path_parameters(operation.method.upper(), operation.path)
    ]
    return st.one_of(generated, st.one_of(known)) if known else generated


def _known_path_parameters(method: str, path: str) -> list[dict[str, str]]:
    names = re.findall(r"{(\w+)}", path)
    if not names:
        return []
    if path.startswith("/api/v1/keys/"):
        return [{"name": "fuzz-user"}, {"name": "fuzz-victim"}]
    values = {
        "ref": ["iris", "iris:1", "iris@production", "churn", "churn@production", "spare"],
        "name": ["spare"] if method == "DELETE" else ["iris", "churn", "spare"],
        "version": ["1", "2"],
        "alias": ["production", "staging"],
    }
    return [
        dict(zip(names, combination, strict=True))
        for combination in itertools.product(*(values[n] for n in names))
    ]


def _statuses_of(fuzzed: Fuzzed, label: str) -> dict[int, int]:
    return {status: n for (where, status), n in fuzzed.statuses.items() if where == label}


def _report(request: pytest.FixtureRequest, run: str, fuzzed: Fuzzed) -> None:
    total = sum(fuzzed.cases.values())
    by_class = Counter(f"{status // 100}xx" for (_, status) in fuzzed.statuses.elements())
    line = (
        f"OpenAPI fuzzing {run}: {total} generated cases "
        f"({', '.join(f'{mode} {n}' for mode, n in sorted(fuzzed.cases.items()))}); "
        f"answers {dict(sorted(by_class.items()))}"
    )
    request.node.user_properties.append(("generated_cases", total))
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():  # shown even under -q and output capture
        reporter.write_line("")
        reporter.write_line(line)


# ---------------------------------------------------------------------------- the document


def test_openapi_document_is_valid_complete_and_holds_no_secret(fuzzed: Fuzzed) -> None:
    document = fuzzed.schema.raw_schema
    _validate_openapi(document)
    text = json.dumps(document)
    for secret in (fuzzed.admin_key, JWT_SECRET):
        assert secret not in text
    assert not KEY_PATTERN.search(text)
    assert "HTTPValidationError" not in text  # the app answers 400 {"error"}, never 422
    schemes = document["components"]["securitySchemes"]
    assert schemes == {
        "ApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": schemes["ApiKey"]["description"],
        },
        "Bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT or API key",
            "description": schemes["Bearer"]["description"],
        },
    }
    operations = 0
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            operations += 1
            label = f"{method.upper()} {path}"
            responses = operation["responses"]
            success = [s for s in responses if s.startswith("2")]
            assert len(success) == 1, label
            assert responses[success[0]]["content"], label
            for status, response in responses.items():
                assert status in ("200", "201") or int(status) >= 400, (label, status)
                for content in response.get("content", {}).values():
                    assert content.get("schema") not in (None, {}), (label, status)
            if label in OPEN_OPERATIONS:
                assert "security" not in operation, label
                continue
            assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}], label
            assert {"401", "403", "429", "503"} <= set(responses), label
            if method in ("post", "put"):
                assert operation["requestBody"]["content"]["application/json"]["schema"], label
                assert "413" in responses, label
            for name in re.findall(r"{(\w+)}", path):
                declared = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
                assert name in declared, (label, name)
    assert operations == 27


def _validate_openapi(document: dict[str, Any]) -> None:
    """With openapi-spec-validator when installed, else the OpenAPI 3.1 meta-schema."""
    try:
        from openapi_spec_validator import validate
    except ImportError:
        from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

        OPENAPI_31_VALIDATOR.validate(document)
    else:
        validate(document)


def test_binary_inference_is_documented(fuzzed: Fuzzed) -> None:
    """A binary (Triton binary_data) answer conforms too: content type and header documented."""
    operation = fuzzed.schema["/v2/models/{name}/infer"]["POST"]
    body = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8}],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
    }
    case = operation.Case(path_parameters={"name": "iris"}, body=body, media_type="application/json")
    headers = {"X-API-Key": fuzzed.admin_key}
    response = case.call(headers=dict(headers))  # call() adds to the dict
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ["application/octet-stream"]
    case.validate_response(response, checks=CHECKS, headers=headers)
    length = int(response.headers["inference-header-content-length"][0])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(response.content) - length
    assert np.frombuffer(response.content[length:], dtype="<i8").shape == (2,)
