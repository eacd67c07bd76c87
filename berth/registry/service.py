"""The registry service: the one place that registers, resolves, aliases and deletes versions.

The CLI and the admin API both call these functions; neither holds registry logic of its own.

Every change records an audit event in the transaction that makes it (`actor` and `address`
say who asked, from where); a refused change is recorded as `refused` in a transaction of its
own, since the change itself rolls back. Names, aliases and references are checked at every
entry point.

Registration works on a private copy of the artifact (an archive is unpacked into one): the
copy is hashed, loaded and stored, so the bytes checked are the bytes stored. Loading goes
through `load_runtime(version)`, which verifies the stored bytes and passes the version's trust
(a pickle's digest, extra skops types) to the runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from berth.errors import (
    ArtifactIntegrityError,
    BerthError,
    Conflict,
    InvalidInput,
    ModelLoadError,
    NotFound,
)
from berth.registry.archives import is_archive, safe_extract
from berth.registry.artifacts import (
    ArtifactStore,
    StoredArtifact,
    _files_under,
    artifact_sha256,
    file_sha256,
)
from berth.registry.csv_header import first_row, has_header
from berth.registry.references import DEFAULT_ALIAS, Reference, check_name, parse_reference
from berth.registry.signature import (
    Signature,
    infer_signature,
    load_signature_file,
    read_sample,
)
from berth.runtimes import (
    SKOPS_SUFFIX,
    UntrustedArtifact,
    detect_flavor,
    entry_file,
    load_runtime,
    needs_pickle_trust,
    pickle_refusal,
)
from berth.store import audit
from berth.store.db import Database
from berth.store.tables import AliasRow, EndpointRow, ModelRow, RouteRow, VersionRow, utcnow

# numpy, pandas, the drift statistics and the runtimes' helpers are imported by the functions
# that use them: listing and resolving versions (most commands) need none of them.
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from berth.config import Settings
    from berth.runtimes.base import Prediction, Runtime

log = logging.getLogger("berth.registry")

_SAMPLE_ROWS = 100
_EXAMPLE_ROWS = 3
_REGISTER_ATTEMPTS = 5
_ALIAS_MAX = 64  # aliases.name is VARCHAR(64)
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class Lineage:
    """Where a version came from: the version it was derived from, and how (a JSON detail)."""

    source_model: str
    source_version: int
    detail: Mapping[str, Any] = field(default_factory=dict)
    """e.g. {"method": "onnx", "quantized": "int8", "check": {...}}; stored as given."""

    @property
    def source(self) -> str:
        return f"{self.source_model}:{self.source_version}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, **self.detail}


@dataclass(frozen=True)
class VersionInfo:
    model: str
    number: int
    flavor: str
    artifact: StoredArtifact
    signature: Signature
    metrics: dict[str, float]
    tags: dict[str, str]
    description: str
    created_at: datetime
    aliases: tuple[str, ...] = ()
    example: list[Any] | None = None
    """A few input rows from the registration sample, in the v1 `instances` format."""
    trusted_types: tuple[str, ...] = ()
    """Types beyond the built-in allow-list its skops file may load (--trust-type)."""
    pickle_trusted: bool = False
    """Registered with --trust-pickle: its pickle is unpickled (after its sha256 matches)."""
    reference_stats: dict[str, Any] | None = None
    """Per-feature reference statistics for drift (from --reference), or None."""
    lineage: Lineage | None = None
    """The version this one was derived from (e.g. by `berth models optimize`), or None."""
    notes: tuple[str, ...] = field(default=(), compare=False)
    """What registering it found worth telling (an inferred signature, the same bytes already
    registered as another version); set by `register` only, never stored."""

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.number}"

    def to_dict(self) -> dict[str, Any]:
        from berth.registry.profile import reference_summary

        return {
            "model": self.model,
            "version": self.number,
            "flavor": self.flavor,
            "sha256": self.artifact.sha256,
            "size_bytes": self.artifact.size_bytes,
            "signature": self.signature.to_dict(),
            "metrics": self.metrics,
            "tags": self.tags,
            "description": self.description,
            "aliases": list(self.aliases),
            "created_at": self.created_at.isoformat(),
            "example": self.example,
            "trusted_types": list(self.trusted_types),
            "pickle_trusted": self.pickle_trusted,
            "reference": reference_summary(self.reference_stats),
            "lineage": self.lineage.to_dict() if self.lineage else None,
        }


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    created_at: datetime
    versions: tuple[VersionInfo, ...]
    aliases: dict[str, int] = field(default_factory=dict)

    @property
    def latest(self) -> VersionInfo | None:
        return self.versions[-1] if self.versions else None

    def to_dict(self) -> dict[str, Any]:
        latest = self.latest
        return {
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "latest_version": latest.number if latest else None,
            "versions": [v.number for v in self.versions],
            "aliases": self.aliases,
        }


@dataclass(frozen=True)
class RegisterRequest:
    """Everything `register` needs; the CLI and the admin API build one of these."""

    name: str
    path: Path
    flavor: str | None = None
    sample: Path | None = None
    signature: Path | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    aliases: tuple[str, ...] = ()
    trust_pickle: bool = False
    """Accept a pickle/joblib file, whose loading runs any code it holds (--trust-pickle)."""
    trusted_types: tuple[str, ...] = ()
    """Types beyond the built-in allow-list the skops file may load, recorded on the version."""
    reference: Path | None = None
    """Reference data (.csv/.parquet/.json/.npy) whose per-feature statistics drift is measured
    against (--reference)."""
    reference_stats: Mapping[str, Any] | None = None
    """Reference statistics computed before (e.g. those of the source of a derived version),
    instead of `reference` data."""
    lineage: Lineage | None = None
    """The registered version this one was derived from; it must exist."""
    actor: str | None = None
    """Who registers, for the audit log; None is the local user (`cli:<user>`)."""
    address: str | None = None
    """The client address of an API caller, for the audit log."""


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

    # registration ------------------------------------------------------------------------

    def register(self, request: RegisterRequest) -> VersionInfo:
        """Check the artifact loads and predicts, store it, and record a new version."""
        event = audit.event(
            request.actor,
            request.address,
            "model.register",
            request.name,
            {
                "trust_pickle": request.trust_pickle,
                "trusted_types": list(request.trusted_types),
                "aliases": list(request.aliases),
                **_lineage_detail(request.lineage),
            },
        )
        with audit.AuditLog(self.db).refusals(event):
            return self._register(request, event)

    def _register(self, request: RegisterRequest, event: audit.AuditEvent) -> VersionInfo:
        check_name("model", request.name)
        for alias in request.aliases:
            _check_alias(alias)
        trusted_types = check_type_names(request.trusted_types, "--trust-type")
        if request.reference is not None and request.reference_stats is not None:
            raise InvalidInput("give reference data or reference statistics, not both")
        source = request.path.expanduser()
        if not source.exists():
            raise InvalidInput(
                f"{source} does not exist; pass the path of a model file, directory or archive"
            )
        # A private copy (mode 0700): what is hashed, loaded and stored cannot change under us.
        # Messages about it name the user's path, never the private copy's.
        with (
            tempfile.TemporaryDirectory(prefix="berth-register-") as private,
            _named_as_given(source, Path(private)),
        ):
            staged = _stage(source, Path(private))
            flavor = request.flavor or detect_flavor(staged)
            entry = entry_file(staged, flavor)
            digest = artifact_sha256(staged)
            pickle_sha256 = None
            if needs_pickle_trust(flavor, entry):
                if not request.trust_pickle:
                    raise InvalidInput(pickle_refusal(entry.name))
                pickle_sha256 = digest if entry == staged else file_sha256(entry)
            if trusted_types and (flavor != "sklearn" or entry.suffix.lower() != SKOPS_SUFFIX):
                raise InvalidInput(
                    "--trust-type applies to scikit-learn models saved with skops (.skops); "
                    f"{entry.name} is not one"
                )
            try:
                runtime = load_runtime(
                    flavor,
                    entry,
                    trusted_types=(*self.trusted_types, *trusted_types),
                    pickle_sha256=pickle_sha256,
                )
            except UntrustedArtifact as exc:
                raise InvalidInput(exc.message) from exc
            inputs = _inputs_for(request, runtime)
            signature = inputs.signature
            example = _example(inputs.sample, signature)
            reference_stats = _reference_stats(request.reference, signature)
            if request.reference_stats is not None:
                reference_stats = dict(request.reference_stats)
            artifact = self.store.put(staged)
        if artifact.sha256 != digest:
            raise InvalidInput(
                f"{source} changed while it was being checked (its files were modified when it "
                "was loaded); make the model leave its own files alone, and register it again"
            )
        trust = _Trust(
            types=trusted_types, pickle=pickle_sha256 is not None and request.trust_pickle
        )
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                with self.db.session(write=True) as session:
                    row = self._insert_version(session, request, flavor, artifact, signature, trust)
                    row.example = example
                    row.reference_stats = reference_stats
                    notes = (*inputs.notes, *_same_artifact(session, row))
                    audit.add(
                        session,
                        replace(
                            event,
                            target=f"{request.name}:{row.number}",
                            detail={
                                "flavor": flavor,
                                "sha256": artifact.sha256,
                                "trust_pickle": request.trust_pickle,
                                "trusted_types": list(trusted_types),
                                "aliases": list(request.aliases),
                                **_lineage_detail(request.lineage),
                            },
                        ),
                    )
                    return replace(_version_info(row), notes=notes)
            except IntegrityError:
                # Another writer created the same model first (the model row lock below
                # serializes numbering only once the row exists); the next attempt finds it.
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _insert_version(
        self,
        session: Session,
        request: RegisterRequest,
        flavor: str,
        artifact: StoredArtifact,
        signature: Signature,
        trust: _Trust,
    ) -> VersionRow:
        # Locking the model row serializes concurrent registrations of one model on PostgreSQL
        # (SQLite holds the database write lock already), so max(number) + 1 is free.
        model = session.scalar(
            select(ModelRow).where(ModelRow.name == request.name).with_for_update()
        )
        if model is None:
            model = ModelRow(name=request.name, description=request.description)
            session.add(model)
            session.flush()
        latest = session.scalar(
            select(func.max(VersionRow.number)).where(VersionRow.model_id == model.id)
        )
        row = VersionRow(
            model=model,
            number=(latest or 0) + 1,
            flavor=flavor,
            sha256=artifact.sha256,
            artifact_uri=artifact.uri,
            entry=artifact.entry,
            is_directory=artifact.is_directory,
            size_bytes=artifact.size_bytes,
            signature=signature.to_dict(),
            metrics=dict(request.metrics),
            tags=dict(request.tags),
            description=request.description,
            trusted_types=list(trust.types) or None,
            pickle_trusted=trust.pickle,
        )
        session.add(row)
        if request.lineage is not None:
            _link_source(session, row, request.lineage)
        session.flush()
        for alias in request.aliases:
            _point_alias(session, model, alias, row)
        session.flush()
        return row

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
            alias = ref.alias or DEFAULT_ALIAS
            for row in model.aliases:
                if row.name == alias:
                    return _version_info(row.version)
            if ref.alias is not None:
                known = ", ".join(a.name for a in model.aliases) or "none"
                raise NotFound(
                    f"model '{ref.name}' has no alias '{ref.alias}' (aliases: {known}); "
                    f"set it with `berth models alias {ref.name} {ref.alias} VERSION`"
                )
            if not model.versions:
                raise NotFound(f"model '{ref.name}' has no versions; register one first")
            return _version_info(model.versions[-1])

    def models_with_alias(self, alias: str) -> list[str]:
        _check_alias(alias)
        with self.db.session() as session:
            query = select(ModelRow.name).join(AliasRow).where(AliasRow.name == alias)
            return sorted(session.scalars(query).all())

    def fetch(self, version: VersionInfo) -> Path:
        """A verified local path of the version's artifact, ready for its runtime."""
        local = self.store.fetch(version.artifact)
        if version.artifact.is_directory:
            return entry_file(local, version.flavor)
        return local

    def load_runtime(self, version: VersionInfo) -> Runtime:
        """The version's runtime, loaded from verified bytes with the trust it was registered with.

        This is how a version is served: a pickle is unpickled only for a version registered with
        --trust-pickle, and only bytes whose sha256 is the one recorded at registration; a skops
        file may load the allow-list, the server's BERTH_TRUSTED_TYPES and the version's own
        --trust-type types.
        """
        local = self.store.fetch(version.artifact)
        entry = entry_file(local, version.flavor) if version.artifact.is_directory else local
        pickle_sha256 = None
        if version.pickle_trusted and needs_pickle_trust(version.flavor, entry):
            pickle_sha256 = _entry_sha256(local, entry, version.artifact)
        return load_runtime(
            version.flavor,
            entry,
            trusted_types=(*self.trusted_types, *version.trusted_types),
            pickle_sha256=pickle_sha256,
        )

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
            _check_alias(alias)
            with self.db.session(write=True) as session:
                model = _model_row(session, name, lock=True)
                row = _version_row(session, model, number)
                previous = next((a.version.number for a in model.aliases if a.name == alias), None)
                _point_alias(session, model, alias, row)
                audit.add(session, replace(event, detail={"version": number, "previous": previous}))
                session.flush()
                session.refresh(row)
                return _version_info(row)

    def remove_alias(
        self, name: str, alias: str, *, actor: str | None = None, address: str | None = None
    ) -> None:
        event = audit.event(actor, address, "alias.remove", f"{name}@{alias}")
        with audit.AuditLog(self.db).refusals(event):
            check_name("model", name)
            _check_alias(alias)
            with self.db.session(write=True) as session:
                model = _model_row(session, name, lock=True)
                row = next((a for a in model.aliases if a.name == alias), None)
                if row is None:
                    raise NotFound(f"model '{name}' has no alias '{alias}'")
                audit.add(session, replace(event, detail={"version": row.version.number}))
                session.delete(row)

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

    # audit -------------------------------------------------------------------------------


