"""No user ever sees a traceback: every command, under every broken setting, fails in one line.

The commands are enumerated from the typer app, so a new command is covered without editing this
file: each runs in process through the real entry point (`berth.cli.main.main`) with its cheapest
invocation, under each broken setting (an unreachable or meaningless BERTH_DATABASE_URL, a
corrupt registry.db, BERTH_HOME pointing at a file, an artifact URL whose fsspec backend is not
installed). A command either succeeds (it does not need what is broken) or prints one line
`error: ...` that names what to fix; never a traceback and never the last-resort "bug" line.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.conftest import BERTH, Run

# The cheapest invocation of commands whose required values must make sense to get as far as the
# settings; every other command gets "x" for each required argument and option.
CHEAPEST: dict[str, list[str]] = {
    "predict": ["m", "--input", "{}"],
    "bench": ["m", "--requests", "1", "--warmup", "0"],
    "validate": ["m:1", "--data", "rows.csv", "--no-nan"],
    "export": ["m:1", "--format", "onnx", "--out", "out"],
    "build": ["m:1", "--out", "out"],
    "models register": ["m", "model.py"],
    "models show": ["m"],
    "models optimize": ["m:1"],
    "models alias": ["m", "production", "1"],
    "models delete": ["m:1"],
    "models drift": ["m"],
    "batch run": ["m", "--source", "rows.csv", "--sink", "out.csv"],
    "batch schedule": ["nightly", "--cron", "@daily", "--model", "m"],
    "backup schedule": ["nightly", "--cron", "@daily", "--to", "backups"],
    "stream run": [
        "m",
        "--source",
        "redis://127.0.0.1:1/0/in",
        "--sink",
        "redis://127.0.0.1:1/0/out",
    ],
    "jobs show": ["1"],
    "jobs cancel": ["1"],
    "endpoints create": ["web", "--model", "m:1"],
    "endpoints routes": ["web", "--route", "stable=m:1"],
    "endpoints shadow": ["web", "--to", "m:1"],
    "rollout start": ["web", "--to", "m:2"],
    "experiments start": ["web", "--variant", "a=m:1"],
    "experiments conclude": ["web", "--winner", "a"],
    "feedback performance": ["m"],
    "backup prune": ["x", "--keep-last", "1"],
}
# Commands that talk to a server or manage server profiles, not the local registry: they fail
# for another reason here.
REMOTE = {"bench", "login", "logout", "profile list", "profile use", "profile remove"}
# `berth ci` commands read a model repository (its berth-ci.toml or pipeline file) before any
# setting: here, with none, they fail on that first, in one line naming what to write.
REPOSITORY = {"ci init", "ci gates", "ci validate", "ci env", "ci version", "ci smoke", "ci run"}
# `berth backup verify`, `restore` and `prune` read the backup (a destination they are given)
# before any setting: here, with none at "x", they fail on that first, in one line naming how to
# make one.
BACKUP_READERS = {"backup verify", "backup restore", "backup prune"}
# Commands that run until stopped once they start: with a working setup they would block here.
LONG_RUNNING = {"serve", "scheduler", "stream run", "demo"}


def leaf_commands() -> list[tuple[list[str], Any]]:
    """Every leaf command of the app, with its click command, through click's own listing
    (so a lazily loaded group is listed too)."""
    import click
    import typer.main

    from berth.cli.main import app

    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str], parent: click.Context | None) -> None:
        if not hasattr(command, "list_commands"):
            found.append((path, command))
            return
        context = click.Context(command, parent=parent)
        for name in command.list_commands(context):
            walk(command.get_command(context, name), [*path, name], context)

    walk(typer.main.get_command(app), [], None)
    return found


def _commands() -> list[tuple[str, list[str]]]:
    """Every leaf command with its cheapest invocation, e.g. ("models list", [...])."""
    found: list[tuple[str, list[str]]] = []
    for path, command in leaf_commands():
        name = " ".join(path)
        if name in CHEAPEST:
            found.append((name, [*path, *CHEAPEST[name]]))
            continue
        args: list[str] = []
        for param in command.params:
            if not param.required:
                continue
            if param.param_type_name == "argument":
                args.append("x")
            else:
                args.extend([max(param.opts, key=len), "x"])
        found.append((name, [*path, *args]))
    return found


COMMANDS = _commands()


def _missing_backend() -> tuple[str, str] | None:
    """An fsspec protocol whose backend package is not installed, and that package. The dev
    extra installs s3fs, gcsfs and adlfs (for the backup destination tests), so Oracle Cloud's
    ocifs stands in there."""
    candidates = (("s3", "s3fs"), ("gs", "gcsfs"), ("az", "adlfs"), ("oci", "ocifs"))
    for protocol, package in candidates:
        if importlib.util.find_spec(package) is None:
            return protocol, package
    return None


def _bogus_postgres(home: Path) -> dict[str, str]:
    return {"BERTH_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}


def _nonsense_url(home: Path) -> dict[str, str]:
    return {"BERTH_DATABASE_URL": "nonsense://"}


def _corrupt_registry(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "registry.db").write_bytes(b"this is not a SQLite database\n" * 100)
    return {}


def _newer_registry(home: Path) -> dict[str, str]:
    """A registry.db migrated by a later Berth: its schema revision is unknown here."""
    import sqlite3

    home.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(home / "registry.db") as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('9999')")
    return {}


def _home_is_a_file(home: Path) -> dict[str, str]:
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("a file, not a folder\n")
    return {}


def _artifact_backend_missing(home: Path) -> dict[str, str]:
    backend = _missing_backend()
    if backend is None:
        pytest.skip("s3fs, gcsfs, adlfs and ocifs are all installed: no missing backend to test")
    return {"BERTH_ARTIFACT_URL": f"{backend[0]}://bucket/artifacts"}


# (setting, how to break it, what the one line must name)
BROKEN: list[tuple[str, Callable[[Path], dict[str, str]], str]] = [
    ("postgres-unreachable", _bogus_postgres, "BERTH_DATABASE_URL"),
    ("database-url-nonsense", _nonsense_url, "BERTH_DATABASE_URL"),
    ("registry-db-corrupt", _corrupt_registry, "registry.db"),
    ("registry-db-newer", _newer_registry, "upgrade Berth"),
    ("home-is-a-file", _home_is_a_file, "BERTH_HOME"),
    ("artifact-backend-missing", _artifact_backend_missing, "pip install"),
]


class _Hung(BaseException):
    """Raised in the test when a command runs too long: a BaseException, so nothing catches it."""


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fails a command that blocks (a server that started after all) instead of hanging CI."""

    def hung(_signum: int, _frame: FrameType | None) -> None:
        raise _Hung("the command was still running after 30 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _assert_one_clean_line(code: int, err: str, fragment: str | None) -> None:
    assert "Traceback" not in err, err
    if code == 0:
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "this is a bug" not in lines[0], err
    if fragment is not None:
        assert fragment in lines[0], err


@pytest.mark.parametrize(("name", "args"), COMMANDS, ids=[name for name, _ in COMMANDS])
@pytest.mark.parametrize(
    ("setting", "breaking", "fragment"), BROKEN, ids=[setting for setting, _, _ in BROKEN]
)
def test_every_command_fails_in_one_line_under_a_broken_setting(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    deadline: None,
    name: str,
    args: list[str],
    setting: str,
    breaking: Callable[[Path], dict[str, str]],
    fragment: str,
) -> None:
    (tmp_path / "model.py").write_text(
        "class M:\n    def load(self): ...\n    def predict(self, x): return x\n"
    )
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    for variable, value in breaking(Path(os.environ["BERTH_HOME"])).items():
        monkeypatch.setenv(variable, value)
    outcome = run(*args)
    if name in LONG_RUNNING:
        assert outcome.code != 0, f"{name} started with a broken {setting}"
    named = None if name in REMOTE | REPOSITORY | BACKUP_READERS else fragment
    _assert_one_clean_line(outcome.code, outcome.err, named)


def test_every_command_is_covered() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"models list", "keys list", "serve", "demo", "batch run"} <= names
    assert set(CHEAPEST) <= names, set(CHEAPEST) - names
    assert names >= REPOSITORY, REPOSITORY - names
    assert names >= BACKUP_READERS, BACKUP_READERS - names


