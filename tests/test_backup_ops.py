"""Backups as operations: every `berth backup create` is a recorded job, backup schedules run
through `berth scheduler` (and become Kubernetes CronJobs in `berth build`), the server exports
the newest success as a gauge, and BackupTooOld alerts on it (checked by promtool)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import inspect
from starlette.testclient import TestClient

from berth.config import Settings
from berth.jobs import records
from berth.jobs.records import JobService
from berth.jobs.schedules import MISSED, STARTED, ScheduleService
from berth.registry.service import Registry
from tests.conftest import BERTH, Run, berth, register_iris, require_service

REPO = Path(__file__).resolve().parent.parent
PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "backup"


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _finished(jobs: JobService, job_id: int) -> records.JobInfo:
    deadline = time.monotonic() + 120
    while (job := jobs.get(job_id)).status not in records.FINISHED:
        assert time.monotonic() < deadline, f"job {job_id} is still {job.status}"
        time.sleep(0.2)
    return job


# the command's options, as schedules check them ----------------------------------------------


def test_schedules_know_every_option_of_backup_create() -> None:
    """A new option of `berth backup create` must be declared in berth.backup.arguments too,
    or a backup schedule would refuse it."""
    import typer.main

    from berth.backup.arguments import OPTIONS, RUN_ONLY
    from berth.cli.backup import app

    command = typer.main.get_command(app).commands["create"]  # type: ignore[attr-defined]
    flags = {max(p.opts, key=len): not p.is_flag for p in command.params}
    assert flags == {**OPTIONS, **RUN_ONLY}


# job records ---------------------------------------------------------------------------------


def test_every_backup_is_a_job_listed_and_shown(
    settings: Settings, iris_files: tuple[Path, Path], run: Run, tmp_path: Path
) -> None:
    found = Registry.from_settings(settings)
    try:
        register_iris(found, iris_files, aliases=("production",))
    finally:
        found.db.dispose()
    good, blocked = tmp_path / "good", tmp_path / "blocked"
    created = run("backup", "create", "--to", str(good), "--json")
    assert created.code == 0, created.err
    report = json.loads(created.out)
    blocked.write_text("a file where a folder should be")
    failed = run("backup", "create", "--to", str(good), "--to", str(blocked))
    assert failed.code == 1

    listed = json.loads(run("jobs", "list", "--json").out)
    assert [(j["kind"], j["status"], j["origin"]) for j in listed] == [
        ("backup", "failed", "cli"),
        ("backup", "succeeded", "cli"),
    ]
    first = listed[1]
    assert first["model"] == ""
    assert first["sink"] == str(good)
    assert first["args"] == ["--to", str(good)]
    assert first["rows_scored"] == 0
    shown = json.loads(run("jobs", "show", str(first["id"]), "--json").out)
    assert shown["summary"] == report
    assert shown["command"] == f"berth backup create --to {good}"
    assert shown["message"].startswith(f"backup {report['snapshot']}: 1 artifacts")
    second = json.loads(run("jobs", "show", str(listed[0]["id"]), "--json").out)
    assert second["summary"]["destinations"][1]["complete"] is False
    assert str(blocked) in second["message"]

    table = run("jobs", "list")
    assert table.code == 0, table.err
    # The destination's path may wrap inside its cell: its row is matched up to the arrow.
    assert re.search(rf"{first['id']}[\s│]+succeeded[\s│]+backup[\s│]+registry →", table.out)
    text = run("jobs", "show", str(listed[0]["id"]))
    assert text.code == 0, text.err
    assert f"destination     {good}: complete" in text.out
    assert f"destination     {blocked}: failed:" in text.out
    assert f"berth backup create --to {good} --to {blocked}" in text.out
    assert "rows" not in text.out  # no batch counts for a backup

    # A finished backup cannot be cancelled; neither can a running one (it has no clean stop).
    refused = run("jobs", "cancel", str(first["id"]))
    assert refused.code == 1
    assert "already succeeded" in refused.err


def test_a_running_backup_refuses_cancel_and_a_queued_one_is_cancelled(
    sqlite_registry: Registry,
) -> None:
    from berth.errors import Conflict
    from berth.jobs.backups import recorded_backup

    jobs = JobService(sqlite_registry.db)
    with recorded_backup(sqlite_registry.db, ["--to", "/tmp/x"]) as record:
        running = jobs.get(record.job.id)
        assert (running.kind, running.status, running.pid) == ("backup", "running", os.getpid())
        with pytest.raises(Conflict, match="cannot stop halfway"):
            jobs.cancel(record.job.id)
        record.report({"snapshot": "s", "artifacts": 0, "destinations": []})
    assert jobs.get(record.job.id).status == "succeeded"

    queued = jobs.create(
        kind="backup", job_key="k", model="", source="registry", sink="/tmp/x",
        args=["--to", "/tmp/x"], origin="schedule:nightly",
    )  # fmt: skip
    assert jobs.cancel(queued.id).status == "cancelled"
    with (
        pytest.raises(Conflict, match="berth backup create"),
        recorded_backup(sqlite_registry.db, ["--to", "/tmp/x"], job_id=queued.id),
    ):
        pass


# schedules -----------------------------------------------------------------------------------


def test_backup_schedules_are_stored_checked_listed_and_removed(
    settings: Settings, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = str(tmp_path / "backups")
    done = run(
        "backup", "schedule", "nightly", "--cron", "0 3 * * *", "--timezone", "Europe/Paris",
        "--to", dest, "--to", "s3://bucket/berth",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert "Created schedule nightly: 0 3 * * * (Europe/Paris)" in done.out
    assert f"runs: berth backup create --to {dest} --to s3://bucket/berth" in done.out
    again = run(
        "backup", "schedule", "nightly", "--cron", "0 3 * * *", "--timezone", "Europe/Paris",
        "--to", dest, "--to", "s3://bucket/berth",
    )  # fmt: skip
    assert "Unchanged schedule nightly" in again.out

    for args, problem in (
        (["--to", dest, "--encrypt"], "No such option: --encrypt"),
        (["--to", dest, "--job", "3"], "--job is set by the scheduler"),
        (["--to", "nosuch://bucket"], "'nosuch://' is not a protocol fsspec knows"),
        (["--cron", "0 3 * *", "--to", dest], "has 4 fields"),
    ):
        cron = [] if "--cron" in args else ["--cron", "@daily"]
        refused = run("backup", "schedule", "bad", *cron, *args)
        assert refused.code == 1, refused.out
        assert refused.err.startswith("error: ")
        assert problem in refused.err
    missing = run("backup", "schedule", "bad", "--cron", "@daily")
    assert missing.code == 2  # click: --to is required

    iris = ["iris", "--source", "in.csv", "--sink", "out.csv"]
    assert run("batch", "schedule", "scores", "--cron", "@hourly", *iris).code == 0
    everything = json.loads(run("batch", "schedules", "--json").out)
    assert [(s["name"], s["kind"]) for s in everything] == [
        ("nightly", "backup"),
        ("scores", "batch"),
    ]
    table = run("batch", "schedules").out
    assert re.search(r"nightly[\s│]+backup[\s│]+0 3 \* \* \*", table)
    assert re.search(r"scores[\s│]+batch[\s│]+@hourly", table)
    backups = json.loads(run("backup", "schedules", "--json").out)
    assert [s["name"] for s in backups] == ["nightly"]
    assert backups[0]["args"] == ["--to", dest, "--to", "s3://bucket/berth"]

    # The scheduler runs from its own working directory: relative paths are stored absolute.
    monkeypatch.chdir(tmp_path)
    relative = run(
        "backup", "schedule", "here", "--cron", "@daily", "--to", "local-backups",
        "--encryption-key-file=keys/backup.key",
    )  # fmt: skip
    assert relative.code == 0, relative.err
    stored = json.loads(run("backup", "schedules", "--json").out)
    assert [s["args"] for s in stored if s["name"] == "here"] == [
        ["--to", str(tmp_path / "local-backups"),
         f"--encryption-key-file={tmp_path / 'keys' / 'backup.key'}"]
    ]  # fmt: skip
    assert run("backup", "unschedule", "here").code == 0

    refused = run("backup", "unschedule", "scores")
    assert refused.code == 1
    assert "berth batch unschedule scores" in refused.err
    assert run("backup", "unschedule", "nightly").code == 0
    assert run("backup", "schedules").out.startswith("No schedules. Add one with `berth backup")


def test_the_schedules_api_takes_and_gives_the_kind(registry: Registry, settings: Settings) -> None:
    from berth.api.app import build_services, create_app
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    settings = settings.model_copy(
        update={"database_url": registry.db.url, "rollout_controller": False}
    )
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    headers = {"Authorization": f"Bearer {keys.create('ops', ('admin',))[1]}"}
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app, raise_server_exceptions=False) as client:
        backup = {"cron": "@daily", "args": ["--to", "/backups"], "kind": "backup"}
        put = client.put("/api/v1/schedules/nightly", json=backup, headers=headers)
        assert put.status_code == 200, put.text
        assert put.json()["schedule"]["kind"] == "backup"
        batch = {"cron": "@daily", "args": ["iris", "--source", "a.csv", "--sink", "b.csv"]}
        put = client.put("/api/v1/schedules/scores", json=batch, headers=headers)
        assert put.json()["schedule"]["kind"] == "batch"  # no kind: batch, as before
        wrong = {**backup, "args": ["iris", "--source", "a.csv", "--sink", "b.csv"]}
        refused = client.put("/api/v1/schedules/x", json=wrong, headers=headers)
        assert refused.status_code == 400
        assert "invalid backup arguments" in refused.json()["error"]
        odd = client.put("/api/v1/schedules/x", json={**backup, "kind": "restore"}, headers=headers)
        assert odd.status_code == 400
        listed = client.get("/api/v1/schedules", headers=headers).json()["schedules"]
        assert [(s["name"], s["kind"]) for s in listed] == [
            ("nightly", "backup"),
            ("scores", "batch"),
        ]


def test_a_backup_tick_is_launched_with_the_batch_rules(sqlite_registry: Registry) -> None:
    """Missed and overlapping ticks of a backup schedule are handled as a batch schedule's."""
    from berth.jobs.scheduler import NOT_RUNNING, Scheduler

    launched: list[tuple[int, list[str], str]] = []

    def launcher(job_id: int, args: Any, kind: str = "batch") -> None:
        launched.append((job_id, list(args), kind))

    now = datetime(2030, 1, 1, 9, 30, tzinfo=UTC)
    clock = {"now": now - timedelta(hours=3)}
    service = ScheduleService(sqlite_registry.db, clock=lambda: clock["now"])
    service.put("hourly", cron="0 * * * *", args=["--to", "/b"], kind="backup")
    clock["now"] = now
    scheduler = Scheduler(sqlite_registry.db, launcher, lease=None, clock=lambda: clock["now"])

    first = scheduler.tick()
    ((job_id, args, kind),) = launched
    assert (args, kind) == (["--to", "/b"], "backup")
    assert [s.job_id for s in first.started] == [job_id]
    assert [m.reason for m in first.missed] == [NOT_RUNNING, NOT_RUNNING]
    job = JobService(sqlite_registry.db).get(job_id)
    assert (job.kind, job.origin, job.status, job.sink) == (
        "backup",
        "schedule:hourly",
        "queued",
        "/b",
    )

    # Its process attached: a running backup holds the schedule back (not queued behind it).
    jobs = JobService(sqlite_registry.db, clock=lambda: clock["now"])
    jobs.start(job_id, version=None, job_key=job.job_key, rows_total=None, resumed_at_row=None)
    clock["now"] = now + timedelta(minutes=35)
    jobs.heartbeat(job_id, records.Counts())  # alive, as its heartbeat thread keeps it
    second = scheduler.tick()
    assert not second.started
    assert second.missed[0].reason == f"previous run (job {job_id}) still running"
    assert [r.status for r in service.runs("hourly", limit=1)] == [MISSED]


