"""Shared fixtures: isolated settings, registries on SQLite and PostgreSQL, small trained models.

Tests that need a running service skip with the reason when it is absent, except when
BERTH_REQUIRE_SERVICES=1 (set by .ci/run): then an absent service fails the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from starlette.testclient import TestClient

from berth.config import Settings
from berth.errors import InvalidInput
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from tests.ports import free_port
from tests.private_postgres import PrivatePostgres
from tests.private_postgres import missing as private_postgres_missing
from tests.private_redis import PrivateRedis

if TYPE_CHECKING:
    from tests.torch_networks import Network

__all__ = ["free_port"]

# `run_both` and `cli_mode`: command tests that run in local and in remote mode; `s3_store`,
# `azure_store`, `gcs_store`: object stores on loopback for the backup tests.
pytest_plugins = ["tests.cli_modes", "tests.kafka_broker", "tests.storage_servers"]

# `berth` reads server profiles from $XDG_CONFIG_HOME/berth: a profile the developer logged in
# with would send the tests' commands to that server. Every test, and every process it starts
# (their environments drop BERTH_* variables but keep this one), gets an empty config folder.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="berth-test-config-")

POSTGRES_URL = os.environ.get(
    "BERTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def require_service(name: str, reason: str) -> None:
    """Skip (or, under CI, fail) a test whose service is not reachable."""
    message = f"{name} is not reachable ({reason}); start it or unset BERTH_REQUIRE_SERVICES"
    if os.environ.get("BERTH_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, to stop and restart without touching the shared one."""
    if shutil.which("redis-server") is None:
        require_service("redis-server", "not on PATH")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own, started, to stop and restart without touching the
    shared server."""
    reason = private_postgres_missing()
    if reason is not None:
        require_service("a private PostgreSQL cluster", reason)
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


def isolate(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Settings:
    """Settings of a Berth of its own under `folder` (its home and config folders), with no
    BERTH_* variable of the caller's environment and `folder` the working directory."""
    for key in list(os.environ):
        if key.startswith("BERTH_") and key not in (
            "BERTH_REQUIRE_SERVICES",
            "BERTH_TEST_POSTGRES_URL",
        ):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BERTH_HOME", str(folder / "home"))
    monkeypatch.setenv("BERTH_CONFIG_DIR", str(folder / "config"))
    monkeypatch.chdir(folder)
    return Settings()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return isolate(monkeypatch, tmp_path)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    from berth.deploy.local_cluster import isolated_schema

    with ExitStack() as stack:
        try:
            url = stack.enter_context(isolated_schema(POSTGRES_URL, prefix="t"))
        except InvalidInput as exc:  # only the schema's creation: the test's own errors pass
            require_service("PostgreSQL", str(exc))
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Registry]:
    """The registry service on each supported database."""
    if request.param == "postgresql":
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_url")}
        )
    found = Registry.from_settings(settings)
    yield found
    found.db.dispose()


@pytest.fixture
def sqlite_registry(settings: Settings) -> Iterator[Registry]:
    found = Registry.from_settings(settings)
    yield found
    found.db.dispose()


@pytest.fixture(scope="session")
def iris_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An iris LogisticRegression (joblib) and a .npy sample of its float32 inputs."""
    folder = tmp_path_factory.mktemp("iris")
    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), target)
    joblib.dump(model, folder / "model.joblib")
    np.save(folder / "sample.npy", features[:20].astype(np.float32))
    return folder / "model.joblib", folder / "sample.npy"


@pytest.fixture(scope="session")
def churn_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The demo's churn pipeline (skops), a CSV sample and a signature with ranges."""
    from berth.demo_model import train

    model, sample, signature, _metrics = train(tmp_path_factory.mktemp("churn"))
    return model, sample, signature


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory: pytest.TempPathFactory) -> Network:
    """An MLP trained on tabular rows, with its class file, state_dict and labelled rows."""
    pytest.importorskip("torch")
    from tests.torch_networks import mlp

    return mlp(tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="session")
def trained_cnn(tmp_path_factory: pytest.TempPathFactory) -> Network:
    """A CNN trained on images of bars and blobs, with its class file, state_dict and labelled
    images."""
    pytest.importorskip("torch")
    from tests.torch_networks import cnn

    return cnn(tmp_path_factory.mktemp("cnn"))


def register_iris(
    registry: Registry, iris_files: tuple[Path, Path], **extra: object
) -> VersionInfo:
    """Register the iris joblib file (a pickle: trusted unless the caller says otherwise)."""
    model, sample = iris_files
    extra.setdefault("trust_pickle", True)
    request = RegisterRequest(name="iris", path=model, sample=sample, **extra)  # type: ignore[arg-type]
    return register(registry, request)


