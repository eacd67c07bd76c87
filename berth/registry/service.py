"""The registry service: the one place that adds, resolves, aliases and deletes versions.

The CLI and the admin API both call these functions; neither holds registry logic of its own.
Adding a version records metadata only: the registration flow (berth.registration) checks and
stores the artifact first.

Every change records an audit event in the transaction that makes it (`actor` and `address`
say who asked, from where); a refused change is recorded as `refused` in a transaction of its
own, since the change itself rolls back. Names, aliases and references are checked at every
entry point.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from berth.errors import Conflict, InvalidInput, NotFound
from berth.registry import revisions
from berth.registry.accelerated import Accelerated
from berth.registry.artifacts import ArtifactStore, StoredArtifact
from berth.registry.references import (
    Reference,
    check_alias,
    check_name,
    chosen_version,
    parse_reference,
)
from berth.registry.signature import Signature
from berth.registry.versions import Lineage, ModelInfo, NewVersion, VersionInfo
from berth.store import audit
from berth.store.db import Database
from berth.store.tables import AliasRow, EndpointRow, ModelRow, RouteRow, VersionRow, utcnow

if TYPE_CHECKING:
    from berth.config import Settings

_ADD_ATTEMPTS = 5
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


class Registry:
    def __init__(
        self, db: Database, store: ArtifactStore, trusted_types: Iterable[str] = ()
    ) -> None:
        self.db = db
        self.store = store
        self.trusted_types = check_type_names(trusted_types, "BERTH_TRUSTED_TYPES")
        """Types every version's skops file may load (the server's BERTH_TRUSTED_TYPES)."""

    @classmethod
    def from_settings(cls, settings: Settings, migrate: bool = True) -> Registry:
        db = Database(settings.resolved_database_url)
        if migrate:
            db.migrate()
        store = ArtifactStore(settings.resolved_artifact_url, settings.home.resolve() / "cache")
        return cls(db, store, settings.trusted_types)

    # adding ------------------------------------------------------------------------------

    def add_version(self, new: NewVersion, event: audit.AuditEvent) -> VersionInfo:
        """Record `new` as the next version of its model (created if need be), with its aliases.

        `event` is recorded in the same transaction, with the new version's reference as its
        target; recording a refusal is the caller's, since most refusals come before this.
        """
        check_name("model", new.name)
        for alias in new.aliases:
            check_alias(alias)
        for attempt in range(_ADD_ATTEMPTS):
            try:
                with self.db.session(write=True) as session:
                    row = _insert_version(session, new)
                    revisions.bump(session, revisions.MODELS)
                    notes = tuple(_same_artifact(session, row))
                    audit.add(session, replace(event, target=f"{new.name}:{row.number}"))
                    return replace(_version_info(row), notes=notes)
            except IntegrityError:
                # Another writer created the same model first (the model row lock in
                # _insert_version serializes numbering only once the row exists); the next
                # attempt finds it.
                if attempt == _ADD_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # reading -----------------------------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        with self.db.session() as session:
            rows = session.scalars(_models_query().order_by(ModelRow.name)).all()
            return [_model_info(row) for row in rows]

    def get_model(self, name: str) -> ModelInfo:
        check_name("model", name)
        with self.db.session() as session:
            return _model_info(_model_row(session, name))

    def get_version(self, name: str, number: int) -> VersionInfo:
        check_name("model", name)
        with self.db.session() as session:
            return _version_info(_version_row(session, _model_row(session, name), number))

    def resolve(self, reference: str | Reference) -> VersionInfo:
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        with self.db.session() as session:
            model = _model_row(session, ref.name)
            if ref.version is not None:
                return _version_info(_version_row(session, model, ref.version))
            aliases = {row.name: row.version.number for row in model.aliases}
            number = chosen_version(ref, aliases, [row.number for row in model.versions])
            return _version_info(next(row for row in model.versions if row.number == number))

    def models_with_alias(self, alias: str) -> list[str]:
        check_alias(alias)
        with self.db.session() as session:
            query = select(ModelRow.name).join(AliasRow).where(AliasRow.name == alias)
            return sorted(session.scalars(query).all())

    # changes -----------------------------------------------------------------------------

    def set_alias(
        self,
        name: str,
        alias: str,
        number: int,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> VersionInfo:
        """Point `name@alias` at version `number`, atomically (one transaction)."""
        event = audit.event(actor, address, "alias.set", f"{name}@{alias}", {"version": number})
        with audit.AuditLog(self.db).refusals(event):
            check_name("model", name)
            check_alias(alias)
            with self.db.session(write=True) as session:
                model = _model_row(session, name, lock=True)
                row = _version_row(session, model, number)
                previous = next((a.version.number for a in model.aliases if a.name == alias), None)
                _point_alias(session, model, alias, row)
                revisions.bump(session, revisions.MODELS)
                audit.add(session, replace(event, detail={"version": number, "previous": previous}))
                session.flush()
                session.refresh(row)
                return _version_info(row)

    def set_accelerated(
        self,
        name: str,
        number: int,
        accelerated: Accelerated,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> VersionInfo:
        """Keep `accelerated` as version `number`'s twin (its artifact is in the store already),
        or as the reason it has none."""
        detail: dict[str, Any] = {"served": accelerated.usable}
        if accelerated.reason:
            detail["reason"] = accelerated.reason
        event = audit.event(actor, address, "model.accelerate", f"{name}:{number}", detail)
        with audit.AuditLog(self.db).refusals(event):
            check_name("model", name)
            with self.db.session(write=True) as session:
                model = _model_row(session, name, lock=True)
                row = _version_row(session, model, number)
                row.accelerated = accelerated.stored()
                revisions.bump(session, revisions.MODELS)
                audit.add(session, event)
                session.flush()
                return _version_info(row)

    def remove_alias(
        self, name: str, alias: str, *, actor: str | None = None, address: str | None = None
    ) -> None:
        event = audit.event(actor, address, "alias.remove", f"{name}@{alias}")
        with audit.AuditLog(self.db).refusals(event):
            check_name("model", name)
            check_alias(alias)
            with self.db.session(write=True) as session:
                model = _model_row(session, name, lock=True)
                row = next((a for a in model.aliases if a.name == alias), None)
                if row is None:
                    raise NotFound(f"model '{name}' has no alias '{alias}'")
                audit.add(session, replace(event, detail={"version": row.version.number}))
                session.delete(row)
                revisions.bump(session, revisions.MODELS)

    def delete_version(
        self, name: str, number: int, *, actor: str | None = None, address: str | None = None
    ) -> None:
        event = audit.event(actor, address, "version.delete", f"{name}:{number}")
        with audit.AuditLog(self.db).refusals(event):
            check_name("model", name)
            # The lock keeps an alias from being pointed at the version between check and delete.
            with self.db.session(write=True) as session:
                model = _model_row(session, name, lock=True)
                row = _version_row(session, model, number)
                pointing = [a.name for a in model.aliases if a.version_id == row.id]
                if pointing:
                    names = ", ".join(f"{name}@{a}" for a in pointing)
                    raise Conflict(
                        f"version {name}:{number} is still the target of {names}; move or remove "
                        f"the alias first (`berth models alias {name} {pointing[0]} OTHER_VERSION`)"
                    )
                _refuse_routed(session, [row])
                audit.add(
                    session, replace(event, detail={"flavor": row.flavor, "sha256": row.sha256})
                )
                session.delete(row)
                revisions.bump(session, revisions.MODELS)

    def delete_model(
        self, name: str, *, actor: str | None = None, address: str | None = None
    ) -> None:
        event = audit.event(actor, address, "model.delete", name)
        with audit.AuditLog(self.db).refusals(event):
            check_name("model", name)
            with self.db.session(write=True) as session:
                model = _model_row(session, name, lock=True)
                if model.aliases:
                    names = ", ".join(f"{name}@{a.name}" for a in model.aliases)
                    raise Conflict(
                        f"model '{name}' still has aliases ({names}); remove them first with "
                        f"`berth models alias {name} ALIAS --remove`"
                    )
                _refuse_routed(session, model.versions)
                audit.add(
                    session, replace(event, detail={"versions": [v.number for v in model.versions]})
                )
                session.delete(model)
                revisions.bump(session, revisions.MODELS)


def check_type_names(names: Iterable[str], source: str) -> tuple[str, ...]:
    """Trusted type names, checked (`module.Name`), sorted and without duplicates."""
    checked: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name.strip()):
            raise InvalidInput(
                f"{source} '{name}' is not a type name; give the full dotted name skops reports, "
                "e.g. mypackage.features.MyTransformer"
            )
        checked.add(name.strip())
    return tuple(sorted(checked))


# helpers ---------------------------------------------------------------------------------


def _insert_version(session: Session, new: NewVersion) -> VersionRow:
    # Locking the model row serializes concurrent registrations of one model on PostgreSQL
    # (SQLite holds the database write lock already), so max(number) + 1 is free.
    model = session.scalar(select(ModelRow).where(ModelRow.name == new.name).with_for_update())
    if model is None:
        model = ModelRow(name=new.name, description=new.description)
        session.add(model)
        session.flush()
    latest = session.scalar(
        select(func.max(VersionRow.number)).where(VersionRow.model_id == model.id)
    )
    row = VersionRow(
        model=model,
        number=(latest or 0) + 1,
        flavor=new.flavor,
        sha256=new.artifact.sha256,
        artifact_uri=new.artifact.uri,
        entry=new.artifact.entry,
        is_directory=new.artifact.is_directory,
        size_bytes=new.artifact.size_bytes,
        signature=new.signature.to_dict(),
        metrics=dict(new.metrics),
        tags=dict(new.tags),
        description=new.description,
        trusted_types=list(new.trusted_types) or None,
        pickle_trusted=new.pickle_trusted,
        example=new.example,
        reference_stats=None if new.reference_stats is None else dict(new.reference_stats),
    )
    session.add(row)
    if new.lineage is not None:
        _link_source(session, row, new.lineage)
    session.flush()
    for alias in new.aliases:
        _point_alias(session, model, alias, row)
    session.flush()
    return row


def _same_artifact(session: Session, row: VersionRow) -> list[str]:
    """A note naming the versions that already have this version's bytes, if any do."""
    same = session.execute(
        select(ModelRow.name, VersionRow.number)
        .join(ModelRow, VersionRow.model_id == ModelRow.id)
        .where(VersionRow.sha256 == row.sha256, VersionRow.id != row.id)
        .order_by(VersionRow.id)
        .limit(4)
    ).all()
    if not same:
        return []
    refs = [f"{name}:{number}" for name, number in same[:3]]
    more = " and others" if len(same) > 3 else ""
    return [f"same artifact as {', '.join(refs)}{more} (sha256 {row.sha256[:12]})"]


