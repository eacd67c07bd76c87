"""Rollouts: start one, act on it by hand, read its state and history.

The CLI and the admin API call these functions; the controller (controller.py) moves running
rollouts along by itself. Every change of routes goes through `apply`, which locks the rollout
row, checks that nobody moved it meanwhile, and writes the rollout, the routes, the history entry
and an event in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from berth.errors import Conflict, InvalidInput, NotFound
from berth.ops.gate_config import GateConfig
from berth.ops.gate_report import GateReport
from berth.ops.validation import run_gates
from berth.registry.endpoints import (
    STABLE,
    EndpointInfo,
    EndpointService,
    RouteSpec,
    endpoint_row,
    refuse_when_busy,
    replace_routes,
    spec_for,
)
from berth.registry.references import check_name
from berth.registry.service import Registry
from berth.rollouts import strategies as s
from berth.rollouts.requests import RolloutRequest
from berth.store import audit
from berth.store.tables import RolloutEventRow, RolloutRow

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class RolloutEvent:
    at: datetime
    kind: str
    message: str
    detail: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "message": self.message,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class RolloutInfo:
    id: int
    endpoint: str
    strategy: str
    status: str
    phase: str
    from_ref: str
    to_ref: str
    config: s.RolloutConfig
    state: dict[str, Any]
    reason: str
    actor: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    events: tuple[RolloutEvent, ...] = ()

    @property
    def active(self) -> bool:
        return self.status in s.ACTIVE

    @property
    def weight(self) -> float:
        """The candidate's share of traffic now, in percent."""
        return float(self.state.get("weight", 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "strategy": self.strategy,
            "status": self.status,
            "phase": self.phase,
            "from": self.from_ref,
            "to": self.to_ref,
            "weight": self.weight,
            "config": self.config.to_dict(),
            "state": self.state,
            "reason": self.reason,
            "actor": self.actor,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "events": [e.to_dict() for e in self.events],
        }


@dataclass(frozen=True)
class StartResult:
    rollout: RolloutInfo
    gates: GateReport | None


@dataclass(frozen=True)
class Change:
    """What `apply` writes: the rollout's new status, phase and state, and maybe new routes."""

    status: str
    phase: str
    state: dict[str, Any]
    event: str
    message: str
    routes: Sequence[RouteSpec] | None = None
    detail: dict[str, Any] | None = None
    reason: str | None = None


class RolloutService:
    def __init__(self, registry: Registry, clock: Clock | None = None) -> None:
        self.registry = registry
        self.db = registry.db
        self.clock = clock or (lambda: datetime.now(UTC))

    # starting ----------------------------------------------------------------------------

    def start_from(
        self, request: RolloutRequest, *, actor: str | None = None, address: str | None = None
    ) -> StartResult:
        """`start` as asked by `berth rollout start` or `POST /api/v1/rollouts`.

        `no_regression` gates compare with the version the endpoint serves now, looked up here.
        """
        gates = None
        if request.gates is not None:
            current = None
            if request.gates.no_regression:
                current = EndpointService(self.registry).get(request.endpoint).primary.ref
            gates = request.gates.config(current)
        return self.start(
            request.endpoint,
            request.to,
            request.strategy,
            request.config(),
            gates,
            actor=actor,
            address=address,
        )

    def start(
        self,
        endpoint: str,
        to: str,
        strategy: str,
        config: s.RolloutConfig | None = None,
        gates: GateConfig | None = None,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> StartResult:
        """Check the candidate with the gates, then add it to the endpoint at 0%.

        A candidate that fails a gate is recorded as a failed rollout and never touches the
        routes. The controller (in `berth serve`) loads it, smoke-tests it and goes on.
        """
        check_name("endpoint", endpoint)
        if strategy not in s.STRATEGIES:
            raise InvalidInput(
                f"strategy '{strategy}' is not known; use {' or '.join(s.STRATEGIES)}"
            )
        config = config or s.RolloutConfig()
        target = self.registry.resolve(to)
        event = audit.event(
            actor, address, "rollout.start", endpoint, {"to": target.ref, "strategy": strategy}
        )
        with audit.AuditLog(self.db).refusals(event):
            current = self._current(endpoint)
            old = current.primary
            if (old.model, old.version) == (target.model, target.number):
                raise Conflict(
                    f"endpoint '{endpoint}' already serves {target.ref}; register a new version "
                    "and roll out to that"
                )
            report = None
            if gates is not None and gates.any():
                report = run_gates(self.registry, target.ref, gates)
                config = _with_gates(config, gates)
            others = _others(current)
            with self.db.session(write=True) as session:
                row = endpoint_row(session, endpoint, lock=True)
                refuse_when_busy(session, endpoint, "start a rollout")
                now = self.clock()
                rollout = RolloutRow(
                    endpoint=endpoint,
                    strategy=strategy,
                    status=s.RUNNING,
                    phase=s.LOADING,
                    from_model=old.model,
                    from_version=old.version,
                    to_model=target.model,
                    to_version=target.number,
                    config=config.to_dict(),
                    state={
                        "weight": 0.0,
                        "phase_started_at": now.isoformat(),
                        "others": [r.to_dict() for r in others],
                    },
                    actor=event.actor,
                    created_at=now,
                    updated_at=now,
                )
                session.add(rollout)
                session.flush()
                new = spec_for(target, s.new_route_label(strategy), strategy, 0.0)
                if report is not None and not report.passed:
                    failed = "; ".join(f"{c.name}: {c.detail}" for c in report.failures())
                    rollout.status, rollout.phase, rollout.finished_at = s.FAILED, "gates", now
                    rollout.reason = f"validation gates failed: {failed}"
                    rollout.state = {"weight": 0.0, "gates": report.to_dict()}
                    _event(session, rollout, now, "gates", rollout.reason, report.to_dict())
                else:
                    routes = s.candidate_routes(strategy, old, new, 0.0, others)
                    message = f"rollout {rollout.id}: loading {target.ref} at 0%"
                    replace_routes(
                        session,
                        row,
                        routes,
                        message,
                        event.actor,
                        audit_event=None,
                        rollout_id=rollout.id,
                    )
                    if report is not None:
                        _event(
                            session,
                            rollout,
                            now,
                            "gates",
                            "validation gates passed",
                            report.to_dict(),
                        )
                    _event(session, rollout, now, "started", message)
                audit.add(session, event)
                session.flush()
                return StartResult(_info(rollout, session), report)

    def _current(self, endpoint: str) -> EndpointInfo:
        return EndpointService(self.registry).get(endpoint)

    # reading -----------------------------------------------------------------------------

    def get(self, rollout_id: int) -> RolloutInfo:
        with self.db.session() as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}; list them with `berth rollout list`")
            return _info(row, session, events=True)

    def progress(self, rollout_id: int) -> tuple[str, int]:
        """The rollout's status and how many events it has: two small reads, for a client
        that waits for the rollout to change (every change of status records an event)."""
        with self.db.session() as session:
            status = session.scalar(select(RolloutRow.status).where(RolloutRow.id == rollout_id))
            if status is None:
                raise NotFound(f"no rollout {rollout_id}; list them with `berth rollout list`")
            events = session.scalar(
                select(func.count())
                .select_from(RolloutEventRow)
                .where(RolloutEventRow.rollout_id == rollout_id)
            )
            return status, int(events or 0)

    def latest(self, endpoint: str) -> RolloutInfo:
        """The endpoint's active rollout, else its most recent one."""
        check_name("endpoint", endpoint)
        with self.db.session() as session:
            row = session.scalars(
                select(RolloutRow)
                .where(RolloutRow.endpoint == endpoint)
                .order_by(RolloutRow.status.in_(s.ACTIVE).desc(), RolloutRow.id.desc())
                .limit(1)
            ).first()
            if row is None:
                raise NotFound(
                    f"endpoint '{endpoint}' has no rollouts; start one with "
                    f"`berth rollout start {endpoint} --to MODEL:VERSION`"
                )
            return _info(row, session, events=True)

    def list(self, endpoint: str | None = None, active_only: bool = False) -> list[RolloutInfo]:
        with self.db.session() as session:
            query = select(RolloutRow).order_by(RolloutRow.id.desc()).limit(200)
            if endpoint:
                query = query.where(RolloutRow.endpoint == endpoint)
            if active_only:
                query = query.where(RolloutRow.status.in_(s.ACTIVE))
            return [_info(r, session) for r in session.scalars(query)]

    # acting by hand ----------------------------------------------------------------------

    def pause(
        self,
        endpoint: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        def change(info: RolloutInfo, _now: datetime) -> Change:
            if info.status == s.PAUSED:
                raise Conflict(
                    f"rollout {info.id} is already paused; `berth rollout resume {endpoint}`"
                )
            return Change(s.PAUSED, info.phase, info.state, "paused", "paused by hand")

        return self._by_hand(endpoint, "rollout.pause", change, actor, address, rollout_id)

    def resume(
        self,
        endpoint: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        def change(info: RolloutInfo, now: datetime) -> Change:
            if info.status != s.PAUSED:
                raise Conflict(f"rollout {info.id} is not paused")
            # Evidence gathered before the pause is stale: the step starts over.
            state = {**info.state, "phase_started_at": now.isoformat()}
            state.pop("baseline", None)
            return Change(s.RUNNING, info.phase, state, "resumed", "resumed by hand")

        return self._by_hand(endpoint, "rollout.resume", change, actor, address, rollout_id)

    def promote(
        self,
        endpoint: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        """Canary: straight to 100% and done. Blue-green: switch (before it) or finalize."""

        def change(info: RolloutInfo, now: datetime) -> Change:
            if info.strategy == s.BLUE_GREEN and info.phase in (s.LOADING, s.PREVIEW):
                return switch_change(info, now, "switched by hand")
            return promotion_change(info, now, "promoted by hand")

        return self._by_hand(endpoint, "rollout.promote", change, actor, address, rollout_id)

    def finalize(
        self,
        endpoint: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        def change(info: RolloutInfo, now: datetime) -> Change:
            if info.strategy != s.BLUE_GREEN or info.phase != s.SWITCHED:
                raise Conflict(
                    f"rollout {info.id} is {info.strategy} in phase {info.phase}; finalize "
                    f"applies to a blue-green rollout after its switch (use `berth rollout "
                    f"promote {endpoint}` to switch)"
                )
            return promotion_change(info, now, "finalized by hand: blue unloaded")

        return self._by_hand(endpoint, "rollout.finalize", change, actor, address, rollout_id)

    def rollback(
        self,
        endpoint: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        reason: str = "rolled back by hand",
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        def change(info: RolloutInfo, now: datetime) -> Change:
            return rollback_change(info, now, reason, status=s.ROLLED_BACK)

        return self._by_hand(endpoint, "rollout.rollback", change, actor, address, rollout_id)

    def abort(
        self,
        endpoint: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        def change(info: RolloutInfo, now: datetime) -> Change:
            return rollback_change(info, now, "aborted by hand", status=s.ABORTED)

        return self._by_hand(endpoint, "rollout.abort", change, actor, address, rollout_id)

    def _by_hand(
        self,
        endpoint: str,
        action: str,
        change: Callable[[RolloutInfo, datetime], Change],
        actor: str | None,
        address: str | None,
        rollout_id: int | None = None,
    ) -> RolloutInfo:
        """`change` applied to the endpoint's rollout in progress; with `rollout_id`, only if
        that is the one (a console page confirmed for it must not act on a newer one)."""
        check_name("endpoint", endpoint)
        event = audit.event(actor, address, action, endpoint)
        with audit.AuditLog(self.db).refusals(event), self.db.session(write=True) as session:
            row = session.scalars(
                select(RolloutRow)
                .where(RolloutRow.endpoint == endpoint, RolloutRow.status.in_(s.ACTIVE))
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(
                    f"endpoint '{endpoint}' has no rollout in progress; see "
                    f"`berth rollout status {endpoint}`"
                )
            if rollout_id is not None and row.id != rollout_id:
                raise Conflict(
                    f"rollout {rollout_id} is no longer in progress on '{endpoint}' (rollout "
                    f"{row.id} is); look at it before acting"
                )
            info = _info(row, session)
            applied = change(info, self.clock())
            write(session, row, applied, event.actor, self.clock())
            audit.add(session, event)
            session.flush()
            return _info(row, session, events=True)

    # used by the controller ----------------------------------------------------------------

    def apply(self, info: RolloutInfo, change: Change, actor: str = "controller") -> bool:
        """Write `change` unless the rollout moved since `info` was read (then False)."""
        with self.db.session(write=True) as session:
            row = session.get(RolloutRow, info.id, with_for_update=True)
            if row is None or row.updated_at != info.updated_at or row.status != info.status:
                return False
            write(session, row, change, actor, self.clock())
            return True

    def record(
        self,
        info: RolloutInfo,
        kind: str,
        message: str,
        detail: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        """An event without a change of phase (e.g. still waiting for traffic)."""
        with self.db.session(write=True) as session:
            row = session.get(RolloutRow, info.id, with_for_update=True)
            if row is None or row.updated_at != info.updated_at:
                return
            _event(session, row, self.clock(), kind, message, detail)
            if state is not None:
                row.state = state

    def keep_state(self, info: RolloutInfo, state: dict[str, Any]) -> None:
        """New state without an event (e.g. newer counts for a verdict that did not change)."""
        with self.db.session(write=True) as session:
            row = session.get(RolloutRow, info.id, with_for_update=True)
            if row is None or row.updated_at != info.updated_at:
                return
            row.state = state


# changes -------------------------------------------------------------------------------


def routes_of(info: RolloutInfo) -> tuple[RouteSpec, RouteSpec, list[RouteSpec]]:
    """The old and new versions as routes, and the endpoint's other routes (its shadow)."""
    old = RouteSpec(STABLE, STABLE, *_split(info.from_ref), 100.0)
    new = RouteSpec(s.new_route_label(info.strategy), info.strategy, *_split(info.to_ref), 0.0)
    others = [RouteSpec.from_dict(r) for r in info.state.get("others", [])]
    return old, new, others


def step_change(
    info: RolloutInfo,
    now: datetime,
    index: int,
    message: str,
    baseline: dict[str, Any],
    detail: dict[str, Any] | None = None,
    stable_before: dict[str, Any] | None = None,
) -> Change:
    """The candidate at steps[index]%. `stable_before`: stable's window (RouteWindow.to_dict)
    to compare latency with when the new step gives stable too little traffic."""
    old, new, others = routes_of(info)
    weight = info.config.steps[index]
    state = {
        **info.state,
        "step": index,
        "weight": weight,
        "phase_started_at": now.isoformat(),
        "baseline": baseline,
    }
    if stable_before is not None:
        state["stable_before"] = stable_before
    return Change(
        s.RUNNING,
        s.STEP,
        state,
        "step",
        message,
        routes=s.candidate_routes(info.strategy, old, new, weight, others),
        detail=detail,
    )


def switch_change(
    info: RolloutInfo, now: datetime, message: str, baseline: dict[str, Any] | None = None
) -> Change:
    old, new, others = routes_of(info)
    state = {**info.state, "weight": 100.0, "phase_started_at": now.isoformat()}
    if baseline is not None:
        state["baseline"] = baseline
    return Change(
        s.RUNNING,
        s.SWITCHED,
        state,
        "switched",
        message,
        routes=s.switched_routes(old, new, others),
    )


def promotion_change(
    info: RolloutInfo, now: datetime, message: str, detail: dict[str, Any] | None = None
) -> Change:
    _old, new, others = routes_of(info)
    state = {**info.state, "weight": 100.0}
    return Change(
        s.PROMOTED,
        "done",
        state,
        "promoted",
        message,
        routes=s.final_routes(new, others),
        detail=detail,
        reason=message,
    )


def rollback_change(
    info: RolloutInfo,
    now: datetime,
    reason: str,
    status: str = s.ROLLED_BACK,
    detail: dict[str, Any] | None = None,
) -> Change:
    old, _new, others = routes_of(info)
    state = {**info.state, "weight": 0.0}
    return Change(
        status,
        "done",
        state,
        status,
        reason,
        routes=s.final_routes(old, others),
        detail=detail,
        reason=reason,
    )


def write(session: Session, row: RolloutRow, change: Change, actor: str, now: datetime) -> None:
    row.status, row.phase, row.state = change.status, change.phase, change.state
    row.updated_at = now
    if change.reason is not None:
        row.reason = change.reason
    if change.status not in s.ACTIVE:
        row.finished_at = now
    if change.routes is not None:
        endpoint = endpoint_row(session, row.endpoint, lock=True)
        replace_routes(
            session,
            endpoint,
            change.routes,
            f"rollout {row.id}: {change.message}",
            actor,
            audit_event=None,
            rollout_id=row.id,
        )
    _event(session, row, now, change.event, change.message, change.detail)


def _event(
    session: Session,
    row: RolloutRow,
    at: datetime,
    kind: str,
    message: str,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        RolloutEventRow(rollout_id=row.id, at=at, kind=kind, message=message, detail=detail)
    )


def _others(endpoint: EndpointInfo) -> list[RouteSpec]:
    return [r for r in endpoint.routes if r.role == "shadow"]


def _with_gates(config: s.RolloutConfig, gates: GateConfig) -> s.RolloutConfig:
    return replace(config, gates=gates.to_dict())


def _split(ref: str) -> tuple[str, int]:
    model, _, number = ref.rpartition(":")
    return model, int(number)


def _info(row: RolloutRow, session: Session, events: bool = False) -> RolloutInfo:
    found: tuple[RolloutEvent, ...] = ()
    if events:
        rows = session.scalars(
            select(RolloutEventRow)
            .where(RolloutEventRow.rollout_id == row.id)
            .order_by(RolloutEventRow.id)
        )
        found = tuple(RolloutEvent(e.at, e.kind, e.message, e.detail) for e in rows)
    return RolloutInfo(
        id=row.id,
        endpoint=row.endpoint,
        strategy=row.strategy,
        status=row.status,
        phase=row.phase,
        from_ref=f"{row.from_model}:{row.from_version}",
        to_ref=f"{row.to_model}:{row.to_version}",
        config=s.RolloutConfig.from_dict(row.config),
        state=dict(row.state or {}),
        reason=row.reason,
        actor=row.actor,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        events=found,
    )
