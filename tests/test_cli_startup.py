"""`berth` starts fast: each command imports only what it runs.

The whole command is run in a subprocess and the modules it imported are compared with lists of
heavy libraries (each costs 0.1-1 s to import). Module sets, not times, are asserted here: the
timings are measured by `make bench-cli` (benchmarks/cli_startup.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from berth.config import Settings
from berth.registry.service import Registry
from berth.store import db
from tests.conftest import register_iris

# Imports `berth.cli.main` as the `berth` script does and runs the command. At exit, after
# Berth's own exit handlers (this one is registered first, so it runs last), it writes the names
# of every module imported and how many objects are frozen to the file named by the first
# argument.
_PROBE = """
import atexit, gc, json, sys
out = sys.argv.pop(1)
sys.argv[0] = "berth"

def record():
    with open(out, "w") as handle:
        json.dump({"modules": sorted(sys.modules), "frozen": gc.get_freeze_count()}, handle)

atexit.register(record)
from berth.cli.main import main
main()
"""

# Libraries that no command needs to show its help or the version.
_NOT_FOR_HELP = (
    "alembic",
    "anyio",
    "fastapi",
    "fsspec",
    "httpx",
    "numpy",
    "opentelemetry",
    "pandas",
    "prometheus_client",
    "pyarrow",
    "pydantic_settings",
    "redis",
    "scipy",
    "skops",
    "sklearn",
    "sqlalchemy",
    "starlette",
    "uvicorn",
    "yaml",
)

# `berth models list` opens the registry (settings, SQLAlchemy, the artifact store's fsspec) and
# nothing else: no data libraries, no migration tool on a current schema, no server or client.
_NOT_FOR_LISTING = tuple(
    name for name in _NOT_FOR_HELP if name not in ("fsspec", "pydantic_settings", "sqlalchemy")
)


@dataclass(frozen=True)
class Probe:
    imported: set[str]
    """The top-level packages the command imported."""
    printed: str
    frozen: int
    """Objects in the permanent generation at exit: left to the OS, never collected."""


def _berth(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Probe:
    """Run `berth ARGS` in a subprocess, with the probe."""
    out = tmp_path / "probe.json"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args],
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(out.read_text())
    imported = {name.split(".")[0] for name in found["modules"]}
    return Probe(imported, result.stdout, found["frozen"])


def _imported(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[set[str], str]:
    """The top-level packages `berth ARGS` imported, and what it printed."""
    probe = _berth(tmp_path, *args, env=env)
    return probe.imported, probe.printed


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["models", "--help"],
        ["models", "list", "--help"],
        ["rollout", "--help"],
        ["batch", "run", "--help"],
        ["serve", "--help"],
        ["login", "--help"],
        ["profile", "list"],
    ],
    ids=" ".join,
)
def test_help_and_version_import_no_heavy_library(
    settings: Settings, tmp_path: Path, args: list[str]
) -> None:
    imported, printed = _imported(tmp_path, *args)
    assert sorted(imported.intersection(_NOT_FOR_HELP)) == []
    assert printed.strip()  # it did show the help or the version


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_models_list_imports_the_registry_only(
    settings: Settings,
    tmp_path: Path,
    iris_files: tuple[Path, Path],
    database: str,
    request: pytest.FixtureRequest,
) -> None:
    env = os.environ.copy()
    if database == "postgresql":
        url = request.getfixturevalue("postgres_url")
        settings = settings.model_copy(update={"database_url": url})
        env["BERTH_DATABASE_URL"] = url
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    registry.db.dispose()

    imported, printed = _imported(tmp_path, "models", "list", env=env)

    assert "iris" in printed
    assert "sqlalchemy" in imported  # the registry was read
    assert sorted(imported.intersection(_NOT_FOR_LISTING)) == []


def test_the_objects_are_left_to_the_os_at_exit(settings: Settings, tmp_path: Path) -> None:
    # Collecting what SQLAlchemy and pydantic built took up to 0.3 s at the end of each command.
    probe = _berth(tmp_path, "models", "list")
    assert "sqlalchemy" in probe.imported
    assert probe.frozen > 10_000


def test_a_fresh_database_is_migrated(settings: Settings, tmp_path: Path) -> None:
    imported, _ = _imported(tmp_path, "models", "list")
    assert "alembic" in imported  # no schema yet: the migrations ran
    assert _revisions(settings.resolved_database_url) == [db.head_revision()]
    again, _ = _imported(tmp_path, "models", "list")
    assert "alembic" not in again  # current now: a cheap version check is enough


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_older_schema_is_migrated_on_open(
    settings: Settings, database: str, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if database == "postgresql"
        else settings.resolved_database_url
    )
    _upgrade(db.Database(url), "0005")
    assert _revisions(url) == ["0005"]

    registry = Registry.from_settings(settings.model_copy(update={"database_url": url}))
    registry.db.dispose()

    assert _revisions(url) == [db.head_revision()]
    engine = create_engine(url)
    try:
        assert inspect(engine).has_table("jobs")  # made by 0006
    finally:
        engine.dispose()


def test_head_revision_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    assert db.head_revision() == ScriptDirectory.from_config(config).get_current_head()


def _upgrade(database: db.Database, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    try:
        with database.engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(db.MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        database.dispose()


def _revisions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()