@pytest.mark.parametrize(
    ("setting", "breaking", "fragment"), BROKEN, ids=[setting for setting, _, _ in BROKEN]
)
def test_registry_commands_name_the_broken_setting(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    breaking: Callable[[Path], dict[str, str]],
    fragment: str,
) -> None:
    for variable, value in breaking(Path(os.environ["BERTH_HOME"])).items():
        monkeypatch.setenv(variable, value)
    for args in (["models", "list"], ["keys", "list"], ["init"]):
        outcome = run(*args)
        assert outcome.code == 1, (args, outcome)
        _assert_one_clean_line(outcome.code, outcome.err, fragment)


def test_the_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """The same through `python -m berth.cli`, in parallel: what a shell user sees.

    Two settings are enough here (the in-process test above covers them all): a library error
    with a multi-line message, and one raised while the database is opened.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}

    def attempt(
        case: tuple[str, Callable[[Path], dict[str, str]], str],
    ) -> tuple[str, str, int, str]:
        setting, breaking, fragment = case
        home = tmp_path / setting / "home"
        env = {**base, "BERTH_HOME": str(home), **breaking(home)}
        done = subprocess.run(
            [*BERTH, "models", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return setting, fragment, done.returncode, done.stderr

    cases = [case for case in BROKEN if case[0] in ("postgres-unreachable", "registry-db-corrupt")]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(attempt, cases))
    for setting, fragment, code, err in results:
        assert code == 1, (setting, err)
        _assert_one_clean_line(code, err, fragment)


def test_an_unexpected_error_is_one_line_and_berth_debug_shows_it(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: an exception Berth did not expect (a bug) is still one line, and
    BERTH_DEBUG=1 lets it through with its traceback for the bug report."""
    from berth.registry.service import Registry

    def broken(self: Registry) -> None:
        raise RuntimeError("list_models broke")

    monkeypatch.setattr(Registry, "list_models", broken)
    outcome = run("models", "list")
    assert outcome.code == 1
    assert "Traceback" not in outcome.err
    assert outcome.err.startswith("error: unexpected RuntimeError: list_models broke; ")
    assert len(outcome.err.strip().splitlines()) == 1
    assert "this is a bug, please report it" in outcome.err
    assert "BERTH_DEBUG=1" in outcome.err
    monkeypatch.setenv("BERTH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="list_models broke"):
        run("models", "list")


def test_an_operating_system_refusal_is_one_line(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from berth.registry.service import Registry

    def refused(self: Registry) -> None:
        raise PermissionError(13, "Permission denied", "/srv/berth/registry.db")

    monkeypatch.setattr(Registry, "list_models", refused)
    outcome = run("models", "list")
    _assert_one_clean_line(outcome.code, outcome.err, "Permission denied (/srv/berth/registry.db)")
    assert outcome.code == 1
