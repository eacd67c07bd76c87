"""Security at the HTTP edge, in process: the auth matrix, JWT, rotation, rate limits,
load shedding, timeouts, the admin API and the audit log."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from starlette.testclient import TestClient

from berth.config import Settings
from berth.jobs.records import JobService
from berth.jobs.schedules import ScheduleService
from berth.registration.service import RegisterRequest, register
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from berth.runtimes.loading import artifact_path
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from berth.store.tables import PredictionRow
from tests.conftest import register_iris, until

JWT_SECRET = "jwt-shared-secret-for-tests-0123456789"
AUDIENCE = "berth-tests"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}]}


@dataclass
class Secured:
    client: TestClient
    registry: Registry
    keys: KeyService
    secrets: dict[str, str]

    def as_(self, name: str) -> dict[str, str]:
        return {"X-API-Key": self.secrets[name]}


def _token(scope: str = "predict read", **claims: Any) -> str:
    now = datetime.now(UTC)
    payload = {
        "sub": "alice",
        "aud": AUDIENCE,
        "scope": scope,
        "exp": now + timedelta(minutes=5),
        **claims,
    }
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def _secured(
    settings: Settings, iris_files: tuple[Path, Path], **overrides: Any
) -> Iterator[Secured]:
    from berth.api.app import build_services, create_app

    settings = settings.model_copy(
        update={
            "jwt_secret": SecretStr(JWT_SECRET),
            "jwt_audience": AUDIENCE,
            "refresh_seconds": 0.0,
            **overrides,
        }
    )
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",), trust_pickle=True)
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    secrets: dict[str, str] = {}
    for name, scopes in {
        "admin": ("admin",),
        "user": ("predict", "read"),
        "reader": ("read",),
        "other-model": ("predict:other",),
        "revoked": ("admin",),
        "expired": ("admin",),
    }.items():
        secrets[name] = keys.create(name, scopes)[1]
    keys.revoke("revoked")
    secrets["expired"] = keys.create(
        "expired-now", ("admin",), datetime.now(UTC) - timedelta(seconds=1)
    )[1]
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app) as client:
        yield Secured(client=client, registry=registry, keys=keys, secrets=secrets)
    registry.db.dispose()


@pytest.fixture
def secured(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[Secured]:
    yield from _secured(settings, iris_files)


# ---------------------------------------------------------------------------- the matrix

OPEN_PATHS = {"/health", "/ready", "/metrics", "/v2", "/v2/", "/v2/health/live", "/v2/health/ready"}
PATH_VALUES = {"ref": "iris", "name": "iris", "version": "1", "alias": "production", "id": "1"}
TRAFFIC_ADMIN = ("/api/v1/endpoints", "/api/v1/rollouts", "/api/v1/experiments")
JOBS_ADMIN = "/api/v1/jobs"
BACKUPS_ADMIN = "/api/v1/backups"
SCHEDULES_ADMIN = ("/api/v1/schedules", "/api/v1/prediction-log")
UPLOAD = "/api/v1/models/{name}/versions"
OPTIMIZE = "/api/v1/models/{ref}/optimize"
ACCELERATE = "/api/v1/models/{ref}/accelerate"
VALIDATE = "/api/v1/validate"
VERSION_DOWNLOADS = (  # admin reads: the model itself, and samples of its training data
    "/api/v1/models/{name}/versions/{version}/artifact",
    "/api/v1/models/{name}/versions/{version}/record",
)
BODIES: dict[str, Any] = {
    "/api/v1/predict": {"features": IRIS_ROW},
    "/api/v1/batch-predict": {"instances": [IRIS_ROW]},
    "/api/v1/models/{ref}/predict": {"features": IRIS_ROW},
    "/api/v1/models/{ref}/batch-predict": {"instances": [IRIS_ROW]},
    "/api/v1/endpoints/{name}/predict": {"features": IRIS_ROW},
    "/api/v1/endpoints/{name}/batch-predict": {"instances": [IRIS_ROW]},
    "/v2/models/{name}/infer": V2_BODY,
    "/v2/models/{name}/versions/{version}/infer": V2_BODY,
    "/api/v1/keys": {"name": "intruder", "scopes": ["admin"]},
    "/api/v1/keys/{name}/rotate": {"grace": "1h"},
    "/api/v1/models/{name}/aliases/{alias}": {"version": 1},
    "/api/v1/feedback": {"prediction_id": "0123456789abcdef", "actual": 1},
    # a job the server could start: refusals must come from the credentials, not the body
    "/api/v1/jobs": {"model": "iris", "source": "/nonexistent/in.csv", "sink": "/nonexistent/out"},
    # backups the server could take, check and prune: refused for the credentials alone
    "/api/v1/backups": {"to": ["/nonexistent/backups"]},
    "/api/v1/backups/verify": {"destination": "/nonexistent/backups"},
    "/api/v1/backups/prune": {"destination": "/nonexistent/backups", "keep_last": 1},
    "/api/v1/schedules/{name}": {
        "cron": "@daily",
        "args": ["iris", "--source", "/nonexistent/in.csv", "--sink", "/nonexistent/out"],
    },
}


def protected_routes(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, template, concrete path) for every documented route that needs credentials."""
    found = []
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for template, operations in sorted(paths.items()):
        if template in OPEN_PATHS:
            continue
        for method in sorted(operations):
            path = re.sub(r"{(\w+)}", lambda m: PATH_VALUES[m[1]], template)
            if template.startswith("/api/v1/keys/{name}"):
                path = path.replace("/keys/iris", "/keys/user")
            found.append((method.upper(), template, path))
    return found


