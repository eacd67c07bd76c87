"""Command tests in both modes: local (the command opens the registry) and remote (the command
reaches the registry only through a real server's admin API, with a key).

`run_both` is the in-process `run` fixture, parametrized. In remote mode it starts the real app
under uvicorn on a loopback port in a thread of the test process (the same registry the test
set up, so the test's own checks of what is stored hold), creates an admin key, points the
command at the server with BERTH_SERVER and BERTH_API_KEY, and gives the command an unusable
BERTH_DATABASE_URL: a command that opened the database in remote mode would fail its test.

A test that uses the `registry` fixture (SQLite and PostgreSQL) has the server serve that
registry. The server runs no rollout controller: the command tests act by hand and check what is stored.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from berth.api.job_start import Launcher
from berth.config import Settings
from berth.jobs.config import JobsConfig
from berth.jobs.kinds import BATCH
from tests.conftest import Run
from tests.ports import free_port

UNUSABLE_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/berth-remote-mode-has-no-database"
REMOTE_KEY = "remote-cli"
"""The name of the key remote mode's commands use (it shows in `keys list` and the audit log)."""


@dataclass(frozen=True)
class Mode:
    name: str
    """local or remote."""
    actor: str
    """Who the audit log says acted: the local user, or the remote key."""
    url: str | None = None

    @property
    def remote(self) -> bool:
        return self.name == "remote"


def wait_served(mode: Mode, model: str, timeout: float = 15.0) -> None:
    """Return once remote mode's server serves `model`, which `berth predict` needs there.

    The server was started without references: it serves every model with a production alias,
    and starts serving a newly aliased one at its next refresh (within BERTH_REFRESH_SECONDS, 1
    by default). Nothing to wait for in local mode, where `berth predict` loads the version.
    """
    import httpx

    if mode.url is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        loaded = httpx.get(f"{mode.url}/ready", timeout=5).json().get("models", [])
        if any(ref.partition(":")[0] == model for ref in loaded):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server does not serve {model} (it serves {loaded})")
        time.sleep(0.05)


@contextmanager
def threaded_server(settings: Settings) -> Iterator[str]:
    """The app of `settings` served by uvicorn on a free loopback port; its base URL."""
    import uvicorn

    from berth.api.app import create_app

    app = create_app(settings.model_copy(update={"rollout_controller": False}))
    app.state.job_launcher = _launcher(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="remote-mode-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the remote-mode server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def _launcher(settings: Settings) -> Launcher:
    """Starts a job's process (a real `berth batch run` or `berth backup create`) as a server
    of its own would: with the server's database (the test process's environment holds remote
    mode's unusable one) and no server profile."""
    from berth.jobs.launch import launch

    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("BERTH_SERVER", "BERTH_API_KEY", "BERTH_API_KEY_FILE")
    }
    environment["BERTH_DATABASE_URL"] = settings.resolved_database_url

    def start(config: JobsConfig, job_id: int, args: Sequence[str], *, kind: str = BATCH) -> object:
        given = {**environment, "BERTH_HOME": str(settings.home)}
        return launch(config, job_id, args, given, kind=kind)

    return start


@pytest.fixture(params=["local", "remote"])
def cli_mode(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Mode]:
    """The mode `run_both` runs commands in; remote mode's server lives as long as the test."""
    from berth.registry.service import Registry
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret
    from berth.store.audit import cli_actor

    if request.param == "local":
        yield Mode("local", cli_actor())
        return
    if "registry" in request.fixturenames:
        # The test's own registry (SQLite or PostgreSQL) is the one the server must serve.
        url = request.getfixturevalue("registry").db.url
        settings = settings.model_copy(update={"database_url": url})
    registry = Registry.from_settings(settings)
    try:
        keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
        _info, secret = keys.create(REMOTE_KEY, scopes=("admin",))
    finally:
        registry.db.dispose()
    with threaded_server(settings) as url:
        monkeypatch.setenv("BERTH_SERVER", url)
        monkeypatch.setenv("BERTH_API_KEY", secret)
        monkeypatch.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
        yield Mode("remote", REMOTE_KEY, url)


@pytest.fixture
def run_both(run: Run, cli_mode: Mode) -> Run:
    """`run`, in the mode of `cli_mode` (each test that takes it runs once in each mode)."""
    return run