def test_berth_scheduler_runs_a_real_backup_and_metrics_show_its_time(
    sqlite_registry: Registry, iris_files: tuple[Path, Path], settings: Settings, tmp_path: Path
) -> None:
    from berth.api.app import build_services, create_app

    register_iris(sqlite_registry, iris_files, aliases=("production",))
    settings = settings.model_copy(update={"rollout_controller": False})
    app = create_app(settings, build_services(settings, sqlite_registry))
    with TestClient(app) as client:
        assert "berth_backup_last_success_timestamp_seconds" not in client.get("/metrics").text

        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        service = ScheduleService(sqlite_registry.db, clock=lambda: two_hours_ago)
        dest = tmp_path / "backups"
        service.put("hourly", cron="0 * * * *", args=["--to", str(dest)], kind="backup")

        done = berth(_env(), "scheduler", "--once")
        assert done.returncode == 0, done.stderr
        match = re.search(r"Started job (\d+) for hourly", done.stdout)
        assert match, done.stdout
        job = _finished(JobService(sqlite_registry.db), int(match[1]))
        log = Path(os.environ["BERTH_HOME"], "jobs", f"{job.id}.log")
        assert job.status == records.SUCCEEDED, f"{job.message}\n{log.read_text()}"
        assert (job.kind, job.origin) == ("backup", "schedule:hourly")
        assert job.summary is not None
        assert (dest / "snapshots" / job.summary["snapshot"] / "manifest.json").is_file()
        assert f"backup {job.summary['snapshot']}" in log.read_text()
        (latest, earlier) = service.runs("hourly")
        assert (latest.status, latest.job_id, latest.job_status) == (STARTED, job.id, "succeeded")
        assert earlier.status == MISSED

        app.state.backup_metric.refresh_seconds = 0  # read again now, not 15 s later
        text = client.get("/metrics").text
        (line,) = [
            line for line in text.splitlines()
            if line.startswith("berth_backup_last_success_timestamp_seconds ")
        ]  # fmt: skip
        assert job.finished_at is not None
        assert float(line.split()[1]) == pytest.approx(job.finished_at.timestamp(), abs=0.001)
        assert "# TYPE berth_backup_last_success_timestamp_seconds gauge" in text


