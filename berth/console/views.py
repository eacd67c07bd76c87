"""What each page shows, read through the same service functions as the admin API.

Each function runs in a worker thread (it reads the registry database) and returns plain data
for a template; nothing here changes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from berth.api.services import Services
from berth.console.traffic import Rate, TrafficHistory
from berth.registry.endpoints import EndpointChange, EndpointInfo, EndpointService, RouteSpec
from berth.registry.versions import ModelInfo, VersionInfo
from berth.rollouts import strategies as s
from berth.rollouts.service import RolloutInfo, RolloutService
from berth.serving.route_stats import (
    combined,
    processes_seen,
    read_all_totals,
    read_shadow,
    read_totals,
    stats_document,
)
from berth.serving.route_window import RouteWindow

EVERYTHING = ""
"""The traffic history key of all endpoints together."""
SEEN_WITHIN = timedelta(minutes=1)


@dataclass(frozen=True)
class Traffic:
    """Totals since the serving processes started, and the recent rate when one is known."""

    total: RouteWindow
    rate: Rate | None

    @property
    def error_rate(self) -> float | None:
        window = self.rate.window if self.rate and self.rate.window.requests else self.total
        return window.error_rate

    def quantile_ms(self, q: float) -> float | None:
        window = self.rate.window if self.rate and self.rate.window.requests else self.total
        found = window.latency_quantile(q)
        return None if found is None else found * 1000

    @property
    def p50_ms(self) -> float | None:
        return self.quantile_ms(0.5)

    @property
    def p99_ms(self) -> float | None:
        return self.quantile_ms(0.99)


def traffic(history: TrafficHistory, key: str, total: RouteWindow) -> Traffic:
    history.note(key, total)
    return Traffic(total, history.rate(key))


@dataclass(frozen=True)
class Overview:
    ready: bool
    loaded: list[str]
    processes: int
    models: int
    versions: int
    endpoints: list[EndpointInfo]
    active: list[RolloutInfo]
    traffic: Traffic
    per_endpoint: dict[str, Traffic]


def overview(svc: Services, history: TrafficHistory) -> Overview:
    models = svc.registry.list_models()
    endpoints = EndpointService(svc.registry).all()
    totals = read_all_totals(svc.registry.db)
    per_endpoint = {
        e.name: traffic(history, e.name, combined(totals.get(e.name, {}).values()))
        for e in endpoints
    }
    everything = combined(w for routes in totals.values() for w in routes.values())
    return Overview(
        ready=svc.dataplane.ready,
        loaded=[v.ref for v in svc.dataplane.loaded_versions()],
        processes=processes_seen(svc.registry.db, SEEN_WITHIN),
        models=len(models),
        versions=sum(len(m.versions) for m in models),
        endpoints=endpoints,
        active=RolloutService(svc.registry).list(active_only=True),
        traffic=traffic(history, EVERYTHING, everything),
        per_endpoint=per_endpoint,
    )


def series(svc: Services, history: TrafficHistory, endpoint: str | None) -> dict[str, Any]:
    """A chart's points: requests per second and p99 between successive readings."""
    if endpoint is None:
        totals = read_all_totals(svc.registry.db)
        key = EVERYTHING
        history.note(key, combined(w for routes in totals.values() for w in routes.values()))
    else:
        EndpointService(svc.registry).get(endpoint)  # NotFound for an unknown endpoint
        key = endpoint
        history.note(key, combined(read_totals(svc.registry.db, endpoint).values()))
    points = history.points(key)
    return {
        "t": [round(p.at, 3) for p in points],
        "rps": [round(p.per_second, 4) for p in points],
        "p99_ms": [None if p.p99_ms is None else round(p.p99_ms, 3) for p in points],
    }


def models(svc: Services) -> list[ModelInfo]:
    return svc.registry.list_models()


@dataclass(frozen=True)
class ModelPage:
    model: ModelInfo
    routed: dict[int, list[RoutedAt]]


@dataclass(frozen=True)
class RoutedAt:
    endpoint: str
    route: RouteSpec


def routed_versions(svc: Services, model: str) -> dict[int, list[RoutedAt]]:
    """Which endpoint routes send traffic to each version of `model`."""
    found: dict[int, list[RoutedAt]] = {}
    for endpoint in EndpointService(svc.registry).all():
        for route in endpoint.routes:
            if route.model == model:
                found.setdefault(route.version, []).append(RoutedAt(endpoint.name, route))
    return found


def model_page(svc: Services, name: str) -> ModelPage:
    return ModelPage(svc.registry.get_model(name), routed_versions(svc, name))