# helpers ---------------------------------------------------------------------------------


Sample: TypeAlias = "np.ndarray[Any, Any] | pd.DataFrame"


@dataclass(frozen=True)
class _Inputs:
    """What registration learned about a version's inputs."""

    signature: Signature
    sample: Sample | None
    notes: tuple[str, ...] = ()


def _inputs_for(request: RegisterRequest, runtime: Runtime) -> _Inputs:
    """The signature from --signature, else the --sample, else what the model declares."""
    from berth.runtimes.base import output_specs

    declared, undeclared = _declared(runtime)
    given = load_signature_file(request.signature) if request.signature is not None else None
    names = _column_names(given or declared)
    notes: list[str] = []
    sample = None
    if request.sample is not None:
        path = request.sample.expanduser()
        sample = read_sample(path, names)
        notes.extend(_headerless_note(path, names))
    if given is not None:
        signature = given
    elif sample is not None:
        signature = infer_signature(sample)
    elif declared is not None:
        signature = declared
        notes.append(
            f"no --sample or --signature: the model declares its inputs ({_describe(declared)}); "
            "pass --sample FILE to check them on real rows and keep example rows"
        )
    else:
        raise InvalidInput(
            f"cannot tell what inputs this model takes{f' ({undeclared})' if undeclared else ''}; "
            "pass --sample FILE (a few rows of input data) or --signature FILE (a JSON signature)"
        )
    if sample is None:
        return _Inputs(signature, None, tuple(notes))
    prediction = _predict_sample(runtime, _sample_input(sample, signature), request.sample)
    return _Inputs(signature.with_outputs(output_specs(prediction)), sample, tuple(notes))