# the migration --------------------------------------------------------------------------------


def test_migration_0009_adds_schedule_kinds_and_keeps_schedules(registry: Registry) -> None:
    from alembic import command
    from alembic.config import Config

    from berth.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    def migrate(action: Any, target: str) -> None:
        with registry.db.engine.begin() as connection:
            config.attributes["connection"] = connection
            action(config, target)

    def shape() -> tuple[set[str], set[str]]:
        with registry.db.engine.connect() as connection:
            found = inspect(connection)
            columns = {c["name"] for c in found.get_columns("schedules")}
            indexes = {i["name"] for i in found.get_indexes("jobs")}
        return columns, indexes

    ScheduleService(registry.db).put(
        "scores", cron="@daily", args=["m", "--source", "a", "--sink", "b"]
    )
    migrate(command.downgrade, "0008")
    columns, indexes = shape()
    assert "kind" not in columns
    assert "ix_jobs_kind_status_finished" not in indexes
    migrate(command.upgrade, "head")
    columns, indexes = shape()
    assert "kind" in columns
    assert "ix_jobs_kind_status_finished" in indexes
    assert ScheduleService(registry.db).get("scores").kind == "batch"


# alerts ---------------------------------------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        require_service("promtool", "not on PATH; `make prometheus` installs it")
    assert found is not None
    return found


