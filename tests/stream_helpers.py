"""Helpers of the stream consumer tests: a small tabular model, the consumer in a subprocess,
expected predictions, and waiting on a condition.

The model is the demo's churn pipeline (a string column, integer columns with ranges,
probabilities) saved with joblib: a skops file would cost each consumer process 2 s of imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import joblib
import numpy as np

from berth.config import Settings
from berth.demo_model import SIGNATURE, churn_data
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes.loading import load_version
from berth.serving.validation import decode_instances

T = TypeVar("T")

STREAM_RUN = [sys.executable, "-m", "berth.cli", "stream", "run"]
MODEL = "churn"


def train_model(folder: Path) -> tuple[Path, Path, Path]:
    """The churn pipeline as a joblib file, a CSV sample and the signature (with ranges)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = churn_data(600)
    numeric = ["tenure_months", "monthly_charges", "support_calls"]
    features = ColumnTransformer(
        [("numeric", StandardScaler(), numeric), ("plan", OneHotEncoder(), ["plan"])]
    )
    pipeline = Pipeline([("features", features), ("classifier", LogisticRegression())])
    pipeline.fit(frame, target)
    model, sample, signature = folder / "churn.joblib", folder / "sample.csv", folder / "sig.json"
    joblib.dump(pipeline, model)
    frame.head(20).to_csv(sample, index=False)
    signature.write_text(json.dumps(SIGNATURE))
    return model, sample, signature


def register_model(registry: Registry, files: tuple[Path, Path, Path]) -> VersionInfo:
    model, sample, signature = files
    request = RegisterRequest(
        name=MODEL,
        path=model,
        sample=sample,
        signature=signature,
        aliases=("production",),
        trust_pickle=True,
    )
    return register(registry, request)


def customers(count: int, seed: int = 11, prefix: str = "e") -> list[dict[str, Any]]:
    """`count` valid events, ids `<prefix>-0`, `<prefix>-1`, ..."""
    frame, _ = churn_data(count, seed=seed)
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return [{"id": f"{prefix}-{i}", **row} for i, row in enumerate(rows)]


def expected(registry: Registry, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the runtime itself predicts for the events: id -> (prediction, probabilities)."""
    version = registry.resolve(f"{MODEL}@production")
    runtime = load_version(registry, version)
    rows = [{k: v for k, v in event.items() if k != "id"} for event in events]
    prediction = runtime.predict(decode_instances(version.signature, rows, "rows", len(rows)))
    assert prediction.probabilities is not None
    assert prediction.classes is not None
    classes = [str(c) for c in prediction.classes]
    return {
        event["id"]: (label.item(), dict(zip(classes, probabilities.tolist(), strict=True)))
        for event, label, probabilities in zip(
            events, prediction.predictions, prediction.probabilities, strict=True
        )
    }


def assert_output(output: dict[str, Any], want: tuple[Any, dict[str, float]], version: int) -> None:
    assert set(output) == {"id", "prediction", "probabilities", "model", "version", "predicted_at"}
    assert output["prediction"] == want[0]
    assert output["probabilities"].keys() == want[1].keys()
    assert np.allclose(list(output["probabilities"].values()), list(want[1].values()))
    assert (output["model"], output["version"]) == (MODEL, version)
    assert output["predicted_at"].endswith("Z")


def consumer_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(BERTH_HOME=str(settings.home.resolve()), BERTH_LOG_LEVEL="info")
    return env


@dataclass
class Consumer:
    """`berth stream run` in a subprocess; its log (stderr) goes to a file."""

    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_consuming(self, seconds: float = 60) -> None:
        wait_for(lambda: "consuming " in self.text() or self._exited(), "consumer start", seconds)
        assert self.process.poll() is None, f"consumer exited early:\n{self.text()}"

    def _exited(self) -> bool:
        return self.process.poll() is not None

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def freeze_when(self, state: Callable[[], bool], seconds: float = 30) -> bool:
        """Stop the process (SIGSTOP) at a moment `state()` holds, e.g. with events in flight, so
        a kill lands mid-batch. False (and running) if that moment did not come in time.

        `state()` is read once the stopped process's last commands have had time to land (a
        batch's acknowledgement sent just before the stop would otherwise empty the pending list
        after the check, under load)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.signal(signal.SIGSTOP)
            time.sleep(0.1)
            if state():
                return True
            self.signal(signal.SIGCONT)
            time.sleep(0.002)
        return False

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=30)


_STARTED: list[Consumer] = []


def start_consumer(env: dict[str, str], log: Path, *args: str) -> Consumer:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*STREAM_RUN, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    consumer = Consumer(process, log)
    _STARTED.append(consumer)
    return consumer


def kill_leftovers() -> None:
    """Kill consumers a failed test left running (call after each test)."""
    while _STARTED:
        consumer = _STARTED.pop()
        if consumer.process.poll() is None:
            consumer.signal(signal.SIGCONT)  # it may be frozen
            consumer.kill()


def run_consumer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAM_RUN, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def wait_for(check: Callable[[], T], what: str, seconds: float = 60) -> T:
    """Poll `check` until it returns something true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def settled(read: Callable[[], T], what: str, quiet: float = 1.0, seconds: float = 30) -> T:
    """The value `read` returns once it has stayed the same for `quiet` seconds: after a
    consumer is killed, what it sent before still reaches the broker, and a reader catches up,
    but nothing changes it any more."""
    deadline = time.monotonic() + seconds
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} kept changing for {seconds} s")
        time.sleep(0.1)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def scraper(port: int) -> Callable[[], str]:
    """A function that fetches the consumer's /metrics text."""

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    return scrape


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from a Prometheus text exposition, or None when it is absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


class InOutNames:
    """`<base>.in` (the source), `<base>.out` (the sink) and `<base>.in.dead` (the source's
    default dead letters): the names NATS subjects and Kafka topics of one test take."""

    base: str

    @property
    def source(self) -> str:
        return f"{self.base}.in"

    @property
    def sink(self) -> str:
        return f"{self.base}.out"

    @property
    def dead(self) -> str:
        return f"{self.base}.in.dead"


E = TypeVar("E")


class Producer(Generic[E]):
    """Sends events in small chunks from a thread, so events keep flowing across kills."""

    def __init__(self, send: Callable[[list[E]], object], events: list[E], chunk: int = 20) -> None:
        self.send = send
        self.events = events
        self.chunk = chunk
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for start in range(0, len(self.events), self.chunk):
            self.send(self.events[start : start + self.chunk])
            time.sleep(0.02)

    def __enter__(self) -> Producer[E]:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.thread.join(timeout=60)