def _declared(runtime: Runtime) -> tuple[Signature | None, str | None]:
    """The signature the model declares, or None and why not (when it tried and failed)."""
    try:
        return runtime.declared_signature(), None
    except BerthError as exc:
        return None, exc.message


def _column_names(signature: Signature | None) -> list[str] | None:
    if signature is None or signature.kind != "tabular":
        return None
    return signature.input_names


def _headerless_note(path: Path, names: list[str] | None) -> list[str]:
    if path.suffix.lower() != ".csv":
        return []
    row = first_row(path)
    if row is None or has_header(row, names):
        return []
    named = (
        f"the model's column names ({', '.join(names)})"
        if names
        else "the positional column names 0, 1, ..."
    )
    return [f"{path.name} has no header row: its first line is data, with {named}"]


def _describe(signature: Signature) -> str:
    if signature.kind == "tabular":
        columns = ", ".join(f"{c.name} {c.dtype}" for c in signature.columns)
        return f"{len(signature.columns)} columns: {columns}"
    return ", ".join(f"{t.name} {t.dtype} {list(t.shape)}" for t in signature.inputs)


def _predict_sample(runtime: Runtime, rows: Sample, path: Path | None) -> Prediction:
    """The model's prediction on the sample; its own errors become one clear BerthError."""
    try:
        return runtime.predict(rows)
    except BerthError:
        raise
    except Exception as exc:  # the user's model code raised: say so, not a traceback
        raise ModelLoadError(
            f"the model failed on the rows of {path} ({type(exc).__name__}: {exc}); fix its "
            "predict (call it on those rows yourself to see where), or pass other sample rows"
        ) from exc


