"""Server time of each console page with many models and endpoints (issue 21: under 200 ms).

Builds a registry in a temporary BERTH_HOME with MODELS models (two versions each, the same
small iris LogisticRegression), ENDPOINTS endpoints routing to the first of them, a canary
rollout with an analysis on the first endpoint, an experiment on the second, traffic totals for
every route, 50 batch jobs and 21 keys (their audit entries too); waits until the server has
loaded its models; then asks
each console page RUNS times through the served app in process (Starlette's TestClient: no
network, so the time is the server's) and prints min, median, p95 and max against the target.
The server re-reads its 100 served references every BERTH_REFRESH_SECONDS in worker threads,
and the occasional page that meets that refresh is slower: the max column shows it.

Usage: .venv/bin/python benchmarks/console_pages.py [--models 100] [--endpoints 20] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

TARGET_MS = 200.0


def build(home: Path, models: int, endpoints: int) -> tuple[object, str]:
    import joblib
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from berth.config import Settings
    from berth.jobs.records import JobService
    from berth.registration.service import RegisterRequest, register
    from berth.registry.endpoints import EndpointService
    from berth.registry.service import Registry
    from berth.rollouts.canary_analysis import Check, Verdict
    from berth.rollouts.experiments import ExperimentService
    from berth.rollouts.service import RolloutService
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret
    from berth.serving.route_stats import RouteStats

    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), target)
    joblib.dump(model, home / "model.joblib")
    np.save(home / "sample.npy", features[:20].astype(np.float32))
    settings = Settings(home=home, rollout_controller=False)
    registry = Registry.from_settings(settings)
    for index in range(models):
        for aliases in (("production",), ()):
            register(
                registry,
                RegisterRequest(
                    name=f"model-{index:03d}",
                    path=home / "model.joblib",
                    sample=home / "sample.npy",
                    trust_pickle=True,
                    aliases=aliases,
                    metrics={"accuracy": 0.9},
                ),
            )
    stats = RouteStats(registry.db)
    for index in range(endpoints):
        name = f"endpoint-{index:02d}"
        EndpointService(registry).create(name, f"model-{index:03d}@production")
        for _ in range(1000):
            stats.record((name, f"model-{index:03d}", 1), 0.004, error=False)
    stats.write((key, stats._totals[key]) for key in stats._totals)
    service = RolloutService(registry)
    rollout = service.start("endpoint-00", "model-000:2", "canary").rollout
    verdict = Verdict("wait", (Check("requests", "wait", 12, 100, "12 of 100"),))
    service.record(rollout, "analysis", "wait", verdict.to_dict())
    # An experiment on the second endpoint, 50 batch jobs, and 20 more keys to list.
    ExperimentService(registry).start(
        "endpoint-01", ["a=model-001:1:50", "b=model-001:2:50"], actor="bench"
    )
    jobs = JobService(registry.db)
    for index in range(50):
        jobs.create(
            job_key=f"job-{index}",
            model="model-000:1",
            source=f"/data/in-{index}.parquet",
            sink=f"/data/out-{index}.parquet",
            args=["batch", "run", "model-000:1"],
        )
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    for index in range(20):
        keys.create(f"client-{index:02d}", ("predict", "read"), actor="bench")
    secret = keys.create("bench", ("admin",))[1]
    return settings, secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["BERTH_HOME"] = folder
        settings, secret = build(Path(folder), options.models, options.endpoints)

        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient

        from berth.server import create_server_app

        pages = [
            "/console",
            "/console/fragments/overview",
            "/console/models",
            "/console/models/model-000",
            "/console/models/model-000/versions/2",
            "/console/endpoints/endpoint-00",
            "/console/fragments/endpoints/endpoint-00",
            "/console/rollouts",
            "/console/rollouts/1",
            "/console/series/overview",
            "/console/models/model-000/versions/1/monitoring",
            "/console/series/models/model-000/versions/1/accuracy?hours=24",
            "/console/jobs",
            "/console/jobs/1",
            "/console/experiments",
            "/console/experiments/endpoint-01",
            "/console/audit",
            "/console/keys",
        ]
        with TestClient(create_server_app(settings)) as client:  # type: ignore[arg-type]
            # The server loads every served model in the background after it starts; pages
            # timed during that would measure the loading, not the console.
            deadline = time.monotonic() + 300
            while client.get("/ready").status_code != 200:
                assert time.monotonic() < deadline, "the server did not load its models"
                time.sleep(0.2)
            form = client.get("/console/sign-in").text
            token = form.split('name="csrf" value="')[1].split('"')[0]
            client.post("/console/sign-in", data={"credential": secret, "csrf": token})
            print(f"{options.models} models, {options.endpoints} endpoints, {options.runs} runs")
            print(
                f"{'page':62} {'min':>8} {'median':>8} {'p95':>8} {'max':>8}  "
                f"(ms; target {TARGET_MS:g})"
            )
            for path in pages:
                times = []
                for _ in range(options.runs):
                    started = time.perf_counter()
                    answer = client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code)
                median = statistics.median(times)
                p95 = statistics.quantiles(times, n=20)[-1]
                mark = "" if median <= TARGET_MS else "  OVER"
                print(
                    f"{path:62} {min(times):8.1f} {median:8.1f} {p95:8.1f} {max(times):8.1f}{mark}"
                )


if __name__ == "__main__":
    main()