def insufficient_key(template: str, method: str) -> str:
    traffic_admin = template.startswith(TRAFFIC_ADMIN) and not template.endswith("predict")
    admin_routes = (
        traffic_admin
        or template.startswith(
            ("/api/v1/keys", "/api/v1/audit", JOBS_ADMIN, BACKUPS_ADMIN, *SCHEDULES_ADMIN)
        )
        or method in ("PUT", "DELETE")
        or template in (UPLOAD, VALIDATE, OPTIMIZE, ACCELERATE, *VERSION_DOWNLOADS)
    )
    if admin_routes:
        return "user"
    if template.endswith(("predict", "infer", "feedback")):
        return "reader"
    return "other-model"


CASES = [
    "no credentials",
    "malformed header",
    "unknown key",
    "revoked key",
    "expired key",
    "expired JWT",
    "wrong audience",
    "insufficient scope",
]


def credentials(secured: Secured, case: str, template: str, method: str) -> dict[str, str]:
    expired = _token(exp=datetime.now(UTC) - timedelta(minutes=5))
    return {
        "no credentials": {},
        "malformed header": {"Authorization": "Basic dXNlcjpwYXNz"},
        "unknown key": {"X-API-Key": "berth_0123456789ab_not-a-real-secret"},
        "revoked key": secured.as_("revoked"),
        "expired key": secured.as_("expired"),
        "expired JWT": {"Authorization": f"Bearer {expired}"},
        "wrong audience": {"Authorization": f"Bearer {_token(aud='someone-else')}"},
        "insufficient scope": secured.as_(insufficient_key(template, method)),
    }[case]


def _state(secured: Secured) -> tuple[Any, ...]:
    models = secured.registry.list_models()
    keys = [(k.name, k.active) for k in secured.keys.list()]
    predictions = secured.client.get("/metrics").text.count('status="ok"')
    jobs = [(j.id, j.status, j.cancel_requested) for j in JobService(secured.registry.db).list()]
    schedules = [(s.name, s.enabled) for s in ScheduleService(secured.registry.db).list()]
    with secured.registry.db.session() as session:
        logged = session.scalar(select(func.count()).select_from(PredictionRow))
    return (
        tuple(m.to_dict()["aliases"] for m in models),
        tuple(m.to_dict()["versions"] for m in models),
        tuple(keys),
        predictions,
        tuple(jobs),
        tuple(schedules),
        logged,
    )