@contextmanager
def _named_as_given(source: Path, private: Path) -> Iterator[None]:
    """Errors raised while working on the private copy name `source` instead of the copy."""
    try:
        yield
    except BerthError as exc:
        message = exc.message
        for staged in (private / "artifact", private / source.name, private):
            message = message.replace(str(staged), str(source))
        exc.message = message
        exc.args = (message, *exc.args[1:])
        raise


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


def _sample_input(sample: Sample, signature: Signature) -> Sample:
    import pandas as pd

    rows = sample[:_SAMPLE_ROWS]
    if isinstance(rows, pd.DataFrame):
        missing = [n for n in signature.input_names if n not in rows.columns]
        if signature.kind == "tabular":
            if missing:
                raise InvalidInput(f"sample is missing the signature's columns: {missing}")
            return rows[signature.input_names]
        dtype = signature.inputs[0].dtype
        return rows.to_numpy(dtype=None if dtype == "string" else dtype)
    return rows


def _example(sample: Sample | None, signature: Signature) -> list[Any] | None:
    """Up to three sample rows as JSON-safe v1 instances (for warm-up and docs)."""
    import numpy as np
    import pandas as pd

    if sample is None:
        return None
    rows = _sample_input(sample, signature)[:_EXAMPLE_ROWS]
    if isinstance(rows, pd.DataFrame):
        records = json.loads(rows.to_json(orient="records"))
        return list(records)
    return list(np.asarray(rows).tolist())


