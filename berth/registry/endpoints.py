"""Endpoints and their routes, stored in the registry database with a history of every change.

An endpoint is the stable name clients call; each route is one version with a role and a share
of the traffic. Every change replaces the endpoint's routes in one transaction, appends the new
routes to the history with who changed them and why, and raises the `endpoints` revision that
servers poll (they re-read the table only when that number moved).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from berth.errors import Conflict, InvalidInput, NotFound
from berth.registry import revisions
from berth.registry.references import check_name, parse_reference
from berth.registry.roles import ROLES as ROLES
from berth.registry.roles import SERVING_ROLES as SERVING_ROLES
from berth.registry.roles import SHADOW as SHADOW
from berth.registry.roles import STABLE as STABLE
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.store import audit
from berth.store.db import Database
from berth.store.tables import (
    EndpointChangeRow,
    EndpointRow,
    ExperimentRow,
    ModelRow,
    RolloutRow,
    RouteRow,
    VersionRow,
    utcnow,
)

TOPIC = revisions.ENDPOINTS
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STICKY = re.compile(r"(?P<kind>header|cookie|field):(?P<name>[A-Za-z0-9._-]{1,150})")
ACTIVE_ROLLOUT = ("running", "paused")
"""Rollout statuses that own an endpoint's routes (strategies.ACTIVE is this tuple)."""


@dataclass(frozen=True)
class RouteSpec:
    """A route as asked for: a label, a role, a version and a weight (percent)."""

    label: str
    role: str
    model: str
    version: int
    weight: float

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "role": self.role,
            "model": self.model,
            "version": self.version,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> RouteSpec:
        return cls(
            label=str(document["label"]),
            role=str(document["role"]),
            model=str(document["model"]),
            version=int(document["version"]),
            weight=float(document["weight"]),
        )


@dataclass(frozen=True)
class Sticky:
    """Where a request's sticky key is read from."""

    kind: str
    """header, cookie or field (a top-level field of the JSON body)."""
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_sticky(text: str | None) -> Sticky | None:
    if not text:
        return None
    found = _STICKY.fullmatch(text.strip())
    if found is None:
        raise InvalidInput(
            f"sticky key '{text}' is not valid; write header:NAME (e.g. header:X-User-ID), "
            "cookie:NAME or field:NAME (a top-level field of the JSON body)"
        )
    kind, name = found["kind"], found["name"]
    return Sticky(kind, name.lower() if kind == "header" else name)


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    sticky: Sticky | None
    description: str
    routes: tuple[RouteSpec, ...]
    created_at: datetime
    updated_at: datetime

    def route(self, label: str) -> RouteSpec | None:
        return next((r for r in self.routes if r.label == label), None)

    def with_role(self, role: str) -> RouteSpec | None:
        return next((r for r in self.routes if r.role == role), None)

    @property
    def primary(self) -> RouteSpec:
        """The route whose version describes the endpoint (v2 metadata)."""
        return primary_route(self.routes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sticky": str(self.sticky) if self.sticky else None,
            "description": self.description,
            "routes": [r.to_dict() for r in self.routes],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def primary_route(routes: Iterable[RouteSpec]) -> RouteSpec:
    """Of an endpoint's routes, the stable one, else the heaviest serving one."""
    serving = [r for r in routes if r.role in SERVING_ROLES]
    stable = next((r for r in serving if r.role == STABLE), None)
    return stable or max(serving, key=lambda r: r.weight)


@dataclass(frozen=True)
class EndpointChange:
    id: int
    endpoint: str
    at: datetime
    actor: str
    reason: str
    routes: tuple[RouteSpec, ...]
    rollout_id: int | None
    experiment_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
            "routes": [r.to_dict() for r in self.routes],
            "rollout_id": self.rollout_id,
            "experiment_id": self.experiment_id,
        }


