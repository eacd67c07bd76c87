"""A/B experiments: split an endpoint between variants with sticky assignment, and report.

Starting one replaces the endpoint's routes with one `variant` route per variant (the label is
the variant's name) and sets the sticky key, so each user keeps one variant while the weights
hold. Traffic (requests, errors, latency) counts from the route totals at the start; outcomes
come from feedback on the variants' predictions since the start: correct or not (`accuracy`), or
the numeric value posted as the actual outcome (`outcome`, e.g. revenue). Concluding makes the
winner the endpoint's one stable route and restores the endpoint's previous sticky setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.errors import InvalidInput, NotFound
from berth.registry.endpoints import (
    STABLE,
    RouteSpec,
    endpoint_row,
    parse_sticky,
    refuse_when_busy,
    replace_routes,
    route_spec,
)
from berth.registry.references import check_name, parse_reference
from berth.registry.service import Registry
from berth.rollouts.evidence import metrics_source, with_outcomes
from berth.rollouts.experiment_analysis import ExperimentReport, VariantSample, experiment_report
from berth.rollouts.names import EXPERIMENT_METRICS
from berth.serving.route_window import RouteWindow
from berth.store import audit
from berth.store.tables import ExperimentRow

METRICS = EXPERIMENT_METRICS
RUNNING, CONCLUDED = "running", "concluded"
_VARIANT = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})=(?P<ref>.+):(?P<weight>[0-9.]+)")


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    version: int
    weight: float

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "weight": self.weight,
        }


@dataclass(frozen=True)
class ExperimentInfo:
    id: int
    endpoint: str
    status: str
    variants: tuple[Variant, ...]
    sticky: str
    metric: str
    alpha: float
    min_samples: int
    winner: str | None
    actor: str
    started_at: datetime
    concluded_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "status": self.status,
            "variants": [v.to_dict() for v in self.variants],
            "sticky": self.sticky,
            "metric": self.metric,
            "alpha": self.alpha,
            "min_samples": self.min_samples,
            "winner": self.winner,
            "actor": self.actor,
            "started_at": self.started_at.isoformat(),
            "concluded_at": self.concluded_at.isoformat() if self.concluded_at else None,
        }


def parse_variant(text: str) -> tuple[str, str, float]:
    """`a=churn:2:50` → ("a", "churn:2", 50.0)."""
    found = _VARIANT.fullmatch(text.strip())
    if found is None:
        raise InvalidInput(
            f"variant '{text}' is not valid; write NAME=MODEL:VERSION:WEIGHT, e.g. a=churn:2:50"
        )
    parse_reference(found["ref"])
    try:
        weight = float(found["weight"])
    except ValueError as exc:
        raise InvalidInput(f"variant '{text}': the weight is not a number") from exc
    return found["name"], found["ref"], weight


class ExperimentService:
    def __init__(self, registry: Registry, clock: Callable[[], datetime] | None = None) -> None:
        self.registry = registry
        self.db = registry.db
        self.clock = clock or (lambda: datetime.now(UTC))

    def start(
        self,
        endpoint: str,
        variants: Sequence[str],
        sticky: str = "header:X-User-ID",
        metric: str = "accuracy",
        alpha: float = 0.05,
        min_samples: int = 100,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> ExperimentInfo:
        check_name("endpoint", endpoint)
        if metric not in METRICS:
            raise InvalidInput(f"--metric must be one of {', '.join(METRICS)}, not '{metric}'")
        if not 0 < alpha < 0.5:
            raise InvalidInput(f"--alpha {alpha} is not a significance level; use e.g. 0.05")
        if min_samples < 1:
            raise InvalidInput("--min-samples must be at least 1")
        parsed_sticky = parse_sticky(sticky)
        if parsed_sticky is None:
            raise InvalidInput(
                "an experiment needs a sticky key so each user keeps one variant; pass e.g. "
                "--sticky header:X-User-ID"
            )
        chosen = self._variants(variants)
        event = audit.event(
            actor,
            address,
            "experiment.start",
            endpoint,
            {"variants": [v.to_dict() for v in chosen]},
        )
        with audit.AuditLog(self.db).refusals(event), self.db.session(write=True) as session:
            row = endpoint_row(session, endpoint, lock=True)
            refuse_when_busy(session, endpoint, "start an experiment")
            totals = metrics_source(self.db, None).totals(endpoint)
            experiment = ExperimentRow(
                endpoint=endpoint,
                status=RUNNING,
                config={
                    "variants": [v.to_dict() for v in chosen],
                    "sticky": str(parsed_sticky),
                    "previous_sticky": row.sticky,
                    "previous_routes": [route_spec(r).to_dict() for r in row.routes],
                    "metric": metric,
                    "alpha": alpha,
                    "min_samples": min_samples,
                },
                baseline={f"{m}:{v}": w.to_dict() for (m, v), w in totals.items()},
                actor=event.actor,
                started_at=self.clock(),
            )
            session.add(experiment)
            session.flush()
            row.sticky = str(parsed_sticky)
            # A shadow keeps mirroring through the experiment (and after it).
            routes = [RouteSpec(v.name, "variant", v.model, v.version, v.weight) for v in chosen]
            routes += [route_spec(r) for r in row.routes if r.role == "shadow"]
            summary = ", ".join(f"{v.name}={v.ref} {v.weight:g}%" for v in chosen)
            replace_routes(
                session,
                row,
                routes,
                f"experiment {experiment.id} started: {summary}",
                event.actor,
                audit_event=event,
                experiment_id=experiment.id,
            )
            session.flush()
            return _info(experiment)

    def _variants(self, texts: Sequence[str]) -> list[Variant]:
        if len(texts) < 2:
            raise InvalidInput(
                "an experiment needs at least two variants, e.g. --variant a=churn:2:50 "
                "--variant b=churn:3:50"
            )
        found: list[Variant] = []
        for text in texts:
            name, ref, weight = parse_variant(text)
            info = self.registry.resolve(ref)
            found.append(Variant(name, info.model, info.number, weight))
        if len({v.name for v in found}) != len(found):
            raise InvalidInput("variant names must differ (a, b, ...)")
        if len({v.ref for v in found}) != len(found):
            raise InvalidInput(
                "each variant needs its own version: traffic and outcomes are counted per "
                "version, so two variants on one version could not be told apart"
            )
        total = sum(v.weight for v in found)
        if abs(total - 100) > 1e-6:
            raise InvalidInput(f"variant weights must add up to 100; they add up to {total:g}")
        return found

    def get(self, endpoint: str) -> ExperimentInfo:
        with self.db.session() as session:
            return _info(_latest(session, endpoint))

    def list(self, endpoint: str | None = None) -> list[ExperimentInfo]:
        with self.db.session() as session:
            query = select(ExperimentRow).order_by(ExperimentRow.id.desc()).limit(200)
            if endpoint:
                query = query.where(ExperimentRow.endpoint == endpoint)
            return [_info(r) for r in session.scalars(query)]

    def report(
        self, endpoint: str, metrics: str | None = None
    ) -> tuple[ExperimentInfo, ExperimentReport]:
        """Per variant since the start: traffic, outcomes, and the significance test."""
        with self.db.session() as session:
            row = _latest(session, endpoint)
            info = _info(row)
            baseline = {k: RouteWindow.from_dict(v) for k, v in row.baseline.items()}
        totals = metrics_source(self.db, metrics).totals(endpoint)
        until = info.concluded_at
        samples = []
        for variant in info.variants:
            window = totals.get((variant.model, variant.version), RouteWindow())
            window = window.minus(baseline.get(variant.ref, RouteWindow()))
            window = with_outcomes(
                self.db, window, endpoint, variant.model, variant.version, info.started_at, until
            )
            samples.append(VariantSample(variant.name, variant.ref, window))
        report = experiment_report(samples, info.metric, info.alpha, info.min_samples)  # type: ignore[arg-type]
        return info, report

    def conclude(
        self, endpoint: str, winner: str, *, actor: str | None = None, address: str | None = None
    ) -> ExperimentInfo:
        check_name("endpoint", endpoint)
        event = audit.event(actor, address, "experiment.conclude", endpoint, {"winner": winner})
        with audit.AuditLog(self.db).refusals(event), self.db.session(write=True) as session:
            experiment = session.scalars(
                select(ExperimentRow)
                .where(ExperimentRow.endpoint == endpoint, ExperimentRow.status == RUNNING)
                .with_for_update()
            ).first()
            if experiment is None:
                raise NotFound(
                    f"endpoint '{endpoint}' runs no experiment; start one with "
                    f"`berth experiments start {endpoint} --variant a=MODEL:V:50 --variant b=MODEL:W:50`"
                )
            info = _info(experiment)
            chosen = next((v for v in info.variants if v.name == winner), None)
            if chosen is None:
                names = ", ".join(v.name for v in info.variants)
                raise InvalidInput(
                    f"no variant '{winner}' in experiment {info.id}; pick one of {names}"
                )
            now = self.clock()
            experiment.status, experiment.winner, experiment.concluded_at = CONCLUDED, winner, now
            row = endpoint_row(session, endpoint, lock=True)
            row.sticky = experiment.config.get("previous_sticky", "")
            routes = [RouteSpec(STABLE, STABLE, chosen.model, chosen.version, 100.0)]
            routes += [route_spec(r) for r in row.routes if r.role == "shadow"]
            replace_routes(
                session,
                row,
                routes,
                f"experiment {info.id} concluded: {winner} ({chosen.ref}) takes all traffic",
                event.actor,
                audit_event=event,
                experiment_id=info.id,
            )
            session.flush()
            return _info(experiment)


def _latest(session: Session, endpoint: str) -> ExperimentRow:
    check_name("endpoint", endpoint)
    row = session.scalars(
        select(ExperimentRow)
        .where(ExperimentRow.endpoint == endpoint)
        .order_by((ExperimentRow.status == RUNNING).desc(), ExperimentRow.id.desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotFound(
            f"endpoint '{endpoint}' has had no experiment; start one with `berth experiments "
            f"start {endpoint} --variant a=MODEL:V:50 --variant b=MODEL:W:50`"
        )
    return row


def _info(row: ExperimentRow) -> ExperimentInfo:
    config = row.config
    return ExperimentInfo(
        id=row.id,
        endpoint=row.endpoint,
        status=row.status,
        variants=tuple(
            Variant(v["name"], v["model"], int(v["version"]), float(v["weight"]))
            for v in config["variants"]
        ),
        sticky=config.get("sticky", ""),
        metric=config.get("metric", "accuracy"),
        alpha=float(config.get("alpha", 0.05)),
        min_samples=int(config.get("min_samples", 100)),
        winner=row.winner,
        actor=row.actor,
        started_at=row.started_at,
        concluded_at=row.concluded_at,
    )