def _reference_stats(path: Path | None, signature: Signature) -> dict[str, Any] | None:
    """Drift reference statistics of the --reference data, checked against the signature."""
    from berth.registry.profile import reference_statistics

    if path is None:
        return None
    path = path.expanduser()
    try:
        return reference_statistics(read_sample(path, _column_names(signature)), signature)
    except InvalidInput as exc:
        raise InvalidInput(f"--reference {path}: {exc.message}") from exc


@dataclass(frozen=True)
class _Trust:
    types: tuple[str, ...] = ()
    pickle: bool = False


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


def _check_alias(alias: str) -> str:
    check_name("alias", alias)
    if len(alias) > _ALIAS_MAX:
        raise InvalidInput(
            f"alias name '{alias}' is too long; aliases have at most {_ALIAS_MAX} characters"
        )
    return alias


def _stage(source: Path, private: Path) -> Path:
    """A private copy of a model file or directory, or the unpacked contents of an archive."""
    if is_archive(source):
        return safe_extract(source, private / "artifact")
    try:
        if source.is_dir():
            target = private / "artifact"
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target = private / source.name
            shutil.copyfile(source, target)
    except (OSError, shutil.Error) as exc:
        raise InvalidInput(f"could not read {source}: {exc}") from exc
    return target


def _entry_sha256(root: Path, entry: Path, artifact: StoredArtifact) -> str:
    """The registered digest of a file of the artifact, from the same hashing that verifies it.

    For a file artifact that is the artifact's own digest. For a directory it is the file's line
    in a manifest whose digest matches the registered one, so it is bound to the registration.
    """
    if not artifact.is_directory:
        return artifact.sha256
    digests = {p.relative_to(root).as_posix(): file_sha256(p) for p in _files_under(root)}
    manifest = "".join(f"{digest}  {rel}\n" for rel, digest in digests.items())
    actual = hashlib.sha256(manifest.encode()).hexdigest()
    relative = entry.relative_to(root).as_posix()
    if actual != artifact.sha256 or relative not in digests:
        raise ArtifactIntegrityError(
            f"artifact of this version fails its sha256 check (expected {artifact.sha256}, got "
            f"{actual}); it was changed after registration and will not be loaded. Restore the "
            "store, or register the model again"
        )
    return digests[relative]


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


def _lineage_detail(lineage: Lineage | None) -> dict[str, Any]:
    return {} if lineage is None else {"source": lineage.source}


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
    )


def _model_info(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        versions=tuple(_version_info(v) for v in row.versions),
        aliases={a.name: a.version.number for a in row.aliases},
    )


def parse_pairs(pairs: Iterable[str], what: str) -> dict[str, str]:
    """`k=v` strings (from --metric/--tag) into a dict, with a clear error for a bad one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(
                f"{what} '{pair}' is not KEY=VALUE; write e.g. --{what} accuracy=0.93"
            )
        out[key.strip()] = value.strip()
    return out


def parse_metrics(pairs: Iterable[str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in parse_pairs(pairs, "metric").items():
        try:
            metrics[key] = float(value)
        except ValueError as exc:
            raise InvalidInput(
                f"metric '{key}' has value '{value}', which is not a number"
            ) from exc
    return metrics
