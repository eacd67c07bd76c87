"""The admin API for batch jobs: in process on SQLite and PostgreSQL with a recording launcher
(no process starts), then once end to end, a real job POSTed to a real `berth serve`."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from berth.config import Settings
from berth.jobs import records as r
from berth.jobs.config import JobsConfig
from berth.jobs.records import Counts, JobInfo, JobService
from berth.jobs.run_args import parse_run_args, run_args
from berth.jobs.spec import BatchSpec
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from tests.conftest import register_iris, serving

SOURCE = "/data/in.csv"
SINK = "/data/out.parquet"
BODY = {"model": "iris@production", "source": SOURCE, "sink": SINK}
SPEC = BatchSpec(model="iris@production", source=SOURCE, sink=SINK)
ROUTES = [
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/1"),
    ("POST", "/api/v1/jobs/1/cancel"),
]


@dataclass
class Launched:
    """What the recording launcher was asked to start, instead of starting it."""

    calls: list[tuple[int, list[str]]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, _config: JobsConfig, job_id: int, args: Sequence[str]) -> None:
        if self.fail:
            raise OSError("no more processes")
        self.calls.append((job_id, list(args)))


@dataclass
class Api:
    client: TestClient
    registry: Registry
    keys: dict[str, str]
    launched: Launched

    @property
    def jobs(self) -> JobService:
        return JobService(self.registry.db)

    def call(self, method: str, path: str, body: Any = None, key: str | None = "admin") -> Any:
        headers = {"X-API-Key": self.keys[key]} if key else {}
        return self.client.request(method, path, json=body, headers=headers)


@pytest.fixture
def api(registry: Registry, settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[Api]:
    """iris:1 @production on each database; keys admin and user (predict, read)."""
    from berth.api.app import build_services, create_app

    settings = settings.model_copy(
        update={"database_url": registry.db.url, "rollout_controller": False}
    )
    register_iris(registry, iris_files, aliases=("production",))
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    secrets = {
        "admin": keys.create("ops", ("admin",))[1],
        "user": keys.create("user", ("predict", "read"))[1],
    }
    app = create_app(settings, build_services(settings, registry))
    launched = Launched()
    app.state.job_launcher = launched
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client=client, registry=registry, keys=secrets, launched=launched)


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]
    return message


def _queued(api: Api) -> JobInfo:
    return api.jobs.create(job_key=SPEC.job_key(), model=SPEC.model, source=SOURCE, sink=SINK,
                           args=run_args(SPEC))  # fmt: skip


def _running(service: JobService) -> JobInfo:
    job = service.create(job_key=SPEC.job_key(), model=SPEC.model, source=SOURCE, sink=SINK,
                         args=run_args(SPEC))  # fmt: skip
    service.start(job.id, version="iris:1", job_key=SPEC.job_key(), rows_total=200,
                  resumed_at_row=None)  # fmt: skip
    service.heartbeat(job.id, Counts(scored=50, rows_per_second=25.0))
    return service.get(job.id)


# access --------------------------------------------------------------------------------------


def test_every_job_route_needs_an_admin_key(api: Api) -> None:
    paths = api.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    documented = [(m.upper(), p) for p, ops in paths.items() if p.startswith("/api/v1/jobs")
                  for m in ops]  # fmt: skip
    assert sorted(documented) == sorted(
        [(method, path.replace("/1", "/{id}")) for method, path in ROUTES]
    )
    for method, path in ROUTES:
        for key, status in ((None, 401), ("user", 403)):
            response = api.call(method, path, BODY, key=key)
            assert response.status_code == status, (method, path, key, response.text)
            assert set(response.json()) == {"error"}
    assert api.jobs.list() == []
    assert api.launched.calls == []
    job = _queued(api)
    answers = [
        api.call(method, path.replace("/1", f"/{job.id}"), BODY if path == "/api/v1/jobs" else None)
        for method, path in ROUTES
    ]
    assert [a.status_code for a in answers] == [200, 202, 200, 200]


# starting ------------------------------------------------------------------------------------


def test_post_queues_a_job_launches_it_and_points_at_it(api: Api) -> None:
    created = api.call("POST", "/api/v1/jobs", {**BODY, "features": ["a", "b", "c", "d"],
                                                "chunk_size": 50, "skip_scored": True})  # fmt: skip
    assert created.status_code == 202, created.text
    document = created.json()
    assert created.headers["Location"] == f"/api/v1/jobs/{document['id']}"
    expected = BatchSpec(model="iris@production", source=SOURCE, sink=SINK,
                         features=("a", "b", "c", "d"), chunk_size=50, skip_scored=True)  # fmt: skip
    assert document["args"] == run_args(expected)
    assert (document["status"], document["origin"], document["model"]) == (
        "queued",
        "api",
        "iris@production",
    )
    assert api.launched.calls == [(document["id"], run_args(expected))]
    stored = api.jobs.get(document["id"])
    assert stored.job_key == expected.job_key()  # so `berth batch run` with them resumes it
    assert parse_run_args(stored.args) == expected
    followed = api.call("GET", created.headers["Location"])
    command = shlex.join(["berth", "batch", "run", *run_args(expected)])
    detail = {"job_key": expected.job_key(), "log": None, "command": command, "summary": None}
    assert followed.json() == {**document, **detail}  # what `berth jobs show --json` prints

    # the same job given as `berth batch run` arguments is stored the same way
    as_args = api.call("POST", "/api/v1/jobs", {"args": [*run_args(expected), "--quiet"]})
    assert as_args.status_code == 202, as_args.text
    assert as_args.json()["args"] == document["args"]
    assert api.jobs.get(as_args.json()["id"]).job_key == stored.job_key

    events = AuditLog(api.registry.db).list()
    assert ("job.create", f"job {document['id']}", "ops") in [
        (e.action, e.target, e.actor) for e in events
    ]


BAD_BODIES: list[tuple[Any, int, str]] = [
    ({"model": "iris@production", "source": SOURCE}, 400, "no 'sink' field"),
    ({**BODY, "sinc": "x"}, 400, "unknown field 'sinc'"),
    ({**BODY, "args": ["iris"]}, 400, "either 'args' or the job's fields"),
    ({**BODY, "chunk_size": 0}, 400, "'chunk_size': Input should be greater than or equal to 1"),
    ({**BODY, "chunk_size": "10"}, 400, "'chunk_size': Input should be a valid integer"),
    ({**BODY, "mode": "replace"}, 400, "'mode': Input should be 'append' or 'upsert'"),
    ({**BODY, "max_error_rate": 2}, 400, "'max_error_rate'"),
    ({**BODY, "features": ["a,b"]}, 400, "is not a column name"),
    ({**BODY, "features": []}, 400, "'features'"),
    ({**BODY, "query": "SELECT 1", "table": "t"}, 400, "give --query or --table, not both"),
    ({**BODY, "sink": "/tmp/out\x00.csv"}, 400, "must not contain NUL"),
    ({**BODY, "model": "-h"}, 400, "invalid job arguments"),
    ({**BODY, "model": "not a reference!"}, 400, "is not a model reference"),
    ({**BODY, "model": "ghost@production"}, 404, "ghost"),
    ({**BODY, "model": "iris@staging"}, 404, "no alias 'staging'"),
    ({"args": []}, 400, "'args'"),
    ({"args": ["iris", "--source", SOURCE]}, 400, "Missing option '--sink'"),
    ({"args": ["iris", "--source", SOURCE, "--sink", SINK, "--bogus"]}, 400, "--bogus"),
    ({"args": ["iris", "--source", SOURCE, "--sink", SINK, "--help"]}, 400, "asked for help"),
    ({"args": ["iris", "--source", SOURCE, "--sink", SINK, "--job", "7"]}, 400, "leave out --job"),
    ({"args": ["iris", "--source", SOURCE, "--sink", SINK, "--job=7"]}, 400, "leave out --job"),
    ({"args": "iris --source x"}, 400, "'args': Input should be a valid list"),
    (["iris"], 400, "must be a JSON object"),
]


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
def test_bad_bodies_say_what_to_fix_and_start_nothing(
    api: Api, body: Any, status: int, message: str
) -> None:
    assert message in _error(api.call("POST", "/api/v1/jobs", body), status)
    assert api.jobs.list() == []
    assert api.launched.calls == []


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_a_job_whose_process_cannot_start_is_recorded_failed(api: Api) -> None:
    api.launched.fail = True
    response = api.call("POST", "/api/v1/jobs", BODY)
    assert "internal error" in _error(response, 500)
    (job,) = api.jobs.list()
    assert job.status == r.FAILED
    assert "could not start: no more processes" in (job.message or "")


# following and cancelling --------------------------------------------------------------------


def test_list_and_get_show_progress_and_lost_jobs(api: Api) -> None:
    queued = _queued(api)
    live = _running(api.jobs)
    past = datetime.now(UTC) - timedelta(minutes=5)
    lost = _running(JobService(api.registry.db, clock=lambda: past))
    done = api.jobs.finish(_running(api.jobs).id, r.SUCCEEDED, Counts(scored=200), "scored 200")

    listed = api.call("GET", "/api/v1/jobs").json()["jobs"]
    assert [(j["id"], j["status"]) for j in listed] == [
        (done.id, "succeeded"),
        (lost.id, "lost"),
        (live.id, "running"),
        (queued.id, "queued"),
    ]
    running = api.call("GET", f"/api/v1/jobs/{live.id}").json()
    assert (running["progress"], running["eta_seconds"], running["rows_scored"]) == (0.25, 6.0, 50)
    assert api.call("GET", f"/api/v1/jobs/{done.id}").json()["progress"] == 1.0
    assert api.call("GET", f"/api/v1/jobs/{lost.id}").json()["status"] == "lost"

    def ids(query: str) -> list[int]:
        response = api.call("GET", f"/api/v1/jobs?{query}")
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["jobs"]]

    assert ids("status=lost") == [lost.id]
    assert ids("status=running") == [live.id]
    assert ids("status=queued") == [queued.id]
    assert ids("limit=2") == [done.id, lost.id]
    assert "not one of queued, running, lost" in _error(
        api.call("GET", "/api/v1/jobs?status=done"), 400
    )
    for limit in ("0", "1001", "x", "²"):
        assert "limit must be" in _error(api.call("GET", f"/api/v1/jobs?limit={limit}"), 400)
    assert "no job 999" in _error(api.call("GET", "/api/v1/jobs/999"), 404)
    for bad in ("0", "abc", "²", "99999999999"):
        assert "job id must be" in _error(api.call("GET", f"/api/v1/jobs/{bad}"), 400)


def test_cancel_queued_running_finished_and_unknown(api: Api) -> None:
    queued = _queued(api)
    cancelled = api.call("POST", f"/api/v1/jobs/{queued.id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["cancel_requested"]) == (
        "cancelled",
        True,
    )
    live = _running(api.jobs)
    asked = api.call("POST", f"/api/v1/jobs/{live.id}/cancel", {})
    assert (asked.json()["status"], asked.json()["cancel_requested"]) == ("running", True)
    assert api.jobs.heartbeat(live.id, Counts(scored=60)) is True  # the job process is told
    assert "already cancelled" in _error(api.call("POST", f"/api/v1/jobs/{queued.id}/cancel"), 409)
    assert "no job 999" in _error(api.call("POST", "/api/v1/jobs/999/cancel"), 404)
    assert "takes no fields" in _error(
        api.call("POST", f"/api/v1/jobs/{live.id}/cancel", {"now": True}), 400
    )
    actions = [(e.action, e.target, e.actor, e.outcome) for e in AuditLog(api.registry.db).list()]
    assert ("job.cancel", f"job {live.id}", "ops", "ok") in actions
    assert ("job.cancel", f"job {queued.id}", "ops", "refused") in actions


# end to end ----------------------------------------------------------------------------------


def test_a_job_posted_to_a_real_server_runs_to_the_end(
    settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """POST /api/v1/jobs to `berth serve`: the server starts `berth batch run` as its own
    process, which scores the iris CSV into Parquet parts while GET reports its progress."""
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    admin = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings))).create(
        "ops", ("admin",)
    )[1]
    registry.db.dispose()
    features = np.load(iris_files[1])  # float32 rows the model was registered with
    rows = np.tile(features, (10, 1))  # 200 rows, scored in chunks of 64
    frame = pd.DataFrame(rows, columns=["a", "b", "c", "d"])
    frame.insert(0, "id", range(1, len(frame) + 1))
    source, sink = tmp_path / "iris.csv", tmp_path / "scores.parquet"
    frame.to_csv(source, index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(BERTH_HOME=str(settings.home), BERTH_LOG_LEVEL="warning")
    body = {"model": "iris@production", "source": str(source), "sink": str(sink),
            "features": ["a", "b", "c", "d"], "chunk_size": 64}  # fmt: skip
    headers = {"X-API-Key": admin}
    with serving(env) as (base, _port):
        created = httpx.post(f"{base}/api/v1/jobs", json=body, headers=headers)
        assert created.status_code == 202, created.text
        location = f"{base}{created.headers['Location']}"
        deadline = time.monotonic() + 120
        job = created.json()
        while job["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = httpx.get(location, headers=headers).json()
    log = settings.home.resolve() / "jobs" / f"{job['id']}.log"
    assert job["status"] == "succeeded", (job, log.read_text() if log.exists() else "no log")
    assert (job["rows_scored"], job["rows_total"], job["progress"]) == (len(frame), len(frame), 1.0)
    assert (job["version"], job["origin"]) == ("iris:1", "api")
    scored = pd.read_parquet(sink)
    assert sorted(scored["id"]) == list(range(1, len(frame) + 1))
    expected = joblib.load(iris_files[0]).predict(rows)
    assert list(scored.sort_values("id")["prediction"]) == list(expected)
