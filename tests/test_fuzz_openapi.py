"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis, in process over ASGI).

Every documented operation gets generated requests (schema-valid and schema-breaking ones),
once as an admin, so handlers run through to the model (half the requests name the fixture's
real models and keys, some carry valid bodies), and once with no or bad credentials (garbage
keys, a real key id with a wrong secret, unsigned and wrongly signed JWTs), which protected
routes must refuse with 401. Every answer must be documented: never a 5xx, a documented status
code and content type, headers and a body that match the documented schema.

Generation is seeded from the test (`derandomize=True`, no example database), so a CI run is
reproducible; the number of generated cases is printed at the end of each run (and recorded
as the `generated_cases` property of the test, e.g. in a JUnit XML report).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, reject
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from berth.api.v2 import input_tensors
from berth.config import Settings
from berth.jobs.schedules import ScheduleService
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.conftest import register_churn, register_iris

JWT_SECRET = "fuzz-jwt-secret-0123456789abcdef-0123456789"
ADMIN = "fuzz-admin"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AS_ADMIN = {GenerationMode.POSITIVE: 50, GenerationMode.NEGATIVE: 30}
ANONYMOUS = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}
OPEN_OPERATIONS = {
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /v2/",
    "GET /v2/health/live",
    "GET /v2/health/ready",
}
SCHEDULE = {"cron": "0 * * * *", "args": ["iris", "--source", "in.csv", "--sink", "out.csv"]}
KEY_PATTERN = re.compile(r"berth_[A-Za-z0-9-]+_[A-Za-z0-9_-]{16,}")


@dataclass
class Fuzzed:
    schema: Any
    registry: Registry
    admin_key: str
    bodies: dict[str, dict[str, Any]]
    """Valid request bodies per served model: `features`, `instances` and `v2` (OIP inputs)."""
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    launched: list[int] = field(default_factory=list)
    """Jobs POST /api/v1/jobs and /api/v1/backups would have started: the app's launcher
    only records them."""
    backups: str = ""
    """A backup destination (an empty folder) for the backup routes' known requests."""


@pytest.fixture
def fuzzed(
    settings: Settings,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Fuzzed]:
    """A secured app (keys and JWT) serving iris (tensor) and churn (tabular), plus `spare`.

    `spare` (two versions, alias `staging`, not served) is what DELETE requests aim at, so the
    served models stay intact for the whole run while deletions still go through. Batch jobs
    are recorded but never started: generated sources and sinks are paths on this machine.
    """
    from berth.api.app import build_services, create_app
    from berth.optimize import speed

    # POST .../optimize measures speed: measured, not asserted, so briefly
    monkeypatch.setattr(speed, "BUDGET_SECONDS", 0.005)
    settings = settings.model_copy(
        update={
            "jwt_secret": SecretStr(JWT_SECRET),
            "jwt_audience": "berth-fuzz",
            # a generated `wait` may name a running rollout: hold such a long poll briefly
            "long_poll_seconds": 0.2,
        }
    )
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    register_churn(registry, churn_files)
    model, sample = iris_files
    for aliases in (("staging",), ()):
        register(
            registry,
            RegisterRequest(
                name="spare", path=model, sample=sample, aliases=aliases, trust_pickle=True
            ),
        )
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    _, admin_key = keys.create(ADMIN, ("admin",))
    keys.create("fuzz-user", ("predict", "read"))
    keys.create("fuzz-victim", ("read",))
    for schedule in ("nightly", "spare"):  # DELETE aims at spare, the rest at nightly
        ScheduleService(registry.db).put(schedule, cron="0 2 * * *", args=SCHEDULE["args"])
    app = create_app(settings, build_services(settings, registry))
    launched: list[int] = []
    app.state.job_launcher = lambda _settings, job_id, _args, kind="batch": launched.append(job_id)
    # Loading the schema starts the app's lifespan (models load, the refresher runs); it runs
    # until shut down, before the registry goes (schemathesis' pytest plugin would do it too).
    # The document needs credentials (BERTH_DOCS=authenticated, the default).
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"X-API-Key": admin_key})
    bodies = {name: _valid_bodies(registry.resolve(name)) for name in ("iris", "churn")}
    try:
        yield Fuzzed(
            schema=schema,
            registry=registry,
            admin_key=admin_key,
            bodies=bodies,
            launched=launched,
            backups=str(tmp_path / "backups"),
        )
    finally:
        asgi.shutdown_lifespans()
        registry.db.dispose()