def register_churn(
    registry: Registry,
    churn_files: tuple[Path, Path, Path],
    aliases: tuple[str, ...] = ("production",),
) -> VersionInfo:
    model, sample, signature = churn_files
    return register(
        registry,
        RegisterRequest(
            name="churn", path=model, sample=sample, signature=signature, aliases=aliases
        ),
    )


@dataclass(frozen=True)
class ApiSetup:
    client: TestClient
    key: str
    read_key: str
    registry: Registry

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"X-API-Key": key or self.key}


@pytest.fixture
def api(
    settings: Settings,
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
) -> Iterator[ApiSetup]:
    """An in-process app serving iris@production and churn@production, with two keys."""
    from berth.api.app import build_services, create_app
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    found = Registry.from_settings(settings)
    register_iris(found, iris_files, aliases=("production",))
    register_churn(found, churn_files)
    keys = KeyService(found.db, server_secret(KeyConfig.from_settings(settings)))
    _, key = keys.create("tester", ("predict", "read"))
    _, read_key = keys.create("reader", ("read",))
    app = create_app(settings, build_services(settings, found))
    with TestClient(app) as client:
        yield ApiSetup(client=client, key=key, read_key=read_key, registry=found)
    found.db.dispose()


async def until(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """On an event loop: until `check()` holds, yielding to the loop meanwhile; fails naming
    `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.005)


# real processes and the CLI ----------------------------------------------------------------

BERTH = [sys.executable, "-m", "berth.cli"]


def wait_ready(base: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Until a `berth serve` process answers /ready with 200; fails if it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready in time")


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[tuple[str, int]]:
    """`berth serve ARGS` in a subprocess on a free port, until it is ready; (base URL, port)."""
    port = free_port()
    process = subprocess.Popen(
        [*BERTH, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base, port
    finally:
        process.terminate()
        process.wait(timeout=15)


def berth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `berth` command in a subprocess."""
    return subprocess.run(
        [*BERTH, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def iris_home(home: Path, iris_files: tuple[Path, Path]) -> dict[str, str]:
    """A clean environment whose BERTH_HOME holds iris (the joblib file) at production,
    registered through the real `berth` command."""
    model, sample = iris_files
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(home)
    registered = berth(
        env, "models", "register", "iris", str(model), "--sample", str(sample),
        "--alias", "production", "--trust-pickle",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    return env


def create_key(env: dict[str, str], name: str, *options: str) -> str:
    """A new key's secret, through the real `berth keys create`."""
    created = berth(env, "keys", "create", name, *options)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


Run = Callable[..., Outcome]


def in_process_cli(monkeypatch: pytest.MonkeyPatch, read: Callable[[], tuple[str, str]]) -> Run:
    """The `berth` command in process, through its real entry point; `read` returns (and
    forgets) what was printed to stdout and stderr since it was last called."""
    from berth.cli import context
    from berth.cli.main import main

    monkeypatch.setenv("COLUMNS", "200")
    # The consoles read COLUMNS when berth.cli.context is first imported, which may have happened
    # before this fixture (another test imported the CLI), so their width is set here too.
    for console in (context.console, context.err_console):
        monkeypatch.setattr(console, "width", 200)

    def invoke(*args: str) -> Outcome:
        context.settings.cache_clear()
        context.registry.cache_clear()
        monkeypatch.setattr(sys, "argv", ["berth", *args])
        # Commands that serve or consume configure logging for their process; in this shared
        # process that would outlive the command and write the next commands' logs to stderr.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
        out, err = read()
        return Outcome(code, out, err)

    return invoke


@pytest.fixture
def run(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    """The `berth` command in process, through its real entry point."""
    from berth.cli import context

    def read() -> tuple[str, str]:
        captured = capsys.readouterr()
        return captured.out, captured.err

    yield in_process_cli(monkeypatch, read)
    context.settings.cache_clear()
    context.registry.cache_clear()


def one_line_error(outcome: Outcome, fragment: str) -> None:
    """A command failed as users should see it fail: exit code 1 and one line `error: ...`
    holding `fragment`, no traceback."""
    assert outcome.code == 1, outcome
    assert "Traceback" not in outcome.err
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1, outcome.err
    assert lines[0].startswith("error: "), outcome.err
    assert fragment in lines[0], outcome.err


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.scheduling import spread_long_tests, worker_count

    spread_long_tests(items, worker_count(config))
