"""The console's operations pages, server side: jobs and schedules, the audit log,
experiments, drift and live accuracy, and keys, rendered from a real SQLite registry through
the service functions the admin API calls."""

from __future__ import annotations

import html
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from berth.config import Settings
from berth.jobs.records import Counts, JobService
from berth.jobs.schedules import ScheduleService
from berth.monitoring.feedback import store_feedback
from berth.registry.endpoints import EndpointService
from berth.rollouts.experiments import ExperimentService
from berth.security.auth import Principal
from berth.store.audit import AuditEvent, AuditLog
from berth.store.tables import PredictionRow
from tests.conftest import register_iris
from tests.console_client import ConsoleSetup, console_app

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
BATCH_ARGS = ["iris@production", "--source", "in.csv", "--sink", "out.parquet"]
SECOND = timedelta(seconds=1)
SQL_SOURCE = "postgresql://scorer:hunter2-pw@db.example/warehouse"


@pytest.fixture
def console(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[ConsoleSetup]:
    with console_app(settings, iris_files) as setup:
        yield setup


def _audit(setup: ConsoleSetup) -> list[tuple[str, str, str, str]]:
    queue = setup.client.app.state.services.audit  # type: ignore[attr-defined]
    setup.client.portal.call(queue.flush)  # type: ignore[union-attr]
    return [
        (e.actor, e.action, e.target, e.outcome)
        for e in AuditLog(setup.registry.db).list(limit=500)
    ]


def _text(page: str) -> str:
    """The page's text, tags dropped and spaces squeezed (for asserting what a reader sees)."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


# ---------------------------------------------------------------------------- jobs, schedules


def _jobs(setup: ConsoleSetup) -> tuple[int, int]:
    jobs = JobService(setup.registry.db)
    done = jobs.create(job_key="k1", model="iris@production", source="a.csv", sink="b.csv",
                       args=BATCH_ARGS, origin="api")  # fmt: skip
    jobs.start(done.id, version="iris:1", job_key="k1", rows_total=10, resumed_at_row=None)
    jobs.finish(done.id, "succeeded", Counts(scored=9, rejected=1, rows_per_second=50.0), "ok")
    running = jobs.create(
        job_key="k2",
        model="iris@production",
        source=SQL_SOURCE,
        sink="out.parquet",
        args=["iris@production", "--source", SQL_SOURCE, "--sink", "out.parquet"],
        origin="schedule:nightly",
    )
    jobs.start(running.id, version="iris:1", job_key="k2", rows_total=1000, resumed_at_row=None)
    jobs.heartbeat(running.id, Counts(scored=250, rejected=3, rows_per_second=125.0))
    return done.id, running.id


def test_jobs_page_lists_jobs_and_schedules(console: ConsoleSetup) -> None:
    done, running = _jobs(console)
    ScheduleService(console.registry.db).put(
        "nightly", cron="0 2 * * *", timezone="Europe/Paris", args=BATCH_ARGS
    )
    ScheduleService(console.registry.db).put(
        "paused", cron="*/5 * * * *", args=BATCH_ARGS, enabled=False
    )
    console.sign_in("reader")
    page = console.client.get("/console/jobs")
    assert page.status_code == 200
    text = _text(page.text)
    assert f'href="/console/jobs/{running}"' in page.text
    # running: 253 of 1000 rows, 125 rows/s, (1000 - 253) / 125 = 5.976 s left
    assert "running schedule:nightly iris:1 25% 125.0 6 s 3" in text
    assert "succeeded api iris:1 100% 50.0 — 1" in text
    assert "nightly batch 0 2 * * * Europe/Paris yes" in text
    assert text.count("02:00 CET") + text.count("02:00 CEST") == 3  # the next three runs
    assert "paused batch */5 * * * * UTC no —" in text
    assert "hunter2-pw" not in page.text
    assert 'href="/console/jobs"' in page.text
    assert 'aria-current="page"' in page.text

    assert 'hx-get="/console/fragments/jobs"' in page.text  # a job runs: the list is polled
    JobService(console.registry.db).heartbeat(running, Counts(scored=500, rows_per_second=100.0))
    fragment = _text(console.client.get("/console/fragments/jobs").text)
    assert "running schedule:nightly iris:1 50% 100.0 5 s 0" in fragment
    assert "Schedules" not in fragment

    only = console.client.get("/console/jobs?status=succeeded")
    assert f'href="/console/jobs/{done}"' in only.text
    assert f'href="/console/jobs/{running}"' not in only.text
    assert "hx-get" not in only.text  # nothing listed runs
    wrong = console.client.get("/console/jobs?status=sleeping")
    assert wrong.status_code == 400
    assert "status must be one of" in wrong.text


def test_job_page_shows_progress_and_polls_while_it_runs(console: ConsoleSetup) -> None:
    done, running = _jobs(console)
    console.sign_in("reader")
    page = console.client.get(f"/console/jobs/{running}")
    assert page.status_code == 200
    text = _text(page.text)
    assert "Rows scored 250 of 1000" in text
    assert "Rejected (errors) 3" in text
    assert "Rows/s 125.0" in text
    assert "ETA 6 s" in text
    assert f'hx-get="/console/fragments/jobs/{running}"' in page.text
    assert "postgresql://scorer:***@db.example/warehouse" in page.text
    assert "hunter2-pw" not in page.text
    assert "Runs (and resumes) with" not in page.text  # the command line is for admins

    JobService(console.registry.db).heartbeat(running, Counts(scored=900, rows_per_second=125.0))
    fragment = console.client.get(f"/console/fragments/jobs/{running}")
    assert "Rows scored 900 of 1000" in _text(fragment.text)
    assert "<html" not in fragment.text

    finished = console.client.get(f"/console/jobs/{done}")
    assert "succeeded" in finished.text
    assert "hx-get" not in finished.text
    assert console.client.get("/console/jobs/999").status_code == 404
    assert console.client.get("/console/jobs/x").status_code == 400

    console.client.cookies.clear()
    console.sign_in("admin")
    admin = console.client.get(f"/console/jobs/{done}")
    assert "berth batch run iris@production --source in.csv --sink out.parquet" in admin.text


# ---------------------------------------------------------------------------------- audit log


def test_audit_page_filters_by_since_actor_and_action(console: ConsoleSetup) -> None:
    log = AuditLog(console.registry.db)
    old = datetime.now(UTC) - timedelta(days=3)
    log.record(AuditEvent(actor="cli:old", action="model.delete", target="gone", at=old))
    log.record(AuditEvent(actor="cli:alice", action="key.create", target="k1", address="10.0.0.7"))
    log.record(AuditEvent(actor="cli:alice", action="alias.set", target="iris@production"))
    log.record(AuditEvent(actor="cli:bob", action="key.revoke", target="k1", outcome="refused"))
    console.sign_in("reader")
    refused = console.client.get("/console/audit")
    assert refused.status_code == 403  # as the API's audit route: admin keys only
    assert 'href="/console/audit"' not in console.client.get("/console").text
    console.sign_in("admin")
    _audit(console)  # the sign-in's event is queued: written now
    everything = _text(console.client.get("/console/audit").text)
    assert "cli:alice key.create k1 ok 10.0.0.7" in everything
    assert "cli:bob key.revoke k1 refused" in everything
    assert "cli:old model.delete gone" in everything
    assert "console:admin console.sign_in /console" in everything

    recent = _text(console.client.get("/console/audit?since=1d").text)
    assert "cli:old" not in recent
    assert "cli:alice" in recent
    alice = _text(console.client.get("/console/audit?actor=cli:alice").text)
    assert "key.create" in alice
    assert "alias.set" in alice
    assert "cli:bob" not in alice
    keys = _text(console.client.get("/console/audit?action=key.").text)
    assert "key.create" in keys
    assert "key.revoke" in keys
    assert "alias.set" not in keys
    one = _text(console.client.get("/console/audit?action=key.revoke&actor=cli:bob").text)
    assert "key.revoke" in one
    assert "key.create" not in one

    wrong = console.client.get("/console/audit?since=soon")
    assert wrong.status_code == 400
    assert console.client.get("/console/audit?page=0").status_code == 400


def test_audit_page_goes_back_a_page_at_a_time(console: ConsoleSetup) -> None:
    log = AuditLog(console.registry.db)
    start = datetime.now(UTC) - timedelta(hours=1)
    for n in range(70):
        log.record(
            AuditEvent(actor="cli:x", action="alias.set", target=f"t{n:03}", at=start + n * SECOND)
        )
    console.sign_in("admin")
    first = console.client.get("/console/audit?actor=cli:x")
    targets = re.findall(r"<td>(t\d{3})</td>", first.text)
    assert targets == [f"t{n:03}" for n in range(69, 19, -1)]  # the 50 newest
    assert 'href="/console/audit?actor=cli%3Ax&amp;page=2" rel="next"' in first.text
    assert 'rel="prev"' not in first.text
    second = console.client.get("/console/audit?actor=cli%3Ax&page=2")
    assert re.findall(r"<td>(t\d{3})</td>", second.text) == [f"t{n:03}" for n in range(19, -1, -1)]
    assert 'href="/console/audit?actor=cli%3Ax&amp;page=1" rel="prev"' in second.text
    assert 'rel="next"' not in second.text


# -------------------------------------------------------------------------------- experiments


def _dataplane(setup: ConsoleSetup) -> Any:
    return setup.client.app.state.services.dataplane  # type: ignore[attr-defined]


def _experiment_traffic(setup: ConsoleSetup, users: int) -> None:
    """Each user asks once; feedback gives b a higher outcome (about 12 against 10)."""
    setup.client.portal.call(_dataplane(setup).refresh_endpoints)  # type: ignore[union-attr]
    auth = {"Authorization": f"Bearer {setup.secrets['admin']}"}
    rng = random.Random(5)
    feedback = []
    for i in range(users):
        answer = setup.client.post(
            "/api/v1/endpoints/flowers/predict",
            json={"features": IRIS_ROW},
            headers={**auth, "X-User-ID": f"user-{i}"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        outcome = rng.gauss(12.0 if body["route"] == "b" else 10.0, 1.0)
        feedback.append({"prediction_id": body["prediction_id"], "actual": round(outcome, 3)})
    sent = setup.client.post("/api/v1/feedback", json={"feedback": feedback}, headers=auth)
    assert sent.status_code == 200, sent.text
    setup.client.portal.call(_dataplane(setup).route_stats.flush)  # type: ignore[union-attr]


def test_experiment_pages_show_estimates_intervals_and_the_recommendation(
    console: ConsoleSetup,
) -> None:
    EndpointService(console.registry).create("flowers", "iris:1")
    experiments = ExperimentService(console.registry)
    experiments.start(
        "flowers", ["a=iris:1:50", "b=iris:2:50"], metric="outcome", min_samples=20, actor="cli:al"
    )
    _experiment_traffic(console, users=120)
    _info, report = experiments.report("flowers")  # what the admin API answers
    console.sign_in("reader")

    listing = _text(console.client.get("/console/experiments").text)
    assert "flowers a iris:1 50%, b iris:2 50% outcome running — " in listing
    assert "cli:al" in listing

    page = console.client.get("/console/experiments/flowers")
    assert page.status_code == 200
    text = _text(page.text)
    assert report.recommendation == "b"
    assert f"b : {report.explanation}" in text
    for row in report.variants:
        interval = f"{row.ci_low:,.4f} … {row.ci_high:,.4f}"
        assert f"{row.name} {row.reference} {row.requests} " in text
        assert f"{row.samples} {row.estimate:,.4f} {interval}" in text
    comparison = report.comparisons[0]
    assert comparison.significant
    assert f"b a {comparison.difference:,.4f} {comparison.test.name}" in text
    assert f"{comparison.test.p_value:,.4f} yes" in text
    assert "95% interval" in text

    assert console.client.get("/console/experiments/iris").status_code == 404
    assert console.client.get("/console/experiments/no%20such").status_code == 400


# ------------------------------------------------------------------ drift and live accuracy


def test_monitoring_page_shows_drift_verdicts_and_live_accuracy(
    console: ConsoleSetup, iris_files: tuple[Path, Path]
) -> None:
    version = register_iris(console.registry, iris_files, reference=iris_files[1])
    EndpointService(console.registry).create("watch", version.ref)
    console.client.portal.call(_dataplane(console).refresh_endpoints)  # type: ignore[union-attr]
    auth = {"Authorization": f"Bearer {console.secrets['admin']}"}
    feedback = []
    for i in range(8):
        answer = console.client.post(
            "/api/v1/endpoints/watch/predict", json={"features": IRIS_ROW}, headers=auth
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        right = i % 4 != 0  # 6 of 8 right: 75%
        actual = body["prediction"] if right else "not-" + str(body["prediction"])
        feedback.append({"prediction_id": body["prediction_id"], "actual": actual})
    sent = console.client.post("/api/v1/feedback", json={"feedback": feedback}, headers=auth)
    assert sent.status_code == 200, sent.text
    drift = console.client.get(f"/api/v1/models/{version.ref}/drift", headers=auth).json()

    console.sign_in("reader")
    page = console.client.get(f"/console/models/iris/versions/{version.number}/monitoring")
    assert page.status_code == 200, page.text
    text = _text(page.text)
    assert f"Feature drift: {drift['verdict']}" in text
    assert "Live window: 8 of at most" in text
    for f in drift["features"]:
        psi = f"{f['psi']:,.4f}" if f["psi"] is not None else "—"
        assert f"{f['feature']} {f['kind']} {psi} " in text
        assert f"{f['live_count']} {f['verdict']}" in text
    assert "last hour 8 8 75.0%" in text
    assert "all time 8 8 75.0%" in text

    version_page = console.client.get(f"/console/models/iris/versions/{version.number}")
    assert f'href="/console/models/iris/versions/{version.number}/monitoring"' in version_page.text
    plain = _text(console.client.get("/console/models/iris/versions/1/monitoring").text)
    assert "has no reference statistics" in plain  # the accuracy table still shows
    assert "last hour 0 0 —" in plain
    assert console.client.get("/console/models/iris/versions/9/monitoring").status_code == 404


def test_monitoring_page_charts_accuracy_per_hour(
    console: ConsoleSetup, iris_files: tuple[Path, Path]
) -> None:
    version = register_iris(console.registry, iris_files)
    now = datetime.now(UTC)
    rows = [  # (id, predicted, actual or None, age in hours)
        ("h0a", "setosa", "setosa", 0.5),  # the last hour: 2 of 3 right
        ("h0b", "setosa", "setosa", 0.6),
        ("h0c", "setosa", "virginica", 0.7),
        ("h2a", "versicolor", "virginica", 2.5),  # two hours back: 0 of 1; one back: empty
        ("h2b", "versicolor", None, 2.6),
        ("h9", "setosa", "setosa", 30.0),  # outside 24 hours
    ]
    with console.registry.db.session() as session:
        session.execute(
            insert(PredictionRow),
            [
                {"id": i, "model": "iris", "version": version.number, "endpoint": "",
                 "created_at": now - timedelta(hours=age), "prediction": predicted,
                 "score": None, "latency_ms": 1.0}
                for i, predicted, _, age in rows
            ],
        )  # fmt: skip
    admin = Principal(name="admin", scopes=("admin",))
    store_feedback(console.registry.db, {i: a for i, _, a, _ in rows if a is not None}, admin)

    console.sign_in("reader")
    base = f"/console/series/models/iris/versions/{version.number}/accuracy"
    answer = console.client.get(base)
    assert answer.status_code == 200, answer.text
    series = answer.json()
    assert (series["kind"], series["metric"]) == ("classification", "accuracy")
    assert len(series["t"]) == 24
    assert series["t"] == sorted(series["t"])
    assert series["value"][-3:] == [0.0, None, pytest.approx(2 / 3)]
    assert series["value"][:-3] == [None] * 21
    assert series["labelled"][-3:] == [1, 0, 3]
    assert series["count"][-3:] == [2, 0, 3]
    assert sum(series["labelled"]) == 4
    assert series["t"][-1] == pytest.approx((now - timedelta(hours=1)).timestamp(), abs=60)

    week = console.client.get(f"{base}?hours=48").json()
    assert len(week["t"]) == 48
    assert sum(week["labelled"]) == 5  # the 30-hour-old prediction too
    assert week["value"][-31] == 1.0

    page = console.client.get(f"/console/models/iris/versions/{version.number}/monitoring")
    assert page.status_code == 200, page.text
    assert f'data-chart="{base}?hours=24"' in page.text
    assert 'data-chart-kind="accuracy"' in page.text

    assert console.client.get(base.replace("iris", "nosuch")).status_code == 404
    assert console.client.get(base.replace(f"/{version.number}/", "/9/")).status_code == 404
    for bad in ("0", "abc", "-1", "100000", ""):
        refused = console.client.get(f"{base}?hours={bad}")
        assert refused.status_code == 400, bad
        assert "hours must be a whole number" in _text(refused.text)


# ---------------------------------------------------------------------------------------- keys


def _create_key(setup: ConsoleSetup, **fields: str) -> Any:
    return setup.client.post(
        "/console/keys",
        data={"csrf": setup.csrf("/console/keys"), **fields},
        follow_redirects=False,
    )


def test_keys_page_is_for_admins_only(console: ConsoleSetup) -> None:
    console.sign_in("reader")
    assert 'href="/console/keys"' not in console.client.get("/console").text
    refused = console.client.get("/console/keys")
    assert refused.status_code == 403
    assert "predictor" not in refused.text
    token = console.csrf()
    posted = console.client.post("/console/keys", data={"csrf": token, "name": "sneaky"})
    assert posted.status_code == 403
    assert (
        console.client.post("/console/keys/predictor/revoke", data={"csrf": token}).status_code
        == 403
    )
    assert [k.name for k in console.keys.list() if k.revoked_at is None] == [
        "admin",
        "predictor",
        "reader",
    ]

    console.client.cookies.clear()
    console.sign_in("admin")
    page = console.client.get("/console/keys")
    assert page.status_code == 200
    text = _text(page.text)
    assert "predictor" in text
    assert "predict:other" in text
    assert "Create a key" in text
    assert 'href="/console/keys" aria-current="page"' in page.text
    for secret in console.secrets.values():
        assert secret not in page.text


def test_admin_creates_a_key_whose_secret_is_shown_once(
    console: ConsoleSetup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    console.sign_in("admin")
    created = _create_key(console, name="web", scopes="predict:iris, read", expires="30d")
    assert created.status_code == 200, created.text
    assert created.headers["cache-control"] == "no-store"
    secret = re.search(r'value="(berth_[^"]+)"', created.text)
    assert secret is not None
    key = secret[1]
    info = next(k for k in console.keys.list() if k.name == "web")
    assert info.scopes == ("predict:iris", "read")
    assert info.expires_at is not None
    assert key.startswith(f"berth_{info.key_id}_")
    # The secret works as any key does.
    answer = console.client.get("/api/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    assert ("console:admin", "key.create", "web", "ok") in _audit(console)

    # ... and is in no later page, nor in the logs.
    pages = ["/console", "/console/keys", "/console/audit", "/console/jobs", "/console/models"]
    pages += ["/console/rollouts", "/console/experiments", "/console/models/iris/versions/2"]
    for path in pages:
        shown = console.client.get(path)
        assert shown.status_code == 200
        assert key not in shown.text, path
    assert "web" in console.client.get("/console/keys").text
    assert key not in caplog.text
    assert key not in repr(AuditLog(console.registry.db).list(limit=500))
    assert key.split("_", 2)[2] not in caplog.text

    again = _create_key(console, name="web")
    assert again.status_code == 409
    wrong = _create_key(console, name="bad name")
    assert wrong.status_code == 400
    assert "berth_" not in wrong.text
    assert _create_key(console, name="x", scopes="root").status_code == 400


def test_admin_revokes_a_key_after_confirming(console: ConsoleSetup) -> None:
    console.sign_in("admin")
    listed = console.client.get("/console/keys")
    assert 'action="/console/keys/predictor/revoke"' in listed.text  # a GET to the confirmation
    confirm = console.client.get("/console/keys/predictor/revoke")
    assert confirm.status_code == 200
    assert "stops working at once" in confirm.text
    token = console.csrf("/console/keys")
    assert console.client.post("/console/keys/predictor/revoke", data={"a": "b"}).status_code == 403
    stale = console.client.post("/console/keys/predictor/revoke", data={"csrf": token + "x"})
    assert stale.status_code == 403
    assert next(k for k in console.keys.list() if k.name == "predictor").revoked_at is None

    done = console.client.post(
        "/console/keys/predictor/revoke", data={"csrf": token}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/console/keys"
    assert next(k for k in console.keys.list() if k.name == "predictor").revoked_at is not None
    assert ("console:admin", "key.revoke", "predictor", "ok") in _audit(console)
    assert "revoked" in _text(console.client.get("/console/keys").text)
    assert console.client.get("/console/keys/predictor/revoke").status_code == 404

    own = console.client.post("/console/keys/admin/revoke", data={"csrf": token})
    assert own.status_code == 409  # the session's own key, as the API refuses it
    assert ("console:admin", "key.revoke", "admin", "refused") in _audit(console)


def test_a_read_only_console_shows_keys_but_refuses_key_actions(
    settings: Settings, iris_files: tuple[Path, Path]
) -> None:
    with console_app(settings, iris_files, console_read_only=True) as console:
        console.sign_in("admin")
        page = console.client.get("/console/keys")
        assert page.status_code == 200
        assert "predictor" in page.text
        assert "Create a key" not in page.text
        assert "/revoke" not in page.text
        assert "read-only" in page.text
        assert console.client.get("/console/keys/predictor/revoke").status_code == 403
        token = console.csrf()
        assert _create_key(console, name="web").status_code == 403
        revoke = console.client.post("/console/keys/predictor/revoke", data={"csrf": token})
        assert revoke.status_code == 403
        assert [k.name for k in console.keys.list() if k.revoked_at is None] == [
            "admin",
            "predictor",
            "reader",
        ]
        assert not [a for a in _audit(console) if a[0].startswith("console:") and "key." in a[1]]