# ---------------------------------------------------------------------------- the runs


def test_every_operation_as_admin(fuzzed: Fuzzed, request: pytest.FixtureRequest) -> None:
    def authenticated(case: Case, response: Any) -> None:
        assert response.status_code not in (401, 403), (case.operation.label, response.text)

    _fuzz(fuzzed, st.just({"X-API-Key": fuzzed.admin_key}), AS_ADMIN, authenticated)
    _report(request, "as admin", fuzzed)
    assert sum(fuzzed.cases.values()) >= 1000
    # the fixed path parameters and the documented examples take requests all the way through
    for label in (
        "POST /api/v1/predict",
        "POST /api/v1/batch-predict",
        "POST /api/v1/models/{ref}/predict",
        "POST /api/v1/models/{ref}/batch-predict",
        "POST /v2/models/{name}/infer",
        "POST /v2/models/{name}/versions/{version}/infer",
        "GET /api/v1/models/{name}/versions/{version}",
        "GET /v2/models/{name}",
        "GET /v2/models/{name}/versions/{version}/ready",
        "PUT /api/v1/models/{name}/aliases/{alias}",
        "POST /api/v1/keys/{name}/rotate",
        "GET /api/v1/jobs/{id}",
        "PUT /api/v1/schedules/{name}",
        "GET /api/v1/schedules/{name}/runs",
        "POST /api/v1/prediction-log/prune",
    ):
        assert fuzzed.statuses[(label, 200)], (label, _statuses_of(fuzzed, label))
    assert fuzzed.statuses[("GET /api/v1/backups", 200)], _statuses_of(
        fuzzed, "GET /api/v1/backups"
    )
    started = fuzzed.statuses[("POST /api/v1/jobs", 202)]
    assert started, _statuses_of(fuzzed, "POST /api/v1/jobs")
    backups = fuzzed.statuses[("POST /api/v1/backups", 202)]
    assert backups, _statuses_of(fuzzed, "POST /api/v1/backups")
    # each accepted job recorded, none run
    assert len(fuzzed.launched) == started + backups


def test_every_operation_without_valid_credentials(
    fuzzed: Fuzzed, request: pytest.FixtureRequest
) -> None:
    def refused(case: Case, response: Any) -> None:
        if case.operation.label in OPEN_OPERATIONS:
            return
        assert response.status_code == 401, (case.operation.label, response.text)
        assert response.headers["www-authenticate"][0].startswith('Bearer realm="berth"')

    _fuzz(fuzzed, _bad_credentials(fuzzed), ANONYMOUS, refused)
    _report(request, "without valid credentials", fuzzed)
    assert sum(fuzzed.cases.values()) >= 300


_TOKEN_CHARACTERS = string.ascii_letters + string.digits + "-_.~+/="


