"""The rollout controller: moves running rollouts along on live evidence.

It runs inside every `berth serve` process, but acts only while it holds the database lease
`rollout-controller`, so exactly one acts at a time across workers and replicas. All its state
lives in the rollout rows: a controller that restarts (or a new leader) continues where the last
one stopped. Each tick, for each running rollout:

- loading: once this process serves the candidate's route, send the version's example through
  it (the smoke request); failure rolls back, success starts step 1 (canary) or the preview
  (blue-green).
- step (canary): judge the candidate against stable on the evidence since the step began
  (`analysis.judge_canary`); a failing check rolls back at once, a pass after the interval moves
  to the next step, and a pass at 100% promotes.
- preview (blue-green): switch after the preview time (`--switch auto`).
- switched (blue-green): judge green on its own when limits are set (failing rolls back to
  blue), and finalize after `finalize_after_seconds` when set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio.to_thread

from berth.registry.endpoints import RouteSpec
from berth.registry.service import Registry
from berth.rollouts import strategies as s
from berth.rollouts.canary_analysis import Verdict, judge_canary
from berth.rollouts.evidence import MetricsSource, Totals, metrics_source, with_outcomes
from berth.rollouts.service import (
    Change,
    RolloutInfo,
    RolloutService,
    promotion_change,
    rollback_change,
    routes_of,
    step_change,
    switch_change,
)
from berth.serving.route_window import RouteWindow
from berth.store.lease import Lease

log = logging.getLogger("berth.rollouts")

LEASE_NAME = "rollout-controller"
LOAD_TIMEOUT_SECONDS = 600.0
"""A candidate that no server has loaded after this long is rolled back."""


class Probe(Protocol):
    async def __call__(self, endpoint: str, route: RouteSpec) -> bool:
        """True once this process serves `route` and it answered a smoke request; False while
        it is not loaded yet. Raises when the smoke request fails."""
        ...


Sources = Callable[[str], MetricsSource]


class RolloutController:
    def __init__(
        self,
        registry: Registry,
        probe: Probe,
        *,
        lease: Lease | None = None,
        clock: Callable[[], datetime] | None = None,
        sources: Sources | None = None,
        interval: float = 1.0,
    ) -> None:
        self.registry = registry
        self.db = registry.db
        self.probe = probe
        self.lease = lease
        self.clock = clock or (lambda: datetime.now(UTC))
        self.service = RolloutService(registry, clock=self.clock)
        self.sources = sources or (lambda spec: metrics_source(self.db, spec))
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.lease is not None and self.lease.held:
            await anyio.to_thread.run_sync(self.lease.release)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("the rollout controller failed a tick; retrying")
            await asyncio.sleep(self.interval)

    # one pass ----------------------------------------------------------------------------

    async def tick(self) -> None:
        if self.lease is not None and not await anyio.to_thread.run_sync(self.lease.acquire):
            return
        rollouts = await anyio.to_thread.run_sync(lambda: self.service.list(active_only=True))
        for info in rollouts:
            if info.status != s.RUNNING:
                continue
            try:
                await self.advance(info)
            except Exception:
                log.exception(
                    "rollout %s of %s: the controller could not act", info.id, info.endpoint
                )

    async def advance(self, info: RolloutInfo) -> None:
        now = self.clock()
        if info.phase == s.LOADING:
            await self._loading(info, now)
        elif info.phase == s.STEP:
            await self._step(info, now)
        elif info.phase == s.PREVIEW:
            await self._preview(info, now)
        elif info.phase == s.SWITCHED:
            await self._switched(info, now)

    async def _loading(self, info: RolloutInfo, now: datetime) -> None:
        _old, new, _others = routes_of(info)
        try:
            ready = await self.probe(info.endpoint, new)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            await self._apply(
                info,
                rollback_change(info, now, f"smoke request to {info.to_ref} failed: {message}"),
            )
            return
        if not ready:
            if _elapsed(info, now) > LOAD_TIMEOUT_SECONDS:
                reason = f"{info.to_ref} was not loaded within {LOAD_TIMEOUT_SECONDS:g} s"
                await self._apply(info, rollback_change(info, now, reason))
            return
        if info.strategy == s.CANARY:
            baseline = await self._totals(info)
            weight = info.config.steps[0]
            message = f"{info.to_ref} answered its smoke request; {weight:g}% of traffic"
            await self._apply(info, step_change(info, now, 0, message, _dump(baseline)))
        else:
            state = {**info.state, "phase_started_at": now.isoformat()}
            message = (
                f"green {info.to_ref} answered its smoke request; preview it with "
                "X-Berth-Route: green"
            )
            await self._apply(info, Change(s.RUNNING, s.PREVIEW, state, "preview", message))

    async def _step(self, info: RolloutInfo, now: datetime) -> None:
        if "baseline" not in info.state:
            # Resumed: what happened while paused does not count; the step starts from here.
            state = {**info.state, "baseline": _dump(await self._totals(info))}
            await anyio.to_thread.run_sync(
                lambda: self.service.record(info, "baseline", "step restarted", state=state)
            )
            return
        verdict, stable = await self._judge(info, stable=True)
        index = int(info.state.get("step", 0))
        steps = info.config.steps
        if verdict.decision == "fail":
            reason = f"canary failed at {steps[index]:g}%: " + "; ".join(verdict.reasons)
            await self._apply(info, rollback_change(info, now, reason, detail=verdict.to_dict()))
            return
        if verdict.decision == "pass" and _elapsed(info, now) >= info.config.interval_seconds:
            if index + 1 >= len(steps):
                message = f"{info.to_ref} passed at 100%: promoted"
                await self._apply(
                    info, promotion_change(info, now, message, detail=verdict.to_dict())
                )
                return
            message = f"passed at {steps[index]:g}%; now {steps[index + 1]:g}%"
            baseline = await self._totals(info)
            change = step_change(
                info,
                now,
                index + 1,
                message,
                _dump(baseline),
                verdict.to_dict(),
                stable_before=_stable_before(info, stable),
            )
            await self._apply(info, change)
            return
        await self._note(info, verdict)

    async def _preview(self, info: RolloutInfo, now: datetime) -> None:
        config = info.config
        if config.switch == "auto" and _elapsed(info, now) >= config.preview_seconds:
            baseline = await self._totals(info)
            message = f"switched: green {info.to_ref} takes all traffic, blue {info.from_ref} stays loaded"
            await self._apply(info, switch_change(info, now, message, _dump(baseline)))

    async def _switched(self, info: RolloutInfo, now: datetime) -> None:
        criteria = info.config.criteria
        if (
            criteria.max_error_rate is not None
            or criteria.max_p99_ms is not None
            or criteria.min_accuracy is not None
        ):
            verdict, _blue = await self._judge(info, stable=False)
            if verdict.decision == "fail":
                reason = "green failed after the switch: " + "; ".join(verdict.reasons)
                await self._apply(
                    info, rollback_change(info, now, reason, detail=verdict.to_dict())
                )
                return
            await self._note(info, verdict)
        after = info.config.finalize_after_seconds
        if after is not None and _elapsed(info, now) >= after:
            message = f"finalized after {after:g} s: blue {info.from_ref} unloaded"
            await self._apply(info, promotion_change(info, now, message))

    # evidence ----------------------------------------------------------------------------

    async def _totals(self, info: RolloutInfo) -> Totals:
        source = self.sources(info.config.metrics_source)
        return await anyio.to_thread.run_sync(source.totals, info.endpoint)

    async def _judge(self, info: RolloutInfo, stable: bool) -> tuple[Verdict, RouteWindow]:
        """The verdict on the candidate's window since the step began, and stable's window."""
        totals = await self._totals(info)
        baseline = {k: RouteWindow.from_dict(v) for k, v in info.state.get("baseline", {}).items()}
        old, new, _others = routes_of(info)

        def window(route: RouteSpec) -> RouteWindow:
            now = totals.get((route.model, route.version), RouteWindow())
            return now.minus(baseline.get(route.ref, RouteWindow()))

        candidate = window(new)
        if info.config.criteria.min_accuracy is not None:
            since = datetime.fromisoformat(info.state["phase_started_at"])
            candidate = await anyio.to_thread.run_sync(
                lambda: with_outcomes(
                    self.db, candidate, info.endpoint, new.model, new.version, since
                )
            )
        before = info.state.get("stable_before")
        old_window = window(old)
        verdict = judge_canary(
            old_window if stable else None,
            candidate,
            info.config.criteria,
            RouteWindow.from_dict(before) if isinstance(before, dict) else None,
        )
        return verdict, old_window

    async def _note(self, info: RolloutInfo, verdict: Verdict) -> None:
        """Keep the latest verdict in the state; an event only when the decision or a check's
        status changes. While traffic trickles in, the counts in the reasons change at every
        tick: an event each time would bury the history (and `berth rollout wait`) in them."""
        summary = {
            "decision": verdict.decision,
            "reasons": verdict.reasons,
            "checks": {check.name: check.status for check in verdict.checks},
        }
        last = info.state.get("last_verdict")
        if last == summary:
            return
        state = {**info.state, "last_verdict": summary}
        if isinstance(last, dict) and all(
            last.get(k) == summary[k] for k in ("decision", "checks")
        ):
            await anyio.to_thread.run_sync(lambda: self.service.keep_state(info, state))
            return
        message = verdict.decision + (": " + "; ".join(verdict.reasons) if verdict.reasons else "")
        await anyio.to_thread.run_sync(
            lambda: self.service.record(info, "analysis", message, verdict.to_dict(), state)
        )

    async def _apply(self, info: RolloutInfo, change: Change) -> None:
        applied = await anyio.to_thread.run_sync(self.service.apply, info, change)
        if applied:
            log.info("rollout %s of %s: %s", info.id, info.endpoint, change.message)


def _stable_before(info: RolloutInfo, stable: RouteWindow) -> dict[str, Any] | None:
    """Stable's window for the steps to come: this step's when it holds enough latencies to
    compare with, else the one kept from an earlier step (at 100% stable gets no traffic)."""
    if info.config.criteria.enough_latencies(stable):
        return stable.to_dict()
    kept = info.state.get("stable_before")
    return kept if isinstance(kept, dict) else None


def _elapsed(info: RolloutInfo, now: datetime) -> float:
    started = info.state.get("phase_started_at")
    begin = datetime.fromisoformat(started) if started else info.updated_at
    return (now - begin).total_seconds()


def _dump(totals: Totals) -> dict[str, Any]:
    return {f"{model}:{version}": w.to_dict() for (model, version), w in totals.items()}
