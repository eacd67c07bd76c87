"""Server time of each console page with many models and endpoints (issue 21: under 200 ms).

Builds a registry in a temporary BERTH_HOME with MODELS models (two versions each, the same
small iris LogisticRegression), ENDPOINTS endpoints routing to the first of them, a canary
rollout with an analysis on the first endpoint and traffic totals for every route; then asks
each console page RUNS times through the served app in process (Starlette's TestClient: no
network, so the time is the server's) and prints min, median and max against the target.

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
    from berth.registration.service import RegisterRequest, register
    from berth.registry.endpoints import EndpointService
    from berth.registry.service import Registry
    from berth.rollouts.canary_analysis import Check, Verdict
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
    secret = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings))).create(
        "bench", ("admin",)
    )[1]
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
        ]
        with TestClient(create_server_app(settings)) as client:  # type: ignore[arg-type]
            form = client.get("/console/sign-in").text
            token = form.split('name="csrf" value="')[1].split('"')[0]
            client.post("/console/sign-in", data={"credential": secret, "csrf": token})
            print(f"{options.models} models, {options.endpoints} endpoints, {options.runs} runs")
            print(f"{'page':45} {'min':>8} {'median':>8} {'max':>8}  (ms; target {TARGET_MS:g})")
            for path in pages:
                times = []
                for _ in range(options.runs):
                    started = time.perf_counter()
                    answer = client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code)
                median = statistics.median(times)
                mark = "" if median <= TARGET_MS else "  OVER"
                print(f"{path:45} {min(times):8.1f} {median:8.1f} {max(times):8.1f}{mark}")


if __name__ == "__main__":
    main()