def _bad_credentials(fuzzed: Fuzzed) -> st.SearchStrategy[dict[str, str]]:
    """None, or keys and JWTs that must not verify: garbage, a real key id with a wrong
    secret, unsigned or wrongly signed tokens with arbitrary headers and claims."""
    token = st.text(_TOKEN_CHARACTERS, max_size=80)
    claims = st.dictionaries(
        st.sampled_from(["sub", "aud", "iss", "exp", "nbf", "iat", "scope", "scp", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(string.printable, max_size=20),
            st.lists(st.text(string.ascii_letters, max_size=8), max_size=3),
        ),
        max_size=6,
    )
    header = st.fixed_dictionaries(
        {"alg": st.sampled_from(["HS256", "HS512", "RS256", "ES256", "none", "", "x"])},
        optional={"typ": st.sampled_from(["JWT", "at+jwt", ""]), "kid": token},
    )
    jwt_like = st.builds(
        lambda head, body, signature: (
            f"{_b64(json.dumps(head))}.{_b64(json.dumps(body))}.{_b64(signature)}"
        ),
        header,
        claims,
        st.binary(max_size=64),
    )
    wrongly_signed = st.builds(
        lambda scope: pyjwt.encode(
            {"sub": "mallory", "aud": "berth-fuzz", "scope": scope, "exp": 4102444800},
            "not-the-server-secret-0123456789abcdef",
            algorithm="HS256",
        ),
        st.sampled_from(["admin", "predict read", ""]),
    )
    key_id = fuzzed.admin_key.split("_")[1]
    return st.one_of(
        st.just({}),
        st.builds(lambda t: {"X-API-Key": t}, token),
        st.builds(lambda t: {"X-API-Key": f"berth_{key_id}_{t}"}, token),
        st.builds(lambda t: {"Authorization": f"Bearer {t}"}, st.one_of(jwt_like, wrongly_signed)),
        st.builds(
            lambda scheme, t: {"Authorization": f"{scheme} {t}"},
            st.sampled_from(["Basic", "bearer", "Token", "Bearer "]),
            token,
        ),
    )


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _fuzz(
    fuzzed: Fuzzed,
    credentials: st.SearchStrategy[dict[str, str]],
    examples: dict[GenerationMode, int],
    extra_check: Callable[[Case, Any], None],
) -> None:
    """Every operation, in every mode; all failures are collected, then reported together."""
    failures: list[str] = []
    for result in fuzzed.schema.get_all_operations():
        operation = result.ok()
        for mode, count in examples.items():
            try:
                _fuzz_operation(fuzzed, operation, mode, count, credentials, extra_check)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to break
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is Base
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def _fuzz_operation(
    fuzzed: Fuzzed,
    operation: Any,
    mode: GenerationMode,
    count: int,
    credentials: st.SearchStrategy[dict[str, str]],
    extra_check: Callable[[Case, Any], None],
) -> None:
    @hypothesis_settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=_cases(fuzzed, operation, mode), headers=credentials)
    def call(case: Case, headers: dict[str, str]) -> None:
        if case.path_parameters and case.path_parameters.get("name") == ADMIN:
            reject()  # revoking or rotating the key in use would end the run
        if headers and case.headers:
            for name in ("X-API-Key", "Authorization"):  # the drawn credentials, and only them
                case.headers.pop(name, None)
        response = case.call(headers=dict(headers))  # call() adds to the dict it is given
        fuzzed.cases[mode.value] += 1
        fuzzed.statuses[(operation.label, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        extra_check(case, response)

    call()


def _valid_bodies(info: VersionInfo) -> dict[str, Any]:
    rows = info.example
    assert rows
    if info.signature.kind == "tabular":
        inputs = [
            {**tensor, "shape": [len(rows), 1], "data": [row[tensor["name"]] for row in rows]}
            for tensor in input_tensors(info.signature)
        ]
    else:
        (tensor,) = input_tensors(info.signature)
        inputs = [{**tensor, "shape": [len(rows), *tensor["shape"][1:]], "data": rows}]
    return {
        "features": {"features": rows[0]},
        "instances": {"instances": rows},
        "v2": {"inputs": inputs},
    }


def _cases(fuzzed: Fuzzed, operation: Any, mode: GenerationMode) -> st.SearchStrategy[Case]:
    """Generated cases; half of them aimed at real models and keys, some with valid bodies."""
    generated = operation.as_strategy(generation_mode=mode)
    known = [
        operation.as_strategy(generation_mode=mode, path_parameters=values, **body)
        for values, body in _known_requests(fuzzed, operation.method.upper(), operation.path)
    ]
    return st.one_of(generated, st.one_of(known)) if known else generated


def _known_requests(
    fuzzed: Fuzzed, method: str, path: str
) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(path parameters, `as_strategy` body arguments) that name what the fixture made."""
    names = re.findall(r"{(\w+)}", path)
    if path.startswith("/api/v1/keys/"):
        return [({"name": "fuzz-user"}, {}), ({"name": "fuzz-victim"}, {})]
    if path.startswith("/api/v1/schedules/"):
        if method == "DELETE":
            return [({"name": "spare"}, {})]
        known = [({"name": "nightly"}, {}), ({"name": "hourly"}, {})]
        if method == "PUT":
            known += [(parameters, _json(SCHEDULE)) for parameters, _ in known]
        return known
    values = {
        "ref": ["iris", "iris:1", "iris@production", "churn", "churn@production", "spare"],
        "name": ["spare"] if method == "DELETE" else ["iris", "churn", "spare"],
        "version": ["1", "2"],
        "alias": ["production", "staging"],
        "id": ["1", "2"],
    }
    found: list[tuple[dict[str, str], dict[str, Any]]] = []
    if names:
        found = [
            (dict(zip(names, combination, strict=True)), {})
            for combination in itertools.product(*(values[n] for n in names))
        ]
    if path.endswith("/aliases/{alias}") and method == "PUT":
        found += [(parameters, _json({"version": 1})) for parameters, _ in found]
    if path.startswith("/api/v1/backups"):
        # a real destination (empty: verify and prune answer 404 and 400; a backup is recorded)
        destination = fuzzed.backups
        if method == "GET":
            return [({}, {"query": {"destination": destination}})]
        body = {"/api/v1/backups": {"to": [destination]},
                "/api/v1/backups/verify": {"destination": destination, "deep": True},
                "/api/v1/backups/prune": {"destination": destination, "keep_last": 1}}[path]  # fmt: skip
        return [({}, _json(body))]
    if path == "/api/v1/jobs" and method == "POST":
        job = {"model": "iris@production", "source": "in.csv", "sink": "out.parquet"}
        found += [({}, _json(job)), ({}, _json({"args": ["churn", "--source", "a.csv",
                                                          "--sink", "b.csv"]}))]  # fmt: skip
    kind = {"predict": "features", "batch-predict": "instances", "infer": "v2"}.get(
        path.rsplit("/", 1)[-1]
    )
    if kind is not None:
        # /api/v1/predict and /api/v1/batch-predict serve the default model, churn
        for model in ("iris", "churn") if names else ("churn",):
            parameters = {"ref": model, "name": model, "version": "1"}
            found.append(({n: parameters[n] for n in names}, _json(fuzzed.bodies[model][kind])))
    return found


def _json(body: Any) -> dict[str, Any]:
    return {"body": body, "media_type": "application/json"}


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
                assert status in ("200", "201", "202") or int(status) >= 400, (label, status)
                for content in response.get("content", {}).values():
                    assert content.get("schema") not in (None, {}), (label, status)
            if label in OPEN_OPERATIONS:
                assert "security" not in operation, label
                continue
            assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}], label
            assert {"401", "403", "429", "503"} <= set(responses), label
            if method in ("post", "put"):
                content = operation["requestBody"]["content"]
                # JSON, or multipart/form-data for the model upload and validation
                body = content.get("application/json") or content["multipart/form-data"]
                assert body["schema"], label
                assert "413" in responses, label
            for name in re.findall(r"{(\w+)}", path):
                declared = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
                assert name in declared, (label, name)
    # 27 serving, security and admin + feedback, performance, drift + 2 endpoint predictions
    # + 23 traffic admin (endpoints, rollouts, experiments) + 4 batch jobs + the model upload
    # + validation + deleting a model + optimize + accelerate + 7 schedules + the prediction
    # log's prune + a version's record and artifact download + 4 backups (start, list, verify,
    # prune)
    assert operations == 78


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
    case = operation.Case(
        path_parameters={"name": "iris"}, body=body, media_type="application/json"
    )
    headers = {"X-API-Key": fuzzed.admin_key}
    response = case.call(headers=dict(headers))  # call() adds to the dict
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ["application/octet-stream"]
    case.validate_response(response, checks=CHECKS, headers=headers)
    length = int(response.headers["inference-header-content-length"][0])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(response.content) - length
    assert np.frombuffer(response.content[length:], dtype="<i8").shape == (2,)


# ---------------------------------------------------------------------------- found by fuzzing

NINES = "9" * 5000
EDGE_CASES: list[tuple[str, str, Any, int]] = [
    # "²".isdigit() is True but int("²") raises; 5,000 digits make int() raise as well
    ("GET", "/api/v1/models/iris/versions/²", None, 400),
    ("GET", "/api/v1/models/iris/versions/99999999999999999999", None, 400),
    ("GET", f"/api/v1/models/iris/versions/{NINES}", None, 400),
    ("GET", "/v2/models/iris/versions/٣", None, 400),
    ("DELETE", "/api/v1/models/spare/versions/²", None, 400),
    ("PUT", "/api/v1/models/spare/aliases/staging", {"version": "²"}, 400),
    ("PUT", "/api/v1/models/spare/aliases/staging", {"version": 99999999999}, 400),
    ("PUT", "/api/v1/models/spare/aliases/staging", {"version": "1"}, 200),
    ("GET", "/api/v1/audit?limit=²", None, 400),
    # durations that parse but overflow datetime arithmetic
    ("POST", "/api/v1/keys", {"name": "forever", "expires": "999999999d"}, 400),
    ("POST", "/api/v1/keys/fuzz-user/rotate", {"grace": "999999999d"}, 400),
    ("GET", "/api/v1/audit?since=999999999d", None, 400),
    ("GET", "/api/v1/audit?since=36500d", None, 200),
    # readiness of what is not served, or does not exist, is no 503 "retry later"
    ("GET", "/v2/models/nosuch/ready", None, 404),
    ("GET", "/v2/models/spare/ready", None, 404),
    ("GET", "/v2/models/iris/versions/7/ready", None, 404),
    ("GET", "/v2/models/iris/versions/1/ready", None, 200),
]


def test_edge_cases_found_while_fuzzing(fuzzed: Fuzzed) -> None:
    """The requests behind the 5xx answers fuzzing found, each with its documented answer."""
    headers = {"X-API-Key": fuzzed.admin_key}
    wrong = []
    for method, url, body, expected in EDGE_CASES:
        path, _, query = url.partition("?")
        template = _template(fuzzed, method, path)
        operation = fuzzed.schema[template][method]
        case = operation.Case(
            path_parameters=_path_values(template, path),
            query=dict(q.split("=") for q in query.split("&")) if query else None,
            body=body if body is not None else NOT_SET,
            media_type="application/json" if body is not None else None,
        )
        try:
            response = case.call(headers=dict(headers))
        except Exception as exc:  # in process, an unhandled error reaches the caller
            wrong.append((method, url[:80], 500, repr(exc)[:200]))
            continue
        if response.status_code != expected:
            wrong.append((method, url[:80], response.status_code, response.text[:200]))
            continue
        case.validate_response(response, checks=CHECKS, headers=headers)
    assert not wrong


def _template(fuzzed: Fuzzed, method: str, path: str) -> str:
    for template, methods in fuzzed.schema.raw_schema["paths"].items():
        pattern = re.sub(r"{\w+}", "[^/]+", template)
        if method.lower() in methods and re.fullmatch(pattern, path):
            return str(template)
    raise AssertionError(f"no operation for {method} {path}")


def _path_values(template: str, path: str) -> dict[str, str]:
    pattern = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", template)
    match = re.fullmatch(pattern, path)
    assert match is not None
    return match.groupdict()