def _link_source(session: Session, row: VersionRow, lineage: Lineage) -> None:
    # Checked in the registering transaction, so a derived version never names a source that
    # was not there when it was recorded.
    found = session.scalar(
        select(VersionRow.id)
        .join(ModelRow)
        .where(ModelRow.name == lineage.source_model)
        .where(VersionRow.number == lineage.source_version)
    )
    if found is None:
        raise NotFound(
            f"the source version {lineage.source} of this version is not registered; "
            "see `berth models list`"
        )
    row.source_model = lineage.source_model
    row.source_version = lineage.source_version
    row.lineage = dict(lineage.detail)


def _lineage(row: VersionRow) -> Lineage | None:
    if row.source_model is None or row.source_version is None:
        return None
    return Lineage(row.source_model, row.source_version, dict(row.lineage or {}))


def _point_alias(session: Session, model: ModelRow, alias: str, version: VersionRow) -> None:
    existing = next((a for a in model.aliases if a.name == alias), None)
    if existing is None:
        model.aliases.append(AliasRow(name=alias, version=version))
    else:
        existing.version = version
        existing.updated_at = utcnow()


def _refuse_routed(session: Session, versions: Iterable[VersionRow]) -> None:
    """An endpoint's route keeps its version: deleting it would break the endpoint."""
    by_id = {v.id: v for v in versions}
    routed = session.execute(
        select(RouteRow.version_id, EndpointRow.name, RouteRow.label)
        .join(EndpointRow, RouteRow.endpoint_id == EndpointRow.id)
        .where(RouteRow.version_id.in_(by_id))
    ).first()
    if routed is not None:
        version = by_id[routed[0]]
        raise Conflict(
            f"version {version.model.name}:{version.number} is served by endpoint "
            f"'{routed[1]}' (route {routed[2]}); roll the endpoint to another version first "
            f"(`berth rollout start {routed[1]} --to REF`) or delete the endpoint"
        )