@dataclass(frozen=True)
class VersionPage:
    version: VersionInfo
    routed: list[RoutedAt]
    derived: list[str]
    """Versions of any model whose lineage names this one."""


def version_page(svc: Services, name: str, number: int) -> VersionPage:
    version = svc.registry.get_version(name, number)
    derived = [
        v.ref
        for m in svc.registry.list_models()
        for v in m.versions
        if v.lineage is not None and v.lineage.source == version.ref
    ]
    return VersionPage(version, routed_versions(svc, name).get(number, []), derived)


@dataclass(frozen=True)
class EndpointPage:
    endpoint: EndpointInfo
    stats: dict[str, Any]
    """`stats_document`: per route requests, errors, error rate, mean and p99, and the shadow."""
    traffic: Traffic
    route_rates: dict[str, Rate | None]
    history: list[EndpointChange]
    rollouts: list[RolloutInfo]


def endpoint_page(svc: Services, history: TrafficHistory, name: str) -> EndpointPage:
    endpoint = EndpointService(svc.registry).get(name)
    totals = read_totals(svc.registry.db, name)
    rates: dict[str, Rate | None] = {}
    for route in endpoint.routes:
        key = f"{name}/{route.ref}"
        history.note(key, totals.get((route.model, route.version), RouteWindow()))
        rates[route.label] = history.rate(key)
    return EndpointPage(
        endpoint=endpoint,
        stats=stats_document(endpoint, totals, read_shadow(svc.registry.db, name)),
        traffic=traffic(history, name, combined(totals.values())),
        route_rates=rates,
        history=EndpointService(svc.registry).history(name, limit=20),
        rollouts=RolloutService(svc.registry).list(name)[:10],
    )


ACTIONS = ("promote", "pause", "resume", "rollback", "abort", "finalize")
ACTION_LABELS = {
    "promote": "Promote",
    "pause": "Pause",
    "resume": "Resume",
    "rollback": "Roll back",
    "abort": "Abort",
    "finalize": "Finalize",
}
ACTION_HELP = {
    "promote": "Send all traffic to the candidate now (blue-green before the switch: switch).",
    "pause": "Hold the rollout at its current weights until it is resumed.",
    "resume": "Go on with the paused rollout; the current step starts over.",
    "rollback": "Send all traffic back to the old version; the rollout ends rolled back.",
    "abort": "Stop the rollout and restore the old version; the rollout ends aborted.",
    "finalize": "Blue-green after the switch: unload blue and finish.",
}


def actions_for(info: RolloutInfo) -> list[str]:
    """The hand actions the rollout service accepts for the rollout in its state."""
    if not info.active:
        return []
    found = ["promote", "resume" if info.status == s.PAUSED else "pause", "rollback", "abort"]
    if info.strategy == s.BLUE_GREEN and info.phase == s.SWITCHED:
        found.insert(1, "finalize")
    return found


@dataclass(frozen=True)
class Step:
    label: str
    state: str
    """done, current or next."""


@dataclass(frozen=True)
class RolloutPage:
    rollout: RolloutInfo
    steps: list[Step]
    checks: list[dict[str, Any]]
    """The latest analysis: name, status (pass, wait, fail), value, threshold, detail."""
    decision: str | None
    actions: list[str]


def steps_of(info: RolloutInfo) -> list[Step]:
    if info.strategy == s.CANARY:
        labels = ["loading", *[f"{w:g}%" for w in info.config.steps]]
        index = 0
        if info.phase == s.STEP:
            index = 1 + int(info.state.get("step", 0))
    else:
        labels = [s.LOADING, s.PREVIEW, s.SWITCHED]
        index = labels.index(info.phase) if info.phase in labels else 0
    finished = info.status == s.PROMOTED
    steps = []
    for i, label in enumerate(labels):
        if finished or i < index:
            state = "done"
        elif i == index and info.active:
            state = "current"
        else:
            state = "next"
        steps.append(Step(label, state))
    return steps


def latest_analysis(info: RolloutInfo) -> dict[str, Any] | None:
    for event in reversed(info.events):
        if event.kind == "analysis" and isinstance(event.detail, dict):
            return event.detail
    return None


def rollout_page(svc: Services, rollout_id: int) -> RolloutPage:
    info = RolloutService(svc.registry).get(rollout_id)
    analysis = latest_analysis(info) or {}
    checks = [c for c in analysis.get("checks", []) if isinstance(c, dict)]
    return RolloutPage(
        rollout=info,
        steps=steps_of(info),
        checks=checks,
        decision=analysis.get("decision"),
        actions=actions_for(info),
    )


def rollouts(svc: Services) -> list[RolloutInfo]:
    return RolloutService(svc.registry).list()
