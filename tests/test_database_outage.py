"""A registry database outage is a 503 with Retry-After (one CLI line), never a 500 or a
traceback, and the server recovers on its own when the database is back.

The end-to-end tests stop and restart a private PostgreSQL cluster under a real `berth serve`;
the mapping itself (what counts as an outage and what does not) is tested on SQLite and on a
port nothing listens on.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from berth.config import Settings
from berth.errors import DatabaseUnavailable, NotReady
from berth.registry.service import Registry
from berth.store.db import Database, outages_mapped
from tests.conftest import create_key, register_iris, serving
from tests.ports import free_port
from tests.private_postgres import PrivatePostgres

# what an outage looks like -------------------------------------------------------------------


def test_a_refused_connection_is_unavailable_with_a_retry_hint() -> None:
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    try:
        with pytest.raises(DatabaseUnavailable) as raised, db.session() as session:
            session.execute(text("SELECT 1"))
    finally:
        db.dispose()
    assert isinstance(raised.value, NotReady)  # so every edge answers it as one
    assert raised.value.retry_after > 0
    assert isinstance(raised.value.__cause__, OperationalError)
    assert "unreachable" in raised.value.message
    assert "127.0.0.1" not in raised.value.message  # API clients read it


def test_a_sqlite_file_locked_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/registry.db")
    db.migrate()
    holder = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseUnavailable, match="locked"):
            _write_at_once(db)
    finally:
        holder.rollback()
        holder.close()
        db.dispose()


def _write_at_once(db: Database) -> None:
    with db.session() as session:
        session.execute(text("PRAGMA busy_timeout = 0"))  # not the 30 s the engine waits
        session.execute(text("CREATE TABLE probe (id INTEGER)"))


def test_bugs_and_constraint_violations_keep_their_own_errors(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/registry.db")
    try:
        with pytest.raises(OperationalError, match="no such table"), db.session() as session:
            session.execute(text("SELECT * FROM no_such_table"))
        with db.session() as session:
            session.execute(text("CREATE TABLE once (id INTEGER PRIMARY KEY)"))
            session.execute(text("INSERT INTO once VALUES (1)"))
        with pytest.raises(IntegrityError), db.session() as session:
            session.execute(text("INSERT INTO once VALUES (1)"))
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("backend", "error", "mapped"),
    [
        ("postgresql", OperationalError("SELECT 1", {}, Exception("server closed")), True),
        ("postgresql", InterfaceError("SELECT 1", {}, Exception("connection closed")), True),
        ("postgresql", PoolTimeoutError("QueuePool limit reached"), True),
        ("postgresql", ProgrammingError("SELECT", {}, Exception("syntax error")), False),
        ("postgresql", IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        # sqlite3 raises OperationalError for bugs too: only its lock and file codes count
        ("sqlite", OperationalError("SELECT 1", {}, Exception("no code")), False),
        ("sqlite", InterfaceError("SELECT 1", {}, Exception("bad parameter")), False),
        (
            "sqlite",
            OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
            True,
        ),
    ],
)
def test_what_counts_as_an_outage(backend: str, error: Exception, mapped: bool) -> None:
    with pytest.raises(DatabaseUnavailable if mapped else type(error)), outages_mapped(backend):
        raise error


# a real outage under a real server -----------------------------------------------------------


def _env(home: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(BERTH_HOME=str(home), BERTH_DATABASE_URL=database_url)
    return env


def test_an_outage_answers_503_and_the_server_recovers(
    private_postgres: PrivatePostgres, settings: Settings, iris_files: tuple[Path, Path]
) -> None:
    env = _env(settings.home, private_postgres.url)
    registry = Registry.from_settings(
        settings.model_copy(update={"database_url": private_postgres.url})
    )
    register_iris(registry, iris_files, aliases=("production",))  # something to serve
    registry.db.dispose()
    admin = {"X-API-Key": create_key(env, "admin", "--scope", "admin")}
    with serving(env) as (base, _port), httpx.Client(base_url=base, headers=admin) as client:
        assert client.get("/api/v1/models").status_code == 200

        private_postgres.stop()
        for method, path, body in [
            ("GET", "/api/v1/models", None),
            ("GET", "/api/v1/keys", None),
            ("POST", "/api/v1/keys", {"name": "ci"}),
        ]:
            down = client.request(method, path, json=body)
            assert down.status_code == 503, (path, down.text)
            assert int(down.headers["Retry-After"]) >= 1
            assert set(down.json()) == {"error"}
            assert "registry database" in down.json()["error"]
            assert "Traceback" not in down.text
        assert client.get("/health").status_code == 200  # the server itself is fine

        private_postgres.start()
        # the very next request: pooled connections to the old server are checked and replaced
        assert client.get("/api/v1/models").status_code == 200
        created = client.post("/api/v1/keys", json={"name": "ci"})
        assert created.status_code == 201, created.text


def test_the_cli_says_it_in_one_line(
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At open (the schema check) and in the middle of a command (the registry already open)."""
    from berth.cli import context
    from berth.cli.main import main

    for key in [k for k in os.environ if k.startswith("BERTH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BERTH_DATABASE_URL", private_postgres.url)
    monkeypatch.setenv("COLUMNS", "200")
    # The consoles may have read COLUMNS before (another test imported the CLI).
    for console in (context.console, context.err_console):
        monkeypatch.setattr(console, "width", 200)

    def berth(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["berth", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    context.settings.cache_clear()
    context.registry.cache_clear()
    try:
        assert berth("models", "list")[0] == 0  # the registry stays open (cached)
        private_postgres.stop()
        with_open_registry = berth("models", "list")
        context.registry.cache_clear()
        at_open = berth("models", "list")
    finally:
        context.settings.cache_clear()
        context.registry.cache_clear()
    for code, err in (with_open_registry, at_open):
        assert code == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("error: "), err
        assert "registry database" in lines[0], err
        assert "bug" not in lines[0]