class EndpointService:
    """The one place endpoints change: the CLI, the admin API and the controller call it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.db: Database = registry.db

    def create(
        self,
        name: str,
        model: str,
        *,
        sticky: str | None = None,
        description: str = "",
        actor: str | None = None,
        address: str | None = None,
    ) -> EndpointInfo:
        """An endpoint whose one stable route takes all traffic to the version `model` names."""
        check_name("endpoint", name)
        parsed_sticky = parse_sticky(sticky)
        info = self.registry.resolve(model)
        event = audit.event(actor, address, "endpoint.create", name, {"version": info.ref})
        with audit.AuditLog(self.db).refusals(event), self.db.session(write=True) as session:
            if session.scalar(select(EndpointRow.id).where(EndpointRow.name == name)):
                raise Conflict(
                    f"endpoint '{name}' already exists; start a rollout to change its version "
                    f"(`berth rollout start {name} --to REF`) or delete it first"
                )
            row = EndpointRow(
                name=name,
                sticky=str(parsed_sticky) if parsed_sticky else "",
                description=description,
            )
            session.add(row)
            session.flush()
            spec = RouteSpec(STABLE, STABLE, info.model, info.number, 100.0)
            replace_routes(
                session, row, [spec], f"created with {info.ref}", event.actor, audit_event=None
            )
            audit.add(session, event)
            session.flush()
            return _info(row)

    def all(self) -> list[EndpointInfo]:
        with self.db.session() as session:
            rows = session.scalars(_query().order_by(EndpointRow.name)).all()
            return [_info(r) for r in rows]

    def get(self, name: str) -> EndpointInfo:
        check_name("endpoint", name)
        with self.db.session() as session:
            return _info(endpoint_row(session, name))

    def delete(self, name: str, *, actor: str | None = None, address: str | None = None) -> None:
        check_name("endpoint", name)
        event = audit.event(actor, address, "endpoint.delete", name)
        with audit.AuditLog(self.db).refusals(event), self.db.session(write=True) as session:
            row = endpoint_row(session, name, lock=True)
            refuse_when_busy(session, name, "delete it")
            routes = [route_spec(r).to_dict() for r in row.routes]
            session.delete(row)
            session.add(
                EndpointChangeRow(endpoint=name, actor=event.actor, reason="deleted", routes=[])
            )
            bump_revision(session)
            audit.add(session, replace(event, detail={"routes": routes}))

    def set_routes(
        self,
        name: str,
        routes: Sequence[RouteSpec],
        reason: str,
        *,
        actor: str | None = None,
        address: str | None = None,
        sticky: str | None = None,
    ) -> EndpointInfo:
        """Replace the routes by hand (outside a rollout or experiment, which own them)."""
        check_name("endpoint", name)
        event = audit.event(
            actor, address, "endpoint.routes", name, {"routes": [r.to_dict() for r in routes]}
        )
        with audit.AuditLog(self.db).refusals(event), self.db.session(write=True) as session:
            row = endpoint_row(session, name, lock=True)
            refuse_when_busy(session, name, "change its routes by hand")
            if sticky is not None:
                parsed = parse_sticky(sticky)
                row.sticky = str(parsed) if parsed else ""
            replace_routes(session, row, routes, reason, event.actor, audit_event=event)
            session.flush()
            return _info(row)

    def set_shadow(
        self,
        name: str,
        reference: str,
        percent: float,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> EndpointInfo:
        """Mirror `percent` of the endpoint's requests to the version `reference` names,
        replacing the shadow route if there is one; the serving routes stay as they are."""
        kept = [r for r in self.get(name).routes if r.role != SHADOW]
        spec = resolve_spec(self.registry, reference, SHADOW, SHADOW, percent)
        if any(r.label == SHADOW for r in kept):
            raise InvalidInput(
                f"endpoint '{name}' has a serving route labelled '{SHADOW}'; rename it with "
                "`berth endpoints routes` first"
            )
        reason = f"shadow {spec.ref} on {percent:g}% of requests"
        return self.set_routes(name, [*kept, spec], reason, actor=actor, address=address)

    def remove_shadow(
        self, name: str, *, actor: str | None = None, address: str | None = None
    ) -> EndpointInfo:
        """Stop mirroring: the shadow route goes, the serving routes stay as they are."""
        current = self.get(name)
        kept = [r for r in current.routes if r.role != SHADOW]
        if len(kept) == len(current.routes):
            raise InvalidInput(f"endpoint '{name}' has no shadow route; nothing to turn off")
        return self.set_routes(name, kept, "shadow removed", actor=actor, address=address)

    def history(self, name: str, limit: int = 50) -> list[EndpointChange]:
        check_name("endpoint", name)
        with self.db.session() as session:
            rows = session.scalars(
                select(EndpointChangeRow)
                .where(EndpointChangeRow.endpoint == name)
                .order_by(EndpointChangeRow.id.desc())
                .limit(limit)
            ).all()
            return [_change(r) for r in rows]

    def revision(self) -> int:
        return current_revision(self.db)


# shared with rollouts and experiments ---------------------------------------------------------


def current_revision(db: Database) -> int:
    return revisions.current(db).get(TOPIC, 0)


def endpoint_row(session: Session, name: str, lock: bool = False) -> EndpointRow:
    query = _query().where(EndpointRow.name == name)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).one_or_none()
    if row is None:
        known = ", ".join(session.scalars(select(EndpointRow.name).order_by(EndpointRow.name)))
        raise NotFound(
            f"no endpoint '{name}' (endpoints: {known or 'none'}); create it with "
            f"`berth endpoints create {name} --model MODEL@production`"
        )
    return row


def refuse_when_busy(session: Session, name: str, action: str) -> None:
    """A rollout or an experiment owns the routes while it runs."""
    rollout = session.scalar(
        select(RolloutRow.id).where(
            RolloutRow.endpoint == name, RolloutRow.status.in_(ACTIVE_ROLLOUT)
        )
    )
    if rollout is not None:
        raise Conflict(
            f"endpoint '{name}' has rollout {rollout} in progress; finish it "
            f"(`berth rollout promote {name}` or `berth rollout abort {name}`) before you {action}"
        )
    experiment = session.scalar(
        select(ExperimentRow.id).where(
            ExperimentRow.endpoint == name, ExperimentRow.status == "running"
        )
    )
    if experiment is not None:
        raise Conflict(
            f"endpoint '{name}' runs experiment {experiment}; conclude it "
            f"(`berth experiments conclude {name} --winner VARIANT`) before you {action}"
        )


def replace_routes(
    session: Session,
    endpoint: EndpointRow,
    routes: Sequence[RouteSpec],
    reason: str,
    actor: str,
    *,
    audit_event: audit.AuditEvent | None,
    rollout_id: int | None = None,
    experiment_id: int | None = None,
) -> None:
    """Check and store the new routes, their history entry and the revision, in `session`."""
    check_routes(routes)
    versions = {r.ref: _version_row(session, r.model, r.version) for r in routes}
    for row in list(endpoint.routes):
        endpoint.routes.remove(row)
    # Deletes first: the new set may reuse a label (unique per endpoint).
    session.flush()
    for spec in routes:
        endpoint.routes.append(
            RouteRow(
                label=spec.label, role=spec.role, version=versions[spec.ref], weight=spec.weight
            )
        )
    endpoint.updated_at = utcnow()
    session.add(
        EndpointChangeRow(
            endpoint=endpoint.name,
            actor=actor,
            reason=reason,
            routes=[r.to_dict() for r in routes],
            rollout_id=rollout_id,
            experiment_id=experiment_id,
        )
    )
    bump_revision(session)
    if audit_event is not None:
        audit.add(session, audit_event)


def check_routes(routes: Sequence[RouteSpec]) -> None:
    if not routes:
        raise InvalidInput("an endpoint needs at least one route")
    labels = [r.label for r in routes]
    for route in routes:
        if not _LABEL.fullmatch(route.label):
            raise InvalidInput(
                f"route label '{route.label}' is not valid; use letters, digits, '.', '_' and "
                "'-', at most 64 characters"
            )
        if route.role not in ROLES:
            raise InvalidInput(f"route role '{route.role}' is not one of {', '.join(ROLES)}")
        if not (math.isfinite(route.weight) and 0 <= route.weight <= 100):
            raise InvalidInput(
                f"route '{route.label}': weight {route.weight} is not a percentage (0 to 100)"
            )
    if len(set(labels)) != len(labels):
        raise InvalidInput(f"route labels must differ; got {', '.join(labels)}")
    serving = [r for r in routes if r.role in SERVING_ROLES]
    if not serving:
        raise InvalidInput("an endpoint needs a route that serves (any role but shadow)")
    if len(routes) - len(serving) > 1:
        raise InvalidInput("an endpoint mirrors traffic to at most one shadow route")
    total = sum(r.weight for r in serving)
    if abs(total - 100) > 1e-6:
        shown = ", ".join(f"{r.label}={r.weight:g}" for r in serving)
        raise InvalidInput(f"the weights of serving routes must add up to 100; got {shown}")


def bump_revision(session: Session) -> None:
    revisions.bump(session, TOPIC)


def routes_summary(routes: Iterable[RouteSpec]) -> str:
    return ", ".join(f"{r.label} {r.ref} {r.weight:g}%" for r in routes)


def _version_row(session: Session, model: str, number: int) -> VersionRow:
    row = session.scalar(
        select(VersionRow).join(ModelRow).where(ModelRow.name == model, VersionRow.number == number)
    )
    if row is None:
        raise NotFound(
            f"no version {model}:{number}; list versions with `berth models show {model}`"
        )
    return row


def spec_for(info: VersionInfo, label: str, role: str, weight: float) -> RouteSpec:
    return RouteSpec(label, role, info.model, info.number, weight)


def resolve_spec(
    registry: Registry, reference: str, label: str, role: str, weight: float
) -> RouteSpec:
    parse_reference(reference)
    return spec_for(registry.resolve(reference), label, role, weight)


def _query() -> Select[EndpointRow]:
    return select(EndpointRow).options(
        selectinload(EndpointRow.routes)
        .selectinload(RouteRow.version)
        .selectinload(VersionRow.model)
    )


def route_spec(row: RouteRow) -> RouteSpec:
    return RouteSpec(row.label, row.role, row.version.model.name, row.version.number, row.weight)


def _info(row: EndpointRow) -> EndpointInfo:
    return EndpointInfo(
        name=row.name,
        sticky=parse_sticky(row.sticky),
        description=row.description,
        routes=tuple(route_spec(r) for r in row.routes),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _change(row: EndpointChangeRow) -> EndpointChange:
    return EndpointChange(
        id=row.id,
        endpoint=row.endpoint,
        at=row.at,
        actor=row.actor,
        reason=row.reason,
        routes=tuple(RouteSpec.from_dict(r) for r in row.routes),
        rollout_id=row.rollout_id,
        experiment_id=row.experiment_id,
    )
