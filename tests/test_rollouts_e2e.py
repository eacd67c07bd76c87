"""Rollouts on real servers: `berth serve` processes on the running PostgreSQL, real traffic.

- a canary whose candidate fails on 20% of inputs is rolled back by the controller, and clients
  of the stable route see no errors;
- a good candidate climbs to 100% and is promoted;
- a blue-green switch under concurrent load loses no request;
- two server processes agree on an endpoint's weights within 2 s of a change;
- on a slow machine (both versions equally slow, over the absolute p99 limit) the candidate is
  promoted, and `berth rollout wait` prints one line per change, not one per look.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from berth.config import Settings
from berth.registration.service import RegisterRequest, register
from berth.registry.endpoints import EndpointService, RouteSpec
from berth.registry.service import Registry
from berth.rollouts import strategies as s
from berth.rollouts.canary_analysis import CanaryCriteria
from berth.rollouts.service import RolloutInfo, RolloutService
from tests.conftest import BERTH, berth, serving

SCORER = """
import time

import numpy as np


class Scorer:
    FAILS = {fails}

    def load(self):
        pass

    def predict(self, inputs):
        time.sleep({delay})
        x = np.asarray(inputs, dtype=float)
        if self.FAILS and np.any(np.floor(x[:, 0]) % 5 == 0):
            raise RuntimeError("candidate bug: rows whose first feature is a multiple of 5")
        return (x.sum(axis=1) > {cut}).astype(int)