def test_auth_matrix_every_protected_route_refuses_without_side_effects(secured: Secured) -> None:
    routes = protected_routes(secured.client)
    assert len(routes) >= 20
    job = JobService(secured.registry.db).create(  # job 1, which a cancel would change
        job_key="k", model="iris", source="/nonexistent/in.csv", sink="/nonexistent/out", args=[]
    )
    assert str(job.id) == PATH_VALUES["id"]
    # a schedule that a disable or delete would change, and a prediction a prune would delete
    args = BODIES["/api/v1/schedules/{name}"]["args"]
    ScheduleService(secured.registry.db).put(PATH_VALUES["name"], cron="@hourly", args=args)
    with secured.registry.db.session() as session:
        session.add(
            PredictionRow(
                id="old", model="iris", version=1, endpoint="", prediction=0, score=None,
                latency_ms=1.0, created_at=datetime.now(UTC) - timedelta(days=3650),
            )
        )  # fmt: skip
    before = _state(secured)
    checked = 0
    for method, template, path in routes:
        for case in CASES:
            headers = credentials(secured, case, template, method)
            response = secured.client.request(
                method, path, json=BODIES.get(template), headers=headers
            )
            expected = 403 if case == "insufficient scope" else 401
            assert response.status_code == expected, (method, path, case, response.text)
            assert set(response.json()) == {"error"}
            if expected == 401:
                assert response.headers["WWW-Authenticate"].startswith('Bearer realm="berth"')
            checked += 1
    assert _state(secured) == before
    assert checked == len(routes) * len(CASES)


def test_every_protected_route_works_with_the_right_credentials(secured: Secured) -> None:
    EndpointService(secured.registry).create("iris", "iris@production")  # for {name} routes
    dataplane = secured.client.app.state.services.dataplane  # type: ignore[attr-defined]
    secured.client.portal.call(dataplane.refresh_endpoints)  # type: ignore[union-attr]
    for method, template, path in protected_routes(secured.client):
        traffic_admin = template.startswith(TRAFFIC_ADMIN) and not template.endswith("predict")
        if (
            method in ("DELETE", "PUT")
            or template.startswith(("/api/v1/keys", JOBS_ADMIN, BACKUPS_ADMIN, *SCHEDULES_ADMIN))
            or template in (UPLOAD, VALIDATE, OPTIMIZE, ACCELERATE)
            or traffic_admin
        ):
            # exercised by the admin tests (here, test_traffic_*, test_jobs_api,
            # test_model_upload, test_validate_api, test_remote_models, test_schedules_api,
            # test_backup_api, test_accelerated)
            continue
        key = (
            "admin"
            if template.startswith("/api/v1/audit") or template in VERSION_DOWNLOADS
            else "user"
        )
        response = secured.client.request(
            method, path, json=BODIES.get(template), headers=secured.as_(key)
        )
        # iris was registered without --reference data, so its drift is a clear 404, not a 200
        expected = 404 if template.endswith("/drift") else 200
        assert response.status_code == expected, (method, path, response.text)


def test_the_challenge_names_the_failure_as_rfc_6750_does(secured: Secured) -> None:
    """No credentials: no error code; an unknown, revoked or expired key: invalid_token;
    a malformed token: invalid_request."""
    cases = {
        "no credentials": ({}, 'Bearer realm="berth"'),
        "another scheme": ({"Authorization": "Basic dXNlcjpwYXNz"}, 'Bearer realm="berth"'),
        "unknown key": (
            {"X-API-Key": "berth_0123456789ab_not-a-real-secret"},
            'Bearer realm="berth", error="invalid_token"',
        ),
        "revoked key": (secured.as_("revoked"), 'Bearer realm="berth", error="invalid_token"'),
        "expired key": (secured.as_("expired"), 'Bearer realm="berth", error="invalid_token"'),
        "malformed token": (
            {"Authorization": "Bearer eyJ.not-a.jwt"},
            'Bearer realm="berth", error="invalid_request"',
        ),
    }
    for case, (headers, challenge) in cases.items():
        response = secured.client.get("/api/v1/models", headers=headers)
        assert response.status_code == 401, case
        assert response.headers["WWW-Authenticate"] == challenge, case


def test_jwt_with_scopes_is_accepted_and_named(secured: Secured) -> None:
    token = _token(scope="predict:iris")
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        secured.client.post(
            "/api/v1/models/iris/predict", json={"features": IRIS_ROW}, headers=headers
        ).status_code
        == 200
    )
    assert secured.client.get("/api/v1/models", headers=headers).status_code == 403
    expired = secured.client.get(
        "/v2/models/iris", headers={"Authorization": f"Bearer {_token(exp=0)}"}
    )
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert "expired" in expired.json()["error"]
    assert token not in expired.text


# ---------------------------------------------------------------------------- keys


