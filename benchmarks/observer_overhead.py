"""Per-request cost of monitoring on the demo model, in process: predictions through the
dataplane with and without its observers (metrics, log context, prediction log, drift).

Usage: .venv/bin/python benchmarks/observer_overhead.py   (env ROUNDS=3000)
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from berth.api.app import build_services
from berth.config import Settings
from berth.demo_model import train
from berth.registration.service import RegisterRequest, register
from berth.registry.service import Registry
from berth.serving.validation import instances_decoder

ROW = {"tenure_months": 8, "monthly_charges": 71.79, "plan": "pro", "support_calls": 1}


async def _rate(svc: object, rounds: int) -> float:
    dataplane = svc.dataplane  # type: ignore[attr-defined]
    decoder = instances_decoder([ROW], "features", dataplane.config.max_batch_rows, single=True)
    for _ in range(200):
        await dataplane.predict("churn", decoder)
    started = time.perf_counter()
    for _ in range(rounds):
        await dataplane.predict("churn", decoder)
    return rounds / (time.perf_counter() - started)


async def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "3000"))
    home = Path(tempfile.mkdtemp())
    settings = Settings(home=home, dev=True)
    model, sample, signature, _ = train(home / "demo")
    registry = Registry.from_settings(settings)
    request = RegisterRequest(
        name="churn", path=model, sample=sample, signature=signature, aliases=("production",)
    )
    register(registry, request)
    svc = build_services(settings, registry)
    await svc.dataplane.start()
    with_observers = await _rate(svc, rounds)
    observers, svc.dataplane.observers = svc.dataplane.observers, []
    without = await _rate(svc, rounds)
    svc.dataplane.observers = observers
    again = await _rate(svc, rounds)
    print(f"observers: {[getattr(o, '__name__', type(o).__name__) for o in observers]}")
    print(f"with observers:    {with_observers:8.1f} predictions/s (again: {again:.1f})")
    print(f"without observers: {without:8.1f} predictions/s")
    await svc.dataplane.stop()


if __name__ == "__main__":
    asyncio.run(main())