def test_backup_too_old_passes_promtool_test_rules(promtool: str, tmp_path: Path) -> None:
    from tests.test_alerts import run_promtool

    written = subprocess.run(
        [*BERTH, "observability", "alerts", "--backup-max-age", "26h",
         "--out", str(tmp_path / "berth-rules.yml")],
        capture_output=True, text=True, env=_env(), timeout=120, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert "SUCCESS: 20 rules found" in run_promtool(
        promtool, "check", "rules", str(tmp_path / "berth-rules.yml")
    )
    shutil.copy(PROMTOOL_TESTS / "backup_alerts_test.yml", tmp_path)
    output = run_promtool(promtool, "test", "rules", "backup_alerts_test.yml", cwd=tmp_path)
    assert "SUCCESS" in output


def test_backup_alert_is_opt_in_and_checked() -> None:
    from berth.errors import InvalidInput
    from berth.observability.alerts import AlertOptions, build_rules, rule_names

    assert "BackupTooOld" not in rule_names(build_rules())
    names = rule_names(build_rules(AlertOptions(backup_max_age="3h")))
    assert names.count("BackupTooOld") == 2
    with pytest.raises(InvalidInput, match="--backup-max-age"):
        build_rules(AlertOptions(backup_max_age="0s"))


# berth build ---------------------------------------------------------------------------------


def test_berth_build_turns_backup_schedules_into_cronjobs(
    sqlite_registry: Registry,
    churn_files: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    from berth.deploy.backup_alert import backup_max_age
    from berth.deploy.build import build
    from berth.deploy.plan import BuildOptions
    from berth.deploy.source import BatchSchedule, RegistrySource
    from tests.conftest import register_churn
    from tests.test_deploy_build import assert_restricted, pod_specs, validate

    register_churn(sqlite_registry, churn_files)
    schedules = ScheduleService(sqlite_registry.db)
    schedules.put(
        "nightly-backup", cron="0 3 * * *", timezone="Europe/Paris", kind="backup",
        args=["--to", "s3://backups/berth", "--to", "gs://dr/berth"],
    )  # fmt: skip
    schedules.put(
        "paused-backup", cron="@hourly", args=["--to", "/b"], kind="backup", enabled=False
    )
    options = BuildOptions(targets=("kubernetes",))
    result = build(RegistrySource(sqlite_registry), "churn@production", tmp_path / "out", options)
    base = result.out / "kubernetes" / "base"
    assert sorted(p.name for p in base.glob("cronjob-*.yaml")) == [
        "cronjob-berth-churn-nightly-backup.yaml"
    ]
    text = (base / "cronjob-berth-churn-nightly-backup.yaml").read_text()
    assert "Backup schedule 'nightly-backup'" in text
    cronjob = yaml.safe_load(text)
    validate(cronjob)
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"]) == ("0 3 * * *", "Europe/Paris")
    assert spec["concurrencyPolicy"] == "Forbid"
    (pod,) = pod_specs(cronjob)
    assert_restricted(pod)
    (container,) = pod["containers"]
    assert container["command"] == [
        "berth", "backup", "create", "--to", "s3://backups/berth", "--to", "gs://dr/berth",
        "--schedule", "nightly-backup",
    ]  # fmt: skip
    server = yaml.safe_load((base / "deployment.yaml").read_text())
    (serving,) = server["spec"]["template"]["spec"]["containers"]
    assert container["image"] == serving["image"]
    assert container["envFrom"] == serving["envFrom"]  # the same ConfigMap and Secret
    assert (base / "cronjob-berth-churn-nightly-backup.yaml").name in (
        base / "kustomization.yaml"
    ).read_text()

    rules = yaml.safe_load((base / "prometheusrule.yaml").read_text())
    backup_rules = [
        r for g in rules["spec"]["groups"] for r in g["rules"] if r.get("alert") == "BackupTooOld"
    ]
    assert len(backup_rules) == 2
    assert backup_rules[0]["expr"].endswith("> 93600")  # a daily backup: 24h + 2h
    assert backup_rules[1]["for"] == "26h"
    readme = (result.out / "README.md").read_text()
    assert "### Backups" in readme
    assert "`nightly-backup`" in readme
    assert "older than 26h" in readme

    weekdays = BatchSchedule("w", "0 3 * * 1-5", "UTC", (), "backup")
    hourly = BatchSchedule("h", "0 * * * *", "UTC", (), "backup")
    assert backup_max_age([weekdays]) == "74h"  # Friday to Monday
    assert backup_max_age([weekdays, hourly]) == "3h"  # any success resets the age


def test_a_cronjob_run_is_recorded_as_its_schedules(
    settings: Settings, run: Run, tmp_path: Path
) -> None:
    """The CronJob of `berth build` runs `berth backup create ... --schedule NAME`."""
    done = run("backup", "create", "--to", str(tmp_path / "b"), "--schedule", "nightly")
    assert done.code == 0, done.err
    (job,) = json.loads(run("jobs", "list", "--json").out)
    assert (job["kind"], job["origin"], job["status"]) == (
        "backup",
        "schedule:nightly",
        "succeeded",
    )
    refused = run("backup", "create", "--to", str(tmp_path / "b"), "--schedule", "no good")
    assert refused.code == 1
    assert refused.err.startswith("error: --schedule 'no good' is not a schedule name")
