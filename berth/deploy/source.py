"""Where `berth build` reads what it deploys: the registry itself, or a server's admin API.

A `BuildSource` answers a few lookups (a model's versions and aliases, one version, an
endpoint's routes, the enabled schedules) and copies a version's artifact into a folder. What
the build makes of them (which version a reference names, which schedules belong in the
bundle) is decided here, once, for both sources: local and remote mode resolve alike and fail
with the same messages. `RegistrySource` is the local one; the remote one lives with the API
client (`berth.cli.remote_build`). `berth export` reads its version through the same sources.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from berth.deploy.bundle import ArtifactSource
from berth.deploy.plan import Subject
from berth.errors import NotFound
from berth.jobs.schedules import ScheduleService
from berth.registry.endpoints import EndpointService, RouteSpec
from berth.registry.references import Reference, chosen_version, parse_reference
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo


@dataclass(frozen=True)
class BatchSchedule:
    """An enabled schedule (a batch run or a backup), as much of it as a CronJob needs."""

    name: str
    cron: str
    timezone: str
    args: tuple[str, ...]
    """Its `berth batch run` arguments (a backup's: `berth backup create`)."""
    kind: str = "batch"

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> BatchSchedule:
        """From a schedule's document (`ScheduleInfo.to_dict`, which the API returns)."""
        return cls(
            name=str(document["name"]),
            cron=str(document["cron"]),
            timezone=str(document["timezone"]),
            args=tuple(str(arg) for arg in document["args"]),
            kind=str(document.get("kind", "batch")),  # servers before schedule kinds: batch
        )


class BuildSource(ArtifactSource, Protocol):
    def model(self, name: str) -> tuple[Mapping[str, int], Sequence[int]]:
        """The model's aliases ({alias: version}) and version numbers, oldest first; NotFound
        as the registry words it."""

    def version(self, model: str, number: int) -> VersionInfo:
        """One version in full (artifact layout, reference statistics); NotFound as the
        registry words it."""

    def endpoint(self, name: str) -> tuple[RouteSpec, ...]:
        """The endpoint's routes; NotFound when there is no such endpoint."""

    def schedules(self) -> list[BatchSchedule]:
        """Every enabled schedule (batch and backup), by name."""


class RegistrySource:
    """The registry this process opens (local mode)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def model(self, name: str) -> tuple[Mapping[str, int], Sequence[int]]:
        info = self.registry.get_model(name)
        return info.aliases, [v.number for v in info.versions]

    def version(self, model: str, number: int) -> VersionInfo:
        return self.registry.get_version(model, number)

    def endpoint(self, name: str) -> tuple[RouteSpec, ...]:
        return EndpointService(self.registry).get(name).routes

    def schedules(self) -> list[BatchSchedule]:
        found = ScheduleService(self.registry.db).list(enabled_only=True)
        return [BatchSchedule(s.name, s.cron, s.timezone, tuple(s.args), s.kind) for s in found]

    def fetch_artifact(self, version: VersionInfo, folder: Path) -> None:
        local = self.registry.store.fetch(version.artifact)  # verified against its sha256
        if version.artifact.is_directory:
            shutil.copytree(
                local, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copyfile(local, folder / version.artifact.entry)


# what a build makes of the lookups ---------------------------------------------------------


def resolve(source: BuildSource, reference: str) -> Subject:
    """A model reference (`churn`, `churn:3`, `churn@production`) or an endpoint name."""
    ref = parse_reference(reference)
    try:
        version = _resolve_version(source, ref)
    except NotFound as missing:
        if ref.version is not None or ref.alias is not None:
            raise
        try:
            routes = source.endpoint(ref.name)
        except NotFound:
            if _model_exists(source, ref.name):
                raise missing from None
            raise NotFound(
                f"'{reference}' is neither a registered model nor an endpoint; see "
                "`berth models list` and `berth endpoints list`"
            ) from None
        versions = tuple(source.version(r.model, r.version) for r in routes)
        served = tuple(dict.fromkeys(r.ref for r in routes))
        return Subject("endpoint", ref.name, reference, versions, served)
    return Subject("model", version.model, reference, (version,), (str(ref),))


def model_version(source: BuildSource, reference: str) -> VersionInfo:
    """The version a model reference (`churn`, `churn:3`, `churn@production`) names."""
    return _resolve_version(source, parse_reference(reference))


@contextmanager
def local_artifact(source: BuildSource, version: VersionInfo) -> Iterator[Path]:
    """The version's artifact as a local path checked against its sha256 (the file, or the
    directory), for the duration of the block.

    The registry's own verified copy when the source is the registry; otherwise a download
    into a private temporary folder (readable by this user only), removed after the block.
    """
    if isinstance(source, RegistrySource):
        yield source.registry.store.fetch(version.artifact)
        return
    with tempfile.TemporaryDirectory(prefix="berth-artifact-") as private:
        folder = Path(private) / "artifact"
        folder.mkdir()
        source.fetch_artifact(version, folder)
        yield folder / version.artifact.entry if version.artifact.entry else folder


def _resolve_version(source: BuildSource, ref: Reference) -> VersionInfo:
    """The version a model reference names, chosen as `Registry.resolve` chooses it."""
    if ref.version is not None:
        return source.version(ref.name, ref.version)
    aliases, numbers = source.model(ref.name)
    return source.version(ref.name, chosen_version(ref, aliases, numbers))


def _model_exists(source: BuildSource, name: str) -> bool:
    try:
        source.model(name)
    except NotFound:
        return False
    return True


def own_schedules(schedules: list[BatchSchedule], subject: Subject) -> list[BatchSchedule]:
    """The schedules that score this bundle's models (the image holds only their libraries),
    and every backup schedule: a backup needs no model library, only the shared registry."""
    from berth.jobs.run_args import parse_run_args  # checks stored arguments as the command does

    models = {version.model for version in subject.versions}
    return [
        s
        for s in schedules
        if s.kind == "backup" or parse_reference(parse_run_args(s.args).model).name in models
    ]
