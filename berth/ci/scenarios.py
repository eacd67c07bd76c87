"""The generated pipeline run for real: a Berth server, a model repository, live traffic.

Used by `make cicd-demo` (`berth.ci.demo`) and tests/test_ci_pipeline.py. The server side
("ops") has each scenario's model at version 1 behind a production endpoint of the same name,
a key with the admin scope for the pipeline and one that predicts for the traffic. The
pipeline side is `berth ci run` in a model repository written by `berth ci init`, in an
environment with BERTH_SERVER and BERTH_API_KEY and no way to the registry: its
BERTH_DATABASE_URL is unusable, so a command that opened the database would fail.

The models are Python classes on four numbers: the label is whether they add up to more than
60. The held-out rows have a first number below 80; live traffic sends 0 to 99 in turn, so a
candidate that fails from 80 on fails a fifth of live requests and none of the gates' rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from berth.ci import scaffold
from berth.ci.options import InitOptions

if TYPE_CHECKING:
    from berth.config import Settings
    from berth.registry.versions import VersionInfo
    from berth.rollouts.service import RolloutInfo

UNUSABLE_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/no-registry-here"
"""The pipeline's BERTH_DATABASE_URL: a command that opened the registry would fail."""

SCORER = """\
import numpy as np


class Scorer:
    \"\"\"Whether four numbers add up to more than 60 ({about}).\"\"\"

    FAIL_FROM = {fail_from}
    FLIP = {flip}

    def load(self):
        pass

    def predict(self, inputs):
        x = np.asarray(inputs, dtype=float)
        if self.FAIL_FROM is not None and np.any(x[:, 0] >= self.FAIL_FROM):
            raise RuntimeError("candidate bug: rows whose first number is 80 or more")
        labels = (x.sum(axis=1) > 60).astype(int)
        return 1 - labels if self.FLIP else labels
"""

REPO_TEST = """\
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]


def test_one_label_per_row():
    spec = importlib.util.spec_from_file_location("candidate", ROOT / "model" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Scorer()
    model.load()
    rows = np.load(ROOT / "data" / "sample.npy")
    assert set(model.predict(rows).tolist()) <= {0, 1}
"""

CONFIG = """\
[model]
name = "{name}"
candidate = "model"
sample = "data/sample.npy"

[gates]
data = "data/holdout.csv"
target = "label"
min_accuracy = 0.9
max_latency_ms = 50
no_nan = true
output_range = [0, 1]
no_regression = true

[staging]
alias = "staging"

[canary]
steps = [50, 100]
interval = "2s"
max_error_rate = 0.02
min_requests = 40
wait_timeout = "90s"
"""


@dataclass(frozen=True)
class Candidate:
    about: str
    fail_from: int | None = None
    flip: bool = False

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        text = SCORER.format(about=self.about, fail_from=self.fail_from, flip=self.flip)
        (folder / "model.py").write_text(text)
        return folder


STABLE = Candidate("version 1")
GOOD = Candidate("a good candidate")
UNDERFIT = Candidate("labels flipped: under the accuracy threshold", flip=True)
FLAKY = Candidate("fails on first numbers from 80", fail_from=80)