"""


@dataclass
class Stack:
    env: dict[str, str]
    registry: Registry

    def register(self, directory: Path, fails: bool, cut: int, delay: float = 0.0) -> str:
        directory.mkdir()
        (directory / "model.py").write_text(SCORER.format(fails=fails, cut=cut, delay=delay))
        sample = directory.parent / f"{directory.name}.npy"
        np.save(sample, np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 0.5, 7.0]]))
        info = register(
            self.registry,
            RegisterRequest(name="scorer", path=directory, flavor="python", sample=sample),
        )
        return info.ref


@pytest.fixture
def stack(settings: Settings, postgres_url: str, tmp_path: Path) -> Iterator[Stack]:
    settings = settings.model_copy(update={"database_url": postgres_url})
    registry = Registry.from_settings(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(
        BERTH_HOME=str(settings.home),
        BERTH_DATABASE_URL=postgres_url,
        BERTH_DEV="1",
        BERTH_CONTROLLER_INTERVAL_SECONDS="0.2",
        BERTH_LOG_LEVEL="warning",
        BERTH_OPEN_ROUTE_RATE="1000000/s",  # dev mode limits by address; the load is one address
    )
    yield Stack(env, registry)
    registry.db.dispose()


@dataclass
class Load:
    """Clients sending rows to an endpoint until stopped, recording every answer."""

    base: str
    headers: dict[str, str] = field(default_factory=dict)
    clients: int = 4
    answers: list[tuple[int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for number in range(self.clients):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, number: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            i = number
            while not self._stop.is_set():
                row = [float(i % 100), 1.0, 2.0, 3.0]
                try:
                    response = client.post(
                        "/api/v1/endpoints/scores/predict",
                        json={"features": row},
                        headers=self.headers,
                    )
                    version = response.headers.get("X-Berth-Model-Version", "")
                    self.answers.append((response.status_code, version))
                except httpx.TransportError as exc:
                    self.answers.append((0, type(exc).__name__))
                i += self.clients

    def statuses(self) -> Counter[int]:
        return Counter(status for status, _ in self.answers)


def _wait_finished(service: RolloutService, rollout: int, seconds: float = 60) -> RolloutInfo:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = service.get(rollout)
        if not info.active:
            return info
        time.sleep(0.2)
    raise AssertionError(f"rollout still {service.get(rollout).phase} after {seconds} s")


def _serves(base: str, version: str, seconds: float = 10, in_a_row: int = 1) -> None:
    """Wait until `in_a_row` answers in a row come from `version` (at 50% weight, twenty in a
    row from one version by chance is one in a million)."""
    deadline = time.monotonic() + seconds
    streak = 0
    while streak < in_a_row:
        if time.monotonic() > deadline:
            raise AssertionError(f"{base} did not serve {version} within {seconds} s")
        response = httpx.post(
            f"{base}/api/v1/endpoints/scores/predict", json={"features": [1.0, 2.0, 3.0, 4.0]}
        )
        if response.headers.get("X-Berth-Model-Version") == version:
            streak += 1
        else:
            streak = 0
            time.sleep(0.05)


def test_a_canary_failing_on_a_fifth_of_inputs_is_rolled_back(stack: Stack, tmp_path: Path) -> None:
    stable = stack.register(tmp_path / "v1", fails=False, cut=10)
    candidate = stack.register(tmp_path / "v2", fails=True, cut=10)
    EndpointService(stack.registry).create("scores", stable)
    with serving(stack.env) as (base, _port):
        pinned = Load(base, headers={"X-Berth-Route": "stable"}, clients=2).start()
        free = Load(base, clients=3).start()
        service = RolloutService(stack.registry)
        config = s.RolloutConfig(
            steps=(50.0, 100.0),
            interval_seconds=30,
            criteria=CanaryCriteria(min_requests=40, max_error_rate=0.02),
        )
        rollout = service.start("scores", candidate, s.CANARY, config).rollout.id
        info = _wait_finished(service, rollout)
        pinned.stop()
        _serves(base, stable, in_a_row=20)  # the server applied the rollback
        free.stop()
        assert info.status == s.ROLLED_BACK, info.reason
        assert "canary failed at 50%" in info.reason
        assert "errors vs stable" in info.reason
        assert EndpointService(stack.registry).get("scores").routes == (
            RouteSpec("stable", "stable", "scorer", 1, 100.0),
        )
        # Clients of the stable route saw no error at all.
        assert pinned.statuses() == Counter({200: len(pinned.answers)})
        assert len(pinned.answers) > 50
        # The others saw the candidate's failures only while it had traffic.
        assert free.statuses()[500] > 0
        after = Load(base, clients=2).start()
        time.sleep(1.0)
        after.stop()
        assert after.statuses() == Counter({200: len(after.answers)})
        assert {version for _, version in after.answers} == {stable}


def test_a_good_canary_is_promoted_to_all_traffic(stack: Stack, tmp_path: Path) -> None:
    stable = stack.register(tmp_path / "v1", fails=False, cut=10)
    candidate = stack.register(tmp_path / "v2", fails=False, cut=9)
    EndpointService(stack.registry).create("scores", stable)
    with serving(stack.env) as (base, _port):
        load = Load(base, clients=3).start()
        service = RolloutService(stack.registry)
        config = s.RolloutConfig(
            steps=(25.0, 50.0, 100.0),
            interval_seconds=1,
            criteria=CanaryCriteria(min_requests=20, max_error_rate=0.02, max_p99_ms=500),
        )
        rollout = service.start("scores", candidate, s.CANARY, config).rollout.id
        info = _wait_finished(service, rollout)
        _serves(base, candidate)
        load.stop()
        assert info.status == s.PROMOTED, info.reason
        assert load.statuses() == Counter({200: len(load.answers)})
        weights = [e.message for e in info.events if e.kind in ("step", "promoted")]
        assert weights == [
            f"{candidate} answered its smoke request; 25% of traffic",
            "passed at 25%; now 50%",
            "passed at 50%; now 100%",
            f"{candidate} passed at 100%: promoted",
        ]
        assert EndpointService(stack.registry).get("scores").routes == (
            RouteSpec("stable", "stable", "scorer", 2, 100.0),
        )


def test_a_blue_green_switch_under_load_loses_no_request(stack: Stack, tmp_path: Path) -> None:
    blue = stack.register(tmp_path / "v1", fails=False, cut=10)
    green = stack.register(tmp_path / "v2", fails=False, cut=9)
    EndpointService(stack.registry).create("scores", blue)
    with serving(stack.env) as (base, _port):
        load = Load(base, clients=6).start()
        service = RolloutService(stack.registry)
        config = s.RolloutConfig(switch="manual")
        rollout = service.start("scores", green, s.BLUE_GREEN, config).rollout.id
        deadline = time.monotonic() + 30
        while service.get(rollout).phase != s.PREVIEW and time.monotonic() < deadline:
            time.sleep(0.1)
        preview = httpx.post(
            f"{base}/api/v1/endpoints/scores/predict",
            json={"features": [1.0, 2.0, 3.0, 4.0]},
            headers={"X-Berth-Route": "green"},
        )
        assert preview.headers["X-Berth-Model-Version"] == green
        before = len(load.answers)
        service.promote("scores")  # the switch
        _serves(base, green)
        switched_at = len(load.answers)
        time.sleep(1.0)
        service.finalize("scores")
        time.sleep(1.5)
        load.stop()
        assert load.statuses() == Counter({200: len(load.answers)})
        assert {v for _, v in load.answers[:before]} == {blue}
        # Once the switch applied, green answers everything (no request lands on blue after it).
        assert {v for _, v in load.answers[switched_at + 6 :]} == {green}
        assert service.get(rollout).status == s.PROMOTED


def test_two_servers_agree_on_weights_within_two_seconds(stack: Stack, tmp_path: Path) -> None:
    first = stack.register(tmp_path / "v1", fails=False, cut=10)
    second = stack.register(tmp_path / "v2", fails=False, cut=9)
    endpoints = EndpointService(stack.registry)
    endpoints.create("scores", first)
    # Refreshing four times a second, as a deployment that needs agreement within 2 s would: a
    # change made just after a refresh waits a whole period, and at the default 1 s that left
    # about 1 s of the 2 s for the work and the polling.
    env = {**stack.env, "BERTH_REFRESH_SECONDS": "0.25"}
    with serving(env) as (one, _), serving(env) as (two, _):
        delays = []
        for weights, version in (((0, 100), second), ((100, 0), first), ((0, 100), second)):
            routes = [
                RouteSpec("stable", "stable", "scorer", 1, weights[0]),
                RouteSpec("canary", "canary", "scorer", 2, weights[1]),
            ]
            changed = time.monotonic()
            endpoints.set_routes("scores", routes, f"move to {version}")
            for base in (one, two):
                _serves(base, version, seconds=5)
            delays.append(time.monotonic() - changed)
        assert max(delays) < 2.0, delays
        print(
            f"\nboth servers served the new weights after {', '.join(f'{d:.2f}' for d in delays)} s"
        )


def test_on_a_slow_machine_a_canary_as_slow_as_stable_is_promoted(
    stack: Stack, tmp_path: Path
) -> None:
    """Issue 15: both versions answer in ~150 ms, over a 50 ms absolute limit. The canary is
    judged against stable in the same window and promoted; `berth rollout wait`, polling ten
    times a second, prints a line per change of phase, weight or decision."""
    stable = stack.register(tmp_path / "v1", fails=False, cut=10, delay=0.15)
    candidate = stack.register(tmp_path / "v2", fails=False, cut=9, delay=0.15)
    EndpointService(stack.registry).create("scores", stable)
    # A thread for each client, so no request queues behind another: with one per core (two
    # here), a single queued request in the window moved a version's p99 into the next bucket
    # and decided the outcome by chance. A hundred requests each keep one outlier out of p99.
    env = {**stack.env, "BERTH_PREDICT_THREADS": "8"}
    with serving(env) as (base, _port):
        load = Load(base, clients=6).start()
        started = berth(
            stack.env,
            *("rollout", "start", "scores", "--to", candidate, "--steps", "50,100"),
            *("--interval", "2s", "--min-requests", "100", "--max-p99-ms", "50"),
        )
        assert started.returncode == 0, started.stderr
        waited = subprocess.run(
            [*BERTH, "rollout", "wait", "scores", "--timeout", "90s", "--poll-seconds", "0.1"],
            env={**stack.env, "COLUMNS": "250"},  # one line per event, unwrapped
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        load.stop()
    assert waited.returncode == 0, waited.stdout + waited.stderr
    lines = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line) for line in waited.stdout.splitlines()]
    kinds = [line.split()[0] for line in lines]
    assert kinds[0] == "started", lines
    assert kinds[-1] == "rollout", lines
    assert "promoted" in lines[-1]
    steps = [line for line in lines if line.startswith("step")]
    assert steps == [
        f"step        {candidate} answered its smoke request; 50% of traffic",
        "step        passed at 50%; now 100%",
    ]
    # A line per change: no analysis line repeats the decision of the line before it.
    decisions = [
        (kind, line.split()[1].rstrip(":") if kind == "analysis" else None)
        for kind, line in zip(kinds, lines, strict=True)
    ]
    repeated = [a for a, b in itertools.pairwise(decisions) if a == b and a[0] == "analysis"]
    assert repeated == [], lines
    assert len(lines) <= 9, lines
    info = RolloutService(stack.registry).latest("scores")
    assert info.status == s.PROMOTED, info.reason
    judged = next(e for e in info.events if e.message == "passed at 50%; now 100%")
    assert judged.detail is not None
    (latency,) = [c for c in judged.detail["checks"] if c["name"] == "p99 latency"]
    assert "above the 50.0 ms limit, but within 1.5x stable + 10 ms" in latency["detail"]
    assert "stable is as slow" in latency["detail"]
    print("\n" + "\n".join(lines))
