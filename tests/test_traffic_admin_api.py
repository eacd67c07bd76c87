"""The admin API for endpoints, rollouts and experiments, in process (no rollout controller:
every change comes from these requests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from berth.config import Settings
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from berth.rollouts.service import RolloutService
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.serving.route_stats import RouteStats, _Totals
from berth.store.audit import AuditLog
from tests.conftest import register_iris

TRAFFIC_PREFIXES = ("/api/v1/endpoints", "/api/v1/rollouts", "/api/v1/experiments")
PREDICTION_PATHS = ("/api/v1/endpoints/{name}/predict", "/api/v1/endpoints/{name}/batch-predict")


@dataclass
class Admin:
    client: TestClient
    registry: Registry
    keys: dict[str, str]

    def headers(self, key: str = "admin") -> dict[str, str]:
        return {"X-API-Key": self.keys[key]}

    def get(self, path: str, key: str = "admin") -> Any:
        return self.client.get(path, headers=self.headers(key))

    def post(self, path: str, body: Any = None, key: str = "admin") -> Any:
        return self.client.post(path, json=body, headers=self.headers(key))

    def put(self, path: str, body: Any) -> Any:
        return self.client.put(path, json=body, headers=self.headers())

    def delete(self, path: str) -> Any:
        return self.client.delete(path, headers=self.headers())

    def routes(self, name: str = "flowers") -> list[tuple[str, str, float]]:
        info = EndpointService(self.registry).get(name)
        return [(r.label, r.ref, r.weight) for r in info.routes]


@pytest.fixture
def admin(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[Admin]:
    """iris:1 (@production), iris:2, iris:3; an admin key and a predict+read key."""
    with _admin(settings, iris_files) as found:
        yield found


@contextmanager
def _admin(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[Admin]:
    from berth.api.app import build_services, create_app

    settings = settings.model_copy(update={"rollout_controller": False, "refresh_seconds": 0.0})
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files)
    register_iris(registry, iris_files)
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    secrets = {
        "admin": keys.create("ops", ("admin",))[1],
        "user": keys.create("user", ("predict", "read"))[1],
    }
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app) as client:
        yield Admin(client=client, registry=registry, keys=secrets)
    registry.db.dispose()


def _create(admin: Admin, name: str = "flowers", model: str = "iris:1") -> None:
    created = admin.post("/api/v1/endpoints", {"name": name, "model": model})
    assert created.status_code == 201, created.text


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]
    return message


# access --------------------------------------------------------------------------------------


def test_every_traffic_route_needs_an_admin_key(admin: Admin) -> None:
    paths = admin.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    checked = 0
    for template, operations in paths.items():
        if not template.startswith(TRAFFIC_PREFIXES) or template in PREDICTION_PATHS:
            continue
        path = template.replace("{name}", "flowers").replace("{id}", "1")
        for method in operations:
            assert operations[method]["tags"] == ["traffic"], template
            for headers, status in (({}, 401), (admin.headers("user"), 403)):
                response = admin.client.request(
                    method.upper(), path, json={"name": "x"}, headers=headers
                )
                assert response.status_code == status, (method, path, response.text)
                assert set(response.json()) == {"error"}
            checked += 1
    assert checked == 23  # 9 of endpoints, 10 of rollouts, 4 of experiments
    assert EndpointService(admin.registry).all() == []


# endpoints -----------------------------------------------------------------------------------


def test_endpoints_create_read_change_delete(admin: Admin) -> None:
    created = admin.post(
        "/api/v1/endpoints",
        {
            "name": "flowers",
            "model": "iris@production",
            "sticky": "header:X-User",
            "description": "d",
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["routes"] == [
        {"label": "stable", "role": "stable", "model": "iris", "version": 1, "weight": 100.0}
    ]
    assert created.json()["sticky"] == "header:x-user"
    assert "already exists" in _error(
        admin.post("/api/v1/endpoints", {"name": "flowers", "model": "iris:2"}), 409
    )
    assert [e["name"] for e in admin.get("/api/v1/endpoints").json()["endpoints"]] == ["flowers"]
    assert admin.get("/api/v1/endpoints/flowers").json()["description"] == "d"
    assert "berth endpoints create ghost" in _error(admin.get("/api/v1/endpoints/ghost"), 404)

    changed = admin.put(
        "/api/v1/endpoints/flowers/routes",
        {
            "routes": [
                {"label": "stable", "model": "iris", "version": 1, "weight": 90},
                {"label": "canary", "model": "iris", "version": 2, "weight": 10},
                {"label": "shadow", "model": "iris", "version": 3, "weight": 25},
            ],
            "reason": "by hand",
        },
    )
    assert changed.status_code == 200, changed.text
    assert [(r["label"], r["role"]) for r in changed.json()["routes"]] == [
        ("stable", "stable"),
        ("canary", "canary"),
        ("shadow", "shadow"),
    ]
    RouteStats(admin.registry.db).write(
        [
            (("flowers", "iris", 1), _Totals(requests=50, errors=5)),
            (
                ("flowers", "iris", 3),
                _Totals(
                    requests=10, shadow_compared=10, shadow_agreed=9, shadow_seconds_delta=0.02
                ),
            ),
        ]
    )
    stats = admin.get("/api/v1/endpoints/flowers/stats").json()
    assert stats["endpoint"] == "flowers"
    assert [(v["label"], v["requests"], v["error_rate"]) for v in stats["versions"]] == [
        ("stable", 50, 0.1),
        ("canary", 0, None),
        ("shadow", 10, 0.0),
    ]
    assert stats["shadow"]["agreement"] == 0.9
    assert stats["shadow"]["mean_latency_delta_ms"] == pytest.approx(2.0)
    history = admin.get("/api/v1/endpoints/flowers/history").json()["history"]
    assert [(h["reason"], h["actor"]) for h in history] == [
        ("by hand", "ops"),
        ("created with iris:1", "ops"),
    ]

    assert admin.delete("/api/v1/endpoints/flowers").json() == {"deleted": "flowers"}
    assert _error(admin.delete("/api/v1/endpoints/flowers"), 404)
    assert _error(admin.get("/api/v1/endpoints/flowers/stats"), 404)
    assert admin.get("/api/v1/endpoints/flowers/history").json()["history"][0]["reason"] == (
        "deleted"
    )


def test_shadow_on_and_off_keeps_the_serving_routes(admin: Admin) -> None:
    _create(admin)
    admin.put(
        "/api/v1/endpoints/flowers/routes",
        {"routes": [{"label": "stable", "model": "iris", "version": 1, "weight": 90},
                    {"label": "b", "model": "iris", "version": 2, "weight": 10}]},
    )  # fmt: skip
    shadowed = admin.put("/api/v1/endpoints/flowers/shadow", {"to": "iris@production"})
    assert shadowed.status_code == 200, shadowed.text
    assert admin.routes() == [
        ("stable", "iris:1", 90.0),
        ("b", "iris:2", 10.0),
        ("shadow", "iris:1", 10.0),  # 10% unless told
    ]
    moved = admin.put("/api/v1/endpoints/flowers/shadow", {"to": "iris:3", "percent": 25})
    assert [r["weight"] for r in moved.json()["routes"]] == [90.0, 10.0, 25.0]
    assert admin.routes()[2] == ("shadow", "iris:3", 25.0)
    for body, status, message in (
        ({"to": "iris:9"}, 404, "has no version 9"),
        ({"to": "iris:3", "percent": 101}, 400, "'percent' must be at most 100"),
        ({"percent": 5}, 400, "no 'to' field"),
        ({"to": "iris:3", "weight": 5}, 400, "unknown field weight"),
    ):
        assert message in _error(admin.put("/api/v1/endpoints/flowers/shadow", body), status)
    assert "berth endpoints create ghost" in _error(
        admin.put("/api/v1/endpoints/ghost/shadow", {"to": "iris:3"}), 404
    )
    removed = admin.delete("/api/v1/endpoints/flowers/shadow")
    assert removed.status_code == 200, removed.text
    assert admin.routes() == [("stable", "iris:1", 90.0), ("b", "iris:2", 10.0)]
    assert "no shadow route" in _error(admin.delete("/api/v1/endpoints/flowers/shadow"), 400)
    history = admin.get("/api/v1/endpoints/flowers/history?limit=3").json()["history"]
    assert [(h["reason"], h["actor"]) for h in history] == [
        ("shadow removed", "ops"),
        ("shadow iris:3 on 25% of requests", "ops"),
        ("shadow iris:1 on 10% of requests", "ops"),
    ]
    assert len(admin.get("/api/v1/endpoints/flowers/history").json()["history"]) == 5
    for bad in ("0", "1001", "x", "-1"):
        assert "limit must be" in _error(
            admin.get(f"/api/v1/endpoints/flowers/history?limit={bad}"), 400
        )
    events = [e for e in AuditLog(admin.registry.db).list() if e.action == "endpoint.routes"]
    assert [(e.outcome, e.actor) for e in events][:3] == [("ok", "ops")] * 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "iris"}, 400, "no 'name' field"),
        ({"name": "x", "model": 3}, 400, "'model' must be a string"),
        ({"name": "x", "model": "iris", "colour": "red"}, 400, "unknown field colour"),
        ({"name": "x", "model": "iris", "sticky": "ip"}, 400, "header:NAME"),
        ({"name": "../x", "model": "iris"}, 400, "not valid"),
        ({"name": "x", "model": "iris:9"}, 404, "no version 9"),
        ({"name": "x", "model": "nope"}, 404, "not registered"),
        ({"name": "x", "model": "iris", "description": "a\x00b"}, 400, "NUL"),
    ],
)
def test_create_endpoint_refusals(admin: Admin, body: Any, status: int, message: str) -> None:
    assert message in _error(admin.post("/api/v1/endpoints", body), status)


def test_set_routes_refusals(admin: Admin) -> None:
    _create(admin)
    stable = {"label": "stable", "model": "iris", "version": 1, "weight": 100}
    for body, status, message in (
        ({}, 400, "'routes' must be a non-empty list"),
        ({"routes": []}, 400, "'routes' must be a non-empty list"),
        ({"routes": ["stable"]}, 400, "route 1 must be an object"),
        ({"routes": [{**stable, "version": "1"}]}, 400, "'version' must be a whole number"),
        ({"routes": [{**stable, "version": 10**20}]}, 400, "'version' must be a whole number"),
        ({"routes": [{**stable, "weight": True}]}, 400, "'weight' must be a number"),
        ({"routes": [{**stable, "weight": 10**400}]}, 400, "not valid JSON"),
        ({"routes": [{**stable, "weight": 90}]}, 400, "add up to 100"),
        ({"routes": [{**stable, "role": "boss"}]}, 400, "role 'boss'"),
        ({"routes": [{**stable, "model": "a/b"}]}, 400, "not valid"),
        ({"routes": [{**stable, "extra": 1}]}, 400, "unknown field extra"),
        ({"routes": [{**stable, "version": 9}]}, 404, "no version iris:9"),
        ({"routes": [stable], "sticky": "nowhere"}, 400, "header:NAME"),
    ):
        response = admin.put("/api/v1/endpoints/flowers/routes", body)
        assert message in _error(response, status), body
    assert "berth endpoints create ghost" in _error(
        admin.put("/api/v1/endpoints/ghost/routes", {"routes": [stable]}), 404
    )
    assert admin.routes() == [("stable", "iris:1", 100.0)]


# rollouts ------------------------------------------------------------------------------------


def _start(admin: Admin, **extra: Any) -> dict[str, Any]:
    response = admin.post("/api/v1/rollouts", {"endpoint": "flowers", "to": "iris:2", **extra})
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


def test_rollout_start_act_and_read(admin: Admin) -> None:
    _create(admin)
    started = _start(
        admin,
        steps=[10, 50, 100],
        interval="5m",
        max_error_rate=0.02,
        max_p99_ms=250,
        min_requests=40,
        alpha=0.01,
    )
    rollout = started["rollout"]
    assert started["gates"] is None
    assert (rollout["status"], rollout["strategy"], rollout["from"], rollout["to"]) == (
        "running",
        "canary",
        "iris:1",
        "iris:2",
    )
    assert rollout["config"]["steps"] == [10.0, 50.0, 100.0]
    assert rollout["config"]["interval_seconds"] == 300.0
    assert rollout["config"]["criteria"]["min_requests"] == 40
    assert rollout["config"]["criteria"]["max_p99_ratio"] == 1.5  # the default comparison
    assert rollout["actor"] == "ops"
    assert admin.routes() == [("stable", "iris:1", 100.0), ("canary", "iris:2", 0.0)]
    assert "in progress" in _error(
        admin.post("/api/v1/rollouts", {"endpoint": "flowers", "to": "iris:3"}), 409
    )

    base = "/api/v1/endpoints/flowers/rollout"
    assert admin.post(f"{base}/pause").json()["status"] == "paused"
    assert "already paused" in _error(admin.post(f"{base}/pause"), 409)
    assert admin.post(f"{base}/resume", {}).json()["status"] == "running"
    assert "unknown field reason" in _error(admin.post(f"{base}/pause", {"reason": "x"}), 400)
    assert "after its switch" in _error(admin.post(f"{base}/finalize"), 409)
    promoted = admin.post(f"{base}/promote")
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["status"], promoted.json()["weight"]) == ("promoted", 100.0)
    assert [e["kind"] for e in promoted.json()["events"]] == [
        "started",
        "paused",
        "resumed",
        "promoted",
    ]
    assert admin.routes() == [("stable", "iris:2", 100.0)]
    assert "no rollout in progress" in _error(admin.post(f"{base}/abort"), 404)

    one = admin.get(f"/api/v1/rollouts/{rollout['id']}")
    assert one.json()["status"] == "promoted"
    assert "berth rollout list" in _error(admin.get("/api/v1/rollouts/999"), 404)
    for bad in ("abc", "0", "99999999999", "²"):
        assert "whole number" in _error(admin.get(f"/api/v1/rollouts/{bad}"), 400)
    listed = admin.get("/api/v1/rollouts?endpoint=flowers").json()["rollouts"]
    assert [(r["id"], r["status"]) for r in listed] == [(rollout["id"], "promoted")]
    assert admin.get("/api/v1/rollouts?endpoint=other").json() == {"rollouts": []}
    assert "not valid" in _error(admin.get("/api/v1/rollouts?endpoint=a/b"), 400)
    actions = [
        (e.action, e.actor)
        for e in reversed(AuditLog(admin.registry.db).list())
        if e.action.startswith("rollout") and e.outcome == "ok"
    ]
    assert actions == [
        ("rollout.start", "ops"),
        ("rollout.pause", "ops"),
        ("rollout.resume", "ops"),
        ("rollout.promote", "ops"),
    ]


def test_an_endpoints_rollout_and_the_active_filter(admin: Admin) -> None:
    _create(admin)
    assert "berth rollout start flowers" in _error(
        admin.get("/api/v1/endpoints/flowers/rollout"), 404
    )
    first = _start(admin)["rollout"]
    assert admin.post("/api/v1/endpoints/flowers/rollout/abort").status_code == 200
    second = _start(admin, to="iris:3")["rollout"]
    current = admin.get("/api/v1/endpoints/flowers/rollout").json()
    assert (current["id"], current["status"]) == (second["id"], "running")
    assert [e["kind"] for e in current["events"]] == ["started"]
    active = admin.get("/api/v1/rollouts?endpoint=flowers&active=true").json()["rollouts"]
    assert [r["id"] for r in active] == [second["id"]]
    every = admin.get("/api/v1/rollouts?active=false").json()["rollouts"]
    assert [r["id"] for r in every] == [second["id"], first["id"]]
    assert "active must be true or false" in _error(admin.get("/api/v1/rollouts?active=1"), 400)
    assert admin.post("/api/v1/endpoints/flowers/rollout/promote").status_code == 200
    latest = admin.get("/api/v1/endpoints/flowers/rollout").json()
    assert (latest["id"], latest["status"]) == (second["id"], "promoted")
    assert admin.get("/api/v1/rollouts?active=true").json() == {"rollouts": []}


def _timed(admin: Admin, path: str) -> tuple[float, dict[str, Any]]:
    began = time.monotonic()
    response = admin.get(path)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return time.monotonic() - began, document


def test_a_long_poll_answers_when_the_rollout_changes(admin: Admin) -> None:
    _create(admin)
    rollout_id = _start(admin)["rollout"]["id"]
    path = f"/api/v1/rollouts/{rollout_id}"
    # nothing changes: answered at the end of the wait, as it is
    took, found = _timed(admin, f"{path}?wait=0.6")
    assert 0.6 <= took < 3
    assert [e["kind"] for e in found["events"]] == ["started"]
    # an event the client has not seen yet: answered at once
    took, found = _timed(admin, f"{path}?wait=30&after_event=0")
    assert took < 1
    # a change a second into the wait: answered within about the half second it looks
    service = RolloutService(admin.registry)
    acting = threading.Timer(1.0, lambda: service.pause("flowers", actor="operator"))
    acting.start()
    try:
        took, found = _timed(admin, f"{path}?wait=30&after_event=1")
    finally:
        acting.join()
    assert 1.0 <= took < 3
    assert (found["status"], [e["kind"] for e in found["events"]]) == (
        "paused",
        ["started", "paused"],
    )
    acting = threading.Timer(1.0, lambda: service.abort("flowers", actor="operator"))
    acting.start()
    try:
        took, found = _timed(admin, f"{path}?wait=30")  # default: the events there are now
    finally:
        acting.join()
    assert 1.0 <= took < 3
    assert found["status"] == "aborted"
    # a finished rollout does not change any more: answered at once
    took, found = _timed(admin, f"{path}?wait=30&after_event=99")
    assert took < 1
    assert found["status"] == "aborted"
    assert "berth rollout list" in _error(admin.get("/api/v1/rollouts/99?wait=30"), 404)
    for query, message in (
        ("wait=-1", "wait must be a number of seconds from 0 to 60"),
        ("wait=61", "wait must be"),
        ("wait=nan", "wait must be"),
        ("wait=inf", "wait must be"),
        ("wait=soon", "wait must be"),
        ("wait=1&after_event=-1", "after_event must be a whole number"),
        ("wait=1&after_event=1.5", "after_event must be"),
    ):
        assert message in _error(admin.get(f"{path}?{query}"), 400), query


def test_a_long_poll_holds_at_most_the_configured_time(
    settings: Settings, iris_files: tuple[Path, Path]
) -> None:
    with _admin(settings.model_copy(update={"long_poll_seconds": 0.5}), iris_files) as admin:
        _create(admin)
        rollout_id = _start(admin)["rollout"]["id"]
        took, found = _timed(admin, f"/api/v1/rollouts/{rollout_id}?wait=60")
    assert 0.5 <= took < 2
    assert found["status"] == "running"


def test_rollout_latency_ratio_and_slack_are_stored(admin: Admin) -> None:
    _create(admin)
    started = _start(admin, max_p99_ms=300, max_p99_ratio=2, p99_slack_ms=25)
    criteria = started["rollout"]["config"]["criteria"]
    assert (criteria["max_p99_ms"], criteria["max_p99_ratio"], criteria["p99_slack_ms"]) == (
        300.0,
        2.0,
        25.0,
    )
    admin.post("/api/v1/endpoints/flowers/rollout/abort")
    off = _start(admin, max_p99_ratio=0)["rollout"]["config"]["criteria"]
    assert off["max_p99_ratio"] == 0.0


@pytest.mark.parametrize(
    ("action", "body", "status", "reason"),
    [
        ("abort", None, "aborted", "aborted by hand"),
        ("rollback", {"reason": "tickets"}, "rolled_back", "tickets"),
        ("rollback", None, "rolled_back", "rolled back by hand"),
    ],
)
def test_abort_and_rollback_restore_the_old_version(
    admin: Admin, action: str, body: Any, status: str, reason: str
) -> None:
    _create(admin)
    _start(admin, strategy="blue-green", switch="manual")
    base = "/api/v1/endpoints/flowers/rollout"
    switched = admin.post(f"{base}/promote").json()
    assert (switched["status"], switched["phase"]) == ("running", "switched")
    assert admin.routes() == [("green", "iris:2", 100.0), ("blue", "iris:1", 0.0)]
    done = admin.post(f"{base}/{action}", body)
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["reason"]) == (status, reason)
    assert admin.routes() == [("stable", "iris:1", 100.0)]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"endpoint": None}, 400, "no 'endpoint' field"),
        ({"to": None}, 400, "no 'to' field"),
        ({"steps": [50, 10, 100]}, 400, "rising percentages"),
        ({"steps": "5,x"}, 400, "not a list of percentages"),
        ({"steps": ["5"]}, 400, "'steps' must be a list"),
        ({"interval": "soon"}, 400, "not a duration"),
        ({"interval": 60}, 400, "'interval' must be a string"),
        ({"max_error_rate": 2}, 400, "max_error_rate is a fraction"),
        ({"max_p99_ratio": 0.5}, 400, "max_p99_ratio must be at least 1 (or 0"),
        ({"max_p99_ratio": "1.5"}, 400, "'max_p99_ratio' must be a number"),
        ({"p99_slack_ms": -5}, 400, "p99_slack_ms must not be negative"),
        ({"alpha": 0.9}, 400, "alpha must be within"),
        ({"min_requests": -1}, 400, "'min_requests' must be a whole number"),
        ({"min_requests": 1.5}, 400, "'min_requests' must be a whole number"),
        ({"max_eror_rate": 0.01}, 400, "unknown field max_eror_rate"),
        ({"strategy": "yolo"}, 400, "canary or blue-green"),
        ({"switch": "maybe"}, 400, "auto or manual"),
        ({"metrics_source": "statsd"}, 400, "Prometheus"),
        ({"to": "iris:1"}, 409, "already serves iris:1"),
        ({"to": "iris:9"}, 404, "no version 9"),
        ({"endpoint": "ghost"}, 404, "berth endpoints create ghost"),
        ({"gates": "yes"}, 400, "'gates' must be an object"),
        ({"gates": {"min_acc": 0.9}}, 400, "unknown keys ['min_acc']"),
        ({"gates": {}}, 400, "'gates' names no gate"),
        ({"gates": {"no_nan": True}}, 400, "needs test rows"),
        ({"gates": {"no_regression": "yes"}}, 400, "true or false"),
    ],
)
def test_rollout_start_refusals(admin: Admin, body: Any, status: int, message: str) -> None:
    _create(admin)
    document = {"endpoint": "flowers", "to": "iris:2", **body}
    response = admin.post("/api/v1/rollouts", {k: v for k, v in document.items() if v is not None})
    assert message in _error(response, status)
    assert admin.get("/api/v1/rollouts").json() == {"rollouts": []}
    assert admin.routes() == [("stable", "iris:1", 100.0)]


def test_rollout_gates_fail_then_pass(admin: Admin, iris_files: tuple[Path, Path]) -> None:
    _model, sample = iris_files
    _create(admin)
    failed = admin.post(
        "/api/v1/rollouts",
        {
            "endpoint": "flowers",
            "to": "iris:2",
            "gates": {"data": str(sample), "no_nan": True, "output_range": [5, 10]},
        },
    )
    assert failed.status_code == 201, failed.text
    document = failed.json()
    assert (document["rollout"]["status"], document["rollout"]["phase"]) == ("failed", "gates")
    assert document["gates"]["passed"] is False
    assert [(c["name"], c["passed"]) for c in document["gates"]["checks"]] == [
        ("no_nan", True),
        ("output_range", False),
    ]
    assert admin.routes() == [("stable", "iris:1", 100.0)]

    passed = _start(admin, gates={"data": str(sample), "no_nan": True, "output_range": [0, 2]})
    assert passed["gates"]["passed"] is True
    assert passed["rollout"]["status"] == "running"
    statuses = [r["status"] for r in admin.get("/api/v1/rollouts").json()["rollouts"]]
    assert statuses == ["running", "failed"]


# experiments ---------------------------------------------------------------------------------


def test_experiment_start_report_conclude(admin: Admin) -> None:
    _create(admin)
    started = admin.post(
        "/api/v1/experiments",
        {"endpoint": "flowers", "variants": ["a=iris:1:50", "b=iris:2:50"], "min_samples": 5},
    )
    assert started.status_code == 201, started.text
    experiment = started.json()
    assert (experiment["status"], experiment["sticky"], experiment["actor"]) == (
        "running",
        "header:x-user-id",
        "ops",
    )
    assert admin.routes() == [("a", "iris:1", 50.0), ("b", "iris:2", 50.0)]
    assert "runs experiment" in _error(
        admin.post("/api/v1/rollouts", {"endpoint": "flowers", "to": "iris:3"}), 409
    )
    RouteStats(admin.registry.db).write([(("flowers", "iris", 2), _Totals(requests=7, errors=1))])
    report = admin.get("/api/v1/experiments/flowers/report")
    assert report.status_code == 200, report.text
    rows = report.json()["report"]["variants"]
    assert [(r["name"], r["requests"], r["errors"]) for r in rows] == [("a", 0, 0), ("b", 7, 1)]
    assert report.json()["report"]["recommendation"] is None
    assert "Prometheus" in _error(
        admin.get("/api/v1/experiments/flowers/report?metrics_source=statsd"), 400
    )
    listed = admin.get("/api/v1/experiments?endpoint=flowers").json()["experiments"]
    assert [e["id"] for e in listed] == [experiment["id"]]

    assert "pick one of a, b" in _error(
        admin.post("/api/v1/experiments/flowers/conclude", {"winner": "c"}), 400
    )
    assert "no 'winner' field" in _error(
        admin.post("/api/v1/experiments/flowers/conclude", {}), 400
    )
    concluded = admin.post("/api/v1/experiments/flowers/conclude", {"winner": "b"})
    assert concluded.status_code == 200, concluded.text
    assert (concluded.json()["status"], concluded.json()["winner"]) == ("concluded", "b")
    assert admin.routes() == [("stable", "iris:2", 100.0)]
    assert "runs no experiment" in _error(
        admin.post("/api/v1/experiments/flowers/conclude", {"winner": "b"}), 404
    )
    # the report of the latest experiment stays readable
    assert admin.get("/api/v1/experiments/flowers/report").json()["experiment"]["winner"] == "b"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"variants": ["a=iris:1:50", "b=iris"]}, 400, "NAME=MODEL:VERSION:WEIGHT"),
        ({"variants": "a=iris:1:50"}, 400, "'variants' must be a list"),
        ({"variants": ["a=iris:1:50"]}, 400, "at least two variants"),
        ({"variants": ["a=iris:1:50", "b=iris:2:40"]}, 400, "add up to 100"),
        ({"metric": "revenue"}, 400, "accuracy, outcome"),
        ({"alpha": "0.05"}, 400, "'alpha' must be a number"),
        ({"min_samples": 0}, 400, "at least 1"),
        ({"sticky": "ip"}, 400, "header:NAME"),
        ({"winner": "a"}, 400, "unknown field winner"),
        ({"endpoint": "ghost"}, 404, "berth endpoints create ghost"),
    ],
)
def test_experiment_start_refusals(admin: Admin, body: Any, status: int, message: str) -> None:
    _create(admin)
    document = {"endpoint": "flowers", "variants": ["a=iris:1:50", "b=iris:2:50"], **body}
    assert message in _error(admin.post("/api/v1/experiments", document), status)
    assert admin.get("/api/v1/experiments").json() == {"experiments": []}


def test_experiment_report_without_an_experiment_is_404_with_a_hint(admin: Admin) -> None:
    _create(admin)
    assert "berth experiments start flowers" in _error(
        admin.get("/api/v1/experiments/flowers/report"), 404
    )
