"""Backups through the admin API and the remote CLI.

The command scenarios run in both modes (tests/cli_modes.py): in remote mode `berth backup
create` is a job the server launches as a real `berth backup create --job ID` process, which
backs up the registry the test set up; list, verify and prune run on the server's host and
print what the local commands print (compared character for character on the same backups).
The routes themselves are checked in process: admin only, bodies checked before anything is
recorded, the caller audited, no key material accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from berth.config import Settings
from berth.jobs.config import JobsConfig
from berth.jobs.records import JobService
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from tests.cli_modes import REMOTE_KEY, Mode
from tests.conftest import Run, register_iris
from tests.local_twin import assert_same_output

ONLY_REMOTE = pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)


def _iris(settings: Settings, iris_files: tuple[Path, Path]) -> None:
    found = Registry.from_settings(settings)
    try:
        register_iris(found, iris_files, aliases=("production",))
    finally:
        found.db.dispose()


def _one_line(outcome: Any, fragment: str) -> str:
    assert outcome.code == 1, outcome
    assert "Traceback" not in outcome.err, outcome.err
    # remote mode's `backup create` says first which job it follows
    lines = [line for line in outcome.err.strip().splitlines() if not line.startswith("Backup job")]
    assert len(lines) == 1, outcome.err
    assert lines[0].startswith("error: "), outcome.err
    assert fragment in lines[0], outcome.err
    return str(lines[0])


# the commands, in both modes -----------------------------------------------------------------


def test_create_list_verify_prune_in_both_modes(
    run_both: Run,
    cli_mode: Mode,
    settings: Settings,
    iris_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _iris(settings, iris_files)
    run = run_both
    dest = tmp_path / "backups"

    first = run("backup", "create", "--to", str(dest), "--json")
    assert first.code == 0, first.err
    report = json.loads(first.out)
    assert report["artifacts"] == 1
    [written] = report["destinations"]
    assert (written["url"], written["complete"]) == (str(dest), True)
    assert written["objects_copied"] == 1
    second = run("backup", "create", "--to", str(dest))
    assert second.code == 0, second.err
    # the same report text in both modes: nothing copied again, the secret left out
    lines = second.out.splitlines()
    assert lines[0].startswith("backup "), second.out
    assert "1 artifact (" in lines[0], second.out
    assert lines[1] == f"  {dest}: complete, copied 0 objects (0 bytes), 1 already there"
    assert lines[2].startswith("  the server secret is not in the backup")

    jobs = json.loads(run("jobs", "list", "--json").out)
    origin = "api" if cli_mode.remote else "cli"
    assert [(j["kind"], j["status"], j["origin"]) for j in jobs] == [
        ("backup", "succeeded", origin),
        ("backup", "succeeded", origin),
    ]
    shown = json.loads(run("jobs", "show", str(jobs[1]["id"]), "--json").out)
    assert shown["summary"] == report
    assert shown["command"] == f"berth backup create --to {dest}"

    listed = json.loads(run("backup", "list", str(dest), "--json").out)
    assert [b["id"] for b in listed] == [report["snapshot"], listed[1]["id"]]
    verified = json.loads(run("backup", "verify", str(dest), "--deep", "--json").out)
    assert (verified["ok"], verified["deep"], verified["objects"]) == (True, True, 1)
    drilled = run("backup", "verify", f"{dest}/{report['snapshot']}", "--drill")
    assert drilled.code == 0, drilled.err
    assert f"backup {report['snapshot']} at {dest}: 1 object" in drilled.out
    assert "1 of 1 reachable versions predict" in drilled.out
    assert "  ok      iris:1 (iris@production)" in drilled.out

    dry = run("backup", "prune", str(dest), "--keep-last", "1", "--dry-run", "--json")
    assert [r["id"] for r in json.loads(dry.out)["removed"]] == [report["snapshot"]]
    if cli_mode.remote:
        # the same text as the local commands print, on the same backups
        for args in (
            ("backup", "list", str(dest)),
            ("backup", "list", str(dest), "--json"),
            ("backup", "verify", str(dest)),
            ("backup", "verify", str(dest), "--deep", "--json"),
            ("backup", "prune", str(dest), "--keep-last", "1", "--dry-run"),
            ("backup", "list", str(tmp_path / "empty")),
            ("backup", "verify", str(tmp_path / "empty")),
        ):
            assert_same_output(run, monkeypatch, settings.resolved_database_url, *args)
    pruned = run("backup", "prune", str(dest), "--keep-last", "1")
    assert pruned.code == 0, pruned.err
    assert f"remove  {report['snapshot']}" in pruned.out
    assert [b["id"] for b in json.loads(run("backup", "list", str(dest), "--json").out)] == [
        listed[1]["id"]
    ]


def test_a_failed_destination_fails_the_command_alike_in_both_modes(
    run_both: Run, cli_mode: Mode, settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    _iris(settings, iris_files)
    good, blocked = tmp_path / "good", tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    failed = run_both("backup", "create", "--to", str(good), "--to", str(blocked))
    line = _one_line(failed, f"failed at {blocked} (")
    assert "the other destinations are complete" in line
    assert f"  {good}: complete, copied 1 object" in failed.out
    assert f"  {blocked}: failed, no manifest written" in failed.out
    [job] = json.loads(run_both("jobs", "list", "--json").out)
    assert (job["status"], job["origin"]) == ("failed", "api" if cli_mode.remote else "cli")

    refused = run_both("backup", "create", "--to", "nosuch://bucket/x")
    _one_line(refused, "'nosuch://' is not a protocol fsspec knows")
    assert len(json.loads(run_both("jobs", "list", "--json").out)) == 1  # nothing recorded
    bad_key = run_both(
        "backup", "create", "--to", str(good), "--encryption-key-file", str(tmp_path / "none")
    )
    _one_line(bad_key, f"cannot read the backup key file {tmp_path / 'none'}")
    assert len(json.loads(run_both("jobs", "list", "--json").out)) == 1


def test_an_encrypted_backup_uses_the_key_of_the_host_that_runs_it(
    run_both: Run, settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    _iris(settings, iris_files)
    key_file = tmp_path / "backup.key"
    made = run_both("backup", "key", "new")  # local in both modes: no server needed
    assert made.code == 0, made.err
    key_file.write_text(made.out)
    dest = tmp_path / "sealed"
    created = run_both(
        "backup", "create", "--to", str(dest), "--encryption-key-file", str(key_file), "--json"
    )
    assert created.code == 0, created.err
    report = json.loads(created.out)
    assert report["encryption"]["key_id"]
    deep = run_both(
        "backup", "verify", str(dest), "--deep", "--encryption-key-file", str(key_file), "--json"
    )
    assert json.loads(deep.out)["ok"] is True
    refused = run_both("backup", "verify", str(dest), "--deep")
    _one_line(refused, "encrypted")


def test_backup_schedules_in_both_modes(run_both: Run, tmp_path: Path) -> None:
    dest = str(tmp_path / "backups")
    done = run_both("backup", "schedule", "nightly", "--cron", "0 3 * * *", "--to", dest)
    assert done.code == 0, done.err
    assert f"runs: berth backup create --to {dest}" in done.out
    listed = json.loads(run_both("backup", "schedules", "--json").out)
    assert [(s["name"], s["kind"], s["args"]) for s in listed] == [
        ("nightly", "backup", ["--to", dest])
    ]
    assert "nightly" in run_both("backup", "schedules").out
    assert run_both("backup", "unschedule", "nightly").code == 0
    assert run_both("backup", "schedules").out.startswith("No schedules.")


@ONLY_REMOTE
def test_remote_mode_refusals(
    run_both: Run, cli_mode: Mode, settings: Settings, tmp_path: Path
) -> None:
    restore = run_both("backup", "restore", str(tmp_path), "--database", "sqlite:///x.db")
    _one_line(restore, "run `berth backup restore` on the host whose database it restores into")
    for args in (
        ("backup", "create", "--to", "relative/backups"),
        ("backup", "list", "relative/backups"),
        ("backup", "verify", "relative/backups"),
        ("backup", "prune", "relative/backups", "--keep-last", "1"),
    ):
        line = _one_line(run_both(*args), "relative/backups is a relative path")
        assert f"the host of {cli_mode.url}" in line
    relative = run_both("backup", "schedule", "n", "--cron", "@daily", "--to", "relative/b")
    assert f"the host of {cli_mode.url}" in _one_line(relative, "relative/b is a relative path")
    hidden = run_both("backup", "create", "--to", str(tmp_path), "--job", "3")
    _one_line(hidden, "--job and --schedule are set by the scheduler")
    missing = run_both("backup", "verify", str(tmp_path / "nothing"))
    _one_line(missing, f"no complete backup at {tmp_path / 'nothing'}")
    registry = Registry.from_settings(settings)
    try:
        assert JobService(registry.db).list() == []
        actions = [(e.actor, e.action) for e in AuditLog(registry.db).list()]
    finally:
        registry.db.dispose()
    assert (REMOTE_KEY, "backup.verify") not in actions  # refused before it ran


def test_an_unreachable_server_is_one_line_and_key_new_needs_none(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BERTH_SERVER", "http://127.0.0.1:9")
    monkeypatch.setenv("BERTH_API_KEY", "berth_x_y")
    dest = str(tmp_path / "dest")
    for args in (
        ("backup", "create", "--to", dest),
        ("backup", "list", dest),
        ("backup", "verify", dest, "--deep"),
        ("backup", "prune", dest, "--keep-last", "1"),
        ("backup", "schedules"),
    ):
        _one_line(run(*args), "cannot reach http://127.0.0.1:9")
    assert not (tmp_path / "dest").exists()
    made = run("backup", "key", "new")
    assert made.code == 0, made.err
    assert len(made.out.strip()) == 44  # base64 of 32 bytes


# the routes ----------------------------------------------------------------------------------


@dataclass
class Launched:
    calls: list[tuple[int, list[str], str]] = field(default_factory=list)

    def __call__(
        self, _config: JobsConfig, job_id: int, args: Sequence[str], *, kind: str = "batch"
    ) -> None:
        self.calls.append((job_id, list(args), kind))


@dataclass
class Api:
    client: TestClient
    registry: Registry
    keys: dict[str, str]
    launched: Launched

    def call(self, method: str, path: str, body: Any = None, key: str | None = "admin") -> Any:
        headers = {"X-API-Key": self.keys[key]} if key else {}
        return self.client.request(method, path, json=body, headers=headers)


@pytest.fixture
def api(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[Api]:
    from berth.api.app import build_services, create_app

    settings = settings.model_copy(update={"rollout_controller": False})
    registry = Registry.from_settings(settings)
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
        yield Api(client, registry, secrets, launched)
    registry.db.dispose()


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    message: str = response.json()["error"]
    assert "\n" not in message
    return message


ROUTES = [
    ("POST", "/api/v1/backups"),
    ("GET", "/api/v1/backups"),
    ("POST", "/api/v1/backups/verify"),
    ("POST", "/api/v1/backups/prune"),
]


def test_every_backup_route_needs_an_admin_key_and_is_documented(api: Api, tmp_path: Path) -> None:
    paths = api.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    documented = [(m.upper(), p) for p, ops in paths.items() if p.startswith("/api/v1/backups")
                  for m in ops]  # fmt: skip
    assert sorted(documented) == sorted(ROUTES)
    create = paths["/api/v1/backups"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"to", "encryption_key_file"}
    dest = str(tmp_path / "backups")
    bodies = {"/api/v1/backups": {"to": [dest]}, "/api/v1/backups/verify": {"destination": dest},
              "/api/v1/backups/prune": {"destination": dest, "keep_last": 1}}  # fmt: skip
    for method, path in ROUTES:
        url = f"{path}?destination={dest}" if method == "GET" else path
        for key, status in ((None, 401), ("user", 403)):
            response = api.call(method, url, bodies.get(path), key=key)
            _error(response, status)
    assert api.launched.calls == []
    assert JobService(api.registry.db).list() == []
    assert not (tmp_path / "backups").exists()


def test_create_records_an_api_job_launches_it_as_a_backup_and_audits_the_caller(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = str(tmp_path / "backups")
    started = api.call("POST", "/api/v1/backups", {"to": [dest, "s3://bucket/berth"]})
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert (job["kind"], job["status"], job["origin"]) == ("backup", "queued", "api")
    assert job["args"] == ["--to", dest, "--to", "s3://bucket/berth"]
    assert job["sink"] == f"{dest}, s3://bucket/berth"
    assert api.launched.calls == [(job["id"], job["args"], "backup")]
    [audited] = [e for e in AuditLog(api.registry.db).list() if e.action == "backup.create"]
    assert (audited.actor, audited.target) == ("ops", f"job {job['id']}")
    assert audited.detail == {"to": [dest, "s3://bucket/berth"], "encrypted_with": None}

    key_file = tmp_path / "backup.key"
    key_file.write_text("00" * 32)
    sealed = api.call(
        "POST", "/api/v1/backups", {"to": [dest], "encryption_key_file": str(key_file)}
    )
    assert sealed.status_code == 202, sealed.text
    assert sealed.json()["args"] == ["--to", dest, "--encryption-key-file", str(key_file)]

    # The server's own BERTH_BACKUP_KEY is checked before a job is recorded, as a file is.
    monkeypatch.setenv("BERTH_BACKUP_KEY", "not a key")
    message = _error(api.call("POST", "/api/v1/backups", {"to": [dest]}), 400)
    assert "BERTH_BACKUP_KEY is not a key" in message
    assert len(JobService(api.registry.db).list()) == 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "the request body has no 'to' field"),
        ({"to": []}, "'to' must be a non-empty list"),
        ({"to": "/srv/backups"}, "'to' must be a list"),
        ({"to": ["nosuch://bucket"]}, "'nosuch://' is not a protocol fsspec knows"),
        ({"to": ["backups"]}, "the backup destination backups is a relative path"),
        ({"to": [""]}, "--to is empty"),
        ({"to": ["/srv/b"], "key": "x"}, "unknown field key"),
        (
            {"to": ["/srv/b"], "encryption_key_file": "/nonexistent/k"},
            "cannot read the backup key file",
        ),
        (
            {"to": ["/srv/b"], "encryption_key_file": "k"},
            "the backup key file k is a relative path",
        ),
        ({"to": ["/srv/b"], "encryption_key_file": "ab" * 32}, "never send the key"),
        ({"to": ["/srv/b"], "args": ["--job", "1"]}, "unknown field args"),
    ],
)
def test_create_refuses_bad_bodies_before_recording_anything(
    api: Api, body: Any, words: str
) -> None:
    message = _error(api.call("POST", "/api/v1/backups", body), 400)
    assert words in message
    assert "ab" * 32 not in message
    assert api.launched.calls == []
    assert JobService(api.registry.db).list() == []


def test_list_verify_prune_answer_the_commands_documents(api: Api, tmp_path: Path) -> None:
    from berth.backup.create import create_backup, take_snapshot

    dest = tmp_path / "backups"
    assert api.call("GET", f"/api/v1/backups?destination={dest}").json() == {"backups": []}
    snapshots = []
    for _ in range(2):
        taken = take_snapshot(api.registry.db)
        report = create_backup(taken, api.registry.store, [str(dest)], lambda _n: None)
        snapshots.append(report.to_dict()["snapshot"])
    listed = api.client.get(
        "/api/v1/backups", params={"destination": str(dest)}, headers=_admin(api)
    )
    assert listed.status_code == 200, listed.text
    assert [b["id"] for b in listed.json()["backups"]] == snapshots

    verified = api.call("POST", "/api/v1/backups/verify", {"destination": str(dest), "deep": True})
    assert verified.status_code == 200, verified.text
    assert (verified.json()["snapshot"], verified.json()["ok"]) == (snapshots[1], True)
    assert "drill" not in verified.json()
    drilled = api.call(
        "POST", "/api/v1/backups/verify",
        {"destination": str(dest), "snapshot": snapshots[0], "drill": True},
    )  # fmt: skip
    assert drilled.status_code == 200, drilled.text
    [version] = drilled.json()["drill"]["versions"]
    assert (version["version"], version["status"]) == ("iris:1", "ok")

    pruned = api.call("POST", "/api/v1/backups/prune", {"destination": str(dest), "keep_last": 1})
    assert pruned.status_code == 200, pruned.text
    assert [r["id"] for r in pruned.json()["removed"]] == [snapshots[0]]
    audited = [(e.actor, e.action, e.target) for e in AuditLog(api.registry.db).list()]
    assert ("ops", "backup.prune", str(dest)) in audited
    assert ("ops", "backup.verify", str(dest)) in audited

    # a damaged backup is a 200 naming the problem
    [stored] = [p for p in (dest / "objects").rglob("*") if p.is_file()]
    stored.write_bytes(stored.read_bytes() + b"x")
    damaged = api.call("POST", "/api/v1/backups/verify", {"destination": str(dest)})
    assert damaged.status_code == 200, damaged.text
    assert damaged.json()["ok"] is False
    assert damaged.json()["problems"] == [
        f"object {stored.name} has {stored.stat().st_size} bytes, expected "
        f"{stored.stat().st_size - 1}"
    ]


def _admin(api: Api) -> dict[str, str]:
    return {"X-API-Key": api.keys["admin"]}


def test_bad_destinations_are_clear_4xx(api: Api, tmp_path: Path) -> None:
    assert "GET /api/v1/backups?destination=URL" in _error(api.call("GET", "/api/v1/backups"), 400)
    relative = api.client.get(
        "/api/v1/backups", params={"destination": "backups"}, headers=_admin(api)
    )
    assert "relative path" in _error(relative, 400)
    unknown = api.client.get(
        "/api/v1/backups", params={"destination": "nosuch://x"}, headers=_admin(api)
    )
    assert "not a protocol fsspec knows" in _error(unknown, 400)
    empty = str(tmp_path / "empty")
    missing = _error(api.call("POST", "/api/v1/backups/verify", {"destination": empty}), 404)
    assert missing.startswith(f"no complete backup at {empty}")
    other = {"destination": empty, "snapshot": "../../etc"}
    assert "is not a backup id" in _error(api.call("POST", "/api/v1/backups/verify", other), 400)
    nothing = _error(
        api.call("POST", "/api/v1/backups/prune", {"destination": empty, "keep_last": 1}), 400
    )
    assert nothing.startswith(f"no complete backup at {empty} to prune")
    rules = _error(api.call("POST", "/api/v1/backups/prune", {"destination": empty}), 400)
    assert "give at least one rule of what to keep" in rules
    # a folder the server's host may not read
    locked = tmp_path / "locked"
    (locked / "snapshots" / "x").mkdir(parents=True)
    locked.chmod(0)
    try:
        answer = api.client.get(
            "/api/v1/backups", params={"destination": str(locked)}, headers=_admin(api)
        )
    finally:
        locked.chmod(0o700)
    if answer.status_code == 200:
        pytest.skip("running as root: permissions do not refuse anything")
    assert "cannot be read on the server's host" in _error(answer, 400)
