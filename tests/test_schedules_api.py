"""The admin API for schedules and the prediction log's prune, in process on SQLite and
PostgreSQL: admin only, the bodies checked as `berth batch schedule` checks its flags, the same
documents the commands print from, and every change audited with the caller as actor.
(The commands themselves, through this API, are tested in test_schedules and test_feedback.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from berth.config import Settings
from berth.jobs.schedules import ScheduleService
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from berth.store.tables import PredictionRow

ARGS = ["iris@production", "--source", "/data/in.csv", "--sink", "/data/out.parquet"]
BODY = {"cron": "0 2 * * *", "timezone": "Europe/Berlin", "args": ARGS}
ROUTES = [
    ("GET", "/api/v1/schedules"),
    ("GET", "/api/v1/schedules/{name}"),
    ("PUT", "/api/v1/schedules/{name}"),
    ("DELETE", "/api/v1/schedules/{name}"),
    ("GET", "/api/v1/schedules/{name}/runs"),
    ("POST", "/api/v1/schedules/{name}/enable"),
    ("POST", "/api/v1/schedules/{name}/disable"),
    ("POST", "/api/v1/prediction-log/prune"),
]


class Api:
    def __init__(self, client: TestClient, registry: Registry, keys: dict[str, str]) -> None:
        self.client, self.registry, self.keys = client, registry, keys

    def call(self, method: str, path: str, body: Any = None, key: str | None = "admin") -> Any:
        headers = {"X-API-Key": self.keys[key]} if key else {}
        return self.client.request(method, path, json=body, headers=headers)


@pytest.fixture
def api(registry: Registry, settings: Settings) -> Iterator[Api]:
    from berth.api.app import build_services, create_app

    settings = settings.model_copy(
        update={"database_url": registry.db.url, "rollout_controller": False}
    )
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    secrets = {
        "admin": keys.create("ops", ("admin",))[1],
        "user": keys.create("user", ("predict", "read"))[1],
    }
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, registry, secrets)


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]
    return message


def test_every_route_needs_an_admin_key_and_is_documented_with_its_body(api: Api) -> None:
    document = api.client.app.openapi()  # type: ignore[attr-defined]
    paths = document["paths"]
    documented = [(m.upper(), p) for p, ops in paths.items()
                  if p.startswith(("/api/v1/schedules", "/api/v1/prediction-log")) for m in ops]  # fmt: skip
    assert sorted(documented) == sorted(ROUTES)
    body = paths["/api/v1/schedules/{name}"]["put"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == {"cron", "timezone", "args", "enabled", "kind"}
    assert body["schema"]["required"] == ["cron", "args"]
    ScheduleService(api.registry.db).put("nightly", cron="@daily", args=ARGS)
    for method, template in ROUTES:
        path = template.replace("{name}", "nightly")
        for key, status in ((None, 401), ("user", 403)):
            response = api.call(method, path, BODY if method == "PUT" else None, key=key)
            assert response.status_code == status, (method, path, key, response.text)
            assert set(response.json()) == {"error"}
    assert [s.name for s in ScheduleService(api.registry.db).list()] == ["nightly"]


def test_put_get_list_runs_enable_disable_delete(api: Api) -> None:
    created = api.call("PUT", "/api/v1/schedules/nightly", BODY)
    assert created.status_code == 200, created.text
    answer = created.json()
    assert answer["outcome"] == "created"
    assert len(answer["upcoming"]) == 3
    assert all(t.endswith(("+01:00", "+02:00")) and "T02:00:00" in t for t in answer["upcoming"])
    schedule = answer["schedule"]
    assert (schedule["name"], schedule["args"], schedule["enabled"]) == ("nightly", ARGS, True)
    assert schedule["next_run"] == answer["upcoming"][0]

    again = api.call("PUT", "/api/v1/schedules/nightly", BODY).json()
    assert again["outcome"] == "unchanged"
    paused = api.call("PUT", "/api/v1/schedules/nightly", {**BODY, "enabled": False}).json()
    assert paused["outcome"] == "replaced"
    assert paused["schedule"]["next_run"] is None
    assert len(paused["upcoming"]) == 3  # when it would run

    one = api.call("GET", "/api/v1/schedules/nightly").json()
    assert one == api.call("GET", "/api/v1/schedules").json()["schedules"][0]
    assert api.call("POST", "/api/v1/schedules/nightly/enable").json()["enabled"] is True
    assert api.call("POST", "/api/v1/schedules/nightly/disable", {}).json()["enabled"] is False
    runs = api.call("GET", "/api/v1/schedules/nightly/runs?limit=5").json()
    assert (runs["schedule"]["name"], runs["runs"]) == ("nightly", [])
    assert api.call("DELETE", "/api/v1/schedules/nightly").json() == {"removed": "nightly"}
    assert api.call("GET", "/api/v1/schedules").json() == {"schedules": []}

    events = [(e.actor, e.action, e.outcome) for e in reversed(AuditLog(api.registry.db).list())
              if e.action.startswith("schedule.")]  # fmt: skip
    assert events == [
        ("ops", "schedule.set", "ok"),
        ("ops", "schedule.set", "ok"),
        ("ops", "schedule.set", "ok"),
        ("ops", "schedule.enable", "ok"),
        ("ops", "schedule.disable", "ok"),
        ("ops", "schedule.delete", "ok"),
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({**BODY, "every": "day"}, "unknown field every"),
        ({"cron": "@daily"}, "no 'args' field"),
        ({**BODY, "cron": 5}, "'cron' must be a string"),
        ({**BODY, "enabled": "yes"}, "'enabled' must be true or false"),
        ({**BODY, "cron": "0 2 * *"}, "has 4 fields"),
        ({**BODY, "timezone": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({**BODY, "args": ["iris", "--source", "in.csv"]}, "--sink"),
        ({**BODY, "args": [*ARGS, "--job", "4"]}, "--job is set by the scheduler"),
        ({**BODY, "args": ["x"] * 201}, "'args' must have at most 200 items"),
    ],
)
def test_put_refuses_what_could_not_run_with_400(api: Api, body: Any, words: str) -> None:
    assert words in _error(api.call("PUT", "/api/v1/schedules/nightly", body), 400)
    assert ScheduleService(api.registry.db).list() == []
    refused = [e for e in AuditLog(api.registry.db).list() if e.action == "schedule.set"]
    # the body's shape is the edge's to refuse; what the service refuses is audited
    assert all(e.outcome == "refused" for e in refused)


def test_unknown_schedules_bad_names_and_limits(api: Api) -> None:
    for method, template in ROUTES[1:-1]:
        if method == "PUT":
            continue
        path = template.replace("{name}", "ghost")
        assert "no schedule 'ghost'" in _error(api.call(method, path), 404), path
    assert "schedule name 'a b'" in _error(api.call("PUT", "/api/v1/schedules/a b", BODY), 400)
    api.call("PUT", "/api/v1/schedules/nightly", BODY)
    for limit in ("0", "1001", "x", "99999999999"):
        response = api.call("GET", f"/api/v1/schedules/nightly/runs?limit={limit}")
        assert "limit must be a whole number from 1 to 1000" in _error(response, 400)
    refused = api.call("POST", "/api/v1/schedules/nightly/enable", {"now": True})
    assert "unknown field now" in _error(refused, 400)


def test_prune_applies_the_retention_and_is_audited(api: Api) -> None:
    now = datetime.now(UTC)
    with api.registry.db.session() as session:
        for row_id, age in (("new", timedelta(hours=1)), ("old", timedelta(days=3650))):
            session.add(PredictionRow(id=row_id, model="iris", version=1, endpoint="",
                                      prediction=0, score=None, latency_ms=1.0,
                                      created_at=now - age))  # fmt: skip
    assert api.call("POST", "/api/v1/prediction-log/prune").json() == {"deleted": 1}
    assert api.call("POST", "/api/v1/prediction-log/prune", {}).json() == {"deleted": 0}
    assert "unknown field" in _error(
        api.call("POST", "/api/v1/prediction-log/prune", {"x": 1}), 400
    )
    pruned = [e for e in AuditLog(api.registry.db).list() if e.action == "prediction_log.prune"]
    assert [(e.actor, e.detail) for e in pruned] == [
        ("ops", {"deleted": 0}),
        ("ops", {"deleted": 1}),
    ]
