"""`berth backup verify --drill`: restore a backup somewhere temporary and serve from it.

A verified backup has every byte it names; a drill proves those bytes are a registry that
serves. The snapshot is restored (berth.backup.restore, as `berth backup restore` does it) into
a temporary SQLite registry and artifact store; then every version a client can reach (each
alias, and each version an endpoint routes to) is loaded as the server loads it (its artifact
fetched and checked against the version's sha256, the runtime loaded with the trust the version
was registered with) and predicts on rows built from what the registry stored for it: its
registration example rows (decoded against its signature as a request is), else rows generated
from its reference statistics. Everything temporary is removed afterwards.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth.backup.crypto import BackupKey
from berth.backup.destination import Destination
from berth.backup.restore import restore
from berth.errors import BerthError, InvalidInput
from berth.registry.artifacts import ArtifactStore
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.store.db import Database

SMOKE_ROWS = 5
"""Rows each version predicts: enough to exercise a batch, quick for any model."""
OK = "ok"
FAILED = "failed"
Progress = Callable[[int], None]


@dataclass
class VersionDrill:
    """How one reachable version fared."""

    ref: str
    reached_by: list[str]
    """The aliases (`iris@production`) and endpoint routes (`flowers/stable`) that serve it."""
    status: str = OK
    reason: str | None = None
    rows: int = 0
    load_seconds: float = 0.0
    predict_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.ref,
            "reached_by": list(self.reached_by),
            "status": self.status,
            "reason": self.reason,
            "rows": self.rows,
            "load_seconds": round(self.load_seconds, 3),
            "predict_seconds": round(self.predict_seconds, 3),
        }


@dataclass
class DrillReport:
    url: str
    snapshot: str
    restore_seconds: float = 0.0
    versions: list[VersionDrill] = field(default_factory=list)

    @property
    def failed(self) -> list[VersionDrill]:
        return [v for v in self.versions if v.status != OK]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "snapshot": self.snapshot,
            "ok": self.ok,
            "restore_seconds": round(self.restore_seconds, 3),
            "versions": [v.to_dict() for v in self.versions],
        }


def drill(
    source: Destination,
    snapshot: str,
    trusted_types: Sequence[str] = (),
    advance: Progress | None = None,
    key: BackupKey | None = None,
) -> DrillReport:
    """Restore `snapshot` into a temporary registry and smoke-test every reachable version;
    `key` decrypts an encrypted backup (its server secret is not restored anywhere).

    `trusted_types`: the types trusted beside each version's own (the server's
    BERTH_TRUSTED_TYPES), so a version loads here as it would be served.
    """
    report = DrillReport(source.url, snapshot)
    with _temporary_registry(trusted_types) as registry:
        started = time.perf_counter()
        restore(source, snapshot, registry.db, registry.store, advance=advance, key=key)
        report.restore_seconds = time.perf_counter() - started
        for ref, reached_by in reachable(registry).items():
            report.versions.append(_smoke(registry, ref, reached_by))
    return report


@contextmanager
def _temporary_registry(trusted_types: Sequence[str]) -> Iterator[Registry]:
    with tempfile.TemporaryDirectory(prefix="berth-drill-") as folder:
        root = Path(folder)
        db = Database(f"sqlite:///{root / 'registry.db'}")
        try:
            store = ArtifactStore(str(root / "artifacts"), root / "cache")
            yield Registry(db, store, trusted_types)
        finally:
            db.dispose()


def reachable(registry: Registry) -> dict[str, list[str]]:
    """Every version a client can reach, by reference (`iris:2`), with what reaches it: its
    aliases and the endpoint routes to it. Sorted by reference."""
    found: dict[str, list[str]] = {}
    for model in registry.list_models():
        for alias, number in sorted(model.aliases.items()):
            found.setdefault(f"{model.name}:{number}", []).append(f"{model.name}@{alias}")
    for endpoint in EndpointService(registry).all():
        for route in endpoint.routes:
            found.setdefault(route.ref, []).append(f"{endpoint.name}/{route.label}")
    return dict(sorted(found.items()))


def _smoke(registry: Registry, ref: str, reached_by: list[str]) -> VersionDrill:
    from berth.runtimes.loading import load_version

    result = VersionDrill(ref, reached_by)
    started = time.perf_counter()
    try:
        version = registry.resolve(ref)
        runtime = load_version(registry, version)
        result.load_seconds = time.perf_counter() - started
        inputs, result.rows = smoke_input(version)
        started = time.perf_counter()
        prediction = runtime.predict(inputs)
        result.predict_seconds = time.perf_counter() - started
        answered = len(prediction.predictions)
        if answered != result.rows:
            raise InvalidInput(f"it answered {answered} predictions for {result.rows} rows")
    except Exception as exc:  # the drill's whole point: any failure of one version is reported
        result.status = FAILED
        result.reason = _one_line(exc)
    return result


def smoke_input(version: VersionInfo) -> tuple[Any, int]:
    """Rows for `version` from what the registry stored, validated as a request's would be:
    its example rows, else rows generated from its reference statistics; and how many."""
    from berth.serving.validation import decode_instances

    if version.example:
        rows = version.example[:SMOKE_ROWS]
        return decode_instances(version.signature, rows, "example", len(rows)), len(rows)
    if not version.reference_stats:
        raise InvalidInput(
            "it has no example rows or reference statistics to predict on (register versions "
            "with --sample so a drill can check them)"
        )
    from berth.optimize.data import check_data

    data = check_data(version)
    count = min(SMOKE_ROWS, data.rows)
    return data.take(list(range(count))), count


def _one_line(exc: Exception) -> str:
    text = exc.message if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