def holdout(path: Path, rows: int = 200) -> None:
    """Held-out rows with their labels; every first number is below 80."""
    import numpy as np

    generator = np.random.default_rng(7)
    x = np.column_stack([generator.uniform(0, 80, rows), generator.uniform(0, 20, (rows, 3))])
    labels = (x.sum(axis=1) > 60).astype(int)
    lines = ["f0,f1,f2,f3,label"]
    lines += [
        ",".join(f"{v:.3f}" for v in row) + f",{label}"
        for row, label in zip(x, labels, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def sample(path: Path) -> None:
    import numpy as np

    np.save(path, np.array([[10.0, 5.0, 5.0, 5.0], [70.0, 1.0, 2.0, 3.0], [40.0, 9.0, 9.0, 9.0]]))


def write_repo(root: Path, name: str, candidate: Candidate, provider: str) -> Path:
    """A model repository: the candidate, its data, a test, and `berth ci init`'s files."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "tests").mkdir(exist_ok=True)
    candidate.write(root / "model")
    holdout(root / "data" / "holdout.csv")
    sample(root / "data" / "sample.npy")
    (root / "tests" / "test_model.py").write_text(REPO_TEST)
    (root / "berth-ci.toml").write_text(CONFIG.format(name=name))
    scaffold.init(root, InitOptions(provider=provider, model=name), force=True)
    return root


# ---------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Ops:
    url: str
    env: dict[str, str]
    """The server's environment."""
    settings: Settings
    """The server's registry, for the checks afterwards."""
    key: str
    """Admin scope: the pipeline's BERTH_API_KEY."""
    traffic_key: str
    """Predict scope: the live traffic's."""


@contextmanager
def ops_server(
    workdir: Path, models: tuple[str, ...], database_url: str | None = None
) -> Iterator[Ops]:
    """`berth serve` with each model's version 1 behind its production endpoint; the rollout
    controller looks every 0.2 s."""
    from berth.config import Settings
    from berth.registration.service import RegisterRequest, register
    from berth.registry.endpoints import EndpointService
    from berth.registry.service import Registry
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    home = workdir / "ops-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(
        BERTH_HOME=str(home),
        BERTH_CONTROLLER_INTERVAL_SECONDS="0.2",
        BERTH_LOG_LEVEL="warning",
    )
    if database_url is not None:
        env["BERTH_DATABASE_URL"] = database_url
    settings = Settings(home=home, database_url=database_url)
    registry = Registry.from_settings(settings)
    try:
        sample(workdir / "stable-sample.npy")
        for name in models:
            folder = STABLE.write(workdir / "stable" / name)
            request = RegisterRequest(
                name=name,
                path=folder,
                sample=workdir / "stable-sample.npy",
                aliases=("production",),
            )
            register(registry, request)
            EndpointService(registry).create(name, f"{name}:1")
        keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
        _, key = keys.create("pipeline", ("admin",))
        _, traffic_key = keys.create("traffic", ("predict",))
    finally:
        registry.db.dispose()
    with _serving(env) as url:
        yield Ops(url, env, settings, key, traffic_key)


@contextmanager
def _serving(env: dict[str, str]) -> Iterator[str]:
    import httpx

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "berth.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"berth serve exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("berth serve was not ready within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """Clients calling an endpoint until stopped; `pinned` ones force the stable route."""

    url: str
    endpoint: str
    key: str
    pinned: bool = False
    clients: int = 2
    pause_seconds: float = 0.005
    answers: list[tuple[int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for number in range(self.clients):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> Counter[int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.statuses()

    def statuses(self) -> Counter[int]:
        return Counter(status for status, _ in self.answers)

    def _run(self, number: int) -> None:
        import httpx

        headers = {"x-api-key": self.key}
        if self.pinned:
            headers["X-Berth-Route"] = "stable"
        path = f"/api/v1/endpoints/{self.endpoint}/predict"
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as client:
            i = number
            while not self._stop.is_set():
                try:
                    response = client.post(path, json={"features": [float(i % 100), 1.0, 2.0, 3.0]})
                    version = response.headers.get("X-Berth-Model-Version", "")
                    self.answers.append((response.status_code, version))
                except httpx.TransportError as exc:
                    self.answers.append((0, type(exc).__name__))
                i += self.clients
                time.sleep(self.pause_seconds)


# ---------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class PipelineRun:
    code: int
    output: str
    seconds: float
    free: Counter[int]
    """Statuses the clients routed by the endpoint's weights saw."""
    stable: Counter[int]
    """Statuses the clients pinned to the stable route saw."""


def pipeline_environment(ops: Ops, home: Path) -> dict[str, str]:
    """A CI runner's: the server's URL and key by name, no registry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(
        BERTH_SERVER=ops.url,
        BERTH_API_KEY=ops.key,
        BERTH_HOME=str(home / "home"),
        BERTH_CONFIG_DIR=str(home / "config"),
        BERTH_DATABASE_URL=UNUSABLE_DATABASE,
        COLUMNS="120",
        # The repository's tests need no plugin; this machine's environment may have many.
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    return env


def run_pipeline(
    ops: Ops,
    repo: Path,
    name: str,
    provider: str,
    commit: str,
    show: Callable[[str], None] | None = None,
) -> PipelineRun:
    """`berth ci run` in `repo` while traffic flows to the endpoint `name`."""
    sha = "GITHUB_SHA" if provider == "github" else "CI_COMMIT_SHA"
    command = [sys.executable, "-m", "berth.cli", "ci", "run", "--provider", provider,
               "--dir", str(repo), "--env", f"{sha}={commit}"]  # fmt: skip
    env = pipeline_environment(ops, repo.parent / f"{repo.name}-runner")
    free = Traffic(ops.url, name, ops.traffic_key).start()
    stable = Traffic(ops.url, name, ops.traffic_key, pinned=True).start()
    lines: list[str] = []
    started = time.monotonic()
    try:
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                if show is not None:
                    show(line.rstrip("\n"))
            code = process.wait()
    finally:
        seconds = time.monotonic() - started
        free_seen, stable_seen = free.stop(), stable.stop()
    return PipelineRun(code, "\n".join(lines), seconds, free_seen, stable_seen)


@dataclass(frozen=True)
class Outcome:
    """What the server's registry holds after a pipeline (read on the ops side)."""

    versions: tuple[VersionInfo, ...]
    aliases: dict[str, int]
    serving: tuple[str, ...]
    """The endpoint's routes: LABEL=NAME:VERSION@WEIGHT."""
    rollout: RolloutInfo | None


def outcome(ops: Ops, name: str) -> Outcome:
    from berth.registry.endpoints import EndpointService
    from berth.registry.service import Registry
    from berth.rollouts.service import RolloutService

    registry = Registry.from_settings(ops.settings)
    try:
        model = registry.get_model(name)
        routes = EndpointService(registry).get(name).routes
        rollouts = RolloutService(registry).list(name)
        return Outcome(
            model.versions,
            dict(model.aliases),
            tuple(f"{r.label}={r.model}:{r.version}@{r.weight:g}" for r in routes),
            rollouts[0] if rollouts else None,
        )
    finally:
        registry.db.dispose()