def _models_query() -> Select[ModelRow]:
    return select(ModelRow).options(
        selectinload(ModelRow.versions),
        selectinload(ModelRow.aliases).selectinload(AliasRow.version),
    )


def _model_row(session: Session, name: str, lock: bool = False) -> ModelRow:
    """The model with its versions and aliases; `lock` holds its row until the session ends."""
    query = _models_query().where(ModelRow.name == name)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(f"model '{name}' is not registered; see `berth models list`")
    return row


def _version_row(session: Session, model: ModelRow, number: int) -> VersionRow:
    row = next((v for v in model.versions if v.number == number), None)
    if row is None:
        known = ", ".join(str(v.number) for v in model.versions) or "none"
        raise NotFound(f"model '{model.name}' has no version {number} (versions: {known})")
    return row


def _version_info(row: VersionRow) -> VersionInfo:
    aliases = tuple(sorted(a.name for a in row.model.aliases if a.version_id == row.id))
    return VersionInfo(
        model=row.model.name,
        number=row.number,
        flavor=row.flavor,
        artifact=StoredArtifact(
            sha256=row.sha256,
            uri=row.artifact_uri,
            entry=row.entry,
            is_directory=row.is_directory,
            size_bytes=row.size_bytes,
        ),
        signature=Signature.from_dict(row.signature),
        metrics=dict(row.metrics),
        tags=dict(row.tags),
        description=row.description,
        created_at=row.created_at,
        aliases=aliases,
        example=row.example,
        trusted_types=tuple(row.trusted_types or ()),
        pickle_trusted=row.pickle_trusted,
        reference_stats=row.reference_stats,
        lineage=_lineage(row),
        accelerated=Accelerated.from_stored(row.accelerated),
    )


def _model_info(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        versions=tuple(_version_info(v) for v in row.versions),
        aliases={a.name: a.version.number for a in row.aliases},
    )