def test_rotation_keeps_the_old_secret_for_the_grace_period(secured: Secured) -> None:
    old = secured.secrets["user"]
    _, new = secured.keys.rotate("user", timedelta(seconds=1))
    for secret in (old, new):
        assert (
            secured.client.get("/api/v1/models", headers={"X-API-Key": secret}).status_code == 200
        )
    time.sleep(1.1)
    assert secured.client.get("/api/v1/models", headers={"X-API-Key": old}).status_code == 401
    assert secured.client.get("/api/v1/models", headers={"X-API-Key": new}).status_code == 200
    _, newest = secured.keys.rotate("user", timedelta(0))
    assert secured.client.get("/api/v1/models", headers={"X-API-Key": new}).status_code == 401
    assert secured.client.get("/api/v1/models", headers={"X-API-Key": newest}).status_code == 200


def test_revocation_applies_on_the_next_refresh(secured: Secured) -> None:
    headers = secured.as_("reader")
    assert secured.client.get("/api/v1/models", headers=headers).status_code == 200
    secured.keys.revoke("reader")
    assert secured.client.get("/api/v1/models", headers=headers).status_code == 401


# ---------------------------------------------------------------------------- admin API and audit


def test_admin_api_manages_keys_and_aliases_and_is_audited(secured: Secured) -> None:
    admin = secured.as_("admin")
    created = secured.client.post(
        "/api/v1/keys",
        json={"name": "web", "scopes": ["predict:iris"], "rate": "5/s"},
        headers=admin,
    )
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert created.json()["key"]["rate"] == "5/s"
    assert secret not in secured.client.get("/api/v1/keys", headers=admin).text
    rotated = secured.client.post("/api/v1/keys/web/rotate", json={"grace": "0s"}, headers=admin)
    assert rotated.status_code == 200
    assert (
        secured.client.post(
            "/api/v1/models/iris/predict",
            json={"features": IRIS_ROW},
            headers={"X-API-Key": rotated.json()["secret"]},
        ).status_code
        == 200
    )
    assert secured.client.delete("/api/v1/keys/web", headers=admin).json()["key"]["active"] is False
    register_iris(
        secured.registry,
        (
            Path(artifact_path(secured.registry, secured.registry.resolve("iris:1"))),
            _sample(secured),
        ),
        trust_pickle=True,
    )
    moved = secured.client.put(
        "/api/v1/models/iris/aliases/production", json={"version": 2}, headers=admin
    )
    assert moved.status_code == 200
    assert moved.json()["aliases"] == ["production"]
    refused = secured.client.delete("/api/v1/models/iris/versions/2", headers=admin)
    assert refused.status_code == 409
    assert secured.client.delete("/api/v1/models/iris/versions/1", headers=admin).status_code == 200
    assert (
        secured.client.put(
            "/api/v1/models/iris/aliases/production", json={"version": "x"}, headers=admin
        ).status_code
        == 400
    )
    events = secured.client.get("/api/v1/audit?limit=50", headers=admin).json()["events"]
    actions = [(e["action"], e["actor"], e["outcome"]) for e in events]
    for expected in [
        ("key.create", "admin", "ok"),
        ("key.rotate", "admin", "ok"),
        ("key.revoke", "admin", "ok"),
        ("alias.set", "admin", "ok"),
        ("version.delete", "admin", "refused"),
        ("version.delete", "admin", "ok"),
    ]:
        assert expected in actions, (expected, actions)
    assert all(e["address"] for e in events if e["actor"] == "admin")


def _sample(secured: Secured) -> Path:
    path = Path(secured.registry.store.cache_dir).parent / "sample.npy"
    np.save(path, np.asarray([IRIS_ROW] * 3, dtype=np.float32))
    return path


def test_authentication_failures_are_audited(secured: Secured) -> None:
    secured.client.get("/api/v1/models", headers={"X-API-Key": "berth_0123456789ab_nope"})
    secured.client.get("/api/v1/models")
    deadline = time.monotonic() + 5
    failures: list[Any] = []
    while len(failures) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        failures = [e for e in AuditLog(secured.registry.db).list() if e.action == "auth.failure"]
    assert len(failures) >= 2
    assert {f.outcome for f in failures} == {"refused"}
    assert all(f.target == "GET /api/v1/models" for f in failures)
    assert all("berth_0123456789ab_nope" not in str(f.detail) for f in failures)


# ---------------------------------------------------------------------------- limits


@pytest.fixture
def limited(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[Secured]:
    yield from _secured(
        settings,
        iris_files,
        default_key_rate="3/m",
        model_rates={"iris": "5/m"},
        open_route_rate="4/m",
    )


def test_key_rate_limit_gives_429_with_headers(limited: Secured) -> None:
    headers = limited.as_("user")
    answers = [limited.client.get("/api/v1/models", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3"
    assert answers[0].headers["RateLimit-Remaining"] == "2"
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert "rate limit" in refused.json()["error"]


def test_model_rate_limit_holds_over_all_callers(limited: Secured) -> None:
    limited.keys.create("second", ("predict",), rate="100/m")
    _, third = limited.keys.create("third", ("predict",), rate="100/m")
    statuses = []
    for index in range(6):
        key = third if index % 2 else limited.secrets["admin"]
        statuses.append(
            limited.client.post(
                "/api/v1/models/iris/predict",
                json={"features": IRIS_ROW},
                headers={"X-API-Key": key},
            ).status_code
        )
    assert statuses.count(200) == 5
    assert statuses[-1] == 429


def test_open_routes_are_limited_per_address(limited: Secured) -> None:
    statuses = [limited.client.get("/health").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


SLOW_MODEL = """
import time
class Slow:
    def load(self):
        pass
    def predict(self, inputs):
        if inputs[0][0] > 0:
            time.sleep(0.6)
        return inputs.sum(axis=1)
"""


def _slow_app(settings: Settings, tmp_path: Path, **overrides: Any) -> TestClient:
    from berth.api.app import build_services, create_app

    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "model.py").write_text(SLOW_MODEL)
    np.save(tmp_path / "slow.npy", -np.ones((2, 2)))
    settings = settings.model_copy(update={"dev": True, **overrides})
    registry = Registry.from_settings(settings)
    register(
        registry,
        RegisterRequest(
            name="slow",
            path=tmp_path / "slow",
            sample=tmp_path / "slow.npy",
            aliases=("production",),
        ),
    )
    return TestClient(create_app(settings, build_services(settings, registry)))


def test_concurrency_cap_sheds_at_once_with_503(settings: Settings, tmp_path: Path) -> None:
    client = _slow_app(settings, tmp_path, max_concurrent_requests=1)

    async def two_at_once() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://berth") as http:
            slow = asyncio.create_task(http.post("/api/v1/predict", json={"features": [1.0, 1.0]}))
            cap = client.app.state.services.cap  # type: ignore[attr-defined]
            await until(lambda: cap.in_flight >= 1, "the slow request taking the only slot")
            started = time.monotonic()
            shed = await http.post("/api/v1/predict", json={"features": [1.0, 1.0]})
            assert time.monotonic() - started < 0.3  # refused at once, not queued
            return [await slow, shed]

    with client:
        first, second = asyncio.run(two_at_once())
    assert first.status_code == 200
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "1"
    assert "concurrent" in second.json()["error"]


def test_slow_prediction_times_out_with_504(settings: Settings, tmp_path: Path) -> None:
    # 0.3 s: the slow one takes 0.6 s, and the fast one has time for its hop to a thread on a
    # loaded machine.
    with _slow_app(settings, tmp_path, request_timeout_seconds=0.3) as client:
        slow = client.post("/api/v1/predict", json={"features": [1.0, 1.0]})
        fast = client.post("/api/v1/predict", json={"features": [-1.0, 1.0]})
    assert slow.status_code == 504
    assert "did not answer within 0.3 s" in slow.json()["error"]
    assert fast.status_code == 200


# ---------------------------------------------------------------------------- secrets hygiene


def test_secrets_never_reach_docs_errors_or_config(
    secured: Secured, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    spec = secured.client.get("/openapi.json", headers=secured.as_("user"))
    assert spec.status_code == 200
    docs = spec.text + secured.client.get("/docs").text
    bad = secured.client.get("/api/v1/models", headers={"X-API-Key": secured.secrets["revoked"]})
    settings = secured.client.app.state.services.settings  # type: ignore[attr-defined]
    shown = str(settings.redacted())
    logs = caplog.text + capsys.readouterr().err
    for secret in [*secured.secrets.values(), JWT_SECRET]:
        for text in (docs, bad.text, shown, logs):
            assert secret not in text
